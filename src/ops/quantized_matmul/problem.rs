//! A validated product: MLX's checks in MLX's order, then the shapes the planner works on.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::MatmulFormat;
use crate::tensor::{element_count, Quantized, Tensor};

use super::OP;

/// A validated product: sizes, batch entries and dtypes. Nothing in it changes once built: what
/// the plan does to x (preparing it for `qmv`) is a step of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Problem {
    /// Rows of x per batch entry.
    pub m: usize,
    /// Outputs per row.
    pub n: usize,
    /// Inner length.
    pub k: usize,
    /// Per output batch: the matrix of x and the matrix of w it multiplies.
    pub batches: Vec<(usize, usize)>,
    pub out_shape: Vec<usize>,
    pub format: MatmulFormat,
    pub transpose: bool,
    /// Words per row of w_q.
    pub w_words: usize,
    /// Groups per row of w_q (scales per row).
    pub groups: usize,
    /// Rows of x in all (every batch matrix).
    pub x_rows: usize,
    /// Bytes of y.
    pub y_bytes: u64,
}

/// What MLX's checks establish about a product (`extract_quantized_matmul_dims`): its sizes and
/// dtypes, whatever x's batch axes (`gather_qmm` pairs them through its indices).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    /// Inner length.
    pub k: usize,
    /// Outputs per row.
    pub n: usize,
    /// Words per row of w_q.
    pub w_words: usize,
    /// Groups per row of w_q (scales per row).
    pub groups: usize,
    pub format: MatmulFormat,
}

/// MLX's checks, in MLX's order (`validate_mode_with_type`, `quantized_matmul` and
/// `extract_quantized_matmul_dims` in `mlx/ops.cpp`), with MLX's errors tagged `op`.
pub(super) fn check(op: &'static str, x: &Tensor, q: &Quantized, transpose: bool) -> Result<Dims> {
    let params = q.params;
    let (weight, scales) = (&q.weight, &q.scales);
    let mode = params.mode;
    if mode.is_fp() {
        if scales.dtype() != DType::U8 {
            return Err(Error::FpScalesNotU8 { op, dtype: scales.dtype() });
        }
        if q.biases.is_some() {
            return Err(Error::FpBiases { op, mode });
        }
    } else {
        let biases = q.biases.as_ref().ok_or(Error::MissingBiases { op })?;
        if !scales.dtype().is_float() || !biases.dtype().is_float() {
            return Err(Error::NotFloatingScales { op, scales: scales.dtype(), biases: biases.dtype() });
        }
    }
    if weight.dtype() != DType::U32 {
        return Err(Error::MatmulWeightNotU32 { op, dtype: weight.dtype() });
    }
    if let Some(biases) = q.biases.as_ref().filter(|b| b.shape() != scales.shape()) {
        return Err(Error::ScalesBiasesShape { op, scales: scales.shape().to_vec(), biases: biases.shape().to_vec() });
    }
    if weight.ndim() < 2 {
        return Err(Error::NdimTooSmall { op, verb: "multiplied", ndim: weight.ndim() });
    }
    let (ws, ss) = (weight.shape(), scales.shape());
    let batch_dims = ws.len() - 2;
    if ss.len() != ws.len() || ws[..batch_dims] != ss[..batch_dims] {
        return Err(Error::WeightScalesBatch { op, weight: ws.to_vec(), scales: ss.to_vec() });
    }
    // MLX divides by the bits here; zero bits are refused first rather than divided by.
    if params.bits == 0 {
        return Err(Error::UnsupportedBits { op, bits: 0 });
    }
    let (w_rows, w_words) = (ws[batch_dims], ws[batch_dims + 1]);
    let codes_per_row =
        params.unpacked_width(w_words).ok_or_else(|| Error::ShapeOverflow { op, shape: ws.to_vec() })?;
    if Some(codes_per_row) != ss[batch_dims + 1].checked_mul(params.group_size as usize) {
        return Err(Error::WeightScalesIncompatible {
            op,
            weight: ws.to_vec(),
            scales: ss.to_vec(),
            group_size: params.group_size,
            bits: params.bits,
        });
    }
    let x_last = *x.shape().last().ok_or(Error::ScalarInput)?;
    let (k, n) = if transpose { (codes_per_row, w_rows) } else { (w_rows, codes_per_row) };
    if x_last != k {
        return Err(Error::InnerDimMismatch {
            op,
            x_last,
            rows: k,
            cols: n,
            weight: ws.to_vec(),
            group_size: params.group_size,
            bits: params.bits,
            transpose,
        });
    }
    if !x.dtype().is_float() {
        return Err(Error::NotFloatingX { op, dtype: x.dtype() });
    }
    // MLX's CPU backend checks neither list; its kernels do (affine), or read the mode's own
    // format whatever the parameters say (fp modes): wgquant refuses in MLX's words.
    params.validate(op)?;
    // The kernels read x in blocks of 32 along k; nvfp4's groups of 16 allow other lengths.
    if transpose && k % 32 != 0 {
        return Err(Error::FpInnerLength { op, mode, k });
    }
    if !x.gpu().same_device(weight.gpu()) || !weight.gpu().same_device(scales.gpu()) {
        return Err(Error::DeviceMismatch { op });
    }
    if q.biases.as_ref().is_some_and(|b| !weight.gpu().same_device(b.gpu())) {
        return Err(Error::DeviceMismatch { op });
    }
    let format = MatmulFormat {
        mode,
        x_dtype: x.dtype(),
        scale_dtype: scales.dtype(),
        // Affine: promote(x, scales), as MLX; the fp modes: x's dtype.
        out_dtype: if mode.is_fp() { x.dtype() } else { x.dtype().promote(scales.dtype()) },
        bits: params.bits,
        group_size: params.group_size,
    };
    Ok(Dims { k, n, w_words, groups: ss[batch_dims + 1], format })
}

