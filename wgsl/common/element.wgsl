// element.wgsl: element i of a float array stored in u32 words (see dtype.wgsl): the word that
// holds it, its lane in that word, and the bits to OR into that word when storing it. Kernels
// whose neighbouring 16-bit outputs are computed by different invocations (rows of odd length,
// matmul tiles) store with atomicOr into freshly zeroed words, so no half is lost.

fn element_word(dtype: u32, i: u32) -> u32 {
    return i / dtype_per_word(dtype);
}

fn element_lane(dtype: u32, i: u32) -> u32 {
    return i % dtype_per_word(dtype);
}

// x rounded to `dtype`, shifted into element i's place in its word.
fn element_bits(dtype: u32, i: u32, x: f32) -> u32 {
    return dtype_encode(dtype, x) << (16u * element_lane(dtype, i));
}
