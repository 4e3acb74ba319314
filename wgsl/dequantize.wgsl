// dequantize.wgsl: MLX's dequantize, computed as MLX's CPU does.
// Affine: w = scale * q + bias in the scales' dtype T with two roundings,
// round_T(round_T(q * s) + b), then cast to the output dtype O.
// fp modes: w = round_O(element * round_O(scale)) (common/fp_formats.wgsl decodes both).
// Prelude: const MODE, BITS, GROUP_SIZE, SCALE_DTYPE (fp modes: u8), OUT_DTYPE
// Overrides: WG_SIZE
// Bindings: 0 params | 1 w_q | 2 scales | 3 biases | 4 out   (windows of one chunk of rows;
//           the fp modes, which have no biases, bind the scales again at 3)
// Dispatch: one invocation per output word (one f32 or two 16-bit elements).

struct Params {
    n_elements: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> w_q: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> biases: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

override WG_SIZE: u32 = 64u;

fn load_scale_dtype(group: u32, is_bias: bool) -> f32 {
    let word_index = element_word(SCALE_DTYPE, group);
    let word = select(scales[word_index], biases[word_index], is_bias);
    return dtype_decode(SCALE_DTYPE, word, element_lane(SCALE_DTYPE, group));
}

// Scale byte `group` of the fp modes (four to a word).
fn load_scale_byte(group: u32) -> u32 {
    return (scales[group / 4u] >> (8u * (group % 4u))) & 0xffu;
}

// One affine value: round_T(round_T(q * s) + b) in the scales' dtype T.
fn affine_value(code: u32, g: u32) -> f32 {
    let scale = load_scale_dtype(g, false);
    let bias = load_scale_dtype(g, true);
    let product = dtype_round(SCALE_DTYPE, f32_mul_uint(scale, code));
    return dtype_round(SCALE_DTYPE, f32_add(product, bias));
}

// One fp value: round_O(element * round_O(scale)), the product exact in f32 (at most 8
// significant bits, never below f32's subnormals) and formed in integers, which keep the
// subnormals that drivers flush.
fn fp_value(code: u32, g: u32) -> f32 {
    let byte = load_scale_byte(g);
    var scale: f32;
    if MODE == MODE_NVFP4 {
        scale = e4m3_value(byte);
    } else {
        scale = e8m0_value(byte);
    }
    scale = dtype_round(OUT_DTYPE, scale);
    if MODE == MODE_MXFP8 {
        return dtype_round(OUT_DTYPE, e4m3_times(code, scale));
    }
    return dtype_round(OUT_DTYPE, e2m1_times(code, scale));
}

// Code i of the chunk's bitstream (codes.wgsl). Rows are whole words, so the chunk is one
// stream; 32 codes always fill exactly BITS words, which keeps the bit index free of overflow.
fn load_code(i: u32) -> u32 {
    let first_bit = (i % 32u) * BITS;
    let word = (i / 32u) * BITS + first_bit / 32u;
    let bit = first_bit % 32u;
    var next = 0u;
    if bit + BITS > 32u {
        next = w_q[word + 1u];
    }
    return window_code(window64(w_q[word], next, bit));
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let slot = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    let per_word = dtype_per_word(OUT_DTYPE);
    let first = slot * per_word;
    if first >= params.n_elements {
        return;
    }
    var word = 0u;
    for (var lane = 0u; lane < per_word; lane++) {
        let i = first + lane;
        if i >= params.n_elements {
            break;
        }
        var value: f32;
        if MODE == MODE_AFFINE {
            value = affine_value(load_code(i), i / GROUP_SIZE);
        } else {
            value = fp_value(load_code(i), i / GROUP_SIZE);
        }
        word |= element_bits(OUT_DTYPE, i, value);
    }
    out[slot] = word;
}
