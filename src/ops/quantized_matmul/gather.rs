//! `gather_qmm` (MLX's `mx.gather_qmm`, affine mode): products of matrices of x and of w paired
//! by index arrays. The pairing is a batch table like the one `quantized_matmul` builds on the
//! host from broadcast batch shapes, but filled on the GPU from the indices by
//! `wgsl/gather_table.wgsl`, in the same submission as the products: the indices are never
//! read back. The matmul kernels (`qmv`, `qvm`, `qmm`) then run over it unchanged.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{BufferWindow, Dispatch, Scratch};
use crate::kernels::{
    GatherTableBindings, GatherTableKey, GatherTableParams, ELEMENTWISE_WG_SIZE, GIVEN_LHS, GIVEN_RHS,
};
use crate::tensor::{element_count, Quantized, Tensor};

use super::plan::{prepared_row_vectors, to_u32, PlanCaps, Source, TABLE_ENTRY_BYTES};
use super::problem::{broadcast_shapes, check, output_size, Dims, Problem};
use super::{
    biases_binding, kept_or_fresh, operand_sizes, quantized_matmul, run, GpuTable, Operands, PlanKey, QmmOptions,
};

const OP: &str = "gather_qmm";

/// MLX's `mx.gather_qmm(x, w, scales, biases, lhs_indices, rhs_indices, transpose, group_size,
/// bits, sorted_indices=sorted_indices)`, affine mode: for every entry `e` of the broadcast shape
/// of the two index arrays, `x[lhs[e]] @ dequantize(w[rhs[e]]).T` (`transpose`) or
/// `x[lhs[e]] @ dequantize(w[rhs[e]])`, where `x[i]` and `w[i]` are matrices at flat index `i`
/// of the batch axes (all but the last two) of x and of the weight.
///
/// A missing index array is `arange` over that operand's batch, shaped like it (so a weight of
/// experts with only `rhs_indices` pairs each matrix of x with its expert); the result is
/// `broadcast(lhs, rhs).shape + (M, N)` with `M = x.shape[-2]`, in the dtype
/// [`quantized_matmul`] gives. With neither index array it *is* [`quantized_matmul`], as in MLX.
/// Indices are `uint32` tensors on the GPU; an index past its operand's batch is clamped to the
/// last matrix (MLX reads out of bounds there; reporting it would need a read-back), so no
/// kernel reads outside a buffer. `sorted_indices` is MLX's performance hint that the pairs are
/// grouped by expert; results do not depend on it, and the kernels do not use it yet.
///
/// # Errors
/// MLX's errors in MLX's words, tagged `[gather_qmm]`: those of [`quantized_matmul`] on x and the
/// weight, x or the weight of rank < 2, indices that are not integers, index shapes that do not
/// broadcast. wgquant's own: integer indices other than `uint32` ([`Error::IndicesNotU32`]),
/// indices into an operand whose batch holds no matrix ([`Error::EmptyGatherBatch`]),
/// tensors on different devices, and an operand larger than one storage binding
/// ([`Error::ExceedsDeviceLimit`]; `quantized_matmul` splits those, a gathered product does
/// not yet).
///
/// # Example
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::{gather_qmm, quantize, Gpu, QuantParams, Tensor};
/// let gpu = Gpu::new()?;
/// let experts = Tensor::from_slice(&gpu, &vec![0.25f32; 4 * 8 * 64], &[4, 8, 64])?; // 4 experts
/// let q = quantize(&experts, QuantParams::affine(64, 4))?;
/// let x = Tensor::from_slice(&gpu, &vec![1.0f32; 3 * 64], &[3, 1, 1, 64])?; // 3 tokens
/// let top2 = Tensor::from_slice(&gpu, &[0u32, 2, 1, 3, 2, 0], &[3, 2])?;
/// let y = gather_qmm(&x, &q, None, Some(&top2), true, false)?;
/// assert_eq!(y.shape(), &[3, 2, 1, 8]);
/// # Ok(()) }
/// ```
pub fn gather_qmm(
    x: &Tensor,
    q: &Quantized,
    lhs_indices: Option<&Tensor>,
    rhs_indices: Option<&Tensor>,
    transpose: bool,
    sorted_indices: bool,
) -> Result<Tensor> {
    // A hint only (see above): every pairing takes the same path.
    let _ = sorted_indices;
    if lhs_indices.is_none() && rhs_indices.is_none() {
        return quantized_matmul(x, q, transpose);
    }
    // The fp modes' gathered products wait for their tests (issue 16 builds on issue 15).
    if q.params.mode.is_fp() {
        return Err(Error::UnsupportedMode { op: OP, mode: q.params.mode });
    }
    let dims = check(OP, x, q, transpose)?;
    let (xs, ws) = (x.shape(), q.weight.shape());
    for shape in [xs, ws] {
        if shape.len() < 2 {
            return Err(Error::GatherNdim { op: OP, shape: shape.to_vec() });
        }
    }
    for indices in [lhs_indices, rhs_indices].into_iter().flatten() {
        match indices.dtype() {
            DType::U32 => {}
            dtype if dtype.is_float() => return Err(Error::IndicesNotIntegral { op: OP }),
            dtype => return Err(Error::IndicesNotU32 { op: OP, dtype }),
        }
        if !indices.gpu().same_device(x.gpu()) {
            return Err(Error::DeviceMismatch { op: OP });
        }
    }
    let (x_batch, w_batch) = (&xs[..xs.len() - 2], &ws[..ws.len() - 2]);
    let lhs_shape = lhs_indices.map_or(x_batch, Tensor::shape);
    let rhs_shape = rhs_indices.map_or(w_batch, Tensor::shape);
    let out_batch = broadcast_shapes(lhs_shape, rhs_shape)?;
    let problem = gathered_problem(x, &dims, &out_batch, transpose)?;
    let gpu = x.gpu();
    let out_dtype = dims.format.out_dtype;
    if problem.is_empty() {
        return Tensor::zeros_for(OP, gpu, &problem.out_shape, out_dtype);
    }
    let (x_matrices, w_matrices) = (element_count(x_batch).unwrap_or(1), element_count(w_batch).unwrap_or(1));
    // Clamping needs a matrix to clamp to.
    for (operand, batch, matrices) in [("x", x_batch, x_matrices), ("the weight", w_batch, w_matrices)] {
        if matrices == 0 {
            return Err(Error::EmptyGatherBatch { op: OP, operand, batch: batch.to_vec() });
        }
    }
    let sizes = operand_sizes(x, q, problem.y_bytes);
    // The table pairs whole matrices, so every operand is bound whole (the planner's chunked
    // path builds per-chunk tables on the host).
    let mut caps = PlanCaps::of(gpu.caps());
    for (what, bytes) in
        [("x", sizes.x), ("the weight", sizes.weight), ("the scales", sizes.scales), ("the output", sizes.y)]
    {
        if bytes > caps.max_binding {
            return Err(Error::ExceedsDeviceLimit { op: OP, what, value: bytes, limit: caps.max_binding });
        }
    }
    // `qmv_coop` reads one matrix of w and no table.
    caps.cooperative_f16 = false;
    let key = GatheredPlan(PlanKey { problem, sizes, options: QmmOptions::default() });
    // As `quantized_matmul` keeps a repeated product's plan and pipelines (a decode step's), under
    // a key of its own: a gathered plan differs (no `qmv_coop`, no host tables).
    // Its steps bind the table the GPU fills: no host table is uploaded.
    let prepared = kept_or_fresh(gpu, &key, &key.0, &caps, false)?;
    let (problem, plan) = (&key.0.problem, &prepared.plan);

    let entries = problem.batches.len();
    let x_stride = if plan.prepared_x.is_some() { prepared_row_vectors(problem.k) } else { problem.k };
    let given = if lhs_indices.is_some() { GIVEN_LHS } else { 0 } | if rhs_indices.is_some() { GIVEN_RHS } else { 0 };
    let params = GatherTableParams {
        entries: to_u32(entries)?,
        rank: to_u32(out_batch.len())?,
        given,
        x_matrices: to_u32(x_matrices)?,
        w_matrices: to_u32(w_matrices)?,
        x_step: to_u32(problem.m * x_stride)?,
        w_step: to_u32(problem.w_rows())?,
        y_step: to_u32(problem.m * problem.n)?,
    };
    // The largest offsets the table can hold must fit its words.
    to_u32((x_matrices - 1) * problem.m * x_stride)?;
    to_u32((w_matrices - 1) * problem.w_rows())?;
    let axes_words = broadcast_axes(&out_batch, lhs_shape, rhs_shape);
    let axes = gpu.table_buffer("wgquant gather_qmm axes", &axes_words)?;
    let table = gpu.scratch(Scratch::GatherTable, (entries * TABLE_ENTRY_BYTES) as u64)?;
    let pipeline = gpu.pipeline(&GatherTableKey.into())?;
    // A missing index array is never read; the axes stand in for its binding.
    let lhs = lhs_indices.map_or(&axes, |t| t.storage());
    let rhs = rhs_indices.map_or(&axes, |t| t.storage());
    let fill = Dispatch {
        pipeline: &pipeline,
        params: bytemuck::bytes_of(&params).into(),
        buffers: GatherTableBindings { axes: whole(&axes), lhs: whole(lhs), rhs: whole(rhs), table: whole(&table) }
            .into_vec(),
        workgroups: to_u32(entries.div_ceil(ELEMENTWISE_WG_SIZE as usize))?,
    };
    let y = Tensor::output_for(OP, gpu, &problem.out_shape, out_dtype, plan.zeroes_y())?;
    debug_assert!(plan.steps.iter().all(|s| s.windows.iter().all(|w| w.source != Source::Table)
        || s.table.as_ref().is_some_and(|t| t.len() == 3 * entries)));
    run(
        OP,
        gpu,
        &Operands { x, q, biases: biases_binding(q), y: &y },
        &prepared,
        Some(GpuTable { fill, buffer: &table }),
    )?;
    Ok(y)
}

