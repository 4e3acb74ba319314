//! GPU tensors: a buffer with a shape and a dtype, and the quantized triple MLX returns.

use std::sync::Arc;

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, TensorBuffer};
use crate::params::QuantParams;

/// A row-major array in GPU memory. Clones share the buffer.
#[derive(Clone)]
pub struct Tensor {
    gpu: Gpu,
    buffer: Arc<TensorBuffer>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor").field("shape", &self.shape).field("dtype", &self.dtype).finish()
    }
}

/// Elements in `shape`, or `None` on overflow. A zero axis makes any shape empty, however large
/// its other axes (`[2^40, 2^40, 0]` has no elements, not an overflowing count).
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn byte_size(op: &'static str, shape: &[usize], dtype: DType) -> Result<u64> {
    element_count(shape)
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .map(|b| b as u64)
        .ok_or_else(|| Error::ShapeOverflow { op, shape: shape.to_vec() })
}

impl Tensor {
    /// Copies `data` to the GPU as a tensor of `shape`.
    ///
    /// # Errors
    /// [`Error::DataLength`] when `data.len()` is not the product of `shape`; device errors
    /// when the buffer cannot be created (too large, out of memory).
    pub fn from_slice<T: Element>(gpu: &Gpu, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let op = "Tensor::from_slice";
        byte_size(op, shape, T::DTYPE)?;
        if element_count(shape) != Some(data.len()) {
            return Err(Error::DataLength { op, len: data.len(), shape: shape.to_vec() });
        }
        let buffer = gpu.upload_buffer(op, bytemuck::cast_slice(data))?;
        Ok(Tensor { gpu: gpu.clone(), buffer: Arc::new(buffer), shape: shape.to_vec(), dtype: T::DTYPE })
    }

    /// A tensor of zeros.
    ///
    /// # Errors
    /// Device errors when the buffer cannot be created.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::zeros_for("Tensor::zeros", gpu, shape, dtype)
    }

    /// [`Tensor::zeros`] for `op`'s output: errors (a buffer over the device's limit, out of
    /// memory) name `op`, and so does the buffer's label.
    pub(crate) fn zeros_for(op: &'static str, gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::output_for(op, gpu, shape, dtype, true)
    }

    /// A tensor for `op`'s kernels to write, named like [`Tensor::zeros_for`]'s: zeroed when
    /// `zeroed` (kernels that OR 16-bit halves into shared words need it), else holding
    /// whatever its pooled buffer held, for kernels that write every word.
    pub(crate) fn output_for(
        op: &'static str,
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        zeroed: bool,
    ) -> Result<Tensor> {
        let size = byte_size(op, shape, dtype)?;
        let buffer = gpu.output_buffer(op, size, zeroed)?;
        Ok(Tensor { gpu: gpu.clone(), buffer: Arc::new(buffer), shape: shape.to_vec(), dtype })
    }

    /// Wraps `buffer`, which the caller created on `gpu`'s device, as a tensor of `shape` and
    /// `dtype` without copying it: ops read and write the caller's memory. The layout is
    /// wgquant's ([`DType`]): row-major elements packed into little-endian words.
    ///
    /// ```no_run
    /// # fn main() -> wgquant::Result<()> {
    /// use wgquant::{wgpu, DType, Gpu, Tensor};
    /// let gpu = Gpu::new()?;
    /// let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: Some("activations"),
    ///     size: 4 * 64 * 4,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    ///     mapped_at_creation: false,
    /// });
    /// let x = Tensor::from_buffer(&gpu, buffer, &[4, 64], DType::F32)?;
    /// assert_eq!(x.to_vec::<f32>()?, vec![0.0; 256]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] when the buffer holds fewer bytes than `shape` needs (rounded
    /// up to a whole word); [`Error::BufferUsage`] without `STORAGE`, `COPY_SRC` and `COPY_DST`.
    pub fn from_buffer(gpu: &Gpu, buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let op = "Tensor::from_buffer";
        let needed = byte_size(op, shape, dtype)?.next_multiple_of(4);
        if buffer.size() < needed {
            return Err(Error::BufferTooSmall { op, size: buffer.size(), needed });
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        if !buffer.usage().contains(usage) {
            return Err(Error::BufferUsage { op, usage: format!("{:?}", buffer.usage()) });
        }
        let buffer = gpu.wrap_buffer(buffer);
        Ok(Tensor { gpu: gpu.clone(), buffer: Arc::new(buffer), shape: shape.to_vec(), dtype })
    }

    /// Copies the tensor to the host, waiting for pending GPU work (with the deadline).
    ///
    /// # Errors
    /// [`Error::DTypeMismatch`] when `T` is not the tensor's dtype; [`Error::Timeout`] and other
    /// device errors.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch { op: "Tensor::to_vec", actual: self.dtype, requested: T::DTYPE });
        }
        let bytes = self.gpu.read_buffer("Tensor::to_vec", &self.buffer, self.size_in_bytes())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The same data viewed with another shape of equal element count.
    ///
    /// # Errors
    /// [`Error::DataLength`] when the element counts differ.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if element_count(shape) != Some(self.len()) {
            return Err(Error::DataLength { op: "Tensor::reshape", len: self.len(), shape: shape.to_vec() });
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of data (without the padding to a whole word).
    pub fn size_in_bytes(&self) -> u64 {
        (self.len() * self.dtype.size_in_bytes()) as u64
    }

    /// The GPU this tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The underlying wgpu buffer (row-major elements, padded to a multiple of 4 bytes), ready
    /// for the caller's own commands: a zeroed tensor whose clear wgquant still owes (reused
    /// memory is cleared with its next submission) is cleared first, so that work the caller
    /// submits on its own queue sees zeros.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.gpu.settle_clear(&self.buffer);
        &self.buffer
    }

    /// The buffer as wgquant's own ops bind it: their work is submitted after any clear owed.
    pub(crate) fn storage(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Rows of the last axis and the length of that axis (`(0, 0)` for rank 0).
    pub(crate) fn rows_and_width(&self) -> (usize, usize) {
        match self.shape.split_last() {
            Some((&k, lead)) => (element_count(lead).unwrap_or(0), k),
            None => (1, 1),
        }
    }
}

