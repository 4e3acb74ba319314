// qmv.wgsl: y[m, n] = Σ_k x[m, k] · (scale · q + bias)[n, k] for up to 8 rows of x at a time:
// MLX's qmv and qmv_wide (transpose=true, small M). A workgroup makes 4 · GROUPS outputs (GROUPS
// row groups of 4) for VECS rows of x; its invocations split k in blocks of 32 codes. For each 4
// codes of a block, an invocation puts the 4 rows' codes, times their scales, in the columns of
// a mat4x4 Q and adds x[v, 4 codes] · Q for each row v of x; per block it adds bias · Σ x.
// The running sums live in the entry function's own matrices, indexed by literals, and helpers
// take and return small values: wgpu bounds every loop, which keeps drivers from unrolling, and
// arrays indexed at run time, or large values passed to functions a driver does not inline, end
// up in slow local memory.
// Prelude: const BITS, GROUP_SIZE, X_DTYPE, SCALE_DTYPE, OUT_DTYPE, VECS (1 ..= 8)
// Overrides: WG_SIZE (invocations splitting k); MIN_SUBGROUP_SIZE (subgroup reduction only)
// Bindings: 0 params | 1 batches | 2 x (vec4 words) | 3 w_q | 4 scales | 5 biases | 6 y
// Dispatch: n_tiles = ceil(n / (4 GROUPS)), m_tiles = ceil(m / VECS), k_splits = 1, per batch
//           entry. k is a multiple of 32 (of the group size), so rows of x start on 32 elements
//           and x is read 16 bytes at a time; w_q is read word by word (qmm_operands.wgsl).

override WG_SIZE: u32 = 128u;

// Row groups of 4 outputs: two while the registers allow (up to 4 rows of x).
const GROUPS: u32 = select(1u, 2u, VECS <= 4u);
// Partial sums per invocation, a vec4 each: slot v (< 4) is row v of x with group 0; slot 4 + v
// is row v with group 1 (two groups) or row 4 + v with group 0 (one group).
const SLOTS: u32 = 8u;

@group(0) @binding(2) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> y: array<atomic<u32>>;

// Elements e .. e + 3 of x (e a multiple of 4).
fn load_x4(e: u32) -> vec4<f32> {
    if X_DTYPE == DTYPE_F32 {
        return bitcast<vec4<f32>>(x[e / 4u]);
    }
    let words = x[e / 8u];
    let pair = select(words.xy, words.zw, (e / 4u) % 2u == 1u);
    return vec4<f32>(unpack_pair(X_DTYPE, pair.x), unpack_pair(X_DTYPE, pair.y));
}

// The scales (column 0) and biases (column 1) of group g of 4 rows of w_q.
fn load_scales_biases(rows: vec4<u32>, g: u32) -> mat2x4<f32> {
    let s0 = load_scale_bias(rows.x * params.s_stride + g);
    let s1 = load_scale_bias(rows.y * params.s_stride + g);
    let s2 = load_scale_bias(rows.z * params.s_stride + g);
    let s3 = load_scale_bias(rows.w * params.s_stride + g);
    return mat2x4<f32>(vec4<f32>(s0.x, s1.x, s2.x, s3.x), vec4<f32>(s0.y, s1.y, s2.y, s3.y));
}

