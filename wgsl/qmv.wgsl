// qmv.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[n, k] for up to 8 rows of x at a time:
// MLX's qmv and qmv_wide (transpose=true, small M). A workgroup makes 4 outputs (a vec4) for VECS
// rows of x; its invocations split k in blocks of 32 codes. Per block an invocation reads the 4
// rows' codes once, 4 at a time as the columns of a mat4x4 Q, and for each row v of x adds
// x[v, 4 codes] · Q, then per row its scale and bias once: sums += scale · Σ x·q + bias · Σ x.
// The code is straight-line (literal quad and row indices) so that everything stays in registers.
// Prelude: const BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS (1 ..= 8)
// Overrides: WG_SIZE (invocations splitting k); MIN_SUBGROUP_SIZE (subgroup reduction only)
// Bindings: 0 params | 1 batches | 2 x (vec4 words) | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / 4), m_tiles = ceil(m / VECS), k_splits = 1, per batch entry.
//           k is a multiple of 32 (of the group size), so rows of x start on 32 elements and x
//           is read 16 bytes at a time.

override WG_SIZE: u32 = 128u;

// Reduction slots: one vec4 (the 4 outputs) per row of x.
const SLOTS: u32 = VECS;

@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

// Sums per row v of x: column v of `lo` (v < 4) or `hi` (v >= 4), one component per output.
struct Sums {
    lo: mat4x4<f32>,
    hi: mat4x4<f32>,
}

