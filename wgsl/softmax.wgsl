// softmax.wgsl: y = softmax(scale · s) along rows, in f32, rounded to OUT_DTYPE (attention
// probabilities). With `causal`, rows are queries of a (queries x keys) score matrix and query i
// sees keys j <= i + offset (offset = keys - queries): later keys get probability 0. Row r of
// the chunk is row first_row + r of the whole tensor, so i = (first_row + r) % queries.
// Prelude: const IN_DTYPE, OUT_DTYPE
// Overrides: WG_SIZE (declared in common/row_reduce.wgsl)
// Bindings: 0 params | 1 s | 2 y (zeroed; atomicOr)   (windows of one chunk of rows)
// Dispatch: one workgroup per row.

struct Params {
    rows: u32,
    cols: u32,
    queries: u32,
    offset: u32,
    causal: u32,
    first_row: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> s: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<atomic<u32>>;

fn load_s(i: u32) -> f32 {
    return dtype_decode(IN_DTYPE, s[element_word(IN_DTYPE, i)], element_lane(IN_DTYPE, i));
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let row = linear_workgroup(wg, num_wg);
    // Uniform for the workgroup: the barriers of row_reduce stay in uniform control flow.
    if row >= params.rows {
        return;
    }
    let base = row * params.cols;
    var visible = params.cols;
    if params.causal == 1u {
        visible = min(params.cols, (params.first_row + row) % params.queries + params.offset + 1u);
    }
    var m = -bitcast<f32>(F32_INF);
    for (var c = local; c < visible; c += WG_SIZE) {
        m = max(m, params.scale * load_s(base + c));
    }
    m = row_reduce(m, true, local);
    var sum = 0.0;
    for (var c = local; c < visible; c += WG_SIZE) {
        sum += exp(params.scale * load_s(base + c) - m);
    }
    sum = row_reduce(sum, false, local);
    for (var c = local; c < params.cols; c += WG_SIZE) {
        var p = 0.0;
        if c < visible {
            p = exp(params.scale * load_s(base + c) - m) / sum;
        }
        let i = base + c;
        atomicOr(&y[element_word(OUT_DTYPE, i)], element_bits(OUT_DTYPE, i, p));
    }
}
