// qmv_coop.wgsl: y = x · dequantize(w)ᵀ for 2 to 8 rows of f16 x on cooperative matrices (tensor
// cores), 4-bit weights in groups of 64 with f16 scales and biases: the opt-in fast path of
// `quantized_matmul` on devices whose caller enabled wgpu's experimental cooperative matrices
// (see `Caps::cooperative_f16`). Each weight is dequantized to f16 as MLX's `dequantize`
// rounds it, round(round(q · s) + b) (f16 subnormals aside: Vulkan lets drivers flush them);
// the products are exact and summed in f32.
//
// Work: a workgroup takes one slice of k (SLICE codes, 8 groups) and SUBGROUPS tiles of 16 rows
// of w, one per subgroup; k slices write f32 partial sums that `qmm_sum_partials` adds.
// - x's slice is staged once, each row as it is (no transposition), its runs of 8 codes
//   reordered as the codes are (below). The B matrix (16 codes x 16 rows of x) loads it
//   column-major: columns past m, up to 16, are rows never written, garbage that lands in
//   output columns nobody reads (wgpu offers 16 x 16 matrices only).
// - Lane (r, h) of a subgroup holds words 4h .. 4h + 3 of row r's group: 32 codes. Every
//   weight of the task (8 groups) is asked for before x is staged, so that one wait covers them
//   all: NVIDIA's compiler otherwise sinks a loop's loads to its end and waits at its top.
// - Codes become f16 two at a time: (w >> 4i) & 0x000f000f | 0x64006400 holds 1024 + q for
//   codes i and i + 4 as two halves. At step s of a group, lane (r, h) writes word 4h + s
//   (codes in the order 0, 4, 1, 5, 2, 6, 3, 7) to its row of a 16 x 16 tile; one subgroup
//   barrier, one product. x's runs are staged in the same order.
// - Only 48 KB of workgroup memory serve each multiprocessor on NVIDIA's driver, whatever the
//   kernel asks for (benches/RESULTS.md, round 6): 17 KB of x and 768 bytes of tile per
//   subgroup keep two workgroups resident.
// Prelude: const SLICE (512)
// Overrides: SUBGROUPS (subgroups per workgroup, each one tile of 16 rows of w)
// Bindings: 0 params | 1 x (rows of k f16) | 2 w_q | 3 scales | 4 biases | 5 partials (f32,
//           slot s of 16 rows of `n_pad` outputs per slice; rows of x past m and rows of w
//           past n land in padding)
// Dispatch: tile_groups · slices workgroups, tile_groups = ceil(n / (16 · SUBGROUPS)).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    n_pad: u32, // tile_groups · SUBGROUPS · 16
    tile_groups: u32,
    slices: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> w_q: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> biases: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

override SUBGROUPS: u32 = 8u;

// Runs of 8 codes in a row of staged x, plus one of padding so that the 8 rows a matrix load
// reads at once fall in different banks.
const X_RUNS: u32 = SLICE / 8u + 1u;
var<workgroup> xs: array<array<f16, 8>, 16u * X_RUNS>;
// A subgroup's tile: 16 rows of 16 codes, padded to 24 (banks again).
const TILE_RUNS: u32 = 3u;
var<workgroup> tiles: array<array<f16, 8>, SUBGROUPS * 16u * TILE_RUNS>;

// Scales at or past 64 would overflow 1024 · s (f16 tops out at 65504).
const FAST_SCALE_LIMIT: f16 = 64.0h;

// The 8 codes of word w, dequantized, in the order 0, 4, 1, 5, 2, 6, 3, 7. With |s| < 64,
// fma(1024 + q, s, -1024 s) rounds q · s once (1024 s is exact); then + b rounds again: MLX's
// round(round(q · s) + b) in two f16 operations per pair. Larger scales take q = (1024 + q) -
// 1024 first.
fn dequantize8(w: u32, s: vec2<f16>, b: vec2<f16>) -> array<f16, 8> {
    let m = (vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(0x000f000fu)) | vec4<u32>(0x64006400u);
    var p0 = vec2<f16>(unpack2x16float(m.x));
    var p1 = vec2<f16>(unpack2x16float(m.y));
    var p2 = vec2<f16>(unpack2x16float(m.z));
    var p3 = vec2<f16>(unpack2x16float(m.w));
    if abs(s.x) < FAST_SCALE_LIMIT {
        let c = -1024.0h * s;
        p0 = fma(p0, s, c);
        p1 = fma(p1, s, c);
        p2 = fma(p2, s, c);
        p3 = fma(p3, s, c);
    } else {
        p0 = (p0 - vec2<f16>(1024.0h)) * s;
        p1 = (p1 - vec2<f16>(1024.0h)) * s;
        p2 = (p2 - vec2<f16>(1024.0h)) * s;
        p3 = (p3 - vec2<f16>(1024.0h)) * s;
    }
    p0 += b;
    p1 += b;
    p2 += b;
    p3 += b;
    return array<f16, 8>(p0.x, p0.y, p1.x, p1.y, p2.x, p2.y, p3.x, p3.y);
}

