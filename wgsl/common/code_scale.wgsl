// code_scale.wgsl: how `window_codes` (qmm_operands.wgsl) scales the four codes of a quad. Code
// c is masked where it lies, q · 2^(c BITS) (for 6 and 8 bits, codes 2 and 3 from the window
// shifted by 2 BITS), which saves a shift per code; the other factor of each product is
// multiplied by CODE_SCALE[c] (powers of two: exact) to restore it. qmv_prepare.wgsl applies it
// to x once, as MLX's qmv does.
// Expects: const BITS.

// 2^-BITS.
const CODE_STEP: f32 = 1.0 / f32(1u << BITS);

// What `window_codes` multiplies each code by, inverted.
const CODE_SCALE: vec4<f32> = select(
    vec4<f32>(1.0, CODE_STEP, 1.0, CODE_STEP),
    vec4<f32>(1.0, CODE_STEP, CODE_STEP * CODE_STEP, CODE_STEP * CODE_STEP * CODE_STEP),
    BITS <= 5u,
);
