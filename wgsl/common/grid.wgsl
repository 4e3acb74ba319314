// grid.wgsl: dispatches larger than 65535 workgroups are laid out as a 2-D grid (see
// `gpu::grid`); this recovers the linear workgroup index.

fn linear_workgroup(wg: vec3<u32>, num_wg: vec3<u32>) -> u32 {
    return wg.y * num_wg.x + wg.x;
}
