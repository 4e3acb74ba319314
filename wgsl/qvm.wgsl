// qvm.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[k, n] for up to 4 rows of x at a time:
// MLX's qvm (transpose=false, small M; groups run along n). An invocation makes 4 consecutive
// outputs for VECS rows of x over one slice of k, reading rows of w_q in order, so neighbouring
// invocations read neighbouring words. With k_splits > 1 each slice writes f32 partial sums to
// its own slot of y, and qmm_sum_partials.wgsl adds them up.
// Prelude: const MODE, BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS (1 ..= 4)
// Overrides: WG_SIZE (quads of outputs per workgroup)
// Bindings: 0 params | 1 batches | 2 x | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / (4 WG_SIZE)), m_tiles = ceil(m / VECS), k_splits slices, per batch
//           entry. n is a multiple of 32 (of the group size).

override WG_SIZE: u32 = 64u;

@group(0) @binding(2) var<storage, read> x: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

fn load_x(e: u32) -> f32 {
    return dtype_decode(X_DTYPE, x[element_word(X_DTYPE, e)], element_lane(X_DTYPE, e));
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let tile = tile_of(linear_workgroup(wg, num_wg));
    let n = 4u * (tile.n * WG_SIZE + local);
    if !tile.valid || n >= params.n {
        return;
    }
    let m0 = tile.m * VECS;
    // Rows of x past m repeat the last row; their sums are never stored.
    let rows = tile.x + min(vec4<u32>(m0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.m - 1u)) * params.x_stride;
    // Column v: the 4 outputs for row v of x.
    var acc = mat4x4<f32>();
    for (var k = tile.k_begin; k < tile.k_end; k++) {
        let row = tile.w + k;
        let scale_bias = load_scale_bias(row * params.s_stride + n / GROUP_SIZE);
        // The codes come scaled by 1 / CODE_SCALE (see `window_codes`).
        let w = fma(scale_bias.x * CODE_SCALE, load_codes4(row * params.w_stride, n), vec4<f32>(scale_bias.y));
        acc[0] = fma(vec4<f32>(load_x(rows.x + k)), w, acc[0]);
        if VECS > 1u {
            acc[1] = fma(vec4<f32>(load_x(rows.y + k)), w, acc[1]);
        }
        if VECS > 2u {
            acc[2] = fma(vec4<f32>(load_x(rows.z + k)), w, acc[2]);
        }
        if VECS > 3u {
            acc[3] = fma(vec4<f32>(load_x(rows.w + k)), w, acc[3]);
        }
    }
    for (var v = 0u; v < VECS; v++) {
        if m0 + v < params.m {
            let out = tile.y + (m0 + v) * params.y_stride + n;
            store_y(out, acc[v].x);
            store_y(out + 1u, acc[v].y);
            store_y(out + 2u, acc[v].z);
            store_y(out + 3u, acc[v].w);
        }
    }
}
