// gather_sort.wgsl: mlx-lm's `_gather_sort` of (token, expert) pairs on the GPU, so that a
// mixture-of-experts block groups its pairs by expert without a read-back. Pair i (row-major in
// the indices, `per_token` pairs a token) goes to rank r: the pairs with a smaller expert, plus
// those with the same expert and a smaller i (a stable sort, as a stable argsort orders them).
// Writes x_rows[r] = i / per_token (the token whose row of x the pair multiplies), sorted[r] =
// its expert, and inv_order[i] = r (the unsort). Each invocation counts over all pairs: O(n²)
// comparisons, a few million at mlx-lm's prefill sizes, which a GPU does in microseconds.
// Bindings: 0 params | 1 indices | 2 x_rows | 3 sorted | 4 inv_order
// Dispatch: one invocation per pair.

struct Params {
    pairs: u32,
    per_token: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> indices: array<u32>;
@group(0) @binding(2) var<storage, read_write> x_rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> sorted: array<u32>;
@group(0) @binding(4) var<storage, read_write> inv_order: array<u32>;

override WG_SIZE: u32 = 64u;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    if i >= params.pairs {
        return;
    }
    let expert = indices[i];
    var rank = 0u;
    for (var j = 0u; j < params.pairs; j++) {
        let other = indices[j];
        if other < expert || (other == expert && j < i) {
            rank++;
        }
    }
    x_rows[rank] = i / params.per_token;
    sorted[rank] = expert;
    inv_order[i] = rank;
}
