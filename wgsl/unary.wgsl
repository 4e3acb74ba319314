// unary.wgsl: y = f(x) element-wise in f32, rounded once to OUT_DTYPE. OP 0 is the identity (a
// dtype cast), 1 ReLU max(x, 0), 2 SiLU x · sigmoid(x) = x / (1 + exp(-x)).
// Prelude: const OP, IN_DTYPE, OUT_DTYPE
// Overrides: WG_SIZE
// Bindings: 0 params | 1 x | 2 y   (windows of one chunk)
// Dispatch: one invocation per output word.

struct Params {
    n_elements: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

override WG_SIZE: u32 = 64u;

fn apply(v: f32) -> f32 {
    switch OP {
        case 1u: {
            return max(v, 0.0);
        }
        case 2u: {
            return v / (1.0 + exp(-v));
        }
        default: {
            return v;
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
        let v = dtype_decode(IN_DTYPE, x[element_word(IN_DTYPE, i)], element_lane(IN_DTYPE, i));
        word |= element_bits(OUT_DTYPE, i, apply(v));
    }
    y[slot] = word;
}