// Σ x per row v of x: component v of `lo` or `hi`.
struct XSums {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The first element of each row of x this workgroup reads (rows past m repeat the last row).
struct XRows {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The blocks of the workgroup's 4 rows of w.
struct Blocks {
    r0: Block,
    r1: Block,
    r2: Block,
    r3: Block,
}

// Elements e .. e + 3 of x (e a multiple of 4).
fn load_x4(e: u32) -> vec4<f32> {
    if X_DTYPE == DTYPE_F32 {
        return bitcast<vec4<f32>>(x[e / 4u]);
    }
    let words = x[e / 8u];
    let pair = select(words.xy, words.zw, (e / 4u) % 2u == 1u);
    return vec4<f32>(unpack_pair(X_DTYPE, pair.x), unpack_pair(X_DTYPE, pair.y));
}

// Adds x[v, e .. e + 4] · q to row v's block sums (v is a literal at every call).
fn add_x_row(v: u32, q: mat4x4<f32>, rows: XRows, e: u32, sums: ptr<function, Sums>, x_sums: ptr<function, XSums>) {
    if v < 4u {
        let xv = load_x4(rows.lo[v] + e);
        (*sums).lo[v] += xv * q;
        (*x_sums).lo[v] += dot(xv, vec4<f32>(1.0));
    } else {
        let xv = load_x4(rows.hi[v - 4u] + e);
        (*sums).hi[v - 4u] += xv * q;
        (*x_sums).hi[v - 4u] += dot(xv, vec4<f32>(1.0));
    }
}

// Codes 4c .. 4c + 3 of the block at element e of the rows of x: every row of x.
fn add_quad(c: u32, blocks: Blocks, rows: XRows, e: u32, sums: ptr<function, Sums>, x_sums: ptr<function, XSums>) {
    let q = mat4x4<f32>(
        block_codes4(blocks.r0, c),
        block_codes4(blocks.r1, c),
        block_codes4(blocks.r2, c),
        block_codes4(blocks.r3, c),
    );
    let at = e + 4u * c;
    add_x_row(0u, q, rows, at, sums, x_sums);
    if VECS > 1u {
        add_x_row(1u, q, rows, at, sums, x_sums);
    }
    if VECS > 2u {
        add_x_row(2u, q, rows, at, sums, x_sums);
    }
    if VECS > 3u {
        add_x_row(3u, q, rows, at, sums, x_sums);
    }
    if VECS > 4u {
        add_x_row(4u, q, rows, at, sums, x_sums);
    }
    if VECS > 5u {
        add_x_row(5u, q, rows, at, sums, x_sums);
    }
    if VECS > 6u {
        add_x_row(6u, q, rows, at, sums, x_sums);
    }
    if VECS > 7u {
        add_x_row(7u, q, rows, at, sums, x_sums);
    }
}

// acc[v] += scale · block[v] + bias · Σ x[v].
fn finish_block(scale: vec4<f32>, bias: vec4<f32>, block: Sums, x_sums: XSums, acc: ptr<function, Sums>) {
    (*acc).lo = (*acc).lo + mat4x4<f32>(
        fma(scale, block.lo[0], bias * x_sums.lo.x),
        fma(scale, block.lo[1], bias * x_sums.lo.y),
        fma(scale, block.lo[2], bias * x_sums.lo.z),
        fma(scale, block.lo[3], bias * x_sums.lo.w),
    );
    if VECS > 4u {
        (*acc).hi = (*acc).hi + mat4x4<f32>(
            fma(scale, block.hi[0], bias * x_sums.hi.x),
            fma(scale, block.hi[1], bias * x_sums.hi.y),
            fma(scale, block.hi[2], bias * x_sums.hi.z),
            fma(scale, block.hi[3], bias * x_sums.hi.w),
        );
    }
}

fn kernel(local: u32, group: u32) {
    let tile = tile_of(group);
    if !tile.valid {
        return;
    }
    let n0 = tile.n * 4u;
    let m0 = tile.m * VECS;
    // Rows past n repeat the last row, rows of x past m the last row of x: never stored.
    let w_rows = tile.w + min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.n - 1u));
    let last = vec4<u32>(params.m - 1u);
    let rows = XRows(
        tile.x + min(vec4<u32>(m0) + vec4<u32>(0u, 1u, 2u, 3u), last) * params.x_stride,
        tile.x + min(vec4<u32>(m0) + vec4<u32>(4u, 5u, 6u, 7u), last) * params.x_stride,
    );
    var acc = Sums(mat4x4<f32>(), mat4x4<f32>());
    for (var blk = local; blk < params.k / 32u; blk += WG_SIZE) {
        let word = blk * BITS;
        let blocks = Blocks(
            load_block(w_rows.x * params.w_stride + word),
            load_block(w_rows.y * params.w_stride + word),
            load_block(w_rows.z * params.w_stride + word),
            load_block(w_rows.w * params.w_stride + word),
        );
        let g = blk * 32u / GROUP_SIZE;
        let sb0 = load_scale_bias(w_rows.x * params.s_stride + g);
        let sb1 = load_scale_bias(w_rows.y * params.s_stride + g);
        let sb2 = load_scale_bias(w_rows.z * params.s_stride + g);
        let sb3 = load_scale_bias(w_rows.w * params.s_stride + g);
        var sums = Sums(mat4x4<f32>(), mat4x4<f32>());
        var x_sums = XSums(vec4<f32>(0.0), vec4<f32>(0.0));
        let e = blk * 32u;
        add_quad(0u, blocks, rows, e, &sums, &x_sums);
        add_quad(1u, blocks, rows, e, &sums, &x_sums);
        add_quad(2u, blocks, rows, e, &sums, &x_sums);
        add_quad(3u, blocks, rows, e, &sums, &x_sums);
        add_quad(4u, blocks, rows, e, &sums, &x_sums);
        add_quad(5u, blocks, rows, e, &sums, &x_sums);
        add_quad(6u, blocks, rows, e, &sums, &x_sums);
        add_quad(7u, blocks, rows, e, &sums, &x_sums);
        let scale = vec4<f32>(sb0.x, sb1.x, sb2.x, sb3.x);
        let bias = vec4<f32>(sb0.y, sb1.y, sb2.y, sb3.y);
        finish_block(scale, bias, sums, x_sums, &acc);
    }
    contribute(0u, acc.lo[0], local);
    if VECS > 1u {
        contribute(1u, acc.lo[1], local);
    }
    if VECS > 2u {
        contribute(2u, acc.lo[2], local);
    }
    if VECS > 3u {
        contribute(3u, acc.lo[3], local);
    }
    if VECS > 4u {
        contribute(4u, acc.hi[0], local);
    }
    if VECS > 5u {
        contribute(5u, acc.hi[1], local);
    }
    if VECS > 6u {
        contribute(6u, acc.hi[2], local);
    }
    if VECS > 7u {
        contribute(7u, acc.hi[3], local);
    }
    workgroupBarrier();
    let total = workgroup_total(local, local);
    let v = local / 4u;
    let r = local % 4u;
    if local < 4u * VECS && n0 + r < params.n && m0 + v < params.m {
        store_y(tile.y + (m0 + v) * params.y_stride + n0 + r, total);
    }
}
