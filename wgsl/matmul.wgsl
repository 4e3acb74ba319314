// matmul.wgsl: y[b, m, n] = Σ_k x[b, m, k] · w[b, n, k] (+ bias[n]) with f32 accumulation and one
// rounding to OUT_DTYPE at the end, as MLX's matmul and addmm (the bias joins the f32 sum).
// TRANSPOSE = 1 reads w as rows (N, K): x @ wᵀ, the Linear layout; TRANSPOSE = 0 reads (K, N).
// Operands are addressed by element strides, so attention reads heads in place: batch entry b is
// (outer, inner) = (b / batch_inner, b % batch_inner), and each operand has an outer, an inner and
// a row stride (k and, for TRANSPOSE = 0, n are contiguous).
// Prelude: const X_DTYPE, W_DTYPE, HAS_BIAS, BIAS_DTYPE, OUT_DTYPE, TRANSPOSE
// Overrides: TILE (the workgroup is TILE x TILE invocations, one output each)
// Bindings: 0 params | 1 x | 2 w | 3 bias (aliases w when HAS_BIAS = 0) | 4 y (zeroed; atomicOr)
// Dispatch: one workgroup per TILE x TILE output tile: batches * tiles_m * tiles_n.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batches: u32,
    batch_inner: u32,
    tiles_m: u32,
    tiles_n: u32,
    x_outer: u32,
    x_inner: u32,
    x_row: u32,
    w_outer: u32,
    w_inner: u32,
    w_row: u32,
    y_outer: u32,
    y_inner: u32,
    y_row: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<atomic<u32>>;

override TILE: u32 = 16u;

// Tiles of x (m, k) and of w as (n, k), widened to f32.
var<workgroup> x_tile: array<f32, TILE * TILE>;
var<workgroup> w_tile: array<f32, TILE * TILE>;

fn load_x(i: u32) -> f32 {
    return dtype_decode(X_DTYPE, x[element_word(X_DTYPE, i)], element_lane(X_DTYPE, i));
}

fn load_w(i: u32) -> f32 {
    return dtype_decode(W_DTYPE, w[element_word(W_DTYPE, i)], element_lane(W_DTYPE, i));
}

fn load_bias(i: u32) -> f32 {
    return dtype_decode(BIAS_DTYPE, bias[element_word(BIAS_DTYPE, i)], element_lane(BIAS_DTYPE, i));
}

@compute @workgroup_size(TILE, TILE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let tiles_per_batch = params.tiles_m * params.tiles_n;
    let t = linear_workgroup(wg, num_wg);
    // The whole workgroup leaves together, so the barriers below stay in uniform control flow.
    if t >= params.batches * tiles_per_batch {
        return;
    }
    let batch = t / tiles_per_batch;
    let tile = t % tiles_per_batch;
    let outer = batch / params.batch_inner;
    let inner = batch % params.batch_inner;
    let x_base = outer * params.x_outer + inner * params.x_inner;
    let w_base = outer * params.w_outer + inner * params.w_inner;
    let m0 = (tile / params.tiles_n) * TILE;
    let n0 = (tile % params.tiles_n) * TILE;
    let row = m0 + local.y;
    let col = n0 + local.x;

    var acc = 0.0;
    for (var k0 = 0u; k0 < params.k; k0 += TILE) {
        // Invocation (y, x) loads x[row, k0 + x], and w at (n0 + y, k0 + x) when w is (N, K), or
        // (k0 + y, n0 + x) when w is (K, N): neighbouring invocations read neighbouring elements.
        let xk = k0 + local.x;
        var xv = 0.0;
        if row < params.m && xk < params.k {
            xv = load_x(x_base + row * params.x_row + xk);
        }
        x_tile[local.y * TILE + local.x] = xv;
        var wv = 0.0;
        if TRANSPOSE == 1u {
            let wn = n0 + local.y;
            if wn < params.n && xk < params.k {
                wv = load_w(w_base + wn * params.w_row + xk);
            }
            w_tile[local.y * TILE + local.x] = wv;
        } else {
            let wk = k0 + local.y;
            let wn = n0 + local.x;
            if wn < params.n && wk < params.k {
                wv = load_w(w_base + wk * params.w_row + wn);
            }
            w_tile[local.x * TILE + local.y] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            acc += x_tile[local.y * TILE + kk] * w_tile[local.x * TILE + kk];
        }
        workgroupBarrier();
    }
    if row < params.m && col < params.n {
        if HAS_BIAS == 1u {
            acc += load_bias(col);
        }
        let i = outer * params.y_outer + inner * params.y_inner + row * params.y_row + col;
        atomicOr(&y[element_word(OUT_DTYPE, i)], element_bits(OUT_DTYPE, i, acc));
    }
}
