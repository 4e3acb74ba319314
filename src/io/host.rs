//! Tensors in host memory: the bytes of one safetensors entry, on their way to or from the GPU.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::file_dtype::FileDType;
use crate::tensor::{element_count, Tensor};

/// A row-major tensor in host memory, little-endian as safetensors stores it.
///
/// The bytes live in `u32` words so that every dtype can be viewed in place (f16 and u8 data
/// need no alignment beyond 4 bytes); the words past `len` bytes are padding.
#[derive(Clone, PartialEq, Eq)]
pub struct HostTensor {
    dtype: FileDType,
    shape: Vec<usize>,
    words: Vec<u32>,
    len: usize,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTensor").field("dtype", &self.dtype).field("shape", &self.shape).finish()
    }
}

/// Bytes a tensor of `shape` and `dtype` takes, or `None` on overflow.
pub(crate) fn byte_count(shape: &[usize], dtype: FileDType) -> Option<usize> {
    element_count(shape)?.checked_mul(dtype.size_in_bytes())
}

impl HostTensor {
    /// A zero tensor whose bytes the caller fills through `bytes_mut`.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] when the size overflows.
    pub(crate) fn zeroed(dtype: FileDType, shape: &[usize]) -> Result<HostTensor> {
        let len = byte_count(shape, dtype)
            .ok_or_else(|| Error::ShapeOverflow { op: "HostTensor::zeroed", shape: shape.to_vec() })?;
        Ok(HostTensor { dtype, shape: shape.to_vec(), words: vec![0; len.div_ceil(4)], len })
    }

    /// A tensor holding `values`.
    ///
    /// # Errors
    /// [`Error::DataLength`] when `values.len()` is not the product of `shape`.
    pub fn from_values<T: Element>(values: &[T], shape: &[usize]) -> Result<HostTensor> {
        let op = "HostTensor::from_values";
        if element_count(shape) != Some(values.len()) {
            return Err(Error::DataLength { op, len: values.len(), shape: shape.to_vec() });
        }
        let mut tensor = HostTensor::zeroed(T::DTYPE.into(), shape)?;
        tensor.bytes_mut().copy_from_slice(bytemuck::cast_slice(values));
        Ok(tensor)
    }

    /// A tensor of `dtype` holding `bytes` as they are (little-endian, as safetensors stores
    /// them), for the types with no Rust element type here (`int64`, `bool`, fp8, ...).
    ///
    /// # Errors
    /// [`Error::DataLength`] when `bytes` is not the size of `shape` in `dtype`.
    pub fn from_bytes(dtype: FileDType, bytes: &[u8], shape: &[usize]) -> Result<HostTensor> {
        if byte_count(shape, dtype) != Some(bytes.len()) {
            let len = bytes.len() / dtype.size_in_bytes();
            return Err(Error::DataLength { op: "HostTensor::from_bytes", len, shape: shape.to_vec() });
        }
        let mut tensor = HostTensor::zeroed(dtype, shape)?;
        tensor.bytes_mut().copy_from_slice(bytes);
        Ok(tensor)
    }

    /// Copies a GPU tensor to the host (waits for pending work).
    ///
    /// # Errors
    /// Device errors.
    pub fn from_gpu(tensor: &Tensor) -> Result<HostTensor> {
        match tensor.dtype() {
            DType::F32 => HostTensor::from_values(&tensor.to_vec::<f32>()?, tensor.shape()),
            DType::F16 => HostTensor::from_values(&tensor.to_vec::<f16>()?, tensor.shape()),
            DType::BF16 => HostTensor::from_values(&tensor.to_vec::<bf16>()?, tensor.shape()),
            DType::U32 => HostTensor::from_values(&tensor.to_vec::<u32>()?, tensor.shape()),
            DType::U8 => HostTensor::from_values(&tensor.to_vec::<u8>()?, tensor.shape()),
        }
    }

