// qmm.wgsl: y = x · w for larger M, in both layouts: MLX's qmm_t and qmm_n. A workgroup makes a
// BM x BN tile of y, walking k in steps of BK = 32. Each step stages x[BM, BK] and the dequantized
// w[BK, BN] in workgroup memory as f32, k-major, so that a k-row of either is 16-byte vectors;
// then each invocation adds the outer products into an 8 x 8 sub-tile held in registers: rows
// 4ty .. 4ty+3 and BM/2 + 4ty .., columns 4tx .. and BN/2 + 4tx .., so that a subgroup's reads
// of a k-row are conflict-free or broadcasts. Accumulation is f32.
// Prelude: const BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, TRANSPOSE (1: w_q is (n, k),
//          groups along k; 0: w_q is (k, n), groups along n), BM, BN (the tile; they size
//          workgroup arrays and set the workgroup size (BM/8)(BN/8))
// Bindings: 0 params | 1 batches | 2 x | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / BN), m_tiles = ceil(m / BM), k_splits = 1, per batch entry.
//           Transposed, k is a multiple of 32; otherwise n is, and k has a tail.

const BK: u32 = 32u;
const THREADS_N: u32 = BN / 8u;
const WG_SIZE: u32 = (BM / 8u) * THREADS_N;

@group(0) @binding(2) var<storage, read> x: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

var<workgroup> x_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> w_tile: array<vec4<f32>, BK * BN / 4u>;

fn load_x(e: u32) -> f32 {
    return unpack_element(X_DTYPE, x[element_word(X_DTYPE, e)], e);
}

// Stages x[m0 .. m0 + BM, k0 .. k0 + BK] as x_tile[k][m], zero past m and k. An item is 4
// consecutive k of one row; consecutive invocations take consecutive rows, so that their stores
// fall in different banks.
fn stage_x(tile: Tile, m0: u32, k0: u32, local: u32) {
    for (var item = local; item < BM * BK / 4u; item += WG_SIZE) {
        let m = item % BM;
        let kk = (item / BM) * 4u;
        for (var j = 0u; j < 4u; j++) {
            var v = 0.0;
            if m0 + m < params.m && k0 + kk + j < tile.k_end {
                v = load_x(tile.x + (m0 + m) * params.x_stride + k0 + kk + j);
            }
            let slot = (kk + j) * BM + m;
            x_tile[slot / 4u][slot % 4u] = v;
        }
    }
}

// Stages w[k0 .. k0 + BK, n0 .. n0 + BN] as w_tile[k][n], zero past n, for w_q of shape (n, k):
// the step's codes of a row are one block. An item is 8 codes of one row.
fn stage_w_transposed(tile: Tile, n0: u32, k0: u32, local: u32) {
    for (var item = local; item < BN * 4u; item += WG_SIZE) {
        let n = item % BN;
        let c = item / BN;
        var w = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        if n0 + n < params.n {
            let row = tile.w + n0 + n;
            let block = load_block(row * params.w_stride + (k0 / 32u) * BITS);
            let scale_bias = load_scale_bias(row * params.s_stride + k0 / GROUP_SIZE);
            let q = block_codes8(block, c);
            w[0] = fma(vec4<f32>(scale_bias.x), q[0], vec4<f32>(scale_bias.y));
            w[1] = fma(vec4<f32>(scale_bias.x), q[1], vec4<f32>(scale_bias.y));
        }
        for (var j = 0u; j < 8u; j++) {
            let slot = (8u * c + j) * BN + n;
            w_tile[slot / 4u][slot % 4u] = w[j / 4u][j % 4u];
        }
    }
}

// Stages w[k0 .. k0 + BK, n0 .. n0 + BN] as w_tile[k][n], zero past n and k, for w_q of shape
// (k, n): a row of the tile is BN / 32 blocks. An item is 8 consecutive outputs of one row, so
// consecutive invocations read consecutive words.
fn stage_w_plain(tile: Tile, n0: u32, k0: u32, local: u32) {
    for (var item = local; item < BK * BN / 8u; item += WG_SIZE) {
        let p = item % (BN / 8u);
        let kk = item / (BN / 8u);
        let n = n0 + 8u * p;
        var w = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        if n < params.n && k0 + kk < tile.k_end {
            let row = tile.w + k0 + kk;
            let block = load_block(row * params.w_stride + (n / 32u) * BITS);
            let scale_bias = load_scale_bias(row * params.s_stride + n / GROUP_SIZE);
            let q = block_codes8(block, (n % 32u) / 8u);
            w[0] = fma(vec4<f32>(scale_bias.x), q[0], vec4<f32>(scale_bias.y));
            w[1] = fma(vec4<f32>(scale_bias.x), q[1], vec4<f32>(scale_bias.y));
        }
        let slot = (kk * BN + 8u * p) / 4u;
        w_tile[slot] = w[0];
        w_tile[slot + 1u] = w[1];
    }
}

// c + a bᵀ: column i of the result is row i of the sub-tile.
fn outer_fma(c: mat4x4<f32>, a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(vec4<f32>(a.x), b, c[0]),
        fma(vec4<f32>(a.y), b, c[1]),
        fma(vec4<f32>(a.z), b, c[2]),
        fma(vec4<f32>(a.w), b, c[3]),
    );
}

fn store_sub_tile(tile: Tile, c: mat4x4<f32>, m: u32, n: u32) {
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            if m + i < params.m && n + j < params.n {
                store_y(tile.y + (m + i) * params.y_stride + n + j, c[i][j]);
            }
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let tile = tile_of(linear_workgroup(wg, num_wg));
    if !tile.valid {
        return;
    }
    let n0 = tile.n * BN;
    let m0 = tile.m * BM;
    let tx = local % THREADS_N;
    let ty = local / THREADS_N;
    var c00 = mat4x4<f32>();
    var c01 = mat4x4<f32>();
    var c10 = mat4x4<f32>();
    var c11 = mat4x4<f32>();
    for (var k0 = tile.k_begin; k0 < tile.k_end; k0 += BK) {
        stage_x(tile, m0, k0, local);
        if TRANSPOSE == 1u {
            stage_w_transposed(tile, n0, k0, local);
        } else {
            stage_w_plain(tile, n0, k0, local);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = x_tile[kk * (BM / 4u) + ty];
            let a1 = x_tile[kk * (BM / 4u) + BM / 8u + ty];
            let b0 = w_tile[kk * (BN / 4u) + tx];
            let b1 = w_tile[kk * (BN / 4u) + BN / 8u + tx];
            c00 = outer_fma(c00, a0, b0);
            c01 = outer_fma(c01, a0, b1);
            c10 = outer_fma(c10, a1, b0);
            c11 = outer_fma(c11, a1, b1);
        }
        workgroupBarrier();
    }
    let m_lo = m0 + 4u * ty;
    let m_hi = m0 + BM / 2u + 4u * ty;
    let n_lo = n0 + 4u * tx;
    let n_hi = n0 + BN / 2u + 4u * tx;
    store_sub_tile(tile, c00, m_lo, n_lo);
    store_sub_tile(tile, c01, m_lo, n_hi);
    store_sub_tile(tile, c10, m_hi, n_lo);
    store_sub_tile(tile, c11, m_hi, n_hi);
}
