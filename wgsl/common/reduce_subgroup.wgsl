// reduce_subgroup.wgsl: the entry point of a kernel whose invocations each hold OUTPUTS partial
// sums, and `workgroup_sum`, which totals them over the workgroup: subgroupAdd inside each
// subgroup, then the subgroups' totals through workgroup memory (one barrier).
// Expects: const OUTPUTS; override WG_SIZE; fn kernel(local: u32, group: u32).
// Overrides: MIN_SUBGROUP_SIZE (the adapter's smallest subgroup; sizes the scratch)

override MIN_SUBGROUP_SIZE: u32 = 4u;

var<workgroup> subgroup_sums: array<f32, (WG_SIZE + MIN_SUBGROUP_SIZE - 1u) / MIN_SUBGROUP_SIZE * OUTPUTS>;
var<private> subgroup_lane: u32;
var<private> subgroup_index: u32;
var<private> subgroup_count: u32;

// Total i of the workgroup's partial sums, returned to invocation i < OUTPUTS (0 elsewhere).
// Every invocation must call it, in uniform control flow.
fn workgroup_sum(partials: array<f32, OUTPUTS>, local: u32) -> f32 {
    var values = partials;
    for (var i = 0u; i < OUTPUTS; i++) {
        let total = subgroupAdd(values[i]);
        if subgroup_lane == 0u {
            subgroup_sums[subgroup_index * OUTPUTS + i] = total;
        }
    }
    workgroupBarrier();
    var total = 0.0;
    if local < OUTPUTS {
        for (var s = 0u; s < subgroup_count; s++) {
            total += subgroup_sums[s * OUTPUTS + local];
        }
    }
    return total;
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    subgroup_lane = lane;
    subgroup_index = subgroup;
    subgroup_count = subgroups;
    kernel(local, linear_workgroup(wg, num_wg));
}
