// qmv.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[n, k] for up to 8 rows of x at a time:
// MLX's qmv and qmv_wide (transpose=true, small M). A workgroup makes 4 · GROUPS outputs (GROUPS
// row groups of 4) for VECS rows of x; its invocations split k in blocks of 32 codes.
// With one row of x (the decode step of a language model), an invocation loads each row's block
// as whole vectors, keeps the block's x in registers, and spells each row's dot product out code
// quad by code quad (the quads' bit positions are constants); the group's scale and bias come
// after, Σ x · (s q + b) = s · Σ x q + b · Σ x, so no code is multiplied by its scale.
// With more rows of x, each row's block is loaded the same way and its quads are spelled out
// too; each quad of codes is decoded once for all rows of x, and each code feeds a chain of
// multiply-adds into the block's own sums, Σ x q per row of x and row of w, which the group's
// scale multiplies once per block (32 products, against one per code); biases come once per
// block, as b · Σ x. There x comes as qmv_prepare.wgsl lays it out (f32, times CODE_SCALE,
// quad-major in chunks of blocks, with block sums), so that the invocations of a subgroup read x
// 16 consecutive bytes each rather than 16 out of every 64 or 128 (caches serve whole lines:
// read as it is, each read of x touched 4 to 8 times the cache lines a read of weights does),
// and an invocation's reads of one block lie constant distances apart.
// NVIDIA's Vulkan compiler (H100) held the 8-row kernel to 128 registers per invocation and
// spilled a few values to shared memory: what a block keeps live (its words, both sets of sums,
// the quads of x in flight) is at that limit (loading the next block's words early spilled
// more, and ran slower).
// The running sums live in the entry function's own matrices, indexed by literals, and helpers
// take and return small values: wgpu bounds every loop, which keeps drivers from unrolling, and
// arrays indexed at run time, or large values passed to functions a driver does not inline, end
// up in slow local memory.
// The fp modes run the same code: their codes decode to elements and their groups' biases are
// 0 (codes.wgsl); nvfp4's groups of 16 split each block in two, each half with its own scale.
// Prelude: const MODE, BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS (1 ..= 8), PREPARED_CHUNK
// Overrides: WG_SIZE (invocations splitting k); MIN_SUBGROUP_SIZE (subgroup reduction only)
// Bindings: 0 params | 1 batches | 2 x (vec4 words; prepared when VECS > 1, and then x_stride and
//           the batch offsets count vectors) | 3 w_q (vec4 words) | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / (4 GROUPS)), m_tiles = ceil(m / VECS), k_splits = 1, per batch
//           entry. k is a multiple of 32 (of the group size), so rows of x start on 32 elements
//           and x is read 16 bytes at a time; so are the blocks of 4- and 8-bit rows (a row is
//           k · BITS / 32 words), which are read as one or two vectors.

override WG_SIZE: u32 = 64u;

// Row groups of 4 outputs: two while the registers allow (up to 4 rows of x).
const GROUPS: u32 = select(1u, 2u, VECS <= 4u);
// Partial sums per invocation, a vec4 each: slot v (< 4) is row v of x with group 0; slot 4 + v
// is row v with group 1 (two groups) or row 4 + v with group 0 (one group).
const SLOTS: u32 = 8u;

@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> w_q: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

