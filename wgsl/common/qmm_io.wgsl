// qmm_io.wgsl: writing the output of the quantized-matmul kernels (their float inputs are read
// through dtype.wgsl).
// Expects: const OUT_DTYPE; a binding `y: array<atomic<u32>>`.

// Writes element e of y, rounded to OUT_DTYPE (ties to even, overflow to infinity). Two 16-bit
// outputs share a word and may belong to different invocations, so halves are OR-ed into the
// zeroed word atomically.
fn store_y(e: u32, v: f32) {
    if OUT_DTYPE == DTYPE_F32 {
        atomicStore(&y[e], bitcast<u32>(v));
    } else {
        atomicOr(&y[e / 2u], dtype_encode(OUT_DTYPE, v) << (16u * (e % 2u)));
    }
}
