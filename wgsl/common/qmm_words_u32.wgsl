// qmm_words_u32.wgsl: w_q word by word, for 1, 2, 3, 5 and 6 bits, whose blocks (1, 2, 3, 5 or 6
// words) need not start on a vec4.
// Bindings: 3 w_q

@group(0) @binding(3) var<storage, read> w_q: array<u32>;

fn load_word(word: u32) -> u32 {
    return w_q[word];
}

// The block whose first word is `word`.
fn load_block(word: u32) -> Block {
    var block = Block(vec4<u32>(w_q[word], 0u, 0u, 0u), vec4<u32>(0u));
    if BITS > 1u {
        block.a.y = w_q[word + 1u];
    }
    if BITS > 2u {
        block.a.z = w_q[word + 2u];
    }
    if BITS > 4u {
        block.a.w = w_q[word + 3u];
        block.b.x = w_q[word + 4u];
    }
    if BITS > 5u {
        block.b.y = w_q[word + 5u];
    }
    return block;
}
