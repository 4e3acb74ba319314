//! `quantize` and `dequantize` (MLX's `mx.quantize` / `mx.dequantize`): the affine mode and
//! the fp modes (mxfp4, mxfp8, nvfp4).

use super::launch::{launch_chunks, Launch};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::BufferWindow;
use crate::kernels::{
    DequantizeBindings, DequantizeKey, DequantizeParams, FpQuantizeBindings, FpQuantizeKey, FpQuantizeParams,
    QuantizeBindings, QuantizeKey, QuantizeParams, ELEMENTWISE_WG_SIZE, FP_GROUPS_PER_INVOCATION,
};
use crate::params::QuantParams;
use crate::tensor::{Quantized, Tensor};

/// Quantizes `w` in groups of `params.group_size` along its last axis, as `mx.quantize` does
/// on MLX's CPU: the result is bit for bit what MLX 0.32.4 produces.
///
/// `w` is f32, f16 or bf16 of rank >= 2. Affine: scales and biases come back in `w`'s dtype.
/// The fp modes (mxfp4, mxfp8, nvfp4): `u8` scales (E8M0 or E4M3 bytes) and no biases. Tensors
/// larger than one storage binding are processed in chunks of rows.
///
/// # Errors
/// MLX's errors, in MLX's order: a non-floating input, rank < 2, a last axis not divisible by
/// the group size, an unsupported group size or bit width (or not the fp mode's); device
/// errors.
///
/// # Example
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::{Gpu, QuantParams, Tensor};
/// let gpu = Gpu::new()?;
/// let w = Tensor::from_slice(&gpu, &vec![0.5f32; 4 * 64], &[4, 64])?;
/// let q = wgquant::quantize(&w, QuantParams::default())?;
/// assert_eq!(q.weight.shape(), &[4, 8]);
/// # Ok(()) }
/// ```
pub fn quantize(w: &Tensor, params: QuantParams) -> Result<Quantized> {
    let op = "quantize";
    if !w.dtype().is_float() {
        return Err(Error::NotFloatingInput { op, dtype: w.dtype() });
    }
    if w.ndim() < 2 {
        return Err(Error::NdimTooSmall { op, verb: "quantized", ndim: w.ndim() });
    }
    let (rows, k) = w.rows_and_width();
    let group_size = params.group_size as usize;
    if group_size == 0 {
        return Err(Error::UnsupportedGroupSize { op, group_size: params.group_size });
    }
    if k % group_size != 0 {
        return Err(Error::NotDivisibleByGroup { op, group_size: params.group_size, shape: w.shape().to_vec() });
    }
    params.validate(op)?;
    if params.mode.is_fp() {
        return fp_quantize(w, params);
    }

    let gpu = w.gpu();
    let dtype = w.dtype();
    let packed_width = params.packed_width(k);
    let groups_per_row = k / group_size;
    let lead = &w.shape()[..w.ndim() - 1];
    let with_last = |last: usize| [lead, &[last]].concat();
    let weight = Tensor::zeros_for(op, gpu, &with_last(packed_width), DType::U32)?;
    let scales = Tensor::zeros_for(op, gpu, &with_last(groups_per_row), dtype)?;
    let biases = Tensor::zeros_for(op, gpu, &with_last(groups_per_row), dtype)?;

    // Only a non-empty w reaches the row sizes, and its rows exist in memory, so they fit.
    if rows > 0 && k > 0 {
        let row_bytes = [
            (k * dtype.size_in_bytes()) as u64,
            (packed_width * 4) as u64,
            (groups_per_row * dtype.size_in_bytes()) as u64,
        ];
        let key = QuantizeKey { dtype, bits: params.bits, group_size: params.group_size }.into();
        let groups_per_invocation = 4 / dtype.size_in_bytes();
        launch_chunks(op, gpu, rows, &row_bytes, &key, |rows| {
            let n_groups = (rows.end - rows.start) * groups_per_row;
            let invocations = n_groups.div_ceil(groups_per_invocation);
            let bindings = QuantizeBindings {
                w: BufferWindow::rows(w.storage(), row_bytes[0], rows),
                w_q: BufferWindow::rows(weight.storage(), row_bytes[1], rows),
                scales: BufferWindow::rows(scales.storage(), row_bytes[2], rows),
                biases: BufferWindow::rows(biases.storage(), row_bytes[2], rows),
            };
            let params = QuantizeParams { n_groups: n_groups as u32, ..Default::default() };
            Ok(Launch {
                params: bytemuck::bytes_of(&params).to_vec(),
                buffers: bindings.into_vec(),
                workgroups: invocations.div_ceil(ELEMENTWISE_WG_SIZE as usize) as u32,
            })
        })?;
    }
    Ok(Quantized { weight, scales, biases: Some(biases), params })
}

