// qmm_words.wgsl: quantized weights as an array of words, for the qvm and qmm kernels (qmv
// binds them as vectors and defines its own `w_word`).
// Bindings: 3 w_q

@group(0) @binding(3) var<storage, read> w_q: array<u32>;

// Word i of w_q.
fn w_word(i: u32) -> u32 {
    return w_q[i];
}
