// dtype.wgsl: tensors are arrays of u32 words; these read and write one element of a float
// dtype inside a word. f32 fills a word; f16 and bf16 take two, element 2k in the low half.
// Dtype ids match `DType::wgsl_id`. Kernels pass prelude constants, so every switch folds away.
// The one place elements are decoded (`dtype_decode`, and `dtype_decode_pair` for both halves of
// a word at once): every kernel reads its float operands through these.

const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_BF16: u32 = 2u;

fn dtype_per_word(dtype: u32) -> u32 {
    return select(2u, 1u, dtype == DTYPE_F32);
}

// Element `lane` of `word`, widened to f32 (exact).
fn dtype_decode(dtype: u32, word: u32, lane: u32) -> f32 {
    switch dtype {
        case DTYPE_F16: {
            return f16_bits_to_f32(word >> (16u * lane));
        }
        case DTYPE_BF16: {
            return bf16_bits_to_f32(word >> (16u * lane));
        }
        default: {
            return bitcast<f32>(word);
        }
    }
}

// Both halves of a word of f16 or bf16 values, widened to f32 (exact).
fn dtype_decode_pair(dtype: u32, word: u32) -> vec2<f32> {
    return vec2<f32>(dtype_decode(dtype, word, 0u), dtype_decode(dtype, word, 1u));
}

// The element bits of x rounded to `dtype` (ties to even), in the low bits of the result.
fn dtype_encode(dtype: u32, x: f32) -> u32 {
    switch dtype {
        case DTYPE_F16: {
            return f32_to_f16_bits(x);
        }
        case DTYPE_BF16: {
            return f32_to_bf16_bits(x);
        }
        default: {
            return bitcast<u32>(x);
        }
    }
}

// x rounded to `dtype` and widened back: MLX's cast to T inside an f32 computation.
fn dtype_round(dtype: u32, x: f32) -> f32 {
    return dtype_decode(dtype, dtype_encode(dtype, x), 0u);
}
