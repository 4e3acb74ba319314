//! The float ops a transformer block needs besides the matrix product: row gather ([`take`]),
//! [`rms_norm`], [`softmax`], [`relu`] and [`silu`], dtype casts ([`astype`]), [`add`] and
//! [`multiply`], and [`scaled_dot_product_attention`] built from them. Each mirrors the MLX op
//! of the same name, computes in f32 and rounds once to the output dtype (twice for `rms_norm`,
//! as MLX's fallback does). Tensors are split into chunks of rows when one would exceed a
//! storage binding.

use std::ops::Range;

use super::launch::{launch_chunks, whole, Launch};
use super::matmul::{batched_matmul, MatmulLayout, Strides};
use super::validate::{fits_binding, float_operand, index_u32, same_device};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::BufferWindow;
use crate::kernels::{
    BinaryBindings, BinaryKey, BinaryOp, BinaryParams, GatherBindings, GatherKey, GatherParams, KernelKey,
    RmsNormBindings, RmsNormKey, RmsNormParams, SoftmaxBindings, SoftmaxKey, SoftmaxParams, UnaryBindings, UnaryKey,
    UnaryOp, UnaryParams, ELEMENTWISE_WG_SIZE,
};
use crate::tensor::Tensor;

/// Rows of `table` picked by `ids`: MLX's `table[ids]` (`mx.take(table, ids, axis=0)`), what an
/// embedding does. `table` is `(rows, width)` of any 16- or 32-bit dtype (packed quantized rows
/// included) and is copied bit for bit; `ids` is `uint32` of any shape; the result is
/// `ids.shape + (width,)`. An id past the table gives a row of zeros (checking it on the host
/// would need a read-back).
///
/// # Errors
/// `table` not 2-D, `ids` not `uint32`, tensors on different devices,
/// `table` larger than one storage binding, device errors.
pub fn take(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let op = "take";
    if table.ndim() != 2 {
        return Err(Error::NdimMismatch { op, what: "the table", expected: "2", ndim: table.ndim() });
    }
    if ids.dtype() != DType::U32 {
        return Err(Error::UnsupportedDType { op, what: "ids", dtype: ids.dtype(), supported: "uint32" });
    }
    let element_bytes = table.dtype().size_in_bytes();
    same_device(op, &[table, ids])?;
    fits_binding(op, table)?;
    let (table_rows, width) = (table.shape()[0], table.shape()[1]);
    let mut out_shape = ids.shape().to_vec();
    out_shape.push(width);
    let gpu = table.gpu();
    let out = Tensor::zeros_for(op, gpu, &out_shape, table.dtype())?;
    let row_bytes = [4, (width * element_bytes) as u64];
    if width == 0 {
        return Ok(out);
    }
    let key = GatherKey { element_bytes: element_bytes as u32 }.into();
    launch_chunks(op, gpu, ids.len(), &row_bytes, &key, |chunk| {
        let n_elements = chunk.len() * width;
        let params = GatherParams {
            n_elements: index_u32(op, n_elements)?,
            width: index_u32(op, width)?,
            table_rows: index_u32(op, table_rows)?,
            ..Default::default()
        };
        let bindings = GatherBindings {
            ids: BufferWindow::rows(ids.storage(), row_bytes[0], chunk),
            table: whole(table),
            out: BufferWindow::rows(out.storage(), row_bytes[1], chunk),
        };
        Ok(Launch {
            params: bytemuck::bytes_of(&params).to_vec(),
            buffers: bindings.into_vec(),
            workgroups: per_word_workgroups(op, n_elements, 4 / element_bytes)?,
        })
    })?;
    Ok(out)
}

