//! `quantized_matmul` (MLX's `mx.quantized_matmul`, every mode): MLX's checks and shapes, the
//! choice of kernel by shape, batching, and splitting operands that do not fit one storage
//! binding.
//!
//! Kernels (one WGSL file each), chosen as MLX chooses (`mlx/backend/metal/quantized.cpp`):
//! - `qmv` (transpose, M <= 32): a GEMV over up to 8 rows of x at once (MLX's qmv / qmv_wide);
//!   with more than one row of x, `qmv_prepare` first lays x out for it (f32, quad-major).
//! - `qvm` (no transpose, M <= 4): a GEMV along the rows of w, with k split over workgroups
//!   and summed by `qmm_sum_partials` (MLX's qvm / qvm_split_k).
//! - `qmm` (larger M, both layouts): a tiled GEMM that dequantizes tiles of w into workgroup
//!   memory (MLX's qmm_t / qmm_n), with k split over workgroups when the tiles are too few to
//!   fill the GPU (MLX's qmm_t_splitk).
//! - `qmv_coop` (opt-in, transpose, 2 to 8 rows of f16 x, 4 bits, group 64): tensor cores
//!   through wgpu's experimental cooperative matrices, k in slices summed by
//!   `qmm_sum_partials`; only on a device a caller opened with them ([`Caps::cooperative_f16`](crate::gpu::Caps::cooperative_f16)).

mod gather;
mod plan;
mod problem;

pub use gather::gather_qmm;

use crate::error::Result;
use std::hash::Hash;
use std::sync::Arc;

use crate::gpu::{BufferWindow, Dispatch, Gpu, Scratch, MAX_CACHED_TABLE_BYTES, VECTOR_BYTES};
use crate::kernels::QmmShape;
use crate::tensor::{Quantized, Tensor};

use plan::{OperandSizes, Plan, PlanCaps, Source, TABLE_ENTRY_BYTES};
use problem::Problem;

const OP: &str = "quantized_matmul";

/// Which kernel family [`quantized_matmul_with`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QmmKernel {
    /// By shape, as MLX chooses: the vector kernels for few rows of x, the tiled one otherwise.
    #[default]
    Auto,
    /// `qmv` (transpose) or `qvm` (no transpose), whatever the number of rows.
    Vector,
    /// The tiled `qmm`, whatever the number of rows.
    Tiled,
    /// `qmv_coop` on tensor cores, or [`Error::KernelUnavailable`](crate::Error::KernelUnavailable) where it cannot run: it needs
    /// a device with [`Caps::cooperative_f16`](crate::gpu::Caps::cooperative_f16), transposed 4-bit weights in groups of 64 with
    /// f16 scales, f16 x of 2 to 8 rows (without batch axes on both sides), k a multiple of
    /// 512, and operands that fit their bindings. `Auto` takes it where it can run from 5 rows.
    /// Its weights are `q·s + b` rounded once to f16, where MLX's `dequantize` rounds `q·s`
    /// first (CPU twin: [`crate::reference::quantized_matmul_fused`]).
    Cooperative,
}

/// Kernel choice and tuning knobs of [`quantized_matmul_with`]; `None` means the default for
/// the shape and device. For tests (every kernel on every shape) and benchmarks (tuning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QmmOptions {
    /// The kernel family.
    pub kernel: QmmKernel,
    /// `qmv`: invocations per workgroup (they split k); a power of two.
    pub qmv_wg_size: Option<u32>,
    /// `qmm`: rows of a tile of y (32, 64 or 128).
    pub qmm_tile_rows: Option<u32>,
    /// `qmm`: columns of a tile and of each invocation's part.
    pub qmm_shape: Option<QmmShape>,
    /// `qvm` and `qmm`: slices of k, each summed separately into f32 partial sums.
    pub split_k: Option<u32>,
}