/// A gathered product's plan, filed apart from `quantized_matmul`'s ([`Gpu::memo`] keys by type).
#[derive(Clone, PartialEq, Eq, Hash)]
struct GatheredPlan(PlanKey);

/// All of `buffer`.
fn whole(buffer: &wgpu::Buffer) -> BufferWindow<'_> {
    BufferWindow { buffer, offset: 0, size: buffer.size() }
}

/// The product the planner sees: `M = x.shape[-2]` rows per entry, one entry per element of the
/// broadcast index shape. Its entries' pairings are placeholders (the GPU fills the table), so
/// only their count and order matter to the plan.
fn gathered_problem(x: &Tensor, dims: &Dims, out_batch: &[usize], transpose: bool) -> Result<Problem> {
    let xs = x.shape();
    let m = xs[xs.len() - 2];
    let out_shape = [out_batch, &[m, dims.n]].concat();
    let (y_elements, y_bytes) = output_size(OP, x, &out_shape, dims.format.out_dtype)?;
    let entries = if y_elements == 0 { 0 } else { element_count(out_batch).unwrap_or(0) };
    Ok(Problem {
        m,
        n: dims.n,
        k: dims.k,
        batches: vec![(0, 0); entries],
        out_shape,
        format: dims.format,
        transpose,
        w_words: dims.w_words,
        groups: dims.groups,
        x_rows: element_count(&xs[..xs.len() - 1]).unwrap_or(0),
        y_bytes,
    })
}

