//! Checks the float ops share: made before any GPU work, so bad input comes back as a typed
//! error and never as a wgpu validation error.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `t` must hold f32, f16 or bf16.
pub(super) fn float_operand(op: &'static str, what: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::NotFloatOperand { op, what, dtype: t.dtype() })
    }
}

/// All tensors must live on the first one's device.
pub(super) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    match tensors.split_first() {
        Some((first, rest)) if rest.iter().any(|t| !t.gpu().same_device(first.gpu())) => {
            Err(Error::DeviceMismatch { op })
        }
        _ => Ok(()),
    }
}

/// `t` is bound whole, so it must fit one storage binding.
pub(super) fn fits_binding(op: &'static str, t: &Tensor) -> Result<()> {
    let limit = t.gpu().caps().max_binding();
    if t.size_in_bytes() > limit {
        return Err(Error::ExceedsDeviceLimit {
            op,
            what: "an operand bound whole in one storage binding (bytes)",
            value: t.size_in_bytes(),
            limit,
        });
    }
    Ok(())
}

/// The number of elements as the `u32` kernels index with.
pub(super) fn index_u32(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::ExceedsDeviceLimit {
        op,
        what: "elements addressed by one kernel",
        value: n as u64,
        limit: u64::from(u32::MAX),
    })
}
