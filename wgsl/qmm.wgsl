// qmm.wgsl: y = x · w for larger M, in both layouts: MLX's qmm_t and qmm_n. A workgroup makes a
// BM x BN tile of y, walking its slice of k in steps of BK = 16. Each step stages x[BM, BK] and
// the dequantized w[BK, BN] in workgroup memory as f32, k-major, so that a k-row of either is
// 16-byte vectors; then each invocation adds the outer products into an 8 x TN sub-tile held in
// registers: rows 4ty .. 4ty+3 and BM/2 + 4ty .., and TN / 4 quads of columns 4tx .. spaced
// 4 THREADS_N apart, so that a subgroup's reads of a k-row are conflict-free or broadcasts.
// Accumulation is f32. The k-rows of a step are unrolled by hand, 4 per iteration.
// The next step's words are fetched into registers before the current step's arithmetic and
// decoded only when staged, so that their loads are in flight meanwhile.
// Per-invocation state lives in the entry function's own variables, named, and helpers take and
// return small values: wgpu bounds every loop, which keeps drivers from unrolling, and arrays
// indexed at run time, or large values passed to functions a driver does not inline, end up in
// slow local memory.
// Prelude: const MODE, BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, TRANSPOSE (1: w_q is (n, k),
//          groups along k; 0: w_q is (k, n), groups along n), BM (32, 64 or 128), BN (128 or
//          256), TN (8 or 16 columns per invocation); the workgroup has BM / 8 · BN / TN
//          invocations.
// Bindings: 0 params | 1 batches | 2 x | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / BN), m_tiles = ceil(m / BM), k_splits slices (f32 partial sums in
//           their slots of y when more than one), per batch entry. Transposed, k is a multiple
//           of 32; otherwise n is, and k has a tail.

const BK: u32 = 16u;
const THREADS_N: u32 = BN / TN;
const WG_SIZE: u32 = (BM / 8u) * THREADS_N;
// A step stages x as quads (4 consecutive k of one row): 32 TN / BN (1, 2 or 4) per
// invocation; and w as pieces (8 consecutive codes): 16 TN / BM (1 to 8) per invocation.
const X_QUADS_PER_INVOCATION: u32 = BM * BK / 4u / WG_SIZE;
const W_PIECES_PER_INVOCATION: u32 = BN * BK / 8u / WG_SIZE;

@group(0) @binding(2) var<storage, read> x: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

var<workgroup> x_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> w_tile: array<vec4<f32>, BK * BN / 4u>;

// Quad i of invocation `local`: row q % BM (consecutive invocations take consecutive rows, so
// that their stores to x_tile fall in different banks), k offset 4 (q / BM) within the step.
fn quad_of(local: u32, i: u32) -> vec2<u32> {
    let q = local + i * WG_SIZE;
    return vec2<u32>(q % BM, (q / BM) * 4u);
}

fn fetch_x_quad(tile: Tile, m0: u32, k0: u32, local: u32, i: u32) -> vec4<u32> {
    let quad = quad_of(local, i);
    // Out-of-range rows and k are clamped here and zeroed when staged.
    let row = tile.x + min(m0 + quad.x, params.m - 1u) * params.x_stride;
    let k = min(vec4<u32>(k0 + quad.y) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(tile.k_end - 1u)) + row;
    return vec4<u32>(
        x[element_word(X_DTYPE, k.x)],
        x[element_word(X_DTYPE, k.y)],
        x[element_word(X_DTYPE, k.z)],
        x[element_word(X_DTYPE, k.w)],
    );
}

fn stage_x_quad(tile: Tile, m0: u32, k0: u32, local: u32, i: u32, words: vec4<u32>) {
    let quad = quad_of(local, i);
    let e = tile.x + (m0 + quad.x) * params.x_stride + k0 + quad.y;
    let in_range = vec4<u32>(k0 + quad.y) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(tile.k_end);
    let row_ok = m0 + quad.x < params.m;
    let v = vec4<f32>(
        dtype_decode(X_DTYPE, words.x, element_lane(X_DTYPE, e)),
        dtype_decode(X_DTYPE, words.y, element_lane(X_DTYPE, e + 1u)),
        dtype_decode(X_DTYPE, words.z, element_lane(X_DTYPE, e + 2u)),
        dtype_decode(X_DTYPE, words.w, element_lane(X_DTYPE, e + 3u)),
    );
    let staged = select(vec4<f32>(0.0), v, in_range & vec4<bool>(row_ok));
    let vec = (quad.y * BM + quad.x) / 4u;
    let lane = quad.x % 4u;
    x_tile[vec][lane] = staged.x;
    x_tile[vec + BM / 4u][lane] = staged.y;
    x_tile[vec + BM / 2u][lane] = staged.z;
    x_tile[vec + 3u * BM / 4u][lane] = staged.w;
}

