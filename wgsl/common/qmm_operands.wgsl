// qmm_operands.wgsl: the parameters, batch table and quantized weights of the qmv, qvm and qmm
// kernels. A block is 32 consecutive codes of a row of w_q: exactly BITS words of the row's
// LSB-first bitstream, always inside one group (groups are 32, 64 or 128 codes), so one scale
// and bias serve the whole block.
// Expects: const BITS, SCALE_DTYPE; `load_block` and the w_q binding (qmm_words_*.wgsl).
// Bindings: 0 params | 1 batches (x offset, w row offset, y offset per entry) | 4 scales | 5 biases

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

alias Block = array<u32, BITS>;

const CODE_MASK: u32 = (1u << BITS) - 1u;

// The f32 value of an integer code (< 2^23) without an int-to-float conversion: OR-ing the code
// into the mantissa of 2^23 gives exactly 2^23 + c, and subtracting 2^23 is exact. Conversions
// run at an eighth of the FMA rate on NVIDIA GPUs; this is two full-rate operations.
fn code_float(c: u32) -> f32 {
    return bitcast<f32>(c | 0x4b000000u) - 8388608.0;
}

// Code i (0..32) of a block. 3-, 5- and 6-bit codes may straddle two words.
fn block_code(block: Block, i: u32) -> u32 {
    var words = block;
    let bit = i * BITS;
    let word = bit / 32u;
    let shift = bit % 32u;
    var code = words[word] >> shift;
    if shift + BITS > 32u {
        code |= words[word + 1u] << (32u - shift);
    }
    return code & CODE_MASK;
}

// Codes 8c .. 8c + 7 of a block, as floats.
fn block_codes8(block: Block, c: u32) -> array<vec4<f32>, 2> {
    var q: array<vec4<f32>, 2>;
    for (var i = 0u; i < 8u; i++) {
        q[i / 4u][i % 4u] = code_float(block_code(block, 8u * c + i));
    }
    return q;
}

// (scale, bias) of group g.
fn load_scale_bias(g: u32) -> vec2<f32> {
    let word = element_word(SCALE_DTYPE, g);
    return vec2<f32>(unpack_element(SCALE_DTYPE, scales[word], g), unpack_element(SCALE_DTYPE, biases[word], g));
}
