// qmv.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[n, k] for up to 8 rows of x at a time:
// MLX's qmv and qmv_wide (transpose=true, small M). A workgroup makes 4 · GROUPS outputs (GROUPS
// row groups of 4) for VECS rows of x; its invocations split k in blocks of 32 codes. For each 4
// codes of a block, an invocation puts the 4 rows' codes, times their scales, in the columns of
// a mat4x4 Q and adds x[v, 4 codes] · Q for each row v of x; per block it adds bias · Σ x.
// Every per-invocation value is a named vector or matrix indexed by literals, and helpers take
// and return values: wgpu bounds every loop, which keeps drivers from unrolling, and arrays or
// pointers indexed at run time would live in slow local memory.
// Prelude: const BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS (1 ..= 8)
// Overrides: WG_SIZE (invocations splitting k); MIN_SUBGROUP_SIZE (subgroup reduction only)
// Bindings: 0 params | 1 batches | 2 x (vec4 words) | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / (4 GROUPS)), m_tiles = ceil(m / VECS), k_splits = 1, per batch
//           entry. k is a multiple of 32 (of the group size), so rows of x start on 32 elements
//           and x is read 16 bytes at a time.

override WG_SIZE: u32 = 128u;

// Row groups of 4 outputs: two while the registers allow (up to 4 rows of x).
const GROUPS: u32 = select(1u, 2u, VECS <= 4u);
// Partial sums per invocation: a vec4 per (row of x, row group), slot g · VECS + v (at most 8).
const SLOTS: u32 = VECS * GROUPS;

@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

// Sums per slot s: column s of `lo` (s < 4) or column s - 4 of `hi`.
struct Sums {
    lo: mat4x4<f32>,
    hi: mat4x4<f32>,
}