    /// Copies the tensor to the GPU.
    ///
    /// # Errors
    /// [`Error::NotOnGpu`] for a type GPU tensors do not have (`int64`, `float64`, ...); device
    /// errors (buffer too large, out of memory).
    pub fn to_gpu(&self, gpu: &Gpu) -> Result<Tensor> {
        match self.dtype.to_dtype() {
            Some(DType::F32) => Tensor::from_slice(gpu, self.values::<f32>(), &self.shape),
            Some(DType::F16) => Tensor::from_slice(gpu, self.values::<f16>(), &self.shape),
            Some(DType::BF16) => Tensor::from_slice(gpu, self.values::<bf16>(), &self.shape),
            Some(DType::U32) => Tensor::from_slice(gpu, self.values::<u32>(), &self.shape),
            Some(DType::U8) => Tensor::from_slice(gpu, self.values::<u8>(), &self.shape),
            None => Err(Error::NotOnGpu { dtype: self.dtype }),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> FileDType {
        self.dtype
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The data, little-endian.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    /// The data, for filling in place.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    /// The elements as `T`.
    ///
    /// # Panics
    /// When `T` is not the tensor's dtype (a caller bug, not bad input).
    pub fn values<T: Element>(&self) -> &[T] {
        assert_eq!(T::DTYPE, self.dtype, "HostTensor::values: wrong element type");
        let n = self.len / self.dtype.size_in_bytes();
        &bytemuck::cast_slice(&self.words)[..n]
    }

    /// Float values as f32, or `None` for non-float tensors. Exact for f16, bf16 and f32;
    /// f64 rounds to nearest even, as MLX's `astype(float32)` does.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            FileDType::F32 => Some(self.values::<f32>().to_vec()),
            FileDType::F16 => Some(self.values::<f16>().to_f32_vec()),
            FileDType::BF16 => Some(self.values::<bf16>().to_f32_vec()),
            FileDType::F64 => Some(self.f64_values().map(|x| x as f32).collect()),
            _ => None,
        }
    }

    /// The elements of an f64 tensor.
    fn f64_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.bytes().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")))
    }

    /// How many elements are NaN or infinite (0 for non-float tensors).
    pub fn non_finite_count(&self) -> u64 {
        let count = |it: &mut dyn Iterator<Item = bool>| it.filter(|finite| !finite).count() as u64;
        match self.dtype {
            FileDType::F32 => count(&mut self.values::<f32>().iter().map(|x| x.is_finite())),
            FileDType::F16 => count(&mut self.values::<f16>().iter().map(|x| x.is_finite())),
            FileDType::BF16 => count(&mut self.values::<bf16>().iter().map(|x| x.is_finite())),
            FileDType::F64 => count(&mut self.f64_values().map(f64::is_finite)),
            _ => 0,
        }
    }

    /// The elements as `T`, for filling in place.
    ///
    /// # Panics
    /// When `T` is not the tensor's dtype (a caller bug, not bad input).
    fn values_mut<T: Element>(&mut self) -> &mut [T] {
        assert_eq!(T::DTYPE, self.dtype, "HostTensor::values_mut: wrong element type");
        let n = self.len / self.dtype.size_in_bytes();
        &mut bytemuck::cast_slice_mut(&mut self.words)[..n]
    }

    /// The tensor converted to the float type `dtype`, rounding to nearest even as MLX's
    /// `astype` does (f64 through f32, as MLX rounds it). Non-float tensors (integers, bool,
    /// fp8), and tensors already of `dtype`, come back unchanged.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] when the converted tensor's size overflows.
    pub fn cast(self, dtype: DType) -> Result<HostTensor> {
        if self.dtype == dtype || !dtype.is_float() {
            return Ok(self);
        }
        let Some(values) = self.to_f32() else { return Ok(self) };
        let mut cast = HostTensor::zeroed(dtype.into(), &self.shape)?;
        match dtype {
            DType::F16 => cast.values_mut::<f16>().convert_from_f32_slice(&values),
            DType::BF16 => cast.values_mut::<bf16>().convert_from_f32_slice(&values),
            _ => cast.values_mut::<f32>().copy_from_slice(&values),
        }
        Ok(cast)
    }
}