/// A quantized matrix: MLX's `(w_q, scales, biases)` plus the parameters that made it.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// Packed codes, `u32`, shape `(..., K * bits / 32)`.
    pub weight: Tensor,
    /// One scale per group, shape `(..., K / group_size)`: the input's float dtype (affine), or
    /// `u8` bytes, E8M0 (mxfp4, mxfp8) or E4M3 (nvfp4).
    pub scales: Tensor,
    /// One bias per group (affine), same shape and dtype as `scales`; `None` in the fp modes.
    pub biases: Option<Tensor>,
    /// The parameters.
    pub params: QuantParams,
}

impl Quantized {
    /// Assembles a quantized matrix from its parts, with MLX's checks (`mx.dequantize`, spec
    /// §2.1) and MLX's words. Affine: float scales and biases of one dtype; the fp modes
    /// (mxfp4, mxfp8, nvfp4): `u8` scales and no biases.
    ///
    /// # Errors
    /// Unsupported parameters, a weight that is not `u32` or has rank < 2, missing biases in
    /// affine mode or biases in an fp mode, scales whose dtype does not fit the mode or whose
    /// shape does not match the weight for `params`.
    pub fn from_parts(
        weight: Tensor,
        scales: Tensor,
        biases: Option<Tensor>,
        params: QuantParams,
    ) -> Result<Quantized> {
        let q = Quantized { weight, scales, biases, params };
        q.validate("dequantize")?;
        Ok(q)
    }

