// codes.wgsl: the one reading of quantized codes. A row of w_q is an LSB-first bitstream of
// BITS-bit codes; 32 consecutive codes (a block) fill exactly BITS words and lie inside one
// group (groups are 32, 64 or 128 codes). Codes are read from a 32-bit window of the stream
// (`window64`); 4 codes of at most 8 bits fit one window. `window_code` gives one code as an
// integer (dequantize's exact arithmetic); `window_codes` gives four as floats, scaled by
// 1 / CODE_SCALE (the matmul kernels' hot loops). The one exception is qmv_coop.wgsl, the
// tensor-core path, which turns 4-bit codes into f16 with a magic-number trick of its own.
// The fp modes' codes are elements (E2M1 at 4 bits, E4M3 at 8): `window_codes` gives their
// values, unscaled (CODE_SCALE is 1), and `fp_scale` a group's scale, so that the matmul
// kernels' bodies serve every mode (the scale multiplies, the bias is 0). These decodings are
// float bit patterns, exact: the matmul's hot loops cannot afford fp_formats.wgsl's integers.
// Expects: const BITS, MODE; modes.wgsl.

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
    if MODE != MODE_AFFINE {
        return fp_elements(window);
    }
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

// What `window_codes` multiplies each code by, inverted (1 for the fp modes' elements).
const CODE_SCALE: vec4<f32> = select(
    select(
        vec4<f32>(1.0, CODE_STEP, 1.0, CODE_STEP),
        vec4<f32>(1.0, CODE_STEP, CODE_STEP * CODE_STEP, CODE_STEP * CODE_STEP * CODE_STEP),
        BITS <= 5u,
    ),
    vec4<f32>(1.0),
    MODE != MODE_AFFINE,
);

// The values of four E2M1 codes (`sign << 3 | e << 1 | m`), exact: for e > 0, 2^(e - 1) (1 + m/2)
// is the f32 whose exponent field is e + 126 and whose top mantissa bit is m; for e = 0 the
// value is m / 2 (0.5 is 0x3f000000), built directly rather than as an f32 subnormal, which
// drivers may flush.
fn e2m1_floats(codes: vec4<u32>) -> vec4<f32> {
    let magnitude = codes & vec4<u32>(7u);
    let normal = (magnitude << vec4<u32>(22u)) + vec4<u32>(126u << 23u);
    let bits = select(normal, magnitude * 0x3f000000u, magnitude < vec4<u32>(2u));
    return bitcast<vec4<f32>>(bits | ((codes & vec4<u32>(8u)) << vec4<u32>(28u)));
}

// The values of four E4M3 ("FN") bytes, exact: normal (e > 0) (1 + m/8) 2^(e - 7) is the f32 with
// exponent field e + 120 and mantissa m at its top; subnormal m 2^-9; 0x7F and 0xFF are NaN.
fn e4m3_floats(codes: vec4<u32>) -> vec4<f32> {
    let magnitude = codes & vec4<u32>(0x7fu);
    let normal = bitcast<vec4<f32>>((magnitude << vec4<u32>(20u)) + vec4<u32>(120u << 23u));
    let value = select(normal, vec4<f32>(magnitude) * (1.0 / 512.0), magnitude < vec4<u32>(8u));
    let nan = magnitude == vec4<u32>(0x7fu);
    let bits = select(bitcast<vec4<u32>>(value), vec4<u32>(0x7fc00000u), nan);
    return bitcast<vec4<f32>>(bits | ((codes & vec4<u32>(0x80u)) << vec4<u32>(24u)));
}

// The four elements in the low 4 BITS bits of `window` (fp modes).
fn fp_elements(window: u32) -> vec4<f32> {
    let codes = (vec4<u32>(window) >> (vec4<u32>(0u, 1u, 2u, 3u) * BITS)) & vec4<u32>(CODE_MASK);
    if MODE == MODE_MXFP8 {
        return e4m3_floats(codes);
    }
    return e2m1_floats(codes);
}

// The value of scale byte `byte` (fp modes): nvfp4's E4M3, or the MX modes' E8M0, 2^(byte - 127)
// (byte 0 is 2^-127, 0x00400000; byte 255 infinity).
fn fp_scale(byte: u32) -> f32 {
    if MODE == MODE_NVFP4 {
        return e4m3_floats(vec4<u32>(byte)).x;
    }
    return bitcast<f32>(select(byte << 23u, 0x00400000u, byte == 0u));
}
