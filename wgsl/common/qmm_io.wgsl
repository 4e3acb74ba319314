// qmm_io.wgsl: reading float inputs and writing the output of the quantized-matmul kernels.
// Expects: const OUT_DTYPE; a binding `y: array<atomic<u32>>`.

// 2^112: rebiases an f16 exponent (bias 15) read as an f32 exponent (bias 127).
const F16_REBIAS: f32 = 5192296858534827628530496329220096.0;
// 2^-14, the smallest normal f16.
const F16_MIN_NORMAL: f32 = 0.00006103515625;

// The f16 in the low 16 bits of h (higher bits ignored), widened to f32 exactly with full-rate
// integer and float operations: unpack2x16float is missing on some drivers (Mesa without
// SHADER_F16) and runs at the slow conversion rate elsewhere. The magnitude's bits go where an
// f32's would and a multiplication rebiases the exponent. That would take zero and subnormals
// through f32 subnormals, which drivers may flush (NVIDIA's do), so those use
// 2^-14 · (1 + m / 1024) - 2^-14 = m · 2^-24 instead. Infinities and NaNs (exponent 31) come
// out of the multiplication at 2^16 or more, past every finite f16.
fn f16_to_f32(h: u32) -> f32 {
    let magnitude = (h << 13u) & 0x0fffe000u;
    var v = bitcast<f32>(magnitude) * F16_REBIAS;
    v = select(v, bitcast<f32>(magnitude | 0x38800000u) - F16_MIN_NORMAL, magnitude < 0x00800000u);
    v = select(v, bitcast<f32>(magnitude | 0x7f800000u), v >= 65536.0);
    return bitcast<f32>(bitcast<u32>(v) | ((h << 16u) & 0x80000000u));
}

// Both halves of a word of f16 or bf16 values, widened to f32.
fn unpack_pair(dtype: u32, word: u32) -> vec2<f32> {
    if dtype == DTYPE_F16 {
        return vec2<f32>(f16_to_f32(word), f16_to_f32(word >> 16u));
    }
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// (element_word, the word holding element i, comes from common/element.wgsl.)

// Element i of an array of `dtype` values, given the word that holds it (only its half of a
// 16-bit pair is decoded).
fn unpack_element(dtype: u32, word: u32, i: u32) -> f32 {
    if dtype == DTYPE_F32 {
        return bitcast<f32>(word);
    }
    let half = word >> (16u * (i % 2u));
    if dtype == DTYPE_F16 {
        return f16_to_f32(half);
    }
    return bitcast<f32>(half << 16u);
}

// Writes element e of y, rounded to OUT_DTYPE (ties to even, overflow to infinity). Two 16-bit
// outputs share a word and may belong to different invocations, so halves are OR-ed into the
// zeroed word atomically.
fn store_y(e: u32, v: f32) {
    if OUT_DTYPE == DTYPE_F32 {
        atomicStore(&y[e], bitcast<u32>(v));
    } else {
        atomicOr(&y[e / 2u], dtype_encode(OUT_DTYPE, v) << (16u * (e % 2u)));
    }
}
