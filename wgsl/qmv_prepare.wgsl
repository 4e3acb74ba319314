// qmv_prepare.wgsl: lays rows of x out for qmv.wgsl's several-rows path, in f32, each quad
// times CODE_SCALE (codes.wgsl), as prepared_x.wgsl describes: quad-major within chunks
// of blocks, with block sums. There, the invocations of a subgroup, which take consecutive
// blocks, read 16 consecutive bytes each for any quad, where from x as it is they would read 16
// bytes out of every 64 or 128, and caches serve loads a line (128 bytes) at a time: that is 4
// to 8 times the traffic. Within a chunk, an invocation's quads lie a constant apart.
// Each invocation moves one quad, so that every load of x is in flight at once (a loop over a
// block's quads made each invocation wait for its loads one after another); the 8 invocations
// of a block add their quads' sums through workgroup memory.
// Prelude: const X_DTYPE, MODE, BITS, PREPARED_CHUNK
// Overrides: WG_SIZE (a multiple of 8)
// Bindings: 0 params | 1 x (rows of k elements) | 2 prepared (rows of prepared_row_vectors)
// Dispatch: one invocation per quad of x (rows · k / 4), in a 2-D grid when large.

struct Params {
    rows: u32,
    blocks: u32, // blocks of 32 elements per row
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> prepared: array<vec4<f32>>;

override WG_SIZE: u32 = 64u;

// Σ of each invocation's quad.
var<workgroup> quad_sums: array<f32, WG_SIZE>;

// Elements e .. e + 3 of x (e a multiple of 4).
fn load_x4(e: u32) -> vec4<f32> {
    if X_DTYPE == DTYPE_F32 {
        return bitcast<vec4<f32>>(vec4<u32>(x[e], x[e + 1u], x[e + 2u], x[e + 3u]));
    }
    return vec4<f32>(
        dtype_decode(X_DTYPE, x[e / 2u], 0u),
        dtype_decode(X_DTYPE, x[e / 2u], 1u),
        dtype_decode(X_DTYPE, x[e / 2u + 1u], 0u),
        dtype_decode(X_DTYPE, x[e / 2u + 1u], 1u),
    );
}

@compute @workgroup_size(WG_SIZE)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>, @builtin(local_invocation_index) local: u32) {
    // Quad i of x: quad j of block `block` (counted over all rows).
    let i = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    let valid = i < params.rows * params.blocks * 8u;
    let block = i / 8u;
    let j = i % 8u;
    let out = (block / params.blocks) * prepared_row_vectors(params.blocks) + prepared_block(block % params.blocks);
    var quad = vec4<f32>(0.0);
    if valid {
        quad = load_x4(i * 4u);
        prepared[prepared_run(out, j)] = quad * CODE_SCALE;
    }
    quad_sums[local] = dot(quad, vec4<f32>(1.0));
    workgroupBarrier();
    if valid && j == 0u {
        let sums = quad_sums[local] + quad_sums[local + 1u] + quad_sums[local + 2u] + quad_sums[local + 3u]
            + quad_sums[local + 4u] + quad_sums[local + 5u] + quad_sums[local + 6u] + quad_sums[local + 7u];
        prepared[prepared_run(out, 8u)] = vec4<f32>(sums, 0.0, 0.0, 0.0);
    }
}
