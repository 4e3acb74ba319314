//! The ops, named as in MLX: validate at the boundary, pick the kernel key, record, submit.
//! Ops return GPU tensors without waiting; nothing is read back unless the caller asks.

mod quantize;

pub use quantize::{dequantize, quantize};
