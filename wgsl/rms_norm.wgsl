// rms_norm.wgsl: MLX's fast.rms_norm as its fallback computes it: in f32,
// y = round_out(round_out(x · rsqrt(mean(x²) + eps)) · w), out dtype = promote(x, w).
// Prelude: const X_DTYPE, W_DTYPE, OUT_DTYPE
// Overrides: WG_SIZE (declared in common/row_reduce.wgsl)
// Bindings: 0 params | 1 x | 2 w | 3 y (zeroed; atomicOr)   (x and y are windows of one chunk)
// Dispatch: one workgroup per row.

struct Params {
    rows: u32,
    dims: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<atomic<u32>>;

fn load_x(i: u32) -> f32 {
    return dtype_decode(X_DTYPE, x[element_word(X_DTYPE, i)], element_lane(X_DTYPE, i));
}

fn load_w(i: u32) -> f32 {
    return dtype_decode(W_DTYPE, w[element_word(W_DTYPE, i)], element_lane(W_DTYPE, i));
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let row = linear_workgroup(wg, num_wg);
    // Uniform for the workgroup: the barriers below stay in uniform control flow.
    if row >= params.rows {
        return;
    }
    let base = row * params.dims;
    var sum = 0.0;
    for (var c = local; c < params.dims; c += WG_SIZE) {
        let v = load_x(base + c);
        sum += v * v;
    }
    let scale = inverseSqrt(row_reduce(sum, false, local) / f32(params.dims) + params.eps);
    for (var c = local; c < params.dims; c += WG_SIZE) {
        let normed = dtype_round(OUT_DTYPE, load_x(base + c) * scale);
        let i = base + c;
        atomicOr(&y[element_word(OUT_DTYPE, i)], element_bits(OUT_DTYPE, i, normed * load_w(c)));
    }
}
