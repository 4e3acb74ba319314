//! Tensors in host memory: the bytes of one safetensors entry, on their way to or from the GPU.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::{element_count, Tensor};

/// A row-major tensor in host memory, little-endian as safetensors stores it.
///
/// The bytes live in `u32` words so that every dtype can be viewed in place (f16 and u8 data
/// need no alignment beyond 4 bytes); the words past `len` bytes are padding.
#[derive(Clone, PartialEq, Eq)]
pub struct HostTensor {
    dtype: DType,
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
pub(crate) fn byte_count(shape: &[usize], dtype: DType) -> Option<usize> {
    element_count(shape)?.checked_mul(dtype.size_in_bytes())
}

impl HostTensor {
    /// A zero tensor whose bytes the caller fills through `bytes_mut`.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] when the size overflows.
    pub(crate) fn zeroed(dtype: DType, shape: &[usize]) -> Result<HostTensor> {
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
        let mut tensor = HostTensor::zeroed(T::DTYPE, shape)?;
        tensor.bytes_mut().copy_from_slice(bytemuck::cast_slice(values));
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
    /// Device errors (buffer too large, out of memory).
    pub fn to_gpu(&self, gpu: &Gpu) -> Result<Tensor> {
        match self.dtype {
            DType::F32 => Tensor::from_slice(gpu, self.values::<f32>(), &self.shape),
            DType::F16 => Tensor::from_slice(gpu, self.values::<f16>(), &self.shape),
            DType::BF16 => Tensor::from_slice(gpu, self.values::<bf16>(), &self.shape),
            DType::U32 => Tensor::from_slice(gpu, self.values::<u32>(), &self.shape),
            DType::U8 => Tensor::from_slice(gpu, self.values::<u8>(), &self.shape),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
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

    /// Float values widened to f32 (exact), or `None` for integer tensors.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            DType::F32 => Some(self.values::<f32>().to_vec()),
            DType::F16 => Some(self.values::<f16>().to_f32_vec()),
            DType::BF16 => Some(self.values::<bf16>().to_f32_vec()),
            DType::U32 | DType::U8 => None,
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
    /// `astype` does. Integer tensors, and tensors already of `dtype`, come back unchanged.
    ///
    /// # Errors
    /// [`Error::ShapeOverflow`] when the converted tensor's size overflows.
    pub fn cast(self, dtype: DType) -> Result<HostTensor> {
        if self.dtype == dtype || !dtype.is_float() {
            return Ok(self);
        }
        let Some(values) = self.to_f32() else { return Ok(self) };
        let mut cast = HostTensor::zeroed(dtype, &self.shape)?;
        match dtype {
            DType::F16 => cast.values_mut::<f16>().convert_from_f32_slice(&values),
            DType::BF16 => cast.values_mut::<bf16>().convert_from_f32_slice(&values),
            _ => cast.values_mut::<f32>().copy_from_slice(&values),
        }
        Ok(cast)
    }
}
