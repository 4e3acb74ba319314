//! mlx-lm's `_gather_sort` on the GPU: (token, expert) pairs grouped by expert, for a
//! mixture-of-experts block's sorted `gather_qmm` (see `wgsl/gather_sort.wgsl`).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Dispatch;
use crate::kernels::{GatherSortBindings, GatherSortKey, GatherSortParams, ELEMENTWISE_WG_SIZE};
use crate::tensor::Tensor;

use super::launch::whole;
use super::validate::fits_binding;

/// The pairs of [`gather_sort`], grouped by expert.
#[derive(Clone, Debug)]
pub struct GatherSorted {
    /// Per sorted pair, the token (row of x flattened to `(tokens, dims)`) it multiplies:
    /// mlx-lm's `order // M`.
    pub x_rows: Tensor,
    /// Per sorted pair, its expert: mlx-lm's `indices[order]`, ascending.
    pub indices: Tensor,
    /// Per pair in the original order, its place among the sorted ones: mlx-lm's
    /// `argsort(order)`, which unsorts the products.
    pub inv_order: Tensor,
}

/// mlx-lm's `_gather_sort(x, indices)` without x (which the caller gathers by
/// [`GatherSorted::x_rows`]): `indices` `(..., M)` of `uint32` experts, `M` per token, sorted
/// stably by expert. Every output is `uint32` of shape `(indices.size,)`, computed on the GPU.
///
/// # Errors
/// `indices` not `uint32` or of rank 0, larger than one storage binding; device errors.
pub fn gather_sort(indices: &Tensor) -> Result<GatherSorted> {
    let op = "gather_sort";
    if indices.dtype() != DType::U32 {
        return Err(Error::UnsupportedDType { op, what: "indices", dtype: indices.dtype(), supported: "uint32" });
    }
    let per_token = *indices.shape().last().ok_or(Error::NdimMismatch {
        op,
        what: "the indices",
        expected: "at least 1",
        ndim: 0,
    })?;
    fits_binding(op, indices)?;
    let gpu = indices.gpu();
    let pairs = indices.len();
    let output = || Tensor::output_for(op, gpu, &[pairs], DType::U32, false);
    let sorted = GatherSorted { x_rows: output()?, indices: output()?, inv_order: output()? };
    if pairs == 0 {
        return Ok(sorted);
    }
    let too_many = |_| Error::ExceedsDeviceLimit { op, what: "pairs", value: pairs as u64, limit: u32::MAX.into() };
    let params = GatherSortParams {
        pairs: u32::try_from(pairs).map_err(too_many)?,
        per_token: u32::try_from(per_token).map_err(too_many)?,
        ..GatherSortParams::default()
    };
    let pipeline = gpu.pipeline(&GatherSortKey.into())?;
    let dispatch = Dispatch {
        pipeline: &pipeline,
        params: bytemuck::bytes_of(&params).into(),
        buffers: GatherSortBindings {
            indices: whole(indices),
            x_rows: whole(&sorted.x_rows),
            sorted: whole(&sorted.indices),
            inv_order: whole(&sorted.inv_order),
        }
        .into_vec(),
        workgroups: params.pairs.div_ceil(ELEMENTWISE_WG_SIZE),
    };
    gpu.submit(op, &[dispatch])?;
    Ok(sorted)
}
