//! # wgquant
//!
//! MLX's group quantization on any GPU through wgpu: `quantize`, `dequantize` and
//! `quantized_matmul` with MLX's formats, and [`nn::quantize`], MLX's `nn.quantize` over a tree of
//! layers with GPU forward passes.
//!
//! Quantization follows MLX 0.32.4's CPU semantics (true min/max, the edge flip, round half to
//! even); the packed words, scales and biases equal what `mx.quantize` returns. Every kernel
//! has a readable CPU twin in [`reference`](mod@reference), which is tested against fixtures
//! made by real MLX.
//!
//! ```no_run
//! # fn main() -> wgquant::Result<()> {
//! use wgquant::{dequantize, quantize, Gpu, QuantParams, Tensor};
//!
//! let gpu = Gpu::new()?; // the best adapter; lavapipe when there is no GPU
//! let data: Vec<f32> = (0..8 * 128).map(|i| (i as f32 * 0.37).sin()).collect();
//! let w = Tensor::from_slice(&gpu, &data, &[8, 128])?;
//! let q = quantize(&w, QuantParams::affine(64, 4))?;
//! let w_hat = dequantize(&q, None)?.to_vec::<f32>()?;
//! assert_eq!(w_hat.len(), data.len());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The demo behind the `wgquant` binary (not part of the library's API).
#[doc(hidden)]
pub mod demo;
pub mod dtype;
pub mod error;
pub mod gpu;
pub mod io;
/// Kernel sources and keys, public for the WGSL tests and benches only (not part of the
/// library's API).
#[doc(hidden)]
pub mod kernels;
pub mod nn;
pub mod ops;
pub mod params;
#[doc(hidden)]
pub mod random;
pub mod reference;
pub mod tensor;

pub use dtype::{DType, Element, FloatElement};
pub use error::{Error, Result};
pub use gpu::{Caps, Gpu, GpuOptions};
/// The half-precision element types tensors hold, from `half`.
pub use half::{bf16, f16};
pub use ops::{dequantize, gather_qmm, quantize, quantized_matmul, quantized_matmul_with, QmmKernel, QmmOptions};
pub use params::{Mode, QuantParams};
pub use tensor::{Quantized, Tensor};
/// The wgpu wgquant is built on, so that callers of [`Gpu::from_device`] and
/// [`Tensor::from_buffer`] use the same version.
pub use wgpu;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