// Σ x per row v of x (component v of lo or v - 4 of hi) over the current block.
struct XSums {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The first element of each row of x this workgroup reads (rows past m repeat the last row).
struct XRows {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// The blocks of the workgroup's rows of w, and their scales and biases (a vec4 per group).
struct Blocks {
    r0: Block,
    r1: Block,
    r2: Block,
    r3: Block,
    r4: Block,
    r5: Block,
    r6: Block,
    r7: Block,
    scale0: vec4<f32>,
    bias0: vec4<f32>,
    scale1: vec4<f32>,
    bias1: vec4<f32>,
}

// The running sums of an invocation: over all blocks, and Σ x over the current block.
struct State {
    sums: Sums,
    x_sums: XSums,
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

// Adds `value` to slot s (s a literal at every call).
fn add_to_slot(s: u32, value: vec4<f32>, state: State) -> State {
    var next = state;
    if s < 4u {
        next.sums.lo[s] = next.sums.lo[s] + value;
    } else {
        next.sums.hi[s - 4u] = next.sums.hi[s - 4u] + value;
    }
    return next;
}

// Row v of x against both row groups' codes q0 and q1, and its Σ x.
fn add_row(v: u32, q0: mat4x4<f32>, q1: mat4x4<f32>, rows: XRows, e: u32, state: State) -> State {
    var next = state;
    var x4: vec4<f32>;
    if v < 4u {
        x4 = load_x4(rows.lo[v] + e);
        next.x_sums.lo[v] = next.x_sums.lo[v] + dot(x4, vec4<f32>(1.0));
    } else {
        x4 = load_x4(rows.hi[v - 4u] + e);
        next.x_sums.hi[v - 4u] = next.x_sums.hi[v - 4u] + dot(x4, vec4<f32>(1.0));
    }
    let scaled = x4 * CODE_SCALE;
    next = add_to_slot(v, scaled * q0, next);
    if GROUPS > 1u {
        next = add_to_slot(VECS + v, scaled * q1, next);
    }
    return next;
}

// Codes 4c .. 4c + 3 of the blocks, times their scales, against every row of x.
fn add_quad(c: u32, b: Blocks, rows: XRows, e: u32, state: State) -> State {
    let q0 = mat4x4<f32>(
        b.scale0.x * block_codes4(b.r0, c),
        b.scale0.y * block_codes4(b.r1, c),
        b.scale0.z * block_codes4(b.r2, c),
        b.scale0.w * block_codes4(b.r3, c),
    );
    var q1 = mat4x4<f32>();
    if GROUPS > 1u {
        q1 = mat4x4<f32>(
            b.scale1.x * block_codes4(b.r4, c),
            b.scale1.y * block_codes4(b.r5, c),
            b.scale1.z * block_codes4(b.r6, c),
            b.scale1.w * block_codes4(b.r7, c),
        );
    }
    let at = e + 4u * c;
    var next = add_row(0u, q0, q1, rows, at, state);
    if VECS > 1u {
        next = add_row(1u, q0, q1, rows, at, next);
    }
    if VECS > 2u {
        next = add_row(2u, q0, q1, rows, at, next);
    }
    if VECS > 3u {
        next = add_row(3u, q0, q1, rows, at, next);
    }
    if VECS > 4u {
        next = add_row(4u, q0, q1, rows, at, next);
    }
    if VECS > 5u {
        next = add_row(5u, q0, q1, rows, at, next);
    }
    if VECS > 6u {
        next = add_row(6u, q0, q1, rows, at, next);
    }
    if VECS > 7u {
        next = add_row(7u, q0, q1, rows, at, next);
    }
    return next;
}

// Slot s (row v of x, group g) gains bias_g · Σ x[v] over the block.
fn add_bias(s: u32, b: Blocks, state: State) -> State {
    let v = s % VECS;
    let x_sum = select(state.x_sums.hi[v % 4u], state.x_sums.lo[v % 4u], v < 4u);
    let bias = select(b.bias1, b.bias0, s < VECS);
    return add_to_slot(s, bias * x_sum, state);
}

fn add_biases(b: Blocks, state: State) -> State {
    var next = add_bias(0u, b, state);
    if SLOTS > 1u {
        next = add_bias(1u, b, next);
    }
    if SLOTS > 2u {
        next = add_bias(2u, b, next);
    }
    if SLOTS > 3u {
        next = add_bias(3u, b, next);
    }
    if SLOTS > 4u {
        next = add_bias(4u, b, next);
    }
    if SLOTS > 5u {
        next = add_bias(5u, b, next);
    }
    if SLOTS > 6u {
        next = add_bias(6u, b, next);
    }
    if SLOTS > 7u {
        next = add_bias(7u, b, next);
    }
    next.x_sums = XSums(vec4<f32>(0.0), vec4<f32>(0.0));
    return next;
}

// The blocks at word `word` of rows `lo` and `hi` of w_q, with the scales and biases of group g.
fn load_blocks(lo: vec4<u32>, hi: vec4<u32>, word: u32, g: u32) -> Blocks {
    var b: Blocks;
    b.r0 = load_block(lo.x * params.w_stride + word);
    b.r1 = load_block(lo.y * params.w_stride + word);
    b.r2 = load_block(lo.z * params.w_stride + word);
    b.r3 = load_block(lo.w * params.w_stride + word);
    let s0 = load_scale_bias(lo.x * params.s_stride + g);
    let s1 = load_scale_bias(lo.y * params.s_stride + g);
    let s2 = load_scale_bias(lo.z * params.s_stride + g);
    let s3 = load_scale_bias(lo.w * params.s_stride + g);
    b.scale0 = vec4<f32>(s0.x, s1.x, s2.x, s3.x);
    b.bias0 = vec4<f32>(s0.y, s1.y, s2.y, s3.y);
    if GROUPS > 1u {
        b.r4 = load_block(hi.x * params.w_stride + word);
        b.r5 = load_block(hi.y * params.w_stride + word);
        b.r6 = load_block(hi.z * params.w_stride + word);
        b.r7 = load_block(hi.w * params.w_stride + word);
        let s4 = load_scale_bias(hi.x * params.s_stride + g);
        let s5 = load_scale_bias(hi.y * params.s_stride + g);
        let s6 = load_scale_bias(hi.z * params.s_stride + g);
        let s7 = load_scale_bias(hi.w * params.s_stride + g);
        b.scale1 = vec4<f32>(s4.x, s5.x, s6.x, s7.x);
        b.bias1 = vec4<f32>(s4.y, s5.y, s6.y, s7.y);
    }
    return b;
}

fn kernel(local: u32, group: u32) {
    let tile = tile_of(group);
    if !tile.valid {
        return;
    }
    let n0 = tile.n * 4u * GROUPS;
    let m0 = tile.m * VECS;
    // Rows past n repeat the last row, rows of x past m the last row of x: never stored.
    let last_n = vec4<u32>(params.n - 1u);
    let w_lo = tile.w + min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), last_n);
    let w_hi = tile.w + min(vec4<u32>(n0) + vec4<u32>(4u, 5u, 6u, 7u), last_n);
    let last_m = vec4<u32>(params.m - 1u);
    let rows = XRows(
        tile.x + min(vec4<u32>(m0) + vec4<u32>(0u, 1u, 2u, 3u), last_m) * params.x_stride,
        tile.x + min(vec4<u32>(m0) + vec4<u32>(4u, 5u, 6u, 7u), last_m) * params.x_stride,
    );
    var state = State(Sums(mat4x4<f32>(), mat4x4<f32>()), XSums(vec4<f32>(0.0), vec4<f32>(0.0)));
    for (var blk = local; blk < params.k / 32u; blk += WG_SIZE) {
        let b = load_blocks(w_lo, w_hi, blk * BITS, blk * 32u / GROUP_SIZE);
        let e = blk * 32u;
        state = add_quad(0u, b, rows, e, state);
        state = add_quad(1u, b, rows, e, state);
        state = add_quad(2u, b, rows, e, state);
        state = add_quad(3u, b, rows, e, state);
        state = add_quad(4u, b, rows, e, state);
        state = add_quad(5u, b, rows, e, state);
        state = add_quad(6u, b, rows, e, state);
        state = add_quad(7u, b, rows, e, state);
        state = add_biases(b, state);
    }
    let sums = state.sums;
    contribute(0u, sums.lo[0], local);
    if SLOTS > 1u {
        contribute(1u, sums.lo[1], local);
    }
    if SLOTS > 2u {
        contribute(2u, sums.lo[2], local);
    }
    if SLOTS > 3u {
        contribute(3u, sums.lo[3], local);
    }
    if SLOTS > 4u {
        contribute(4u, sums.hi[0], local);
    }
    if SLOTS > 5u {
        contribute(5u, sums.hi[1], local);
    }
    if SLOTS > 6u {
        contribute(6u, sums.hi[2], local);
    }
    if SLOTS > 7u {
        contribute(7u, sums.hi[3], local);
    }
    workgroupBarrier();
    let total = workgroup_total(local, local);
    // Output `local`: slot s = local / 4 (row v of x, group g), output 4g + local % 4.
    let s = local / 4u;
    let v = s % VECS;
    let n = n0 + 4u * (s / VECS) + local % 4u;
    if local < 4u * SLOTS && n < params.n && m0 + v < params.m {
        store_y(tile.y + (m0 + v) * params.y_stride + n, total);
    }
}
