//! The ops, named as in MLX: validate at the boundary, pick the kernel key, record, submit.
//! Ops return GPU tensors without waiting; nothing is read back unless the caller asks.

mod quantize;
mod quantized_matmul;

pub use quantize::{dequantize, quantize};
pub use quantized_matmul::{quantized_matmul, quantized_matmul_with, QmmKernel, QmmOptions};
