// qvm.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[k, n] for a few rows of x at a time:
// MLX's qvm (transpose=false, small M; groups run along n). An invocation makes 32 consecutive
// outputs (one block of each row of w_q) for VECS rows of x over one slice of k, reading rows of
// w_q in order, so neighbouring invocations read neighbouring words. With k_splits > 1 each slice
// writes f32 partial sums to its own slot of y, and qmm_sum_partials.wgsl adds them up.
// Prelude: const BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS (sizes per-invocation
//          arrays, so it is a constant)
// Overrides: WG_SIZE (blocks of 32 outputs per workgroup)
// Bindings: 0 params | 1 batches | 2 x | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / (32 WG_SIZE)), m_tiles = ceil(m / VECS), k_splits slices, per batch
//           entry. n is a multiple of 32 (of the group size).

override WG_SIZE: u32 = 32u;

@group(0) @binding(2) var<storage, read> x: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

fn load_x(e: u32) -> f32 {
    return unpack_element(X_DTYPE, x[element_word(X_DTYPE, e)], e);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let tile = tile_of(linear_workgroup(wg, num_wg));
    let block = tile.n * WG_SIZE + local;
    if !tile.valid || block >= params.n / 32u {
        return;
    }
    let m0 = tile.m * VECS;
    var acc: array<vec4<f32>, 8 * VECS>;
    for (var k = tile.k_begin; k < tile.k_end; k++) {
        let row = tile.w + k;
        let codes = load_block(row * params.w_stride + block * BITS);
        let scale_bias = load_scale_bias(row * params.s_stride + block * 32u / GROUP_SIZE);
        var xk: array<f32, VECS>;
        for (var v = 0u; v < VECS; v++) {
            xk[v] = load_x(tile.x + min(m0 + v, params.m - 1u) * params.x_stride + k);
        }
        for (var c = 0u; c < 4u; c++) {
            let q = block_codes8(codes, c);
            let w0 = fma(vec4<f32>(scale_bias.x), q[0], vec4<f32>(scale_bias.y));
            let w1 = fma(vec4<f32>(scale_bias.x), q[1], vec4<f32>(scale_bias.y));
            for (var v = 0u; v < VECS; v++) {
                acc[8u * v + 2u * c] = fma(vec4<f32>(xk[v]), w0, acc[8u * v + 2u * c]);
                acc[8u * v + 2u * c + 1u] = fma(vec4<f32>(xk[v]), w1, acc[8u * v + 2u * c + 1u]);
            }
        }
    }
    for (var v = 0u; v < VECS; v++) {
        if m0 + v < params.m {
            let out = tile.y + (m0 + v) * params.y_stride + block * 32u;
            for (var j = 0u; j < 32u; j++) {
                store_y(out + j, acc[8u * v + j / 4u][j % 4u]);
            }
        }
    }
}
