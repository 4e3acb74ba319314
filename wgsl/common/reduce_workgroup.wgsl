// reduce_workgroup.wgsl: the entry point of a kernel whose invocations each hold SLOTS vec4s of
// partial sums, and the functions that total them over the workgroup with a tree in workgroup
// memory: for devices without subgroup operations. Same contract as reduce_subgroup.wgsl.
// Expects: const SLOTS; override WG_SIZE (a power of two); fn kernel(local: u32, group: u32).

var<workgroup> invocation_sums: array<vec4<f32>, WG_SIZE * SLOTS>;

// Parks this invocation's `partial` for slot `slot`. Every invocation must call it, in uniform
// control flow, before `reduce_slots`.
fn contribute(slot: u32, partial: vec4<f32>, local: u32) {
    invocation_sums[slot * WG_SIZE + local] = partial;
}

// Adds up the parked sums (a tree). Every invocation must call it, in uniform control flow,
// after its last `contribute`.
fn reduce_slots(local: u32) {
    workgroupBarrier();
    for (var half = WG_SIZE / 2u; half > 0u; half /= 2u) {
        if local < half {
            for (var s = 0u; s < SLOTS; s++) {
                invocation_sums[s * WG_SIZE + local] += invocation_sums[s * WG_SIZE + local + half];
            }
        }
        workgroupBarrier();
    }
}

// The workgroup's total of component `output % 4` of slot `output / 4` (output < 4 SLOTS),
// after `reduce_slots`.
fn slot_total(output: u32) -> f32 {
    return invocation_sums[(output / 4u) * WG_SIZE][output % 4u];
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    kernel(local, linear_workgroup(wg, num_wg));
}
