// qmm_words_vec4.wgsl: w_q as 16-byte vectors, for 4 and 8 bits: a block is then one or two
// whole vec4s, and every row holds a multiple of 4 words, so the binding is whole vec4s.
// Bindings: 3 w_q

@group(0) @binding(3) var<storage, read> w_q: array<vec4<u32>>;

fn load_word(word: u32) -> u32 {
    return w_q[word / 4u][word % 4u];
}

// The block whose first word is `word` (a multiple of 4).
fn load_block(word: u32) -> Block {
    var block = Block(w_q[word / 4u], vec4<u32>(0u));
    if BITS > 4u {
        block.b = w_q[word / 4u + 1u];
    }
    return block;
}