// 8 f16 values from 4 words.
fn halves8(q: vec4<u32>) -> array<f16, 8> {
    let h0 = vec4<f16>(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)));
    let h1 = vec4<f16>(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)));
    return array<f16, 8>(h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w);
}

// Step s of a group: the lane writes its word's 8 weights to row r of the subgroup's tile
// (at `at`), and the subgroup adds tile · x (x's step starts at run `x_run`).
fn step(acc: coop_mat16x16<f32, C>, word: u32, s: vec2<f16>, b: vec2<f16>, at: u32, tile: u32, x_run: u32) -> coop_mat16x16<f32, C> {
    tiles[at] = dequantize8(word, s, b);
    subgroupBarrier();
    let w_tile = coopLoadT<coop_mat16x16<f16, A>>(&tiles[tile][0], 8u * TILE_RUNS);
    let x_tile = coopLoad<coop_mat16x16<f16, B>>(&xs[x_run][0], 8u * X_RUNS);
    let sum = coopMultiplyAdd(w_tile, x_tile, acc);
    // The next step rewrites the tile.
    subgroupBarrier();
    return sum;
}

// A group: this lane's 4 words, the row's scale and bias, four steps.
fn group(acc_in: coop_mat16x16<f32, C>, words: vec4<u32>, scale: f32, bias: f32, at: u32, tile: u32, x_run: u32) -> coop_mat16x16<f32, C> {
    let s = vec2<f16>(f16(scale));
    let b = vec2<f16>(f16(bias));
    var acc = step(acc_in, words.x, s, b, at, tile, x_run);
    acc = step(acc, words.y, s, b, at, tile, x_run + 2u);
    acc = step(acc, words.z, s, b, at, tile, x_run + 4u);
    return step(acc, words.w, s, b, at, tile, x_run + 6u);
}

@compute @workgroup_size(SUBGROUPS * 32u)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let index = linear_workgroup(wg, num_wg);
    if index >= params.tile_groups * params.slices {
        return;
    }
    let slice = index / params.tile_groups;
    let sg = local / 32u;
    let lane = local % 32u;
    let r = lane / 2u;
    let h = lane % 2u;
    let n0 = ((index % params.tile_groups) * SUBGROUPS + sg) * 16u;
    // Rows past n repeat the last row; their sums land in padding.
    let n = min(n0 + r, params.n - 1u);
    let groups = params.k / 64u;
    let g0 = slice * (SLICE / 64u);
    let row = n * (params.k / 32u) + g0 * 2u + h;
    let q0 = w_q[row];
    let q1 = w_q[row + 2u];
    let q2 = w_q[row + 4u];
    let q3 = w_q[row + 6u];
    let q4 = w_q[row + 8u];
    let q5 = w_q[row + 10u];
    let q6 = w_q[row + 12u];
    let q7 = w_q[row + 14u];
    // The slice's 8 scales and biases: g0 is a multiple of 8, so they are one vector each.
    let sv = scales[(n * groups + g0) / 8u];
    let bv = biases[(n * groups + g0) / 8u];

    // Stage x: run j (word j % 8 of group j / 8) of row m goes to step (j % 8) % 4 of its group,
    // half (j % 8) / 4, with its halves in the codes' order.
    for (var i = local; i < params.m * (SLICE / 8u); i += SUBGROUPS * 32u) {
        let m = i / (SLICE / 8u);
        let j = i % (SLICE / 8u);
        let v = halves8(x[(m * params.k + slice * SLICE) / 8u + j]);
        let w = j % 8u;
        let at = m * X_RUNS + (j / 8u) * 8u + 2u * (w % 4u) + w / 4u;
        xs[at] = array<f16, 8>(v[0], v[4], v[1], v[5], v[2], v[6], v[3], v[7]);
    }
    workgroupBarrier();

    let tile = sg * 16u * TILE_RUNS;
    let at = tile + r * TILE_RUNS + h;
    let s01 = unpack2x16float(sv.x);
    let s23 = unpack2x16float(sv.y);
    let s45 = unpack2x16float(sv.z);
    let s67 = unpack2x16float(sv.w);
    let b01 = unpack2x16float(bv.x);
    let b23 = unpack2x16float(bv.y);
    let b45 = unpack2x16float(bv.z);
    let b67 = unpack2x16float(bv.w);
    var acc = group(coop_mat16x16<f32, C>(), q0, s01.x, b01.x, at, tile, 0u);
    acc = group(acc, q1, s01.y, b01.y, at, tile, 8u);
    acc = group(acc, q2, s23.x, b23.x, at, tile, 16u);
    acc = group(acc, q3, s23.y, b23.y, at, tile, 24u);
    acc = group(acc, q4, s45.x, b45.x, at, tile, 32u);
    acc = group(acc, q5, s45.y, b45.y, at, tile, 40u);
    acc = group(acc, q6, s67.x, b67.x, at, tile, 48u);
    acc = group(acc, q7, s67.y, b67.y, at, tile, 56u);

    // Column-major: output (row n0 + i of w, row m of x) at m · n_pad + n0 + i. (naga 30's SPIR-V
    // writer panics on expressions computed inside coopStore's arguments: `let`s first.)
    let stride = params.n_pad;
    let out = slice * 16u * stride + n0;
    coopStore(acc, &partials[out], stride);
}
