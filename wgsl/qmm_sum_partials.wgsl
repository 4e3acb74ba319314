// qmm_sum_partials.wgsl: y[e] = Σ_s partials[s · slot_stride + (e / row) · row_stride + e % row],
// rounded to OUT_DTYPE. Finishes a matmul whose k was cut into slices (qvm's split-k, qmv_coop's
// slices, or weights cut along k to fit the device's binding size), each of which wrote f32
// partial sums to its own slot; a slot's rows of `row` outputs may be padded to `row_stride`.
// The slots are loaded four at a time and added in order: a loop of single loads with a
// run-time count waits for each load in turn (benches/RESULTS.md, round 6).
// Prelude: const OUT_DTYPE
// Overrides: WG_SIZE
// Bindings: 0 params | 1 partials (f32) | 2 y
// Dispatch: one invocation per output element.

struct Params {
    count: u32,
    slots: u32,
    slot_stride: u32,
    y_offset: u32,
    row: u32,
    row_stride: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<atomic<u32>>;

override WG_SIZE: u32 = 64u;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let e = linear_workgroup(wg, num_wg) * WG_SIZE + local;
    if e >= params.count {
        return;
    }
    let at = (e / params.row) * params.row_stride + e % params.row;
    let stride = params.slot_stride;
    var sum = 0.0;
    var s = 0u;
    for (; s + 4u <= params.slots; s += 4u) {
        let a = partials[s * stride + at];
        let b = partials[(s + 1u) * stride + at];
        let c = partials[(s + 2u) * stride + at];
        let d = partials[(s + 3u) * stride + at];
        sum = ((sum + a) + b + c) + d;
    }
    for (; s < params.slots; s++) {
        sum += partials[s * stride + at];
    }
    store_y(params.y_offset + e, sum);
}
