// qmv.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[n, k] for a few rows of x at a time:
// MLX's qmv and qmv_wide (transpose=true, small M). A workgroup makes ROWS outputs for VECS rows
// of x. Its invocations split k in blocks of 32 codes and keep ROWS x VECS partial sums each,
// which `workgroup_sum` totals. Per block an invocation reads x once and reuses it for ROWS rows
// of w, and each row's scale and bias once: acc += scale · Σ x·q + bias · Σ x.
// Prelude: const BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS, ROWS (VECS and ROWS size
//          per-invocation arrays, so they are constants, not overrides)
// Overrides: WG_SIZE (invocations splitting k); MIN_SUBGROUP_SIZE (subgroup reduction only)
// Bindings: 0 params | 1 batches | 2 x (vec4 words) | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / ROWS), m_tiles = ceil(m / VECS), k_splits = 1, per batch entry.
//           k is a multiple of 32 (of the group size), so rows of x start on 32 elements and x
//           is read 16 bytes at a time.

override WG_SIZE: u32 = 128u;

const OUTPUTS: u32 = ROWS * VECS;

@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

// Elements e .. e + 7 of x (e a multiple of 8).
fn load_x8(e: u32) -> array<vec4<f32>, 2> {
    if X_DTYPE == DTYPE_F32 {
        return array<vec4<f32>, 2>(bitcast<vec4<f32>>(x[e / 4u]), bitcast<vec4<f32>>(x[e / 4u + 1u]));
    }
    let words = x[e / 8u];
    return array<vec4<f32>, 2>(
        vec4<f32>(unpack_pair(X_DTYPE, words.x), unpack_pair(X_DTYPE, words.y)),
        vec4<f32>(unpack_pair(X_DTYPE, words.z), unpack_pair(X_DTYPE, words.w)),
    );
}

fn kernel(local: u32, group: u32) {
    let tile = tile_of(group);
    if !tile.valid {
        return;
    }
    let row0 = tile.n * ROWS;
    let m0 = tile.m * VECS;
    var acc: array<f32, OUTPUTS>;
    for (var blk = local; blk < params.k / 32u; blk += WG_SIZE) {
        var blocks: array<Block, ROWS>;
        var scale_bias: array<vec2<f32>, ROWS>;
        for (var r = 0u; r < ROWS; r++) {
            // Rows past n repeat the last row; their sums are never stored.
            let row = tile.w + min(row0 + r, params.n - 1u);
            blocks[r] = load_block(row * params.w_stride + blk * BITS);
            scale_bias[r] = load_scale_bias(row * params.s_stride + blk * 32u / GROUP_SIZE);
        }
        var x_sum: array<f32, VECS>;
        for (var c = 0u; c < 4u; c++) {
            var xs: array<array<vec4<f32>, 2>, VECS>;
            for (var v = 0u; v < VECS; v++) {
                let row = min(m0 + v, params.m - 1u);
                xs[v] = load_x8(tile.x + row * params.x_stride + blk * 32u + 8u * c);
                x_sum[v] += dot(xs[v][0] + xs[v][1], vec4<f32>(1.0));
            }
            for (var r = 0u; r < ROWS; r++) {
                let q = block_codes8(blocks[r], c);
                for (var v = 0u; v < VECS; v++) {
                    let i = r * VECS + v;
                    acc[i] = fma(scale_bias[r].x, dot(q[0], xs[v][0]) + dot(q[1], xs[v][1]), acc[i]);
                }
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            for (var v = 0u; v < VECS; v++) {
                let i = r * VECS + v;
                acc[i] = fma(scale_bias[r].y, x_sum[v], acc[i]);
            }
        }
    }
    let total = workgroup_sum(acc, local);
    let r = local / VECS;
    let v = local % VECS;
    if local < OUTPUTS && row0 + r < params.n && m0 + v < params.m {
        store_y(tile.y + (m0 + v) * params.y_stride + row0 + r, total);
    }
}