/// `x @ dequantize(w).T` (`transpose`) or `x @ dequantize(w)`: MLX's `mx.quantized_matmul(x, w,
/// scales, biases, transpose, group_size, bits, mode)`, in every mode (the fp modes have `u8`
/// scales and no biases).
///
/// With `transpose`, `q.weight` is `(..., N, K·bits/32)` and groups run along K (the layout of a
/// linear layer's weight); without, it is `(..., K, N·bits/32)` and groups run along N. `x` has
/// any rank >= 1 and its last axis is K; the result is `x.shape[:-1] + (N,)`. When both `x` and
/// the weight have rank > 2, their batch axes broadcast (`x (2,1,5,64)` with `w (3,8,·)` gives
/// `(2,3,5,8)`); a 2-D weight folds all of x's leading axes into rows; a 2-D `x` with a batched
/// weight uses the first matrix, as MLX does. The result's dtype is `promote(x.dtype,
/// scales.dtype)` (affine) or x's dtype (the fp modes), as MLX's; sums are f32 whatever the
/// dtypes.
///
/// The work is recorded and submitted without waiting (or joins a [`Gpu::batch`]); nothing is
/// read back. Operands larger than one storage binding are split across dispatches.
///
/// # Errors
/// MLX's errors in MLX's words and order: missing biases or non-float scales (affine), scales
/// not `uint8` or biases given (fp modes), a weight that is not `u32`, scales and biases of different shapes, weight and scales with
/// different batch shapes or incompatible widths for the bits and group size, x's last axis not
/// matching the weight's inner dimension, batch axes that do not broadcast; then bits or group
/// sizes outside MLX's lists, or an fp mode's other than its own (MLX's words; MLX's CPU does not
/// check them). wgquant also refuses transposed nvfp4 weights whose K is not a multiple of 32
/// ([`Error::FpInnerLength`](crate::Error::FpInnerLength)), an `x` that is not f32, f16 or bf16 (MLX would
/// promote integers), and tensors on different devices. Device errors, including
/// [`Error::ExceedsDeviceLimit`](crate::Error::ExceedsDeviceLimit) when even one row does not fit a binding.
///
/// # Example
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::{quantize, quantized_matmul, Gpu, QuantParams, Tensor};
/// let gpu = Gpu::new()?;
/// let w = Tensor::from_slice(&gpu, &vec![0.25f32; 8 * 64], &[8, 64])?;
/// let q = quantize(&w, QuantParams::affine(64, 4))?;
/// let x = Tensor::from_slice(&gpu, &vec![1.0f32; 3 * 64], &[3, 64])?;
/// let y = quantized_matmul(&x, &q, true)?; // (3, 8), on the GPU
/// assert_eq!(y.shape(), &[3, 8]);
/// # Ok(()) }
/// ```
pub fn quantized_matmul(x: &Tensor, q: &Quantized, transpose: bool) -> Result<Tensor> {
    quantized_matmul_with(x, q, transpose, &QmmOptions::default())
}

/// [`quantized_matmul`] with an explicit kernel choice and tuning knobs.
///
/// # Errors
/// As [`quantized_matmul`]; a knob no kernel supports (tile rows other than 32, 64 or 128, an
/// unsupported tile shape, a qmv workgroup size that is not a power of two, `split_k` 0) gives
/// [`Error::InvalidOption`](crate::Error::InvalidOption); a knob the device cannot run (a tile
/// over its workgroup memory) gives [`Error::ExceedsDeviceLimit`](crate::Error::ExceedsDeviceLimit);
/// [`QmmKernel::Cooperative`] where `qmv_coop` cannot run gives
/// [`Error::KernelUnavailable`](crate::Error::KernelUnavailable). Left to the planner, the kernels
/// fit any device with WebGPU's default limits.
pub fn quantized_matmul_with(x: &Tensor, q: &Quantized, transpose: bool, options: &QmmOptions) -> Result<Tensor> {
    let problem = Problem::new(x, q, transpose)?;
    let gpu = x.gpu();
    let out_dtype = problem.format.out_dtype;
    if problem.is_empty() {
        return Tensor::zeros_for(OP, gpu, &problem.out_shape, out_dtype);
    }
    let sizes = operand_sizes(x, q, problem.y_bytes);
    let key = PlanKey { problem, sizes, options: *options };
    let prepared = kept_or_fresh(gpu, &key, &key, &PlanCaps::of(gpu.caps()), true)?;
    let problem = &key.problem;
    let y = Tensor::output_for(OP, gpu, &problem.out_shape, out_dtype, prepared.plan.zeroes_y())?;
    run(OP, gpu, &Operands { x, q, biases: biases_binding(q), y: &y }, &prepared, None)?;
    Ok(y)
}

/// What a plan is a pure function of (with the device's caps).
#[derive(Clone, PartialEq, Eq, Hash)]
struct PlanKey {
    problem: Problem,
    sizes: OperandSizes,
    options: QmmOptions,
}

/// A plan with its pipelines built and batch tables uploaded.
struct Prepared {
    plan: Plan,
    pipelines: Vec<Arc<wgpu::ComputePipeline>>,
    tables: Vec<Option<wgpu::Buffer>>,
}

