// qmm_words_u32.wgsl: w_q read one word at a time, for 1, 2, 3, 5 and 6 bits, whose blocks (1,
// 2, 3, 5 or 6 words) need not start on a vec4.
// Bindings: 3 w_q

@group(0) @binding(3) var<storage, read> w_q: array<u32>;

// The block whose first word is `word`.
fn load_block(word: u32) -> Block {
    var block: Block;
    for (var i = 0u; i < BITS; i++) {
        block[i] = w_q[word + i];
    }
    return block;
}
