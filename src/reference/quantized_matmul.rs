//! CPU twin of `quantized_matmul`: MLX's `dequantize` (CPU semantics, in the scales' dtype), then
//! an f32 matrix product, rounded to the output dtype. This is the reference MLX's own tests use
//! (`python/tests/test_quantized.py` compares against `x @ dequantize(w).T`).

use crate::dtype::DType;
use crate::params::QuantParams;

use super::fp::{fp_dequantize, HostFpQuantized};
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

/// `x @ dequantize(w).T` (`transpose`) or `x @ dequantize(w)` for an fp-mode matrix of `rows`
/// packed rows and `x` of `m` rows: MLX's fp `dequantize` into `out_dtype` (x's dtype, the
/// product's: MLX's rule for the fp modes), then an f32 product in order of k, rounded to it.
/// (Element times scale has at most 8 significant bits, so the weights are exact in every
/// dtype unless they leave its range.)
pub fn fp_quantized_matmul(
    x: &[f32],
    m: usize,
    w: &HostFpQuantized,
    rows: usize,
    params: QuantParams,
    transpose: bool,
    out_dtype: DType,
) -> Vec<f32> {
    let dense = fp_dequantize(&w.weight, &w.scales, params, out_dtype);
    let cols = dense.len() / rows.max(1);
    let (k, n) = if transpose { (cols, rows) } else { (rows, cols) };
    assert_eq!(x.len(), m * k, "x holds {m} rows of k = {k}");
    matmul(x, &dense, None, (m, n, k), transpose, out_dtype)
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

    #[test]
    fn fp_product_matches_a_hand_computed_one() {
        // One mxfp4 group: codes 0..15 are the E2M1 values 0, 0.5, ..., 6, -0, ..., -6 (summing
        // to 0), twice; scale byte 128 is 2. x = 1 on the first 8 gives 2 · 18 = 36.
        let params = QuantParams::for_mode(crate::params::Mode::Mxfp4);
        let codes: Vec<u32> = (0..32).map(|i| i % 16).collect();
        let w = HostFpQuantized { weight: crate::reference::pack(&codes, 4), scales: vec![128] };
        let x: Vec<f32> = (0..32).map(|i| if i < 8 { 1.0 } else { 0.0 }).collect();
        assert_eq!(fp_quantized_matmul(&x, 1, &w, 1, params, true, DType::F32), vec![36.0]);
        // Untransposed the matrix is 1 x 32: x = [1] gives the dequantized row.
        let y = fp_quantized_matmul(&[1.0], 1, &w, 1, params, false, DType::BF16);
        assert_eq!(y[..8], [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]);
    }
}