impl Problem {
    /// MLX's checks ([`check`]), then the shapes and the batch entries.
    pub fn new(x: &Tensor, q: &Quantized, transpose: bool) -> Result<Problem> {
        let Dims { k, n, w_words, groups, format } = check(OP, x, q, transpose)?;
        let ws = q.weight.shape();
        let batch_dims = ws.len() - 2;
        let xs = x.shape();
        let batched = xs.len() > 2 && ws.len() > 2;
        let (x_batch, w_batch) = (&xs[..xs.len().saturating_sub(2)], &ws[..batch_dims]);
        let (m, out_batch) = if batched {
            (xs[xs.len() - 2], broadcast_shapes(x_batch, w_batch)?)
        } else {
            // A 2-D weight takes all of x's leading axes as rows (a batched weight with a 2-D x
            // contributes its first matrix, as in MLX).
            (element_count(&xs[..xs.len() - 1]).unwrap_or(0), Vec::new())
        };
        let mut out_shape = if batched { [out_batch.as_slice(), &[m]].concat() } else { xs[..xs.len() - 1].to_vec() };
        out_shape.push(n);
        // y must be allocated, so its size bounds the batch table built below; an empty y (a
        // zero axis anywhere) needs no table, however many batch entries its other axes name.
        let (y_elements, y_bytes) = output_size(OP, x, &out_shape, format.out_dtype)?;
        let batches = if y_elements == 0 {
            Vec::new()
        } else if batched {
            (0..element_count(&out_batch).unwrap_or(0))
                .map(|b| (broadcast_index(b, &out_batch, x_batch), broadcast_index(b, &out_batch, w_batch)))
                .collect()
        } else {
            vec![(0, 0)]
        };
        let x_rows = element_count(&xs[..xs.len() - 1]).unwrap_or(0);
        Ok(Problem { m, n, k, batches, out_shape, format, transpose, w_words, groups, x_rows, y_bytes })
    }

    /// Whether the product is empty (nothing to compute; y is all zeros or has no elements).
    pub fn is_empty(&self) -> bool {
        self.m == 0 || self.n == 0 || self.k == 0 || self.batches.is_empty()
    }

    /// Rows of w_q per matrix.
    pub fn w_rows(&self) -> usize {
        if self.transpose {
            self.n
        } else {
            self.k
        }
    }
}

/// Elements and bytes of an output of `shape` and `dtype` on `x`'s device, which must hold it in
/// one buffer.
pub(super) fn output_size(op: &'static str, x: &Tensor, shape: &[usize], dtype: DType) -> Result<(usize, u64)> {
    let too_large = || Error::ShapeOverflow { op, shape: shape.to_vec() };
    let elements = element_count(shape).ok_or_else(too_large)?;
    let bytes = elements.checked_mul(dtype.size_in_bytes()).ok_or_else(too_large)? as u64;
    let limit = x.gpu().caps().limits.max_buffer_size;
    if bytes > limit {
        return Err(Error::ExceedsDeviceLimit { op, what: "the output's bytes", value: bytes, limit });
    }
    Ok((elements, bytes))
}

/// numpy broadcasting of two shapes (MLX's `broadcast_shapes`).
pub(super) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (p, q) if p == q || q == 1 => Ok(p),
            (1, q) => Ok(q),
            _ => Err(Error::BroadcastShapes { a: a.to_vec(), b: b.to_vec() }),
        })
        .collect()
}

/// The flat index into `shape` of element `flat` of the broadcast shape `out`.
fn broadcast_index(flat: usize, out: &[usize], shape: &[usize]) -> usize {
    let mut rest = flat;
    let mut index = 0;
    let mut stride = 1;
    for (i, &extent) in out.iter().enumerate().rev() {
        let coord = rest % extent;
        rest /= extent;
        if let Some(d) = (i + shape.len()).checked_sub(out.len()) {
            if shape[d] != 1 {
                index += coord * stride;
            }
            stride *= shape[d];
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes(&[2, 1], &[3]).unwrap(), vec![2, 3]);
        assert_eq!(broadcast_shapes(&[], &[4]).unwrap(), vec![4]);
        assert!(broadcast_shapes(&[2], &[3]).is_err());
        // out (2, 3): x batch (2, 1) ignores the second axis; w batch (3,) ignores the first.
        let out = [2, 3];
        let x: Vec<usize> = (0..6).map(|b| broadcast_index(b, &out, &[2, 1])).collect();
        let w: Vec<usize> = (0..6).map(|b| broadcast_index(b, &out, &[3])).collect();
        assert_eq!(x, [0, 0, 0, 1, 1, 1]);
        assert_eq!(w, [0, 1, 2, 0, 1, 2]);
    }
}
