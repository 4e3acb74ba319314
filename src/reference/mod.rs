//! The CPU twin of every kernel: readable, not fast. This is the spec the GPU is tested
//! against, and it is itself tested against fixtures made by real MLX 0.32.4
//! (`tests/fixtures/gen_fixtures.py`).
//!
//! Values are `f32` on the host; a dtype argument says what the GPU stores, and results are
//! rounded to it exactly as MLX rounds (round to nearest, ties to even).

mod fp;
mod gather_qmm;
mod matmul;
mod nn;
mod quantize;
mod quantized_matmul;

pub use fp::{
    e2m1_code, e4m3_code, e4m3_value, e8m0_value, fp_dequantize, fp_dequantize_value, fp_group_scale, fp_quantize,
    fp_quantize_value, mlx_round, HostFpQuantized, E2M1_VALUES,
};
pub use gather_qmm::{gather_qmm, HostIndices};
pub use matmul::matmul;
pub use nn::{add, multiply, relu, rms_norm, scaled_dot_product_attention, silu, softmax, take};
pub use quantize::{
    dequantize, dequantize_value, dequantize_value_fused, dequantize_with, group_scale_bias, pack, quantize,
    quantize_value, unpack, HostQuantized,
};
pub use quantized_matmul::{fp_quantized_matmul, quantized_matmul, quantized_matmul_fused, HostMatrix};
