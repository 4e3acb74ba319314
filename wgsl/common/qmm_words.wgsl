// qmm_words.wgsl: quantized weights read word by word, for the qvm and qmm kernels: rereading
// a word is an L1 hit, while picking words out of a vector by a run-time index can cost a trip
// to local memory.
// Expects: qmm_operands.wgsl.
// Bindings: 3 w_q

@group(0) @binding(3) var<storage, read> w_q: array<u32>;

// Codes i .. i + 3 of the row whose first word is `row_word` (scaled as `window_codes`).
fn load_codes4(row_word: u32, i: u32) -> vec4<f32> {
    let bit = i * BITS;
    let word = row_word + bit / 32u;
    var hi = 0u;
    if straddles(bit) {
        hi = w_q[word + 1u];
    }
    return window_codes(window64(w_q[word], hi, bit % 32u));
}