/// MLX's `fast.rms_norm(x, weight, eps)`: `x * rsqrt(mean(x², axis=-1) + eps) * weight`, in f32,
/// rounded to `promote(x, weight)` after the normalisation and again after the weight (MLX's
/// fallback). `weight` is `(x.shape[-1],)`.
///
/// # Errors
/// Non-floating operands, a weight of the wrong shape, tensors on different devices, device
/// errors.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let op = "rms_norm";
    float_operand(op, "x", x)?;
    float_operand(op, "the weight", weight)?;
    let (_, dims) = x.rows_and_width();
    if x.ndim() == 0 || weight.shape() != [dims] {
        return Err(Error::ShapeMismatch {
            op,
            what: "the weight",
            expected: vec![dims],
            actual: weight.shape().to_vec(),
        });
    }
    same_device(op, &[x, weight])?;
    fits_binding(op, weight)?;
    let out_dtype = x.dtype().promote(weight.dtype());
    let key = RmsNormKey { x_dtype: x.dtype(), w_dtype: weight.dtype(), out_dtype }.into();
    let params =
        |chunk: &Range<usize>| RmsNormParams { rows: chunk.len() as u32, dims: dims as u32, eps, ..Default::default() };
    let out = Tensor::zeros_for(op, x.gpu(), x.shape(), out_dtype)?;
    let bind = |x, y| RmsNormBindings { x, w: whole(weight), y }.into_vec();
    row_kernel(op, x, &out, key, |chunk| bytemuck::bytes_of(&params(chunk)).to_vec(), bind)?;
    Ok(out)
}

/// MLX's `softmax(x, axis=-1)`, computed in f32 and rounded to `x`'s dtype.
///
/// # Errors
/// A non-floating `x`, device errors.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    float_operand("softmax", "x", x)?;
    softmax_rows(x, 1.0, None, x.dtype())
}

/// `softmax(scale * s)` along rows into `out_dtype`; with `causal = Some(queries)`, `s` holds
/// (queries x keys) score matrices and query `i` sees keys `j <= i + keys - queries`.
fn softmax_rows(s: &Tensor, scale: f32, causal: Option<usize>, out_dtype: DType) -> Result<Tensor> {
    let op = "softmax";
    let (_, cols) = s.rows_and_width();
    let queries = causal.unwrap_or(1).max(1);
    if let Some(q) = causal.filter(|&q| q > cols) {
        return Err(Error::CausalQueriesExceedKeys { op, queries: q, keys: cols });
    }
    let key = SoftmaxKey { in_dtype: s.dtype(), out_dtype }.into();
    let params = |chunk: &Range<usize>| {
        let params = SoftmaxParams {
            rows: chunk.len() as u32,
            cols: cols as u32,
            queries: queries as u32,
            offset: (cols - queries.min(cols)) as u32,
            causal: u32::from(causal.is_some()),
            first_row: chunk.start as u32,
            scale,
            ..Default::default()
        };
        bytemuck::bytes_of(&params).to_vec()
    };
    let out = Tensor::zeros_for(op, s.gpu(), s.shape(), out_dtype)?;
    row_kernel(op, s, &out, key, params, |s, y| SoftmaxBindings { s, y }.into_vec())?;
    Ok(out)
}

/// Runs a one-workgroup-per-row kernel over the rows of `x` into `out` (of `x`'s shape):
/// `bind(x, y)` gives its bindings for a chunk of rows of both.
fn row_kernel<'a>(
    op: &'static str,
    x: &'a Tensor,
    out: &'a Tensor,
    key: KernelKey,
    params: impl Fn(&Range<usize>) -> Vec<u8>,
    bind: impl Fn(BufferWindow<'a>, BufferWindow<'a>) -> Vec<BufferWindow<'a>>,
) -> Result<()> {
    let (rows, cols) = x.rows_and_width();
    index_u32(op, rows.max(cols))?;
    let row_bytes = [(cols * x.dtype().size_in_bytes()) as u64, (cols * out.dtype().size_in_bytes()) as u64];
    if cols == 0 {
        return Ok(());
    }
    launch_chunks(op, x.gpu(), rows, &row_bytes, &key, |chunk| {
        let buffers = bind(
            BufferWindow::rows(x.storage(), row_bytes[0], chunk),
            BufferWindow::rows(out.storage(), row_bytes[1], chunk),
        );
        Ok(Launch { params: params(chunk), buffers, workgroups: chunk.len() as u32 })
    })
}

/// MLX's `nn.relu`: `max(x, 0)`.
///
/// # Errors
/// A non-floating `x`, device errors.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary("relu", UnaryOp::Relu, x, x.dtype())
}

/// MLX's `nn.silu`: `x * sigmoid(x)`, computed in f32 and rounded once.
///
/// # Errors
/// A non-floating `x`, device errors.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary("silu", UnaryOp::Silu, x, x.dtype())
}