// Where piece p of a step lies: the row of w_q, the index of its first code in the row, its
// scale's index, whether it is inside the matrix, and its first slot in w_tile (as scalars; the 8 codes fill the column below it when transposed, else the row beside it).
struct Piece {
    row: u32,
    code: u32,
    group: u32,
    valid: bool,
    slot: u32,
}

fn piece_of(tile: Tile, n0: u32, k0: u32, local: u32, i: u32) -> Piece {
    let p = local + i * WG_SIZE;
    var piece: Piece;
    if TRANSPOSE == 1u {
        // w_q is (n, k): the step's codes of output n are one block, cut in 4 pieces.
        // Consecutive invocations take consecutive outputs, so that their stores fall in
        // different banks.
        let n = p % BN;
        let c = p / BN;
        piece.valid = n0 + n < params.n;
        piece.row = tile.w + min(n0 + n, params.n - 1u);
        piece.code = k0 + 8u * c;
        piece.group = piece.row * params.s_stride + k0 / GROUP_SIZE;
        piece.slot = 8u * c * BN + n;
    } else {
        // w_q is (k, n): a piece is 8 consecutive outputs of one k; consecutive invocations
        // read consecutive words.
        let n = n0 + 8u * (p % (BN / 8u));
        let kk = p / (BN / 8u);
        piece.valid = n < params.n && k0 + kk < tile.k_end;
        piece.row = tile.w + min(k0 + kk, tile.k_end - 1u);
        piece.code = min(n, params.n - 8u);
        piece.group = piece.row * params.s_stride + piece.code / GROUP_SIZE;
        piece.slot = kk * BN + n - n0;
    }
    return piece;
}

fn fetch_w_piece(tile: Tile, n0: u32, k0: u32, local: u32, i: u32) -> vec4<u32> {
    let piece = piece_of(tile, n0, k0, local, i);
    let bit = piece.code * BITS;
    let word = piece.row * params.w_stride + bit / 32u;
    var words = vec4<u32>(w_q[word], 0u, 0u, 0u);
    // 8 codes span at most two words (bits 1..8 start a piece at bit 0, 8, 16 or 24).
    if bit % 32u + 8u * BITS > 32u {
        words.y = w_q[word + 1u];
    }
    let word_of_scale = scale_word(piece.group);
    words.z = scales[word_of_scale];
    words.w = biases[word_of_scale];
    return words;
}

