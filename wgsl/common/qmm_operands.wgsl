// qmm_operands.wgsl: the parameters, batch table, scales and biases of the qmv, qvm and qmm
// kernels, and the decoding of codes: four at a time, from a 32-bit window of a row's LSB-first
// bitstream (4 codes of at most 8 bits fit one window). A block is 32 consecutive codes of a
// row: exactly BITS words, always inside one group (groups are 32, 64 or 128 codes). How the
// words of w_q are bound is each kernel's own (qmm_words.wgsl, or vectors in qmv.wgsl).
// Hot paths avoid private arrays indexed by loop counters: wgpu bounds every loop, which keeps
// drivers from unrolling, and such arrays then live in slow local memory.
// Expects: const BITS, SCALE_DTYPE; fn w_word(i: u32) -> u32, word i of w_q; code_scale.wgsl.
// Bindings: 0 params | 1 batches (x offset, w row offset, y offset per entry) | 4 scales
//           | 5 biases

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

const CODE_MASK: u32 = (1u << BITS) - 1u;

// The bits of 2^23.
const CODE_BITS: u32 = 0x4b000000u;

// The f32 value of the code under `mask` (below bit 23) in `window`, whose bits of 2^23 are set
// (`window | CODE_BITS`), without an int-to-float conversion: AND-ing keeps exactly 2^23 + c
// (mask and CODE_BITS share no bits), and subtracting 2^23 is exact. Conversions run at an
// eighth of the FMA rate on NVIDIA GPUs; this is two full-rate operations per code, plus one OR
// per window (masking, then OR-ing the bits in, took two per code).
fn code_float(window: u32, mask: u32) -> f32 {
    return bitcast<f32>(window & (mask | CODE_BITS)) - 8388608.0;
}

// The 32 bits from bit `b` (< 64) of the 64-bit stream hi:lo.
fn window64(lo: u32, hi: u32, b: u32) -> u32 {
    if b >= 32u {
        return hi >> (b - 32u);
    }
    if b == 0u {
        return lo;
    }
    return (lo >> b) | (hi << (32u - b));
}

// The four codes in the low 4 BITS bits of `window`, as floats scaled by 1 / CODE_SCALE: code j
// is masked where it lies (q · 2^(j BITS)) rather than shifted down, which saves a shift per
// code; for 6 and 8 bits, codes 2 and 3 come from the window shifted by 2 BITS, so that every
// masked value stays below 2^23 (see `code_float`). Multiplying the other factor by CODE_SCALE
// (exact: powers of two) restores the products.
fn window_codes(window: u32) -> vec4<f32> {
    let w = window | CODE_BITS;
    if BITS <= 5u {
        return vec4<f32>(
            code_float(w, CODE_MASK),
            code_float(w, CODE_MASK << BITS),
            code_float(w, CODE_MASK << (2u * BITS)),
            code_float(w, CODE_MASK << (3u * BITS)),
        );
    }
    let high = (window >> (2u * BITS)) | CODE_BITS;
    return vec4<f32>(
        code_float(w, CODE_MASK),
        code_float(w, CODE_MASK << BITS),
        code_float(high, CODE_MASK),
        code_float(high, CODE_MASK << BITS),
    );
}

// Whether 4 codes starting at bit `bit` of a word run into the next word (never for 1, 2, 4
// and 8 bits, whose quads start on multiples of 4 BITS).
fn straddles(bit: u32) -> bool {
    return 32u % (4u * BITS) != 0u && bit % 32u + 4u * BITS > 32u;
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

// (scale, bias) of group g.
fn load_scale_bias(g: u32) -> vec2<f32> {
    let word = element_word(SCALE_DTYPE, g);
    return vec2<f32>(unpack_element(SCALE_DTYPE, scales[word], g), unpack_element(SCALE_DTYPE, biases[word], g));
}