// Codes i .. i + 3 of 4 rows of w_q (whose first words are `words`), times the rows' scales:
// the columns of Q.
fn codes_matrix(words: vec4<u32>, scale: vec4<f32>, i: u32) -> mat4x4<f32> {
    return mat4x4<f32>(
        scale.x * load_codes4(words.x, i),
        scale.y * load_codes4(words.y, i),
        scale.z * load_codes4(words.z, i),
        scale.w * load_codes4(words.w, i),
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
        let sb_lo = load_scales_biases(w_lo, g);
        var sb_hi = mat2x4<f32>();
        if GROUPS > 1u {
            sb_hi = load_scales_biases(w_hi, g);
        }
        // Σ x over the block, per row v of x: component v of x_sum_lo, v - 4 of x_sum_hi.
        var x_sum_lo = vec4<f32>(0.0);
        var x_sum_hi = vec4<f32>(0.0);
        for (var c = 0u; c < 8u; c++) {
            let e = blk * 32u + 4u * c;
            let q0 = codes_matrix(words_lo, sb_lo[0], e);
            var q1 = mat4x4<f32>();
            if GROUPS > 1u {
                q1 = codes_matrix(words_hi, sb_hi[0], e);
            }
            {
                let x0 = load_x4(x_lo.x + e);
                x_sum_lo.x += dot(x0, vec4<f32>(1.0));
                lo[0] += (x0 * CODE_SCALE) * q0;
                if GROUPS > 1u {
                    hi[0] += (x0 * CODE_SCALE) * q1;
                }
            }
            if VECS > 1u {
                let x1 = load_x4(x_lo.y + e);
                x_sum_lo.y += dot(x1, vec4<f32>(1.0));
                lo[1] += (x1 * CODE_SCALE) * q0;
                if GROUPS > 1u {
                    hi[1] += (x1 * CODE_SCALE) * q1;
                }
            }
            if VECS > 2u {
                let x2 = load_x4(x_lo.z + e);
                x_sum_lo.z += dot(x2, vec4<f32>(1.0));
                lo[2] += (x2 * CODE_SCALE) * q0;
                if GROUPS > 1u {
                    hi[2] += (x2 * CODE_SCALE) * q1;
                }
            }
            if VECS > 3u {
                let x3 = load_x4(x_lo.w + e);
                x_sum_lo.w += dot(x3, vec4<f32>(1.0));
                lo[3] += (x3 * CODE_SCALE) * q0;
                if GROUPS > 1u {
                    hi[3] += (x3 * CODE_SCALE) * q1;
                }
            }
            if VECS > 4u {
                let x4 = load_x4(x_hi.x + e);
                x_sum_hi.x += dot(x4, vec4<f32>(1.0));
                hi[0] += (x4 * CODE_SCALE) * q0;
            }
            if VECS > 5u {
                let x5 = load_x4(x_hi.y + e);
                x_sum_hi.y += dot(x5, vec4<f32>(1.0));
                hi[1] += (x5 * CODE_SCALE) * q0;
            }
            if VECS > 6u {
                let x6 = load_x4(x_hi.z + e);
                x_sum_hi.z += dot(x6, vec4<f32>(1.0));
                hi[2] += (x6 * CODE_SCALE) * q0;
            }
            if VECS > 7u {
                let x7 = load_x4(x_hi.w + e);
                x_sum_hi.w += dot(x7, vec4<f32>(1.0));
                hi[3] += (x7 * CODE_SCALE) * q0;
            }
        }
        // The block's biases: the slot of row v of x and group g gains bias_g · Σ x[v].
        let bias0 = sb_lo[1];
        let bias1 = sb_hi[1];
        {
            lo[0] += bias0 * x_sum_lo.x;
            if GROUPS > 1u {
                hi[0] += bias1 * x_sum_lo.x;
            }
        }
        if VECS > 1u {
            lo[1] += bias0 * x_sum_lo.y;
            if GROUPS > 1u {
                hi[1] += bias1 * x_sum_lo.y;
            }
        }
        if VECS > 2u {
            lo[2] += bias0 * x_sum_lo.z;
            if GROUPS > 1u {
                hi[2] += bias1 * x_sum_lo.z;
            }
        }
        if VECS > 3u {
            lo[3] += bias0 * x_sum_lo.w;
            if GROUPS > 1u {
                hi[3] += bias1 * x_sum_lo.w;
            }
        }
        if VECS > 4u {
            hi[0] += bias0 * x_sum_hi.x;
        }
        if VECS > 5u {
            hi[1] += bias0 * x_sum_hi.y;
        }
        if VECS > 6u {
            hi[2] += bias0 * x_sum_hi.z;
        }
        if VECS > 7u {
            hi[3] += bias0 * x_sum_hi.w;
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
    // Output o: slot s = o / 4, output o % 4 of the slot's group.
    for (var o = local; o < 4u * SLOTS; o += WG_SIZE) {
        let s = o / 4u;
        let v = select(s, s % 4u, (GROUPS > 1u));
        let n = n0 + 4u * select(0u, s / 4u, (GROUPS > 1u)) + o % 4u;
        if slot_used(s) && n < params.n && m0 + v < params.m {
            store_y(tile.y + (m0 + v) * params.y_stride + n, slot_total(o));
        }
    }
}
