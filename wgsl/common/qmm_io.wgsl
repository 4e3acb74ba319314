// qmm_io.wgsl: reading float inputs and writing the output of the quantized-matmul kernels.
// Expects: const OUT_DTYPE; a binding `y: array<atomic<u32>>`.

// 2^112: rebiases an f16 exponent (bias 15) read as an f32 exponent (bias 127).
const F16_REBIAS: f32 = 5192296858534827628530496329220096.0;

// The f16 in the low 16 bits of h, widened to f32 with full-rate integer and float operations:
// unpack2x16float is missing on some drivers (Mesa without SHADER_F16) and runs at the slow
// conversion rate elsewhere. Exact, subnormals included (unless the device flushes them).
fn f16_to_f32(h: u32) -> f32 {
    let magnitude = (h & 0x7fffu) << 13u;
    var v = bitcast<f32>(magnitude) * F16_REBIAS;
    if (h & 0x7c00u) == 0x7c00u {
        v = bitcast<f32>(magnitude | 0x7f800000u);
    }
    return bitcast<f32>(bitcast<u32>(v) | ((h & 0x8000u) << 16u));
}

// Both halves of a word of f16 or bf16 values, widened to f32.
fn unpack_pair(dtype: u32, word: u32) -> vec2<f32> {
    if dtype == DTYPE_F16 {
        return vec2<f32>(f16_to_f32(word & 0xffffu), f16_to_f32(word >> 16u));
    }
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

// (element_word, the word holding element i, comes from common/element.wgsl.)

// Element i of an array of `dtype` values, given the word that holds it.
fn unpack_element(dtype: u32, word: u32, i: u32) -> f32 {
    if dtype == DTYPE_F32 {
        return bitcast<f32>(word);
    }
    return unpack_pair(dtype, word)[i % 2u];
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
