// reduce_workgroup.wgsl: the entry point of a kernel whose invocations each hold OUTPUTS partial
// sums, and `workgroup_sum`, which totals them over the workgroup with a tree in workgroup
// memory: for devices without subgroup operations.
// Expects: const OUTPUTS; override WG_SIZE (a power of two); fn kernel(local: u32, group: u32).

var<workgroup> invocation_sums: array<f32, WG_SIZE * OUTPUTS>;

// Total i of the workgroup's partial sums, returned to invocation i < OUTPUTS (0 elsewhere).
// Every invocation must call it, in uniform control flow.
fn workgroup_sum(partials: array<f32, OUTPUTS>, local: u32) -> f32 {
    var values = partials;
    for (var i = 0u; i < OUTPUTS; i++) {
        invocation_sums[i * WG_SIZE + local] = values[i];
    }
    workgroupBarrier();
    for (var half = WG_SIZE / 2u; half > 0u; half /= 2u) {
        if local < half {
            for (var i = 0u; i < OUTPUTS; i++) {
                invocation_sums[i * WG_SIZE + local] += invocation_sums[i * WG_SIZE + local + half];
            }
        }
        workgroupBarrier();
    }
    var total = 0.0;
    if local < OUTPUTS {
        total = invocation_sums[local * WG_SIZE];
    }
    return total;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    kernel(local, linear_workgroup(wg, num_wg));
}
