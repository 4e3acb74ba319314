//! Float matrix products: [`matmul`] (MLX's `x @ w` and `x @ w.T`), [`linear`] (MLX's
//! `addmm(bias, x, w.T)`, the Linear layer) and the strided batched product attention uses.
//!
//! Every product accumulates in f32 and rounds once, to `promote(x.dtype, w.dtype)`, as MLX's
//! kernels do. Rows of `x` are split into chunks when `x` or the output exceed one storage
//! binding; `w` and the bias are bound whole.

use super::launch::{launch_chunks, whole, Launch};
use super::validate::{fits_binding, float_operand, index_u32, same_device};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::BufferWindow;
use crate::kernels::{MatmulBindings, MatmulKey, MatmulParams, MATMUL_TILE};
use crate::tensor::Tensor;

/// `x @ wᵀ` when `transpose` (w is `(N, K)`, the Linear layout), else `x @ w` (w is `(K, N)`).
///
/// `x` is `(..., K)` of any rank >= 1; `w` is 2-D. The result is `x.shape[:-1] + (N,)` in
/// `promote(x.dtype, w.dtype)`, accumulated in f32.
///
/// # Errors
/// Non-floating operands, `w` not 2-D, mismatched contraction dimensions, tensors on different
/// devices, `w` larger than one storage binding, device errors.
pub fn matmul(x: &Tensor, w: &Tensor, transpose: bool) -> Result<Tensor> {
    matrix_product("matmul", x, w, None, transpose)
}

/// `bias + x @ weightᵀ`: MLX's Linear (`addmm`), the bias added to the f32 sum before the one
/// rounding. `weight` is `(output_dims, input_dims)`, `bias` is `(output_dims,)`.
///
/// # Errors
/// As [`matmul`], and a bias that is not floating or not of shape `(output_dims,)`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    matrix_product("linear", x, weight, bias, true)
}

fn matrix_product(op: &'static str, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, transpose: bool) -> Result<Tensor> {
    float_operand(op, "x", x)?;
    float_operand(op, "the weight", w)?;
    if w.ndim() != 2 {
        return Err(Error::NdimMismatch { op, what: "the weight", expected: "2", ndim: w.ndim() });
    }
    if x.ndim() == 0 {
        return Err(Error::NdimMismatch { op, what: "x", expected: "at least 1", ndim: 0 });
    }
    let (rows, k) = x.rows_and_width();
    let (n, w_k) = if transpose { (w.shape()[0], w.shape()[1]) } else { (w.shape()[1], w.shape()[0]) };
    if k != w_k {
        return Err(Error::MatmulShapes { op, x: x.shape().to_vec(), w: w.shape().to_vec(), transpose });
    }
    let mut out_dtype = x.dtype().promote(w.dtype());
    if let Some(b) = bias {
        float_operand(op, "the bias", b)?;
        if b.shape() != [n] {
            return Err(Error::ShapeMismatch { op, what: "the bias", expected: vec![n], actual: b.shape().to_vec() });
        }
        same_device(op, &[x, b])?;
        fits_binding(op, b)?;
        out_dtype = out_dtype.promote(b.dtype());
    }
    same_device(op, &[x, w])?;
    fits_binding(op, w)?;

    let gpu = x.gpu();
    let mut out_shape = x.shape()[..x.ndim() - 1].to_vec();
    out_shape.push(n);
    let out = Tensor::zeros_for(op, gpu, &out_shape, out_dtype)?;
    let row_bytes = [(k * x.dtype().size_in_bytes()) as u64, (n * out_dtype.size_in_bytes()) as u64];
    if n == 0 {
        return Ok(out);
    }
    index_u32(op, rows.max(n).max(k))?;
    let key =
        MatmulKey { x_dtype: x.dtype(), w_dtype: w.dtype(), bias_dtype: bias.map(Tensor::dtype), out_dtype, transpose }
            .into();
    let w_row = if transpose { k } else { n };
    launch_chunks(op, gpu, rows, &row_bytes, &key, |chunk| {
        let layout = MatmulLayout {
            m: chunk.len(),
            n,
            k,
            batch_outer: 1,
            batch_inner: 1,
            x: Strides { outer: 0, inner: 0, row: k },
            w: Strides { outer: 0, inner: 0, row: w_row },
            y: Strides { outer: 0, inner: 0, row: n },
        };
        layout.launch(MatmulBindings {
            x: BufferWindow::rows(x.storage(), row_bytes[0], chunk),
            w: whole(w),
            bias: whole(bias.unwrap_or(w)),
            y: BufferWindow::rows(out.storage(), row_bytes[1], chunk),
        })
    })?;
    Ok(out)
}

