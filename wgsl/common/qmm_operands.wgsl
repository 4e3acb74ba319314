// qmm_operands.wgsl: the parameters, batch table, scales and biases of the qmv, qvm and qmm
// kernels, and the reading of four codes of a row at a time through codes.wgsl. How the words
// of w_q are bound is each kernel's own (qmm_words.wgsl, or vectors in qmv.wgsl).
// Hot paths avoid private arrays indexed by loop counters: wgpu bounds every loop, which keeps
// drivers from unrolling, and such arrays then live in slow local memory.
// Expects: const BITS, MODE, SCALE_DTYPE; fn w_word(i: u32) -> u32, word i of w_q; codes.wgsl.
// Bindings: 0 params | 1 batches (x offset, w row offset, y offset per entry) | 4 scales
//           | 5 biases (the fp modes, which have no biases, bind the scales again)

// `MatmulParams` in Rust.
struct Params {
    m: u32,           // x rows per batch entry
    n: u32,           // output columns of this dispatch
    k: u32,           // inner length of this dispatch
    x_stride: u32,    // elements between rows of x
    y_stride: u32,    // elements between rows of y
    w_stride: u32,    // words between rows of w_q
    s_stride: u32,    // scales (and biases) between rows of scales
    batches: u32,     // entries in the batch table
    m_tiles: u32,     // workgroups along m
    n_tiles: u32,     // workgroups along n
    k_splits: u32,    // slices of k, each written to its own slot of y
    k_per_split: u32, // inner length of one slice (whole blocks)
    slot_stride: u32, // elements between the slots of y
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> batches: array<u32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> biases: array<u32>;

// What one workgroup computes: tile indices along n and m, a slice of k, and a batch entry's
// offsets into x (elements), w_q (rows) and y (elements, including the slice's slot).
struct Tile {
    n: u32,
    m: u32,
    k_begin: u32,
    k_end: u32,
    x: u32,
    w: u32,
    y: u32,
    valid: bool,
}

// The tile of workgroup `group`. n varies fastest, so neighbouring workgroups share rows of x.
fn tile_of(group: u32) -> Tile {
    var t: Tile;
    t.n = group % params.n_tiles;
    var rest = group / params.n_tiles;
    t.m = rest % params.m_tiles;
    rest /= params.m_tiles;
    let split = rest % params.k_splits;
    let entry = rest / params.k_splits;
    // The grid may overshoot (see `gpu::grid`).
    t.valid = entry < params.batches;
    let e = min(entry, params.batches - 1u);
    t.k_begin = split * params.k_per_split;
    t.k_end = min(t.k_begin + params.k_per_split, params.k);
    t.x = batches[3u * e];
    t.w = batches[3u * e + 1u];
    t.y = batches[3u * e + 2u] + split * params.slot_stride;
    return t;
}

// Codes i .. i + 3 (i a multiple of 4) of the row whose first word is `row_word`, scaled as
// `window_codes`, read word by word: rereading a word is an L1 hit, while picking words out of a
// vector by a run-time index can cost a trip to local memory.
fn load_codes4(row_word: u32, i: u32) -> vec4<f32> {
    let bit = i * BITS;
    let word = row_word + bit / 32u;
    var next = 0u;
    if straddles(bit) {
        next = w_word(word + 1u);
    }
    return window_codes(window64(w_word(word), next, bit % 32u));
}

// The word of scales (and of biases) holding group g's: the fp modes' scales are bytes.
fn scale_word(g: u32) -> u32 {
    if MODE != MODE_AFFINE {
        return g / 4u;
    }
    return element_word(SCALE_DTYPE, g);
}

// (scale, bias) of group g from the words `scale_word(g)` of scales and biases: the fp modes
// have a scale byte and no bias.
fn decode_scale_bias(scale_bits: u32, bias_bits: u32, g: u32) -> vec2<f32> {
    if MODE != MODE_AFFINE {
        return vec2<f32>(fp_scale((scale_bits >> (8u * (g % 4u))) & 0xffu), 0.0);
    }
    let lane = element_lane(SCALE_DTYPE, g);
    return vec2<f32>(dtype_decode(SCALE_DTYPE, scale_bits, lane), dtype_decode(SCALE_DTYPE, bias_bits, lane));
}

// (scale, bias) of group g.
fn load_scale_bias(g: u32) -> vec2<f32> {
    let word = scale_word(g);
    return decode_scale_bias(scales[word], biases[word], g);
}