impl Prepared {
    /// The plan of `key` on a device with `caps`, its pipelines built and, with `host_tables`,
    /// its batch tables uploaded (`gather_qmm`'s steps bind a table the GPU fills instead).
    fn new(gpu: &Gpu, key: &PlanKey, caps: &PlanCaps, host_tables: bool) -> Result<Prepared> {
        let plan = plan::plan(&key.problem, &key.sizes, &key.options, caps)?;
        let pipelines = plan.steps.iter().map(|s| gpu.pipeline(&s.key)).collect::<Result<Vec<_>>>()?;
        let tables = plan
            .steps
            .iter()
            .map(|s| match &s.table {
                Some(t) if host_tables => gpu.table_buffer("wgquant batch table", t).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared { plan, pipelines, tables })
    }
}

/// The prepared plan of `key` ([`Prepared::new`]): kept per device under `memo_key` when its
/// batch table is small (every decode step's), so that a repeated product skips planning; a
/// larger one is planned per call, its table not worth keeping.
fn kept_or_fresh<K: Hash + Eq + Clone + Send + 'static>(
    gpu: &Gpu,
    memo_key: &K,
    key: &PlanKey,
    caps: &PlanCaps,
    host_tables: bool,
) -> Result<Arc<Prepared>> {
    let build = || Prepared::new(gpu, key, caps, host_tables);
    if key.problem.batches.len() * TABLE_ENTRY_BYTES <= MAX_CACHED_TABLE_BYTES {
        gpu.memo(memo_key, build)
    } else {
        Ok(Arc::new(build()?))
    }
}

/// The tensor bound at the biases' place: the biases, or for the fp modes (which have none)
/// the scales, which their kernels read there.
fn biases_binding(q: &Quantized) -> &Tensor {
    q.biases.as_ref().unwrap_or(&q.scales)
}

/// The buffer sizes of a product's operands, y's from its bytes (output buffers hold at least
/// their bytes in whole vectors).
fn operand_sizes(x: &Tensor, q: &Quantized, y_bytes: u64) -> OperandSizes {
    OperandSizes {
        x: x.storage().size(),
        weight: q.weight.storage().size(),
        scales: q.scales.storage().size(),
        biases: biases_binding(q).storage().size(),
        y: y_bytes.next_multiple_of(VECTOR_BYTES),
    }
}

/// The tensors of one call, as the plan's steps read them.
struct Operands<'a> {
    x: &'a Tensor,
    q: &'a Quantized,
    biases: &'a Tensor,
    y: &'a Tensor,
}

/// A batch table filled on the GPU (`gather_qmm`'s): the dispatch that fills `buffer`, which
/// the plan's matmul steps then bind in place of tables of their own.
struct GpuTable<'a> {
    fill: Dispatch<'a>,
    buffer: &'a wgpu::Buffer,
}

/// Binds the operands and scratch buffers to the prepared plan's steps and submits its
/// dispatches in one pass (errors name `op`), after `gpu_table`'s fill where the steps read a
/// table built on the GPU.
fn run(
    op: &'static str,
    gpu: &Gpu,
    ops: &Operands<'_>,
    prepared: &Prepared,
    gpu_table: Option<GpuTable<'_>>,
) -> Result<()> {
    let plan = &prepared.plan;
    let partials = plan.partials.map(|count| gpu.scratch(Scratch::Partials, count as u64 * 4)).transpose()?;
    let prepared_x = plan.prepared_x.map(|bytes| gpu.scratch(Scratch::PreparedX, bytes)).transpose()?;
    let mut dispatches: Vec<Dispatch<'_>> = Vec::with_capacity(plan.steps.len() + 1);
    let gpu_table_buffer = gpu_table.as_ref().map(|t| t.buffer);
    if let Some(t) = gpu_table {
        dispatches.push(t.fill);
    }
    dispatches.extend(plan.steps.iter().zip(&prepared.tables).zip(&prepared.pipelines).map(
        |((step, table), pipeline)| {
            let buffers = step
                .windows
                .iter()
                .map(|w| {
                    let buffer = match w.source {
                        Source::X => ops.x.storage(),
                        Source::Weight => ops.q.weight.storage(),
                        Source::Scales => ops.q.scales.storage(),
                        Source::Biases => ops.biases.storage(),
                        Source::Y => ops.y.storage(),
                        Source::PreparedX => prepared_x.as_deref().expect("the plan sizes its prepared x"),
                        Source::Partials => partials.as_deref().expect("the plan lists its partial sums"),
                        Source::Table => {
                            let table = match gpu_table_buffer {
                                Some(buffer) => buffer,
                                None => table.as_ref().expect("a step binding its table has one"),
                            };
                            return BufferWindow { buffer: table, offset: 0, size: table.size() };
                        }
                    };
                    BufferWindow { buffer, offset: w.offset, size: w.size }
                })
                .collect();
            Dispatch { pipeline, params: step.params.as_slice().into(), buffers, workgroups: step.workgroups }
        },
    ));
    gpu.submit(op, &dispatches)
}
