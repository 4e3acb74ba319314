// fp_quantize.wgsl: MLX's fp-mode quantize (mxfp4, mxfp8, nvfp4) with MLX 0.32.4's CPU
// semantics (its ops-level graph, each operation in the input dtype; rules and reasons in
// src/reference/fp.rs), in exact integer arithmetic (common/softfloat.wgsl,
// common/fp_formats.wgsl). Codes are packed as an LSB-first bitstream (a group fills whole
// words); scales are one byte per group.
// Prelude: const MODE, BITS, GROUP_SIZE, W_DTYPE
// Overrides: WG_SIZE
// Bindings: 0 params | 1 w | 2 w_q | 3 scales   (windows of one chunk of rows)
// Dispatch: one invocation per 4 groups, so that one invocation owns each scale word it writes.

struct Params {
    n_groups: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> w_q: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;

override WG_SIZE: u32 = 64u;

const GROUPS_PER_INVOCATION: u32 = 4u;
const WORDS_PER_GROUP: u32 = GROUP_SIZE * BITS / 32u;
// The element format's largest value: E4M3's 448 or E2M1's 6.
const LARGEST: f32 = select(6.0, 448.0, MODE == MODE_MXFP8);
// The byte MLX stores for an MX group whose scale is NaN or infinite: its conversion of the
// non-finite exponent gives 128 from f32 and 0 from f16 and bf16.
const NON_FINITE_BYTE: u32 = select(0u, 128u, W_DTYPE == DTYPE_F32);

fn load_w(i: u32) -> f32 {
    return dtype_decode(W_DTYPE, w[element_word(W_DTYPE, i)], element_lane(W_DTYPE, i));
}

// The scale byte of group g and the f32 bits its elements are divided by (0: MLX divides by
// zero).
fn group_scale(g: u32) -> vec2<u32> {
    var amax = 0u;
    var nan = false;
    for (var i = 0u; i < GROUP_SIZE; i++) {
        // Magnitudes of non-NaN values order as their bits do; a NaN makes max |w| NaN.
        let magnitude = bitcast<u32>(load_w(g * GROUP_SIZE + i)) & 0x7fffffffu;
        nan = nan || magnitude > F32_INF;
        amax = max(amax, magnitude);
    }
    let x = mlx_round(W_DTYPE, f32_div(bitcast<f32>(select(amax, F32_QNAN, nan)), LARGEST));
    if MODE == MODE_NVFP4 {
        let byte = e4m3_code(x);
        return vec2<u32>(byte, bitcast<u32>(e4m3_value(byte)));
    }
    let bits = bitcast<u32>(x);
    if bits >= F32_INF {
        return vec2<u32>(NON_FINITE_BYTE, 0u);
    }
    // A zero group takes scale 2^0. 2^e is exact in W_DTYPE, so it needs no rounding.
    let e = select(ceil_log2(bits), 0, bits == 0u);
    return vec2<u32>(u32(e + 127) & 0xffu, pow2_bits(e));
}

// Quantizes group g, writes its packed words and returns its scale byte.
fn quantize_group(g: u32) -> u32 {
    let scale = group_scale(g);
    let divisor = bitcast<f32>(scale.y);
    var word = 0u;
    var bit = 0u;
    var out = g * WORDS_PER_GROUP;
    for (var i = 0u; i < GROUP_SIZE; i++) {
        let v = load_w(g * GROUP_SIZE + i);
        let y = mlx_round(W_DTYPE, select(f32_div(v, divisor), divide_by_zero(v), scale.y == 0u));
        var code: u32;
        if MODE == MODE_MXFP8 {
            code = e4m3_code(y);
        } else {
            code = e2m1_code(y, W_DTYPE);
        }
        word |= code << bit;
        bit += BITS;
        if bit == 32u {
            w_q[out] = word;
            out += 1u;
            word = 0u;
            bit = 0u;
        }
    }
    return scale.x;
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
    for (var j = 0u; j < GROUPS_PER_INVOCATION; j++) {
        if first + j >= params.n_groups {
            break;
        }
        scale_word |= quantize_group(first + j) << (8u * j);
    }
    scales[slot] = scale_word;
}