// The BITS words of one block: words 0-3 in `lo`, 4-7 in `hi`.
struct Block {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

// Word i of w_q.
fn w_word(i: u32) -> u32 {
    return w_q[i / 4u][i % 4u];
}

// Block `blk` of the row whose first word is `row_word`.
fn load_block(row_word: u32, blk: u32) -> Block {
    let first = row_word + blk * BITS;
    var b: Block;
    if BITS == 4u {
        b.lo = w_q[first / 4u];
    } else if BITS == 8u {
        b.lo = w_q[first / 4u];
        b.hi = w_q[first / 4u + 1u];
    } else {
        // Other widths need not start a block on a vector.
        b.lo.x = w_word(first);
        if BITS > 1u {
            b.lo.y = w_word(first + 1u);
        }
        if BITS > 2u {
            b.lo.z = w_word(first + 2u);
        }
        if BITS > 3u {
            b.lo.w = w_word(first + 3u);
        }
        if BITS > 4u {
            b.hi.x = w_word(first + 4u);
        }
        if BITS > 5u {
            b.hi.y = w_word(first + 5u);
        }
    }
    return b;
}

// Word i (< BITS) of a block.
fn block_word(b: Block, i: u32) -> u32 {
    if i < 4u {
        return b.lo[i];
    }
    return b.hi[i % 4u];
}

// Codes 4j .. 4j + 3 of a block (j < 8), scaled as `window_codes`.
fn block_quad(b: Block, j: u32) -> vec4<f32> {
    let bit = 4u * BITS * j;
    var next = 0u;
    if straddles(bit) {
        next = block_word(b, bit / 32u + 1u);
    }
    return window_codes(window64(block_word(b, bit / 32u), next, bit % 32u));
}

// Quad j of the prepared block starting at vector `block` (prepared_x.wgsl).
fn prepared_quad(block: u32, j: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(x[prepared_run(block, j)]);
}

// Σ x over the prepared block starting at vector `block`.
fn prepared_sum(block: u32) -> f32 {
    return bitcast<f32>(x[prepared_run(block, 8u)].x);
}

// Elements e .. e + 3 of x (e a multiple of 4).
fn load_x4(e: u32) -> vec4<f32> {
    if X_DTYPE == DTYPE_F32 {
        return bitcast<vec4<f32>>(x[e / 4u]);
    }
    let words = x[e / 8u];
    let pair = select(words.xy, words.zw, (e / 4u) % 2u == 1u);
    return vec4<f32>(dtype_decode_pair(X_DTYPE, pair.x), dtype_decode_pair(X_DTYPE, pair.y));
}

// A block of one row of x: its 8 quads, times CODE_SCALE, and the sum of its 32 elements.
struct XBlock {
    q0: vec4<f32>,
    q1: vec4<f32>,
    q2: vec4<f32>,
    q3: vec4<f32>,
    q4: vec4<f32>,
    q5: vec4<f32>,
    q6: vec4<f32>,
    q7: vec4<f32>,
    sum: f32,
}

fn load_x_block(e: u32) -> XBlock {
    let q0 = load_x4(e);
    let q1 = load_x4(e + 4u);
    let q2 = load_x4(e + 8u);
    let q3 = load_x4(e + 12u);
    let q4 = load_x4(e + 16u);
    let q5 = load_x4(e + 20u);
    let q6 = load_x4(e + 24u);
    let q7 = load_x4(e + 28u);
    let sum = dot(((q0 + q1) + (q2 + q3)) + ((q4 + q5) + (q6 + q7)), vec4<f32>(1.0));
    return XBlock(
        q0 * CODE_SCALE,
        q1 * CODE_SCALE,
        q2 * CODE_SCALE,
        q3 * CODE_SCALE,
        q4 * CODE_SCALE,
        q5 * CODE_SCALE,
        q6 * CODE_SCALE,
        q7 * CODE_SCALE,
        sum,
    );
}

// Σ code · x over each half of a block of one row (x scaled as in XBlock), quad by quad.
fn block_dot(b: Block, xb: XBlock) -> vec2<f32> {
    let low = (dot(block_quad(b, 0u), xb.q0) + dot(block_quad(b, 1u), xb.q1))
        + (dot(block_quad(b, 2u), xb.q2) + dot(block_quad(b, 3u), xb.q3));
    let high = (dot(block_quad(b, 4u), xb.q4) + dot(block_quad(b, 5u), xb.q5))
        + (dot(block_quad(b, 6u), xb.q6) + dot(block_quad(b, 7u), xb.q7));
    return vec2<f32>(low, high);
}

// Whether a block of 32 codes holds two groups (nvfp4's 16; every other group is 32 or more).
const HALF_BLOCK_GROUPS: bool = GROUP_SIZE < 32u;

// The scales (column 0) and biases (column 1) of group g of 4 rows of w_q.
fn load_scales_biases(rows: vec4<u32>, g: u32) -> mat2x4<f32> {
    let s0 = load_scale_bias(rows.x * params.s_stride + g);
    let s1 = load_scale_bias(rows.y * params.s_stride + g);
    let s2 = load_scale_bias(rows.z * params.s_stride + g);
    let s3 = load_scale_bias(rows.w * params.s_stride + g);
    return mat2x4<f32>(vec4<f32>(s0.x, s1.x, s2.x, s3.x), vec4<f32>(s0.y, s1.y, s2.y, s3.y));
}

// The blocks of 4 rows of w.
struct Blocks {
    r0: Block,
    r1: Block,
    r2: Block,
    r3: Block,
}

// Quad j of 4 rows' blocks, scaled as `window_codes`: column c holds code c of every row.
fn quad_codes(b: Blocks, j: u32) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(block_quad(b.r0, j), block_quad(b.r1, j), block_quad(b.r2, j), block_quad(b.r3, j)));
}