/// [`quantize`] in an fp mode, whose parameters are checked.
fn fp_quantize(w: &Tensor, params: QuantParams) -> Result<Quantized> {
    let op = "quantize";
    let gpu = w.gpu();
    let dtype = w.dtype();
    let (rows, k) = w.rows_and_width();
    let packed_width = params.packed_width(k);
    let groups_per_row = k / params.group_size as usize;
    let lead = &w.shape()[..w.ndim() - 1];
    let with_last = |last: usize| [lead, &[last]].concat();
    let weight = Tensor::zeros_for(op, gpu, &with_last(packed_width), DType::U32)?;
    let scales = Tensor::zeros_for(op, gpu, &with_last(groups_per_row), DType::U8)?;

    // As for affine: only a non-empty w reaches the row sizes, which then fit.
    if rows > 0 && k > 0 {
        let row_bytes = [(k * dtype.size_in_bytes()) as u64, (packed_width * 4) as u64, groups_per_row as u64];
        let key = FpQuantizeKey { dtype, mode: params.mode }.into();
        launch_chunks(op, gpu, rows, &row_bytes, &key, |rows| {
            let n_groups = (rows.end - rows.start) * groups_per_row;
            let bindings = FpQuantizeBindings {
                w: BufferWindow::rows(w.storage(), row_bytes[0], rows),
                w_q: BufferWindow::rows(weight.storage(), row_bytes[1], rows),
                scales: BufferWindow::rows(scales.storage(), row_bytes[2], rows),
            };
            let params = FpQuantizeParams { n_groups: n_groups as u32, ..Default::default() };
            Ok(Launch {
                params: bytemuck::bytes_of(&params).to_vec(),
                buffers: bindings.into_vec(),
                workgroups: n_groups.div_ceil(FP_GROUPS_PER_INVOCATION).div_ceil(ELEMENTWISE_WG_SIZE as usize) as u32,
            })
        })?;
    }
    Ok(Quantized { weight, scales, biases: None, params })
}

/// Dequantizes `q` as MLX's CPU does, bit for bit, into `dtype`.
///
/// Affine: `scale * code + bias` per element, computed in the scales' dtype (two roundings),
/// then cast to `dtype` (default: the scales' dtype). The fp modes: element times scale,
/// rounded once to `dtype` after the scale is rounded to it (default: bfloat16, MLX's rule).
///
/// # Errors
/// A non-floating `dtype`; the shape checks of [`Quantized::from_parts`] (the fields are public,
/// so they are checked again); device errors.
pub fn dequantize(q: &Quantized, dtype: Option<DType>) -> Result<Tensor> {
    let op = "dequantize";
    if let Some(dtype) = dtype.filter(|d| !d.is_float()) {
        return Err(Error::NotFloatingOutput { op, dtype });
    }
    q.validate(op)?;
    // The fp modes have no biases: their kernel binds the scales in that place.
    let biases = match (&q.biases, q.params.mode.is_fp()) {
        (_, true) => &q.scales,
        (Some(biases), false) => biases,
        (None, false) => return Err(Error::MissingBiases { op }),
    };
    let scale_dtype = q.scales.dtype();
    let out_dtype = dtype.unwrap_or(if q.params.mode.is_fp() { DType::BF16 } else { scale_dtype });
    let params = q.params;
    let gpu = q.weight.gpu();
    let (rows, packed_width) = q.weight.rows_and_width();
    let k = q.logical_shape().last().copied().unwrap_or(0);
    let groups_per_row = k / params.group_size as usize;
    let out = Tensor::zeros_for(op, gpu, &q.logical_shape(), out_dtype)?;

    // As in quantize: only a non-empty matrix reaches the row sizes, which then fit.
    if rows > 0 && k > 0 {
        let row_bytes = [
            (packed_width * 4) as u64,
            (groups_per_row * scale_dtype.size_in_bytes()) as u64,
            (k * out_dtype.size_in_bytes()) as u64,
        ];
        let key = if params.mode.is_fp() {
            DequantizeKey::fp(params.mode, out_dtype)
        } else {
            DequantizeKey {
                mode: params.mode,
                scale_dtype,
                out_dtype,
                bits: params.bits,
                group_size: params.group_size,
            }
        }
        .into();
        let per_word = 4 / out_dtype.size_in_bytes();
        launch_chunks(op, gpu, rows, &row_bytes, &key, |rows| {
            let n_elements = (rows.end - rows.start) * k;
            let bindings = DequantizeBindings {
                w_q: BufferWindow::rows(q.weight.storage(), row_bytes[0], rows),
                scales: BufferWindow::rows(q.scales.storage(), row_bytes[1], rows),
                biases: BufferWindow::rows(biases.storage(), row_bytes[1], rows),
                out: BufferWindow::rows(out.storage(), row_bytes[2], rows),
            };
            let params = DequantizeParams { n_elements: n_elements as u32, ..Default::default() };
            Ok(Launch {
                params: bytemuck::bytes_of(&params).to_vec(),
                buffers: bindings.into_vec(),
                workgroups: n_elements.div_ceil(per_word).div_ceil(ELEMENTWISE_WG_SIZE as usize) as u32,
            })
        })?;
    }
    Ok(out)
}
