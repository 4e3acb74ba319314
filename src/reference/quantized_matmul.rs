//! CPU twin of `quantized_matmul`: MLX's `dequantize` (CPU semantics, in the scales' dtype), then
//! an f32 matrix product, rounded to the output dtype. This is the reference MLX's own tests use
//! (`python/tests/test_quantized.py` compares against `x @ dequantize(w).T`).

use crate::dtype::DType;
use crate::params::QuantParams;

use super::matmul::matmul;
use super::quantize::{dequantize, dequantize_value_fused, dequantize_with, HostQuantized};

/// One quantized matrix on the host: packed rows of `weight` with their scales and biases.
#[derive(Clone, Copy, Debug)]
pub struct HostMatrix<'a> {
    /// Packed codes, `rows` rows.
    pub quantized: &'a HostQuantized,
    /// Rows of the packed matrix (`N` when transposed, `K` otherwise).
    pub rows: usize,
    /// The quantization parameters.
    pub params: QuantParams,
    /// dtype of the scales and biases (the dequantized values are rounded to it, as MLX does).
    pub scale_dtype: DType,
}

impl HostMatrix<'_> {
    /// Codes per row of the packed matrix.
    pub fn width(&self) -> usize {
        self.quantized.weight.len() / self.rows.max(1) * 32 / self.params.bits as usize
    }
}

/// `x @ dequantize(w).T` (`transpose`) or `x @ dequantize(w)`, for `x` of `m` rows, rounded to
/// `out_dtype`. Accumulates in f32, in order of k.
pub fn quantized_matmul(x: &[f32], m: usize, w: &HostMatrix<'_>, transpose: bool, out_dtype: DType) -> Vec<f32> {
    let q = w.quantized;
    let dense = dequantize(&q.weight, &q.scales, &q.biases, w.params, w.scale_dtype, w.scale_dtype);
    dense_matmul(x, m, w, &dense, transpose, out_dtype)
}

/// [`quantized_matmul`] with each weight rounded once ([`dequantize_value_fused`]): the twin of
/// `qmv_coop`, the tensor-core path.
pub fn quantized_matmul_fused(x: &[f32], m: usize, w: &HostMatrix<'_>, transpose: bool, out_dtype: DType) -> Vec<f32> {
    let q = w.quantized;
    let t = w.scale_dtype;
    let dense = dequantize_with(&q.weight, &q.scales, &q.biases, w.params, t, |code, scale, bias| {
        dequantize_value_fused(code, scale, bias, t)
    });
    dense_matmul(x, m, w, &dense, transpose, out_dtype)
}

/// `x` times `w` dequantized to `dense`.
fn dense_matmul(x: &[f32], m: usize, w: &HostMatrix<'_>, dense: &[f32], transpose: bool, out_dtype: DType) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.width());
    let (k, n) = if transpose { (cols, rows) } else { (rows, cols) };
    assert_eq!(x.len(), m * k, "x holds {m} rows of k = {k}");
    matmul(x, dense, None, (m, n, k), transpose, out_dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::quantize;

    #[test]
    fn matches_a_hand_computed_product() {
        // One group of 32 at 4 bits: w = [0, 1, ..., 15, 0, 1, ..., 15] is exact (scale -1, bias 15).
        let params = QuantParams::affine(32, 4);
        let w: Vec<f32> = (0..32).map(|i| (i % 16) as f32).collect();
        let q = quantize(&w, 32, params, DType::F32).unwrap();
        let matrix = HostMatrix { quantized: &q, rows: 1, params, scale_dtype: DType::F32 };
        let x = vec![1.0f32; 32];
        assert_eq!(quantized_matmul(&x, 1, &matrix, true, DType::F32), vec![240.0]);
        // The same matrix untransposed is 1 x 32: x (2 x 1) gives an outer product.
        let y = quantized_matmul(&[1.0, 2.0], 2, &matrix, false, DType::F32);
        assert_eq!(y[..3], [0.0, 1.0, 2.0]);
        assert_eq!(y[32 + 15], 30.0);
    }
}
