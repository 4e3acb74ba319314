// qmv_coop.wgsl: y = x · dequantize(w)ᵀ for 2 to 8 rows of f16 x on cooperative matrices (tensor
// cores), 4-bit weights in groups of 64 with f16 scales and biases: the opt-in fast path of
// `quantized_matmul` on devices whose caller enabled wgpu's experimental cooperative matrices
// (see `Caps::cooperative_f16`). Each weight becomes the f16 q · s + b in one fma, rounded
// once (MLX's `dequantize` rounds q · s first, so about half the weights of a random matrix land
// one f16 step from MLX's; Vulkan also lets drivers flush f16 subnormals); the products are
// exact and summed in f32. The CPU twin is `reference::quantized_matmul_fused`.
//
// Work: a workgroup takes one slice of k (SLICE codes, 8 groups) and SUBGROUPS tiles of 16 rows
// of w, one per subgroup; k slices write f32 partial sums that `qmm_sum_partials` adds.
// Consecutive workgroups take the slices of one set of rows, so that the workgroups running at
// once read whole rows of w rather than one slice of many rows (0.7 µs of 38 on an H100).
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

// The 8 codes of word w, dequantized, in the order 0, 4, 1, 5, 2, 6, 3, 7: (1024 + q) - 1024
// is q exactly, then one fma per pair. MLX rounds q · s before adding b, but WGSL lets compilers
// fuse a multiply and an add (NVIDIA's does), so keeping that rounding takes
// fma(1024 + q, s, -1024 s) + b, finite only while 1024 · s is, and so a branch on the scale
// per group: 4 µs of 42 on an H100 (benches/RESULTS.md, round 8).
fn dequantize8(w: u32, s: vec2<f16>, b: vec2<f16>) -> array<f16, 8> {
    let m = (vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(0x000f000fu)) | vec4<u32>(0x64006400u);
    let offset = vec2<f16>(1024.0h);
    let p0 = fma(vec2<f16>(unpack2x16float(m.x)) - offset, s, b);
    let p1 = fma(vec2<f16>(unpack2x16float(m.y)) - offset, s, b);
    let p2 = fma(vec2<f16>(unpack2x16float(m.z)) - offset, s, b);
    let p3 = fma(vec2<f16>(unpack2x16float(m.w)) - offset, s, b);
    return array<f16, 8>(p0.x, p0.y, p1.x, p1.y, p2.x, p2.y, p3.x, p3.y);
}

// A run of 8 f16 values of x (4 words) in the codes' order: 0, 4, 1, 5, 2, 6, 3, 7.
fn in_code_order(q: vec4<u32>) -> array<f16, 8> {
    let h0 = vec4<f16>(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)));
    let h1 = vec4<f16>(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)));
    return array<f16, 8>(h0.x, h1.x, h0.y, h1.y, h0.z, h1.z, h0.w, h1.w);
}

// Run i of x's slice (row i / (SLICE / 8), run j = i % (SLICE / 8) of 8 codes): its index in x.
fn x_index(i: u32, slice: u32) -> u32 {
    return ((i / (SLICE / 8u)) * params.k + slice * SLICE) / 8u + i % (SLICE / 8u);
}

// Where run i is staged: run j (word j % 8 of group j / 8) goes to step (j % 8) % 4 of its
// group, half (j % 8) / 4.
fn staged_run(i: u32) -> u32 {
    let j = i % (SLICE / 8u);
    let w = j % 8u;
    return (i / (SLICE / 8u)) * X_RUNS + (j / 8u) * 8u + 2u * (w % 4u) + w / 4u;
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
    let slice = index % params.slices;
    let sg = local / 32u;
    let lane = local % 32u;
    let r = lane / 2u;
    let h = lane % 2u;
    let n0 = ((index / params.slices) * SUBGROUPS + sg) * 16u;
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

    // Stage x, each run in the codes' order. Each invocation asks for two runs
    // before storing either (the second clamped to one that exists). A loop storing each run
    // as it came waited for the two loads one after the other: 38.4 µs against 35.5 at 8 rows
    // of 14336 x 4096 on an H100 (benches/RESULTS.md, round 8).
    let runs = params.m * (SLICE / 8u);
    let threads = SUBGROUPS * 32u;
    for (var i = local; i < runs; i += 2u * threads) {
        let second = i + threads;
        let first_run = in_code_order(x[x_index(i, slice)]);
        let second_run = in_code_order(x[x_index(min(second, runs - 1u), slice)]);
        xs[staged_run(i)] = first_run;
        if second < runs {
            xs[staged_run(second)] = second_run;
        }
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