/// MLX's `x.astype(dtype)` between float dtypes (round to nearest, ties to even).
///
/// # Errors
/// A non-floating `x` or `dtype`, device errors.
pub fn astype(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let op = "astype";
    if !dtype.is_float() {
        return Err(Error::NotFloatingOutput { op, dtype });
    }
    unary(op, UnaryOp::Identity, x, dtype)
}

fn unary(op: &'static str, unary_op: UnaryOp, x: &Tensor, out_dtype: DType) -> Result<Tensor> {
    float_operand(op, "x", x)?;
    let (rows, width) = x.rows_and_width();
    let gpu = x.gpu();
    let out = Tensor::zeros_for(op, gpu, x.shape(), out_dtype)?;
    let row_bytes = [(width * x.dtype().size_in_bytes()) as u64, (width * out_dtype.size_in_bytes()) as u64];
    if width == 0 {
        return Ok(out);
    }
    let key = UnaryKey { op: unary_op, in_dtype: x.dtype(), out_dtype }.into();
    launch_chunks(op, gpu, rows, &row_bytes, &key, |chunk| {
        let n_elements = chunk.len() * width;
        let params = UnaryParams { n_elements: index_u32(op, n_elements)?, ..Default::default() };
        let bindings = UnaryBindings {
            x: BufferWindow::rows(x.storage(), row_bytes[0], chunk),
            y: BufferWindow::rows(out.storage(), row_bytes[1], chunk),
        };
        Ok(Launch {
            params: bytemuck::bytes_of(&params).to_vec(),
            buffers: bindings.into_vec(),
            workgroups: per_word_workgroups(op, n_elements, 4 / out_dtype.size_in_bytes())?,
        })
    })?;
    Ok(out)
}

/// MLX's `a + b` for `b` of `a`'s shape or a row `(a.shape[-1],)` (with any leading 1s) added to
/// every row; computed in f32 and rounded once to `promote(a, b)`.
///
/// # Errors
/// Non-floating operands, other shapes of `b`, tensors on different devices, device errors.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", BinaryOp::Add, a, b)
}

/// MLX's `a * b`, with the shapes of [`add`].
///
/// # Errors
/// As [`add`].
pub fn multiply(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("multiply", BinaryOp::Multiply, a, b)
}

fn binary(op: &'static str, binary_op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    float_operand(op, "a", a)?;
    float_operand(op, "b", b)?;
    same_device(op, &[a, b])?;
    let (rows, width) = a.rows_and_width();
    let same_shape = a.shape() == b.shape();
    let is_row =
        b.ndim() <= a.ndim() && b.shape().last() == Some(&width) && b.shape().iter().rev().skip(1).all(|&d| d == 1);
    if !(same_shape || is_row) {
        return Err(Error::ShapeMismatch {
            op,
            what: "b (a's shape, or one row of it)",
            expected: a.shape().to_vec(),
            actual: b.shape().to_vec(),
        });
    }
    if !same_shape {
        fits_binding(op, b)?;
    }
    let out_dtype = a.dtype().promote(b.dtype());
    let gpu = a.gpu();
    let out = Tensor::zeros_for(op, gpu, a.shape(), out_dtype)?;
    let row_bytes = [
        (width * a.dtype().size_in_bytes()) as u64,
        (width * b.dtype().size_in_bytes()) as u64,
        (width * out_dtype.size_in_bytes()) as u64,
    ];
    if width == 0 {
        return Ok(out);
    }
    let key = BinaryKey { op: binary_op, a_dtype: a.dtype(), b_dtype: b.dtype(), out_dtype }.into();
    launch_chunks(op, gpu, rows, &row_bytes, &key, |chunk| {
        let n_elements = chunk.len() * width;
        // A same-shape b is chunked with a; a row of b is bound whole and repeats.
        let (b_window, b_len) = if same_shape {
            (BufferWindow::rows(b.storage(), row_bytes[1], chunk), n_elements)
        } else {
            (whole(b), width)
        };
        let params =
            BinaryParams { n_elements: index_u32(op, n_elements)?, b_len: index_u32(op, b_len)?, ..Default::default() };
        let bindings = BinaryBindings {
            a: BufferWindow::rows(a.storage(), row_bytes[0], chunk),
            b: b_window,
            y: BufferWindow::rows(out.storage(), row_bytes[2], chunk),
        };
        Ok(Launch {
            params: bytemuck::bytes_of(&params).to_vec(),
            buffers: bindings.into_vec(),
            workgroups: per_word_workgroups(op, n_elements, 4 / out_dtype.size_in_bytes())?,
        })
    })?;
    Ok(out)
}

