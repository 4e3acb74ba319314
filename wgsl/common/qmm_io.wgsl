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

// Writes elements e and e + 1 of y, both the caller's own: 16-bit outputs starting a word (e
// even) are stored as that whole word, so that a y whose every word is written this way needs
// no zeroing first (the planner's `ors_into_y`).
fn store_y_pair(e: u32, v0: f32, v1: f32) {
    if OUT_DTYPE != DTYPE_F32 && e % 2u == 0u {
        atomicStore(&y[e / 2u], dtype_encode(OUT_DTYPE, v0) | (dtype_encode(OUT_DTYPE, v1) << 16u));
    } else {
        store_y(e, v0);
        store_y(e + 1u, v1);
    }
}
