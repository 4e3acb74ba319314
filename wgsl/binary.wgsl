// binary.wgsl: y[i] = a[i] op b[i % b_len] element-wise in f32, rounded once to OUT_DTYPE (exact
// for one add or multiply of 16-bit floats, as MLX computes them). b_len = len(a) is the
// same-shape case; b_len = the last dimension broadcasts a row (a Linear bias, a norm weight).
// Prelude: const OP (0 add, 1 multiply), A_DTYPE, B_DTYPE, OUT_DTYPE
// Overrides: WG_SIZE
// Bindings: 0 params | 1 a | 2 b | 3 y   (a and y are windows of one chunk; b is whole)
// Dispatch: one invocation per output word.

struct Params {
    n_elements: u32,
    b_len: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;

override WG_SIZE: u32 = 64u;

fn apply(u: f32, v: f32) -> f32 {
    switch OP {
        case 1u: {
            return u * v;
        }
        default: {
            return u + v;
        }
    }
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
    for (var i = first; i < min(first + per_word, params.n_elements); i++) {
        let u = dtype_decode(A_DTYPE, a[element_word(A_DTYPE, i)], element_lane(A_DTYPE, i));
        let j = i % params.b_len;
        let v = dtype_decode(B_DTYPE, b[element_word(B_DTYPE, j)], element_lane(B_DTYPE, j));
        word |= element_bits(OUT_DTYPE, i, apply(u, v));
    }
    y[slot] = word;
}