/// MLX's `fast.scaled_dot_product_attention` for inputs laid out as a Linear layer writes them:
/// `q` is `(..., queries, n_heads * head_dim)`, `k` and `v` are `(..., keys, n_heads * head_dim)`
/// with the same leading dimensions; the result has `q`'s shape. Per head,
/// `softmax(scale · q kᵀ) v`, with the scores kept in f32 and the probabilities rounded to `v`'s
/// dtype before the second product. With `causal`, query `i` sees keys `j <= i + keys - queries`.
/// Heads are read in place (strided), so nothing is transposed.
///
/// # Errors
/// Non-floating or mixed dtypes, rank < 2, mismatched shapes, a model width not divisible by
/// `n_heads`, causal attention with more queries than keys, device errors.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_heads: usize,
    scale: f32,
    causal: bool,
) -> Result<Tensor> {
    let op = "scaled_dot_product_attention";
    float_operand(op, "q", q)?;
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(Error::DTypesDiffer { op, what: "q, k and v", dtypes: vec![q.dtype(), k.dtype(), v.dtype()] });
    }
    if q.ndim() < 2 {
        return Err(Error::NdimMismatch { op, what: "q", expected: "at least 2", ndim: q.ndim() });
    }
    let lead = &q.shape()[..q.ndim() - 2];
    let (queries, dims) = (q.shape()[q.ndim() - 2], q.shape()[q.ndim() - 1]);
    let keys = if k.ndim() == q.ndim() { k.shape()[k.ndim() - 2] } else { 0 };
    let kv_shape = [lead, &[keys, dims]].concat();
    for (what, t) in [("k", k), ("v", v)] {
        if t.shape() != kv_shape.as_slice() {
            return Err(Error::ShapeMismatch { op, what, expected: kv_shape.clone(), actual: t.shape().to_vec() });
        }
    }
    if n_heads == 0 || dims % n_heads != 0 {
        return Err(Error::NotDivisible { op, what: "the model width", value: dims, divisor: n_heads });
    }
    let head_dim = dims / n_heads;
    let batch: usize = lead.iter().product();
    let dtype = q.dtype();

    // scores[b, h, i, j] = Σ_d q[b, i, h·hd + d] k[b, j, h·hd + d], kept in f32.
    let scores_layout = MatmulLayout {
        m: queries,
        n: keys,
        k: head_dim,
        batch_outer: batch,
        batch_inner: n_heads,
        x: Strides { outer: queries * dims, inner: head_dim, row: dims },
        w: Strides { outer: keys * dims, inner: head_dim, row: dims },
        y: Strides { outer: n_heads * queries * keys, inner: queries * keys, row: keys },
    };
    let scores_shape = [lead, &[n_heads, queries, keys]].concat();
    let scores = batched_matmul(op, q, k, true, scores_layout, &scores_shape, DType::F32)?;
    let probs = softmax_rows(&scores, scale, causal.then_some(queries), dtype)?;
    // out[b, i, h·hd + d] = Σ_j p[b, h, i, j] v[b, j, h·hd + d].
    let out_layout = MatmulLayout {
        m: queries,
        n: head_dim,
        k: keys,
        batch_outer: batch,
        batch_inner: n_heads,
        x: scores_layout.y,
        w: Strides { outer: keys * dims, inner: head_dim, row: dims },
        y: Strides { outer: queries * dims, inner: head_dim, row: dims },
    };
    batched_matmul(op, &probs, v, false, out_layout, q.shape(), dtype)
}

/// Workgroups for a kernel with one invocation per output word of `per_word` elements.
fn per_word_workgroups(op: &'static str, n_elements: usize, per_word: usize) -> Result<u32> {
    index_u32(op, n_elements.div_ceil(per_word).div_ceil(ELEMENTWISE_WG_SIZE as usize))
}
