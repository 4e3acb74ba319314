// codes.wgsl: the one reading of quantized codes. A row of w_q is an LSB-first bitstream of
// BITS-bit codes; 32 consecutive codes (a block) fill exactly BITS words and lie inside one
// group (groups are 32, 64 or 128 codes). Codes are read from a 32-bit window of the stream
// (`window64`); 4 codes of at most 8 bits fit one window. `window_code` gives one code as an
// integer (dequantize's exact arithmetic); `window_codes` gives four as floats, scaled by
// 1 / CODE_SCALE (the matmul kernels' hot loops). The one exception is qmv_coop.wgsl, the
// tensor-core path, which turns 4-bit codes into f16 with a magic-number trick of its own.
// Expects: const BITS.

const CODE_MASK: u32 = (1u << BITS) - 1u;

// The bits of 2^23.
const CODE_BITS: u32 = 0x4b000000u;

// The f32 value of the code under `mask` (below bit 23) in `window`, whose bits of 2^23 are set
// (`window | CODE_BITS`), without an int-to-float conversion: AND-ing keeps exactly 2^23 + c
// (mask and CODE_BITS share no bits), and subtracting 2^23 is exact. Conversions run at an
// eighth of the FMA rate on NVIDIA GPUs; this is two full-rate operations per code, plus one OR
// per window (masking, then OR-ing the bits in, took two per code).
fn code_float(window: u32, mask: u32) -> f32 {
    return bitcast<f32>(window & (mask | CODE_BITS)) - 8388608.0;
}

// The 32 bits from bit `b` (< 64) of the 64-bit stream hi:lo.
fn window64(lo: u32, hi: u32, b: u32) -> u32 {
    if b >= 32u {
        return hi >> (b - 32u);
    }
    if b == 0u {
        return lo;
    }
    return (lo >> b) | (hi << (32u - b));
}

// The four codes in the low 4 BITS bits of `window`, as floats scaled by 1 / CODE_SCALE: code j
// is masked where it lies (q · 2^(j BITS)) rather than shifted down, which saves a shift per
// code; for 6 and 8 bits, codes 2 and 3 come from the window shifted by 2 BITS, so that every
// masked value stays below 2^23 (see `code_float`). Multiplying the other factor by CODE_SCALE
// (exact: powers of two) restores the products.
fn window_codes(window: u32) -> vec4<f32> {
    let w = window | CODE_BITS;
    if BITS <= 5u {
        return vec4<f32>(
            code_float(w, CODE_MASK),
            code_float(w, CODE_MASK << BITS),
            code_float(w, CODE_MASK << (2u * BITS)),
            code_float(w, CODE_MASK << (3u * BITS)),
        );
    }
    let high = (window >> (2u * BITS)) | CODE_BITS;
    return vec4<f32>(
        code_float(w, CODE_MASK),
        code_float(w, CODE_MASK << BITS),
        code_float(high, CODE_MASK),
        code_float(high, CODE_MASK << BITS),
    );
}

// Whether 4 codes starting at bit `bit` of a word run into the next word (never for 1, 2, 4
// and 8 bits, whose quads start on multiples of 4 BITS).
fn straddles(bit: u32) -> bool {
    return 32u % (4u * BITS) != 0u && bit % 32u + 4u * BITS > 32u;
}

// The code in the low BITS bits of `window`.
fn window_code(window: u32) -> u32 {
    return window & CODE_MASK;
}

// How `window_codes` scales the four codes of a quad: code c is masked where it lies,
// q · 2^(c BITS) (for 6 and 8 bits, codes 2 and 3 from the window shifted by 2 BITS), which
// saves a shift per code; the other factor of each product is multiplied by CODE_SCALE[c]
// (powers of two: exact) to restore it. qmv_prepare.wgsl applies it to x once, as MLX's qmv does.

// 2^-BITS.
const CODE_STEP: f32 = 1.0 / f32(1u << BITS);

// What `window_codes` multiplies each code by, inverted.
const CODE_SCALE: vec4<f32> = select(
    vec4<f32>(1.0, CODE_STEP, 1.0, CODE_STEP),
    vec4<f32>(1.0, CODE_STEP, CODE_STEP * CODE_STEP, CODE_STEP * CODE_STEP * CODE_STEP),
    BITS <= 5u,
);
