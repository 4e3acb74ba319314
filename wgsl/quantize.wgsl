// quantize.wgsl: MLX affine quantize with MLX's CPU semantics (mlx/backend/cpu/quantized.cpp
// `quantize`): true min/max, the edge flip, round half to even, IEEE f32 arithmetic
// (done in integers: common/softfloat.wgsl), scales and biases rounded to the input dtype, codes packed as an
// LSB-first bitstream (3/5/6-bit codes straddle words; a group always fills whole words).
// Prelude: const BITS, GROUP_SIZE, W_DTYPE, GROUPS_PER_INVOCATION (2 for 16-bit dtypes, so that
//          one invocation owns every half of the scale and bias words it writes)
// Overrides: WG_SIZE
// Bindings: 0 params | 1 w | 2 w_q | 3 scales | 4 biases   (windows of one chunk of rows)
// Dispatch: one invocation per GROUPS_PER_INVOCATION groups.

struct Params {
    n_groups: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> w_q: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;
@group(0) @binding(4) var<storage, read_write> biases: array<u32>;

override WG_SIZE: u32 = 64u;

const N_BINS: f32 = f32((1u << BITS) - 1u);
const EPS: f32 = 1e-7;
const WORDS_PER_GROUP: u32 = GROUP_SIZE * BITS / 32u;

fn load_w(i: u32) -> f32 {
    return dtype_decode(W_DTYPE, w[element_word(W_DTYPE, i)], element_lane(W_DTYPE, i));
}

// Quantizes group g, writes its packed words and returns (scale, bias) in f32.
fn quantize_group(g: u32) -> vec2<f32> {
    let base = g * GROUP_SIZE;
    var w_min = bitcast<f32>(F32_INF);
    var w_max = -bitcast<f32>(F32_INF);
    for (var i = 0u; i < GROUP_SIZE; i++) {
        let v = load_w(base + i);
        // As std::min/std::max: a NaN never replaces the running extreme.
        if f32_less(v, w_min) {
            w_min = v;
        }
        if f32_less(w_max, v) {
            w_max = v;
        }
    }

    var scale: f32;
    var bias: f32;
    if BITS == 1u {
        // 1-bit (MLX 0.32.4): no edge flip, the minimum is the bias.
        let range = f32_sub(w_max, w_min);
        scale = select(range, EPS, f32_less(range, EPS));
        bias = w_min;
    } else {
        let step = f32_div(f32_sub(w_max, w_min), N_BINS);
        scale = select(step, EPS, f32_less(step, EPS));
        // The edge flip: the extreme with the larger magnitude becomes the bias, so it and zero
        // are represented exactly.
        let min_is_edge = f32_less(f32_abs(w_max), f32_abs(w_min));
        scale = select(-scale, scale, min_is_edge);
        let edge = select(w_max, w_min, min_is_edge);
        let edge_steps = f32_div(edge, scale);
        // Tested on the bits, not with `!=`: a WGSL compiler may assume NaN never occurs, and an
        // infinite edge makes the quotient NaN (MLX then stores a NaN scale and the edge).
        if f32_is_nan(edge_steps) || round(edge_steps) != 0.0 {
            scale = f32_div(edge, round(edge_steps));
            bias = edge;
        } else {
            bias = 0.0;
        }
    }

    var word = 0u;
    var bit = 0u;
    var out = g * WORDS_PER_GROUP;
    for (var i = 0u; i < GROUP_SIZE; i++) {
        let quotient = f32_div(f32_sub(load_w(base + i), bias), scale);
        var code = 0u;
        if !f32_is_nan(quotient) {
            code = u32(clamp(round(quotient), 0.0, N_BINS));
        }
        word |= code << bit;
        bit += BITS;
        if bit >= 32u {
            w_q[out] = word;
            out += 1u;
            bit -= 32u;
            // The high bits of a code that straddled the word boundary.
            word = select(0u, code >> (BITS - bit), bit > 0u);
        }
    }
    return vec2<f32>(scale, bias);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let slot = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    let first = slot * GROUPS_PER_INVOCATION;
    if first >= params.n_groups {
        return;
    }
    var scale_word = 0u;
    var bias_word = 0u;
    for (var j = 0u; j < GROUPS_PER_INVOCATION; j++) {
        if first + j >= params.n_groups {
            break;
        }
        let sb = quantize_group(first + j);
        scale_word |= element_bits(W_DTYPE, first + j, sb.x);
        bias_word |= element_bits(W_DTYPE, first + j, sb.y);
    }
    scales[slot] = scale_word;
    biases[slot] = bias_word;
}