// sum + Σ_c codes[c] · x[c], written as a chain through `sum` so that drivers fuse each product
// into a multiply-add (a dot product first, then an add, costs a fifth more instructions).
fn slot_quad(sum: vec4<f32>, codes: mat4x4<f32>, x: vec4<f32>) -> vec4<f32> {
    return sum + codes[0] * x.x + codes[1] * x.y + codes[2] * x.z + codes[3] * x.w;
}

// The running sums of the several-rows path (see SLOTS): slot s < 4 in column s of `lo`, slot
// s >= 4 in column s - 4 of `hi`.
struct Sums {
    lo: mat4x4<f32>,
    hi: mat4x4<f32>,
}

// Adds quad j of a block: codes of group 0 (c0) and group 1 (c1, two groups) times quad j of
// each row of x (the block of rows x_lo, then x_hi, as `prepared_block` places it).
fn quad_step(sums: Sums, c0: mat4x4<f32>, c1: mat4x4<f32>, x_lo: vec4<u32>, x_hi: vec4<u32>, j: u32) -> Sums {
    var s = sums;
    {
        let x0 = prepared_quad(x_lo.x, j);
        s.lo[0] = slot_quad(s.lo[0], c0, x0);
        if GROUPS > 1u {
            s.hi[0] = slot_quad(s.hi[0], c1, x0);
        }
    }
    {
        let x1 = prepared_quad(x_lo.y, j);
        s.lo[1] = slot_quad(s.lo[1], c0, x1);
        if GROUPS > 1u {
            s.hi[1] = slot_quad(s.hi[1], c1, x1);
        }
    }
    if VECS > 2u {
        let x2 = prepared_quad(x_lo.z, j);
        s.lo[2] = slot_quad(s.lo[2], c0, x2);
        if GROUPS > 1u {
            s.hi[2] = slot_quad(s.hi[2], c1, x2);
        }
    }
    if VECS > 3u {
        let x3 = prepared_quad(x_lo.w, j);
        s.lo[3] = slot_quad(s.lo[3], c0, x3);
        if GROUPS > 1u {
            s.hi[3] = slot_quad(s.hi[3], c1, x3);
        }
    }
    if VECS > 4u {
        s.hi[0] = slot_quad(s.hi[0], c0, prepared_quad(x_hi.x, j));
    }
    if VECS > 5u {
        s.hi[1] = slot_quad(s.hi[1], c0, prepared_quad(x_hi.y, j));
    }
    if VECS > 6u {
        s.hi[2] = slot_quad(s.hi[2], c0, prepared_quad(x_hi.z, j));
    }
    if VECS > 7u {
        s.hi[3] = slot_quad(s.hi[3], c0, prepared_quad(x_hi.w, j));
    }
    return s;
}

// `sums` plus a block of 4 rows of x: column v gains scale · d[v] + bias · x_sum[v], with the
// group's scales (column 0 of `scale_bias`) and biases (column 1) per row of w.
fn add_block(sums: mat4x4<f32>, d: mat4x4<f32>, scale_bias: mat2x4<f32>, x_sum: vec4<f32>) -> mat4x4<f32> {
    let scale = scale_bias[0];
    let bias = scale_bias[1];
    return mat4x4<f32>(
        sums[0] + (scale * d[0] + bias * x_sum.x),
        sums[1] + (scale * d[1] + bias * x_sum.y),
        sums[2] + (scale * d[2] + bias * x_sum.z),
        sums[3] + (scale * d[3] + bias * x_sum.w),
    );
}

