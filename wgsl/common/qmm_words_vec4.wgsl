// qmm_words_vec4.wgsl: w_q read 16 bytes at a time, for 4 and 8 bits. A block is then one or two
// whole vec4s, and every row of w_q holds a multiple of 4 words, so blocks never straddle a vec4
// and the binding is a whole number of vec4s.
// Bindings: 3 w_q

@group(0) @binding(3) var<storage, read> w_q: array<vec4<u32>>;

// The block whose first word is `word` (a multiple of 4).
fn load_block(word: u32) -> Block {
    var block: Block;
    for (var v = 0u; v < BITS / 4u; v++) {
        let words = w_q[word / 4u + v];
        block[4u * v] = words.x;
        block[4u * v + 1u] = words.y;
        block[4u * v + 2u] = words.z;
        block[4u * v + 3u] = words.w;
    }
    return block;
}
