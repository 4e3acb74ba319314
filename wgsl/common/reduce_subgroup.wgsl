// reduce_subgroup.wgsl: the entry point of a kernel whose invocations each hold SLOTS vec4s of
// partial sums, and the functions that total them over the workgroup: `contribute` adds a slot
// within each subgroup (subgroupAdd) and parks the subgroup's total in workgroup memory;
// `reduce_slots` waits for every subgroup; `slot_total` adds up the subgroups' totals of one
// component.
// Expects: const SLOTS; override WG_SIZE; fn kernel(local: u32, group: u32).
// Overrides: MIN_SUBGROUP_SIZE (the adapter's smallest subgroup; sizes the scratch)

override MIN_SUBGROUP_SIZE: u32 = 4u;

var<workgroup> subgroup_sums: array<vec4<f32>, (WG_SIZE + MIN_SUBGROUP_SIZE - 1u) / MIN_SUBGROUP_SIZE * SLOTS>;
var<private> subgroup_lane: u32;
var<private> subgroup_index: u32;
var<private> subgroup_count: u32;

// Adds this invocation's `partial` to slot `slot`. Every invocation must call it, in uniform
// control flow, before `reduce_slots`.
fn contribute(slot: u32, partial: vec4<f32>, local: u32) {
    let total = subgroupAdd(partial);
    if subgroup_lane == 0u {
        subgroup_sums[subgroup_index * SLOTS + slot] = total;
    }
}

// Completes the contributions. Every invocation must call it, in uniform control flow, after
// its last `contribute`.
fn reduce_slots(local: u32) {
    workgroupBarrier();
}

// The workgroup's total of component `output % 4` of slot `output / 4` (output < 4 SLOTS),
// after `reduce_slots`.
fn slot_total(output: u32) -> f32 {
    var total = 0.0;
    for (var s = 0u; s < subgroup_count; s++) {
        total += subgroup_sums[s * SLOTS + output / 4u][output % 4u];
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