    /// The checks of [`Quantized::from_parts`], with `op` in the messages.
    pub(crate) fn validate(&self, op: &'static str) -> Result<()> {
        let params = self.params;
        if params.mode.is_fp() {
            return self.validate_fp(op);
        }
        params.validate(op)?;
        let biases = self.biases.as_ref().ok_or(Error::MissingBiases { op })?;
        let (weight, scales) = (&self.weight, &self.scales);
        if !scales.dtype().is_float() || !biases.dtype().is_float() {
            return Err(Error::NotFloatingScales { op, scales: scales.dtype(), biases: biases.dtype() });
        }
        if scales.dtype() != biases.dtype() {
            return Err(Error::ScalesBiasesDType { op, scales: scales.dtype(), biases: biases.dtype() });
        }
        if weight.dtype() != DType::U32 {
            return Err(Error::WeightNotU32 { op });
        }
        if weight.ndim() < 2 {
            return Err(Error::NdimTooSmall { op, verb: "dequantized", ndim: weight.ndim() });
        }
        let (ws, ss, bs) = (weight.shape(), scales.shape(), biases.shape());
        let batch = ws.len() - 1;
        if ss.len() != ws.len() || bs != ss || ss[..batch] != ws[..batch] {
            return Err(Error::ScalesBatchShape { op });
        }
        let codes = params.unpacked_width(ws[batch]).ok_or_else(|| Error::ShapeOverflow { op, shape: ws.to_vec() })?;
        if Some(codes) != ss[batch].checked_mul(params.group_size as usize) {
            return Err(Error::ScalesShape {
                op,
                weight: ws.to_vec(),
                scales: ss.to_vec(),
                group_size: params.group_size,
                bits: params.bits,
            });
        }
        if !weight.gpu().same_device(scales.gpu()) || !weight.gpu().same_device(biases.gpu()) {
            return Err(Error::DeviceMismatch { op });
        }
        Ok(())
    }

    /// MLX's checks of an fp-mode matrix, in MLX's order (`dequantize` and `fp_dequantize` in
    /// `mlx/ops.cpp`): `uint8` scales, no biases, positive parameters, a `uint32` weight of rank
    /// >= 2, the mode's group size and bits, then the shapes.
    fn validate_fp(&self, op: &'static str) -> Result<()> {
        let (params, weight, scales) = (self.params, &self.weight, &self.scales);
        if scales.dtype() != DType::U8 {
            return Err(Error::FpScalesNotU8 { op, dtype: scales.dtype() });
        }
        if self.biases.is_some() {
            return Err(Error::FpBiases { op, mode: params.mode });
        }
        for (name, value) in [("bits", params.bits), ("group_size", params.group_size)] {
            if value == 0 {
                return Err(Error::InvalidQuantValue { op, name, value });
            }
        }
        if weight.dtype() != DType::U32 {
            return Err(Error::WeightNotU32 { op });
        }
        if weight.ndim() < 2 {
            return Err(Error::NdimTooSmall { op, verb: "dequantized", ndim: weight.ndim() });
        }
        params.validate(op)?;
        let (ws, ss) = (weight.shape(), scales.shape());
        let batch = ws.len() - 1;
        if ss.len() != ws.len() || ss[..batch] != ws[..batch] {
            return Err(Error::FpScalesBatchShape { op });
        }
        let codes = params.unpacked_width(ws[batch]).ok_or_else(|| Error::ShapeOverflow { op, shape: ws.to_vec() })?;
        if Some(codes) != ss[batch].checked_mul(params.group_size as usize) {
            return Err(Error::FpScalesShape { op, weight: ws.to_vec(), scales: ss.to_vec() });
        }
        if !weight.gpu().same_device(scales.gpu()) {
            return Err(Error::DeviceMismatch { op });
        }
        Ok(())
    }

    /// The shape of the matrix before quantization: `(..., K)`. (Fields set by hand that
    /// [`Quantized::from_parts`] would refuse may give a meaningless `K`, never a panic.)
    pub fn logical_shape(&self) -> Vec<usize> {
        let mut shape = self.weight.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.params.unpacked_width(*last).unwrap_or(usize::MAX);
        }
        shape
    }

    /// The MLX triple `(w_q, scales, biases)`.
    pub fn into_parts(self) -> (Tensor, Tensor, Option<Tensor>) {
        (self.weight, self.scales, self.biases)
    }

    /// Bytes of packed weights, scales and biases.
    pub fn size_in_bytes(&self) -> u64 {
        self.weight.size_in_bytes()
            + self.scales.size_in_bytes()
            + self.biases.as_ref().map_or(0, Tensor::size_in_bytes)
    }
}
