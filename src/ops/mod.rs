//! The ops, named as in MLX: validate at the boundary, pick the kernel key, record, submit.
//! Ops return GPU tensors without waiting; nothing is read back unless the caller asks.

mod gather_sort;
mod launch;
mod matmul;
mod nn;
mod quantize;
mod quantized_matmul;
mod validate;

pub use gather_sort::{gather_sort, GatherSorted};
pub use matmul::{linear, matmul};
pub use nn::{add, astype, multiply, relu, rms_norm, scaled_dot_product_attention, silu, softmax, take};
pub use quantize::{dequantize, quantize};
pub use quantized_matmul::{gather_qmm, quantized_matmul, quantized_matmul_with, QmmKernel, QmmOptions};