/// Per axis of the broadcast shape `out`, outermost first: its extent and the strides of `lhs`
/// and `rhs` (row-major, right-aligned to `out`; 0 where an axis is broadcast or absent), as
/// `wgsl/gather_table.wgsl` walks them.
fn broadcast_axes(out: &[usize], lhs: &[usize], rhs: &[usize]) -> Vec<u32> {
    let strides = |shape: &[usize]| -> Vec<u32> {
        let mut strides = vec![0u32; out.len()];
        let mut stride = 1usize;
        for (i, &extent) in shape.iter().enumerate().rev() {
            let axis = i + out.len() - shape.len();
            if extent != 1 {
                strides[axis] = stride as u32;
            }
            stride *= extent;
        }
        strides
    };
    let (l, r) = (strides(lhs), strides(rhs));
    out.iter().enumerate().flat_map(|(i, &extent)| [extent as u32, l[i], r[i]]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_skip_broadcast_axes() {
        // lhs (3, 1) with rhs (3,) broadcast to (3, 3): lhs walks the first axis, rhs the last.
        assert_eq!(broadcast_axes(&[3, 3], &[3, 1], &[3]), vec![3, 1, 0, 3, 0, 1]);
        // A scalar index broadcasts everywhere.
        assert_eq!(broadcast_axes(&[2, 4], &[], &[2, 4]), vec![2, 0, 4, 4, 0, 1]);
    }
}