fn stage_w_piece(tile: Tile, n0: u32, k0: u32, local: u32, i: u32, words: vec4<u32>) {
    let piece = piece_of(tile, n0, k0, local, i);
    // The codes come scaled by 1 / CODE_SCALE (see `window_codes`).
    let scale_bias = decode_scale_bias(words.z, words.w, piece.group);
    let scale = scale_bias.x * CODE_SCALE;
    let bias = vec4<f32>(scale_bias.y);
    let first = (piece.code * BITS) % 32u;
    var lo = fma(scale, window_codes(window64(words.x, words.y, first)), bias);
    var hi = fma(scale, window_codes(window64(words.x, words.y, first + 4u * BITS)), bias);
    if !piece.valid {
        lo = vec4<f32>(0.0);
        hi = vec4<f32>(0.0);
    }
    let vec = piece.slot / 4u;
    if TRANSPOSE == 1u {
        // The 8 codes are consecutive k of one output: a column of the tile.
        let lane = piece.slot % 4u;
        w_tile[vec][lane] = lo.x;
        w_tile[vec + BN / 4u][lane] = lo.y;
        w_tile[vec + BN / 2u][lane] = lo.z;
        w_tile[vec + 3u * BN / 4u][lane] = lo.w;
        w_tile[vec + BN][lane] = hi.x;
        w_tile[vec + 5u * BN / 4u][lane] = hi.y;
        w_tile[vec + 3u * BN / 2u][lane] = hi.z;
        w_tile[vec + 7u * BN / 4u][lane] = hi.w;
    } else {
        w_tile[vec] = lo;
        w_tile[vec + 1u] = hi;
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
    // The 8 x TN sub-tile: cij is rows i (lo, hi) x column quad j; column r of each matrix is a
    // row of y. Quads 2 and 3 are used only when TN = 16.
    var c00 = mat4x4<f32>();
    var c01 = mat4x4<f32>();
    var c02 = mat4x4<f32>();
    var c03 = mat4x4<f32>();
    var c10 = mat4x4<f32>();
    var c11 = mat4x4<f32>();
    var c12 = mat4x4<f32>();
    var c13 = mat4x4<f32>();
    // The words fetched for the next step (those past X_QUADS_PER_INVOCATION and
    // W_PIECES_PER_INVOCATION stay unused).
    var x0 = vec4<u32>();
    var x1 = vec4<u32>();
    var x2 = vec4<u32>();
    var x3 = vec4<u32>();
    var w0 = vec4<u32>();
    var w1 = vec4<u32>();
    var w2 = vec4<u32>();
    var w3 = vec4<u32>();
    var w4 = vec4<u32>();
    var w5 = vec4<u32>();
    var w6 = vec4<u32>();
    var w7 = vec4<u32>();
    // The first pass fetches the first step and stages nothing; every later pass stages the step
    // fetched by the pass before, fetches the following one, and multiplies what it staged.
    for (var k0 = tile.k_begin; k0 < tile.k_end + BK; k0 += BK) {
        if k0 > tile.k_begin {
            let staged_k = k0 - BK;
            stage_x_quad(tile, m0, staged_k, local, 0u, x0);
            if X_QUADS_PER_INVOCATION > 1u {
                stage_x_quad(tile, m0, staged_k, local, 1u, x1);
            }
            if X_QUADS_PER_INVOCATION > 2u {
                stage_x_quad(tile, m0, staged_k, local, 2u, x2);
                stage_x_quad(tile, m0, staged_k, local, 3u, x3);
            }
            stage_w_piece(tile, n0, staged_k, local, 0u, w0);
            if W_PIECES_PER_INVOCATION > 1u {
                stage_w_piece(tile, n0, staged_k, local, 1u, w1);
            }
            if W_PIECES_PER_INVOCATION > 2u {
                stage_w_piece(tile, n0, staged_k, local, 2u, w2);
                stage_w_piece(tile, n0, staged_k, local, 3u, w3);
            }
            if W_PIECES_PER_INVOCATION > 4u {
                stage_w_piece(tile, n0, staged_k, local, 4u, w4);
                stage_w_piece(tile, n0, staged_k, local, 5u, w5);
                stage_w_piece(tile, n0, staged_k, local, 6u, w6);
                stage_w_piece(tile, n0, staged_k, local, 7u, w7);
            }
        }
        if k0 < tile.k_end {
            x0 = fetch_x_quad(tile, m0, k0, local, 0u);
            if X_QUADS_PER_INVOCATION > 1u {
                x1 = fetch_x_quad(tile, m0, k0, local, 1u);
            }
            if X_QUADS_PER_INVOCATION > 2u {
                x2 = fetch_x_quad(tile, m0, k0, local, 2u);
                x3 = fetch_x_quad(tile, m0, k0, local, 3u);
            }
            w0 = fetch_w_piece(tile, n0, k0, local, 0u);
            if W_PIECES_PER_INVOCATION > 1u {
                w1 = fetch_w_piece(tile, n0, k0, local, 1u);
            }
            if W_PIECES_PER_INVOCATION > 2u {
                w2 = fetch_w_piece(tile, n0, k0, local, 2u);
                w3 = fetch_w_piece(tile, n0, k0, local, 3u);
            }
            if W_PIECES_PER_INVOCATION > 4u {
                w4 = fetch_w_piece(tile, n0, k0, local, 4u);
                w5 = fetch_w_piece(tile, n0, k0, local, 5u);
                w6 = fetch_w_piece(tile, n0, k0, local, 6u);
                w7 = fetch_w_piece(tile, n0, k0, local, 7u);
            }
        }
        workgroupBarrier();
        if k0 > tile.k_begin {
            for (var kk = 0u; kk < BK; kk += 4u) {
                // a: rows of x at k-row kk + s; b: column quads of w. Literal offsets step along
                // k, so that a driver that does not unroll still sees 4 steps per iteration.
                let xi = kk * (BM / 4u) + ty;
                let wi = kk * (BN / 4u) + tx;
                var a0 = x_tile[xi];
                var a1 = x_tile[xi + BM / 8u];
                var b0 = w_tile[wi];
                var b1 = w_tile[wi + THREADS_N];
                c00 = outer_fma(c00, a0, b0);
                c01 = outer_fma(c01, a0, b1);
                c10 = outer_fma(c10, a1, b0);
                c11 = outer_fma(c11, a1, b1);
                if TN == 16u {
                    let b2 = w_tile[wi + 2u * THREADS_N];
                    let b3 = w_tile[wi + 3u * THREADS_N];
                    c02 = outer_fma(c02, a0, b2);
                    c03 = outer_fma(c03, a0, b3);
                    c12 = outer_fma(c12, a1, b2);
                    c13 = outer_fma(c13, a1, b3);
                }
                a0 = x_tile[xi + BM / 4u];
                a1 = x_tile[xi + BM / 4u + BM / 8u];
                b0 = w_tile[wi + BN / 4u];
                b1 = w_tile[wi + BN / 4u + THREADS_N];
                c00 = outer_fma(c00, a0, b0);
                c01 = outer_fma(c01, a0, b1);
                c10 = outer_fma(c10, a1, b0);
                c11 = outer_fma(c11, a1, b1);
                if TN == 16u {
                    let b2 = w_tile[wi + BN / 4u + 2u * THREADS_N];
                    let b3 = w_tile[wi + BN / 4u + 3u * THREADS_N];
                    c02 = outer_fma(c02, a0, b2);
                    c03 = outer_fma(c03, a0, b3);
                    c12 = outer_fma(c12, a1, b2);
                    c13 = outer_fma(c13, a1, b3);
                }
                a0 = x_tile[xi + BM / 2u];
                a1 = x_tile[xi + BM / 2u + BM / 8u];
                b0 = w_tile[wi + BN / 2u];
                b1 = w_tile[wi + BN / 2u + THREADS_N];
                c00 = outer_fma(c00, a0, b0);
                c01 = outer_fma(c01, a0, b1);
                c10 = outer_fma(c10, a1, b0);
                c11 = outer_fma(c11, a1, b1);
                if TN == 16u {
                    let b2 = w_tile[wi + BN / 2u + 2u * THREADS_N];
                    let b3 = w_tile[wi + BN / 2u + 3u * THREADS_N];
                    c02 = outer_fma(c02, a0, b2);
                    c03 = outer_fma(c03, a0, b3);
                    c12 = outer_fma(c12, a1, b2);
                    c13 = outer_fma(c13, a1, b3);
                }
                a0 = x_tile[xi + 3u * BM / 4u];
                a1 = x_tile[xi + 3u * BM / 4u + BM / 8u];
                b0 = w_tile[wi + 3u * BN / 4u];
                b1 = w_tile[wi + 3u * BN / 4u + THREADS_N];
                c00 = outer_fma(c00, a0, b0);
                c01 = outer_fma(c01, a0, b1);
                c10 = outer_fma(c10, a1, b0);
                c11 = outer_fma(c11, a1, b1);
                if TN == 16u {
                    let b2 = w_tile[wi + 3u * BN / 4u + 2u * THREADS_N];
                    let b3 = w_tile[wi + 3u * BN / 4u + 3u * THREADS_N];
                    c02 = outer_fma(c02, a0, b2);
                    c03 = outer_fma(c03, a0, b3);
                    c12 = outer_fma(c12, a1, b2);
                    c13 = outer_fma(c13, a1, b3);
                }
            }
            // Every invocation is done with the tiles before the next step is staged.
            workgroupBarrier();
        }
    }
    let m_lo = m0 + 4u * ty;
    let m_hi = m0 + BM / 2u + 4u * ty;
    let n_quad = n0 + 4u * tx;
    store_sub_tile(tile, c00, m_lo, n_quad);
    store_sub_tile(tile, c01, m_lo, n_quad + 4u * THREADS_N);
    store_sub_tile(tile, c10, m_hi, n_quad);
    store_sub_tile(tile, c11, m_hi, n_quad + 4u * THREADS_N);
    if TN == 16u {
        store_sub_tile(tile, c02, m_lo, n_quad + 8u * THREADS_N);
        store_sub_tile(tile, c03, m_lo, n_quad + 12u * THREADS_N);
        store_sub_tile(tile, c12, m_hi, n_quad + 8u * THREADS_N);
        store_sub_tile(tile, c13, m_hi, n_quad + 12u * THREADS_N);
    }
}
