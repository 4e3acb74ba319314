//! `quantized_matmul` (MLX's `mx.quantized_matmul`, affine mode).

// TEMPORARY: replaced by the GEMV/GEMM kernels of the quantized_matmul issue at merge

use crate::error::{Error, Result};
use crate::tensor::{Quantized, Tensor};

/// `x @ dequantize(w)ᵀ` when `transpose` (w packed as `(N, K·bits/32)`), else `x @ dequantize(w)`;
/// the result is `x.shape[:-1] + (N,)` in `promote(x.dtype, scales.dtype)`.
///
/// # Errors
/// A non-floating `x`, the checks of [`Quantized::from_parts`], mismatched inner dimensions,
/// device errors.
pub fn quantized_matmul(x: &Tensor, q: &Quantized, transpose: bool) -> Result<Tensor> {
    if !x.dtype().is_float() {
        return Err(Error::NotFloatingX { dtype: x.dtype() });
    }
    q.validate("quantized_matmul")?;
    let shape = q.logical_shape();
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let inner = if transpose { cols } else { rows };
    if x.shape().last() != Some(&inner) {
        return Err(Error::InnerDimMismatch {
            x_last: x.shape().last().copied().unwrap_or(0),
            rows: if transpose { rows } else { cols },
            cols: inner,
            weight: q.weight.shape().to_vec(),
            group_size: q.params.group_size,
            bits: q.params.bits,
            transpose,
        });
    }
    let w = super::dequantize(q, None)?;
    super::matmul(x, &w, transpose)
}