/// Element strides of one operand of a batched product: batch entry `(outer, inner)` starts at
/// `outer * self.outer + inner * self.inner`, and consecutive rows are `row` apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strides {
    pub outer: usize,
    pub inner: usize,
    pub row: usize,
}

/// A batched product `y[b] = x[b] @ w[b]ᵀ` (or `x[b] @ w[b]`) over `batch_outer * batch_inner`
/// entries whose operands sit anywhere in their buffers (attention's heads, in place).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatmulLayout {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch_outer: usize,
    pub batch_inner: usize,
    pub x: Strides,
    pub w: Strides,
    pub y: Strides,
}

impl MatmulLayout {
    /// The launch of this layout over `bindings` (without a bias, `bias` is w again).
    fn launch<'a>(&self, bindings: MatmulBindings<BufferWindow<'a>>) -> Result<Launch<'a>> {
        let op = "matmul";
        let tile = MATMUL_TILE as usize;
        let (tiles_m, tiles_n) = (self.m.div_ceil(tile), self.n.div_ceil(tile));
        let batches = self.batch_outer * self.batch_inner;
        let u = |v: usize| index_u32(op, v);
        let params = MatmulParams {
            m: u(self.m)?,
            n: u(self.n)?,
            k: u(self.k)?,
            batches: u(batches)?,
            batch_inner: u(self.batch_inner.max(1))?,
            tiles_m: u(tiles_m)?,
            tiles_n: u(tiles_n)?,
            x_outer: u(self.x.outer)?,
            x_inner: u(self.x.inner)?,
            x_row: u(self.x.row)?,
            w_outer: u(self.w.outer)?,
            w_inner: u(self.w.inner)?,
            w_row: u(self.w.row)?,
            y_outer: u(self.y.outer)?,
            y_inner: u(self.y.inner)?,
            y_row: u(self.y.row)?,
        };
        Ok(Launch {
            params: bytemuck::bytes_of(&params).to_vec(),
            buffers: bindings.into_vec(),
            workgroups: u(batches * tiles_m * tiles_n)?,
        })
    }
}

/// The batched product described by `layout` into a new `(out_shape, out_dtype)` tensor; the
/// caller has checked that the strides stay inside the operands.
pub(crate) fn batched_matmul(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    transpose: bool,
    layout: MatmulLayout,
    out_shape: &[usize],
    out_dtype: DType,
) -> Result<Tensor> {
    same_device(op, &[x, w])?;
    for t in [x, w] {
        fits_binding(op, t)?;
    }
    let gpu = x.gpu();
    let out = Tensor::zeros_for(op, gpu, out_shape, out_dtype)?;
    fits_binding(op, &out)?;
    if out.is_empty() {
        return Ok(out);
    }
    let key = MatmulKey { x_dtype: x.dtype(), w_dtype: w.dtype(), bias_dtype: None, out_dtype, transpose };
    let pipeline = gpu.pipeline(&key.into())?;
    let launch = layout.launch(MatmulBindings { x: whole(x), w: whole(w), bias: whole(w), y: whole(&out) })?;
    gpu.submit(op, &[launch.with(&pipeline)])?;
    Ok(out)
}
