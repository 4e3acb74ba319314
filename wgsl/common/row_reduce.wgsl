// row_reduce.wgsl: the workgroup-wide reduction of the kernels that give each row to one
// workgroup (rms_norm, softmax). Not in every kernel's source: `KernelKey::snippets` adds it to
// those two, since it declares their WG_SIZE and workgroup memory.
// Overrides: WG_SIZE (a power of two)

override WG_SIZE: u32 = 64u;

var<workgroup> partial: array<f32, WG_SIZE>;

// The sum (or, with is_max, the maximum) of every invocation's `value`, returned to all of them.
// Call from uniform control flow.
fn row_reduce(value: f32, is_max: bool, local: u32) -> f32 {
    partial[local] = value;
    workgroupBarrier();
    for (var half = WG_SIZE / 2u; half > 0u; half /= 2u) {
        if local < half {
            let a = partial[local];
            let b = partial[local + half];
            partial[local] = select(a + b, max(a, b), is_max);
        }
        workgroupBarrier();
    }
    let result = partial[0];
    // Everyone reads the result before `partial` is written again.
    workgroupBarrier();
    return result;
}