// Whether slot s holds sums (see SLOTS).
fn slot_used(s: u32) -> bool {
    return select(s < VECS, (s % 4u) < VECS, (GROUPS > 1u));
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
    // The first word of each row.
    let words_lo = w_lo * params.w_stride;
    let words_hi = w_hi * params.w_stride;
    let last_m = vec4<u32>(params.m - 1u);
    let x_lo = tile.x + min(vec4<u32>(m0) + vec4<u32>(0u, 1u, 2u, 3u), last_m) * params.x_stride;
    let x_hi = tile.x + min(vec4<u32>(m0) + vec4<u32>(4u, 5u, 6u, 7u), last_m) * params.x_stride;
    // Slot s in column s of `lo` (s < 4) or s - 4 of `hi`; one component per output.
    var lo = mat4x4<f32>();
    var hi = mat4x4<f32>();
    for (var blk = local; blk < params.k / 32u; blk += WG_SIZE) {
        let g = blk * 32u / GROUP_SIZE;
        var sb_lo = load_scales_biases(w_lo, g);
        var sb_hi = mat2x4<f32>();
        if GROUPS > 1u {
            sb_hi = load_scales_biases(w_hi, g);
        }
        if VECS == 1u {
            // One row of x (two groups): slot 0 holds rows 0-3, slot 4 rows 4-7.
            let xb = load_x_block(x_lo.x + blk * 32u);
            let h0 = block_dot(load_block(words_lo.x, blk), xb);
            let h1 = block_dot(load_block(words_lo.y, blk), xb);
            let h2 = block_dot(load_block(words_lo.z, blk), xb);
            let h3 = block_dot(load_block(words_lo.w, blk), xb);
            let h4 = block_dot(load_block(words_hi.x, blk), xb);
            let h5 = block_dot(load_block(words_hi.y, blk), xb);
            let h6 = block_dot(load_block(words_hi.z, blk), xb);
            let h7 = block_dot(load_block(words_hi.w, blk), xb);
            // The halves of each row's block.
            let first_lo = vec4<f32>(h0.x, h1.x, h2.x, h3.x);
            let second_lo = vec4<f32>(h0.y, h1.y, h2.y, h3.y);
            let first_hi = vec4<f32>(h4.x, h5.x, h6.x, h7.x);
            let second_hi = vec4<f32>(h4.y, h5.y, h6.y, h7.y);
            if HALF_BLOCK_GROUPS {
                // nvfp4: the second half is the next group (no biases).
                let next_lo = load_scales_biases(w_lo, g + 1u);
                let next_hi = load_scales_biases(w_hi, g + 1u);
                lo[0] += sb_lo[0] * first_lo + next_lo[0] * second_lo;
                hi[0] += sb_hi[0] * first_hi + next_hi[0] * second_hi;
                continue;
            }
            lo[0] += sb_lo[0] * (first_lo + second_lo) + sb_lo[1] * xb.sum;
            hi[0] += sb_hi[0] * (first_hi + second_hi) + sb_hi[1] * xb.sum;
            continue;
        }
        // More rows of x (see the top of the file). The block of row v of x starts at
        // component v of xb_lo, v - 4 of xb_hi; its Σ x likewise in x_sum_lo, x_sum_hi.
        let xb_lo = x_lo + vec4<u32>(prepared_block(blk));
        let xb_hi = x_hi + vec4<u32>(prepared_block(blk));
        let lo_blocks = Blocks(
            load_block(words_lo.x, blk),
            load_block(words_lo.y, blk),
            load_block(words_lo.z, blk),
            load_block(words_lo.w, blk),
        );
        var hi_blocks: Blocks;
        if GROUPS > 1u {
            hi_blocks = Blocks(
                load_block(words_hi.x, blk),
                load_block(words_hi.y, blk),
                load_block(words_hi.z, blk),
                load_block(words_hi.w, blk),
            );
        }
        // The quads spelled out: their bit positions are then constants.
        var d = Sums(mat4x4<f32>(), mat4x4<f32>());
        d = quad_step(d, quad_codes(lo_blocks, 0u), quad_codes(hi_blocks, 0u), xb_lo, xb_hi, 0u);
        d = quad_step(d, quad_codes(lo_blocks, 1u), quad_codes(hi_blocks, 1u), xb_lo, xb_hi, 1u);
        d = quad_step(d, quad_codes(lo_blocks, 2u), quad_codes(hi_blocks, 2u), xb_lo, xb_hi, 2u);
        d = quad_step(d, quad_codes(lo_blocks, 3u), quad_codes(hi_blocks, 3u), xb_lo, xb_hi, 3u);
        if HALF_BLOCK_GROUPS {
            // nvfp4: the first half of the block is a group of its own, added with its scales
            // (no biases); the second half goes on with the next group's.
            lo = add_block(lo, d.lo, sb_lo, vec4<f32>());
            if GROUPS > 1u {
                hi = add_block(hi, d.hi, sb_hi, vec4<f32>());
                sb_hi = load_scales_biases(w_hi, g + 1u);
            } else {
                hi = add_block(hi, d.hi, sb_lo, vec4<f32>());
            }
            sb_lo = load_scales_biases(w_lo, g + 1u);
            d = Sums(mat4x4<f32>(), mat4x4<f32>());
        }
        d = quad_step(d, quad_codes(lo_blocks, 4u), quad_codes(hi_blocks, 4u), xb_lo, xb_hi, 4u);
        d = quad_step(d, quad_codes(lo_blocks, 5u), quad_codes(hi_blocks, 5u), xb_lo, xb_hi, 5u);
        d = quad_step(d, quad_codes(lo_blocks, 6u), quad_codes(hi_blocks, 6u), xb_lo, xb_hi, 6u);
        d = quad_step(d, quad_codes(lo_blocks, 7u), quad_codes(hi_blocks, 7u), xb_lo, xb_hi, 7u);
        // The slot of row v of x and group g gains scale_g · d + bias_g · Σ x[v].
        let x_sum_lo = vec4<f32>(
            prepared_sum(xb_lo.x),
            prepared_sum(xb_lo.y),
            prepared_sum(xb_lo.z),
            prepared_sum(xb_lo.w),
        );
        let x_sum_hi = vec4<f32>(
            prepared_sum(xb_hi.x),
            prepared_sum(xb_hi.y),
            prepared_sum(xb_hi.z),
            prepared_sum(xb_hi.w),
        );
        lo = add_block(lo, d.lo, sb_lo, x_sum_lo);
        if GROUPS > 1u {
            hi = add_block(hi, d.hi, sb_hi, x_sum_lo);
        } else {
            hi = add_block(hi, d.hi, sb_lo, x_sum_hi);
        }
    }
    if slot_used(0u) {
        contribute(0u, lo[0], local);
    }
    if slot_used(1u) {
        contribute(1u, lo[1], local);
    }
    if slot_used(2u) {
        contribute(2u, lo[2], local);
    }
    if slot_used(3u) {
        contribute(3u, lo[3], local);
    }
    if slot_used(4u) {
        contribute(4u, hi[0], local);
    }
    if slot_used(5u) {
        contribute(5u, hi[1], local);
    }
    if slot_used(6u) {
        contribute(6u, hi[2], local);
    }
    if slot_used(7u) {
        contribute(7u, hi[3], local);
    }
    reduce_slots(local);
    // Outputs o and o + 1 (o even): slot s = o / 4, outputs o % 4 and o % 4 + 1 of the slot's
    // group, n and n + 1 with n even, so that 16-bit pairs go out as whole words.
    for (var o = 2u * local; o < 4u * SLOTS; o += 2u * WG_SIZE) {
        let s = o / 4u;
        let v = select(s, s % 4u, (GROUPS > 1u));
        let n = n0 + 4u * select(0u, s / 4u, (GROUPS > 1u)) + o % 4u;
        if slot_used(s) && n < params.n && m0 + v < params.m {
            let e = tile.y + (m0 + v) * params.y_stride + n;
            if n + 1u < params.n {
                store_y_pair(e, slot_total(o), slot_total(o + 1u));
            } else {
                store_y(e, slot_total(o));
            }
        }
    }
}
