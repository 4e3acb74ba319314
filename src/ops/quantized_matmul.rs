//! `quantized_matmul` (MLX's `mx.quantized_matmul`, affine mode): MLX's checks and shapes, the
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
//!   `qmm_sum_partials`; only on a device a caller opened with them ([`Caps::cooperative_f16`]).

use std::ops::Range;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{aligned_row_step, BufferWindow, Caps, Dispatch, Gpu, VECTOR_BYTES};
use crate::kernels::{
    KernelKey, MatmulFormat, QmmShape, Reduction, ELEMENTWISE_WG_SIZE, PREPARED_CHUNK, QMM_TILE_ROWS, QMV_COOP_SLICE,
    QMV_COOP_SUBGROUPS, QMV_WG_SIZE, QVM_WG_SIZE, SUM_PARTIALS_WG_SIZE,
};
use crate::ops::launch::{launch_chunks, Launch};
use crate::params::Mode;
use crate::tensor::{element_count, Quantized, Tensor};

const OP: &str = "quantized_matmul";

/// Rows of x per `qmv` workgroup at most (MLX's qmv_wide keeps small batches on the vector path).
const QMV_MAX_ROWS: usize = 8;
/// Rows of x up to which transposed products use `qmv` (in tiles of 8 rows): measured on an
/// H100, it stays ahead of the tiled kernel to about 32 rows (benches/RESULTS.md).
const QMV_AUTO_ROWS: usize = 32;
/// Rows of x from which `Auto` takes `qmv_coop` where it can run. Measured on an H100
/// (benches/RESULTS.md, round 8): at 2 and 3 rows `qmv` is faster on the three Llama shapes; at 4
/// `qmv_coop` wins two (by 1 and 5 %) and loses one (by 4 %); from 5 rows it wins all three, by
/// 4-29 %.
const QMV_COOP_AUTO_ROWS: usize = 5;
/// Rows of x up to which untransposed products use the `qvm` kernel (MLX: M < 4 goes to qvm).
const QVM_MAX_ROWS: usize = 4;
/// `qvm` splits k until about this many invocations run (enough to fill a large GPU).
const QVM_TARGET_INVOCATIONS: usize = 16384;
/// Rows of w a `qvm` slice walks at least: fewer would cost more in partial sums than it saves.
const QVM_MIN_SLICE: usize = 64;
/// `qmm` splits k until about this many invocations run. Measured on an H100 (see
/// benches/RESULTS.md), this lands on the fastest splits: none for 224 tiles of 256 invocations,
/// 2 for 64 such tiles, 4 for 56 tiles of 128 invocations; more slices cost their partial sums.
const QMM_TARGET_INVOCATIONS: usize = 24576;
/// k a `qmm` slice walks at least (16 steps of 16).
const QMM_MIN_SLICE: usize = 256;

/// Which kernel family [`quantized_matmul_with`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QmmKernel {
    /// By shape, as MLX chooses: the vector kernels for few rows of x, the tiled one otherwise.
    #[default]
    Auto,
    /// `qmv` (transpose) or `qvm` (no transpose), whatever the number of rows.
    Vector,
    /// The tiled `qmm`, whatever the number of rows.
    Tiled,
    /// `qmv_coop` on tensor cores, or [`Error::KernelUnavailable`] where it cannot run: it needs
    /// a device with [`Caps::cooperative_f16`], transposed 4-bit weights in groups of 64 with
    /// f16 scales, f16 x of 2 to 8 rows (without batch axes on both sides), k a multiple of
    /// 512, and operands that fit their bindings. `Auto` takes it where it can run from 5 rows.
    /// Its weights are `q·s + b` rounded once to f16, where MLX's `dequantize` rounds `q·s`
    /// first (CPU twin: [`crate::reference::quantized_matmul_fused`]).
    Cooperative,
}

/// Kernel choice and tuning knobs of [`quantized_matmul_with`]; `None` means the default for
/// the shape and device. For tests (every kernel on every shape) and benchmarks (tuning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
/// scales, biases, transpose, group_size, bits)`, affine mode.
///
/// With `transpose`, `q.weight` is `(..., N, K·bits/32)` and groups run along K (the layout of a
/// linear layer's weight); without, it is `(..., K, N·bits/32)` and groups run along N. `x` has
/// any rank >= 1 and its last axis is K; the result is `x.shape[:-1] + (N,)`. When both `x` and
/// the weight have rank > 2, their batch axes broadcast (`x (2,1,5,64)` with `w (3,8,·)` gives
/// `(2,3,5,8)`); a 2-D weight folds all of x's leading axes into rows; a 2-D `x` with a batched
/// weight uses the first matrix, as MLX does. The result's dtype is `promote(x.dtype,
/// scales.dtype)`; sums are f32 whatever the dtypes.
///
/// The work is recorded and submitted without waiting (or joins a [`Gpu::batch`]); nothing is
/// read back. Operands larger than one storage binding are split across dispatches.
///
/// # Errors
/// MLX's errors in MLX's words and order: an unsupported mode, missing biases, non-float scales,
/// a weight that is not `u32`, scales and biases of different shapes, weight and scales with
/// different batch shapes or incompatible widths for the bits and group size, x's last axis not
/// matching the weight's inner dimension, batch axes that do not broadcast; then bits or group
/// sizes outside MLX's lists. wgquant also refuses an `x` that is not f32, f16 or bf16 (MLX would
/// promote integers), and tensors on different devices. Device errors, including
/// [`Error::ExceedsDeviceLimit`] when even one row does not fit a binding.
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
/// As [`quantized_matmul`]; a knob the device cannot run (e.g. a tile over its workgroup
/// memory) gives [`Error::ExceedsDeviceLimit`] or [`Error::Validation`], and
/// [`QmmKernel::Cooperative`] where `qmv_coop` cannot run gives [`Error::KernelUnavailable`].
pub fn quantized_matmul_with(x: &Tensor, q: &Quantized, transpose: bool, options: &QmmOptions) -> Result<Tensor> {
    let mut problem = Problem::new(x, q, transpose)?;
    let gpu = x.gpu();
    let y = Tensor::zeros(gpu, &problem.out_shape, problem.format.out_dtype)?;
    if problem.m == 0 || problem.n == 0 || problem.k == 0 || problem.batches.is_empty() {
        return Ok(y);
    }
    let operands = Operands { x, q, y: &y };
    let planner = Planner::new(gpu, &problem, options);
    if planner.uses_cooperative(&operands)? {
        run(gpu, &operands, &planner.cooperative(&operands)?)?;
        return Ok(y);
    }
    // With several rows of x, `qmv` reads x laid out by `qmv_prepare` (see there).
    let prepared;
    let x = if problem.m > 1 && planner.uses_qmv() {
        prepared = prepare_x(x, problem.format.bits)?;
        problem.x_prepared = true;
        problem.format.x_dtype = DType::F32;
        &prepared
    } else {
        x
    };
    let operands = Operands { x, q, y: &y };
    let planner = Planner::new(gpu, &problem, options);
    let plan = if operands.fit(gpu) { planner.whole(&operands)? } else { planner.chunked(&operands)? };
    run(gpu, &operands, &plan)?;
    Ok(y)
}

/// A validated product: sizes, batch entries and dtypes.
struct Problem {
    /// Rows of x per batch entry.
    m: usize,
    /// Outputs per row.
    n: usize,
    /// Inner length.
    k: usize,
    /// Per output batch: the matrix of x and the matrix of w it multiplies.
    batches: Vec<(usize, usize)>,
    out_shape: Vec<usize>,
    format: MatmulFormat,
    transpose: bool,
    /// Words per row of w_q.
    w_words: usize,
    /// Groups per row of w_q (scales per row).
    groups: usize,
    /// Whether x comes laid out by `qmv_prepare` (rows of `9 k / 32` f32 vectors).
    x_prepared: bool,
}

impl Problem {
    /// MLX's checks, in MLX's order (`quantized_matmul` and `extract_quantized_matmul_dims` in
    /// `mlx/ops.cpp`), then the shapes.
    fn new(x: &Tensor, q: &Quantized, transpose: bool) -> Result<Problem> {
        let params = q.params;
        if params.mode != Mode::Affine {
            return Err(Error::UnsupportedMode { op: OP, mode: params.mode });
        }
        let biases = q.biases.as_ref().ok_or(Error::MissingBiases { op: OP })?;
        let (weight, scales) = (&q.weight, &q.scales);
        if !scales.dtype().is_float() || !biases.dtype().is_float() {
            return Err(Error::NotFloatingScales { op: OP, scales: scales.dtype(), biases: biases.dtype() });
        }
        if weight.dtype() != DType::U32 {
            return Err(Error::MatmulWeightNotU32 { dtype: weight.dtype() });
        }
        if scales.shape() != biases.shape() {
            return Err(Error::ScalesBiasesShape { scales: scales.shape().to_vec(), biases: biases.shape().to_vec() });
        }
        if weight.ndim() < 2 {
            return Err(Error::NdimTooSmall { op: OP, verb: "multiplied", ndim: weight.ndim() });
        }
        let (ws, ss) = (weight.shape(), scales.shape());
        let batch_dims = ws.len() - 2;
        if ss.len() != ws.len() || ws[..batch_dims] != ss[..batch_dims] {
            return Err(Error::WeightScalesBatch { weight: ws.to_vec(), scales: ss.to_vec() });
        }
        // MLX divides by the bits here; zero bits are refused first rather than divided by.
        if params.bits == 0 {
            return Err(Error::UnsupportedBits { op: OP, bits: 0 });
        }
        let (w_rows, w_words) = (ws[batch_dims], ws[batch_dims + 1]);
        let codes_per_row = w_words * 32 / params.bits as usize;
        if codes_per_row != ss[batch_dims + 1] * params.group_size as usize {
            return Err(Error::WeightScalesIncompatible {
                weight: ws.to_vec(),
                scales: ss.to_vec(),
                group_size: params.group_size,
                bits: params.bits,
            });
        }
        let x_last = *x.shape().last().ok_or(Error::ScalarInput)?;
        let (k, n) = if transpose { (codes_per_row, w_rows) } else { (w_rows, codes_per_row) };
        if x_last != k {
            return Err(Error::InnerDimMismatch {
                x_last,
                rows: k,
                cols: n,
                weight: ws.to_vec(),
                group_size: params.group_size,
                bits: params.bits,
                transpose,
            });
        }
        if !x.dtype().is_float() {
            return Err(Error::NotFloatingX { dtype: x.dtype() });
        }
        params.check_affine(OP)?;
        if !x.gpu().same_device(weight.gpu()) || !weight.gpu().same_device(scales.gpu()) {
            return Err(Error::DeviceMismatch { op: OP });
        }
        if !weight.gpu().same_device(biases.gpu()) {
            return Err(Error::DeviceMismatch { op: OP });
        }

        let xs = x.shape();
        let (m, batches, mut out_shape) = if xs.len() > 2 && ws.len() > 2 {
            let (x_batch, w_batch) = (&xs[..xs.len() - 2], &ws[..batch_dims]);
            let out_batch = broadcast_shapes(x_batch, w_batch)?;
            let entries = (0..element_count(&out_batch).unwrap_or(0))
                .map(|b| (broadcast_index(b, &out_batch, x_batch), broadcast_index(b, &out_batch, w_batch)))
                .collect();
            (xs[xs.len() - 2], entries, [out_batch.as_slice(), &[xs[xs.len() - 2]]].concat())
        } else {
            // A 2-D weight takes all of x's leading axes as rows (a batched weight with a 2-D x
            // contributes its first matrix, as in MLX).
            let lead = &xs[..xs.len() - 1];
            (element_count(lead).unwrap_or(0), vec![(0, 0)], lead.to_vec())
        };
        out_shape.push(n);
        let format = MatmulFormat {
            x_dtype: x.dtype(),
            scale_dtype: scales.dtype(),
            out_dtype: x.dtype().promote(scales.dtype()),
            bits: params.bits,
            group_size: params.group_size,
        };
        Ok(Problem {
            m,
            n,
            k,
            batches,
            out_shape,
            format,
            transpose,
            w_words,
            groups: ss[batch_dims + 1],
            x_prepared: false,
        })
    }

    /// How far apart the rows of x are, in the units the kernels index x in: elements, or
    /// 16-byte vectors when x is prepared.
    fn x_stride(&self) -> usize {
        if self.x_prepared {
            prepared_row_vectors(self.k)
        } else {
            self.k
        }
    }

    /// Bytes per row of x.
    fn x_row_bytes(&self) -> u64 {
        if self.x_prepared {
            prepared_row_bytes(self.k)
        } else {
            (self.k * self.format.x_dtype.size_in_bytes()) as u64
        }
    }

    /// Rows of w_q per matrix.
    fn w_rows(&self) -> usize {
        if self.transpose {
            self.n
        } else {
            self.k
        }
    }
}

/// numpy broadcasting of two shapes (MLX's `broadcast_shapes`).
fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (p, q) if p == q || q == 1 => Ok(p),
            (1, q) => Ok(q),
            _ => Err(Error::BroadcastShapes { a: a.to_vec(), b: b.to_vec() }),
        })
        .collect()
}

/// The flat index into `shape` of element `flat` of the broadcast shape `out`.
fn broadcast_index(flat: usize, out: &[usize], shape: &[usize]) -> usize {
    let mut rest = flat;
    let mut index = 0;
    let mut stride = 1;
    for (i, &extent) in out.iter().enumerate().rev() {
        let coord = rest % extent;
        rest /= extent;
        if let Some(d) = (i + shape.len()).checked_sub(out.len()) {
            if shape[d] != 1 {
                index += coord * stride;
            }
            stride *= shape[d];
        }
    }
    index
}

/// The tensors of one call.
struct Operands<'a> {
    x: &'a Tensor,
    q: &'a Quantized,
    y: &'a Tensor,
}

impl Operands<'_> {
    fn biases(&self) -> &Tensor {
        self.q.biases.as_ref().expect("validated")
    }

    /// Whether every operand fits one binding whole.
    fn fit(&self, gpu: &Gpu) -> bool {
        let max = gpu.caps().max_binding();
        [self.x, &self.q.weight, &self.q.scales, self.biases(), self.y].iter().all(|t| t.buffer().size() <= max)
    }
}

/// Which buffer a window views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    X,
    Weight,
    Scales,
    Biases,
    Y,
    /// The scratch buffer of f32 partial sums ([`Gpu::scratch`]).
    Partials,
}

/// A window of a source buffer, in bytes.
#[derive(Clone, Copy, Debug)]
struct Window {
    source: Source,
    offset: u64,
    size: u64,
}

/// One dispatch, before its buffers exist.
struct Step {
    key: KernelKey,
    params: Vec<u8>,
    /// The batch table (3 words per entry) of a matmul kernel; `None` for the partial sums.
    table: Option<Vec<u32>>,
    windows: Vec<Window>,
    workgroups: u32,
}

/// Uniform parameters of the qmv, qvm and qmm kernels (`Params` in `qmm_operands.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    x_stride: u32,
    y_stride: u32,
    w_stride: u32,
    s_stride: u32,
    batches: u32,
    m_tiles: u32,
    n_tiles: u32,
    k_splits: u32,
    k_per_split: u32,
    slot_stride: u32,
    pad: [u32; 3],
}

/// Uniform parameters of `qmm_sum_partials.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct SumParams {
    count: u32,
    slots: u32,
    slot_stride: u32,
    y_offset: u32,
    row: u32,
    row_stride: u32,
    pad: [u32; 2],
}

/// Where [`KernelKey::QmmSumPartials`] finds output `e`'s partial sums: slot `s` holds it at
/// `s · slot_stride + (e / row) · row_stride + e % row` (rows of `row` outputs, padded to
/// `row_stride`).
#[derive(Clone, Copy, Debug)]
struct PartialsLayout {
    slot_stride: usize,
    row: usize,
    row_stride: usize,
}

impl PartialsLayout {
    /// Slots of `count` consecutive outputs.
    fn dense(count: usize) -> PartialsLayout {
        PartialsLayout { slot_stride: count, row: count.max(1), row_stride: count.max(1) }
    }
}

/// Uniform parameters of `qmv_coop.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct CoopParams {
    m: u32,
    n: u32,
    k: u32,
    n_pad: u32,
    tile_groups: u32,
    slices: u32,
    pad: [u32; 2],
}

/// A kernel with its knobs, for one dispatch.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Qmv { vecs: u32, wg_size: u32, reduction: Reduction },
    Qvm { vecs: u32 },
    Qmm { bm: u32, shape: QmmShape },
}

/// One piece of the product: rows of x and y, outputs, and the inner range.
struct Piece {
    /// Rows of x (and y) per batch entry.
    m: usize,
    /// Outputs.
    n: usize,
    /// Inner length.
    k: usize,
    /// Per entry: x offset (elements), w_q row offset (rows), y offset (elements).
    entries: Vec<[u32; 3]>,
}

struct Planner<'a> {
    gpu: &'a Gpu,
    problem: &'a Problem,
    options: &'a QmmOptions,
}

impl<'a> Planner<'a> {
    fn new(gpu: &'a Gpu, problem: &'a Problem, options: &'a QmmOptions) -> Self {
        Planner { gpu, problem, options }
    }

    /// Whether the product runs on a vector kernel (`qmv` or `qvm`).
    fn vector(&self) -> bool {
        let p = self.problem;
        match self.options.kernel {
            // (`Cooperative` never gets here: it runs `qmv_coop` or fails first.)
            QmmKernel::Auto | QmmKernel::Cooperative => p.m <= if p.transpose { QMV_AUTO_ROWS } else { QVM_MAX_ROWS },
            QmmKernel::Vector => true,
            QmmKernel::Tiled => false,
        }
    }

    /// Whether the product runs on `qmv`.
    fn uses_qmv(&self) -> bool {
        self.problem.transpose && self.vector()
    }

    /// Whether the product runs on `qmv_coop`: where it can from [`QMV_COOP_AUTO_ROWS`] rows, or
    /// where it was asked for (an error where it cannot run).
    fn uses_cooperative(&self, ops: &Operands<'_>) -> Result<bool> {
        match self.options.kernel {
            QmmKernel::Cooperative => match self.cooperative_obstacle(ops) {
                Some(reason) => Err(Error::KernelUnavailable { op: OP, kernel: "cooperative (qmv_coop)", reason }),
                None => Ok(true),
            },
            QmmKernel::Auto => Ok(self.problem.m >= QMV_COOP_AUTO_ROWS && self.cooperative_obstacle(ops).is_none()),
            QmmKernel::Vector | QmmKernel::Tiled => Ok(false),
        }
    }

    /// What keeps `qmv_coop` from this product, if anything.
    fn cooperative_obstacle(&self, ops: &Operands<'_>) -> Option<String> {
        let p = self.problem;
        let caps: &Caps = self.gpu.caps();
        let f = p.format;
        let reason = if !caps.cooperative_f16 {
            "the device has no cooperative matrices (see Caps::cooperative_f16 and Gpu::from_device)".to_string()
        } else if !p.transpose {
            "it needs transpose = true".to_string()
        } else if (f.x_dtype, f.scale_dtype, f.bits, f.group_size) != (DType::F16, DType::F16, 4, 64) {
            format!(
                "it needs f16 x and scales, 4 bits, group size 64, not x {} with {} scales, {} bits, group size {}",
                f.x_dtype, f.scale_dtype, f.bits, f.group_size
            )
        } else if !(2..=QMV_MAX_ROWS).contains(&p.m) {
            format!("it needs 2 to {QMV_MAX_ROWS} rows of x, not {}", p.m)
        } else if p.k % QMV_COOP_SLICE as usize != 0 {
            format!("it needs k a multiple of {QMV_COOP_SLICE}, not {}", p.k)
        } else if p.batches.len() != 1 {
            format!("it takes one matrix of w, not {} batch entries", p.batches.len())
        } else if !ops.fit(self.gpu) || self.cooperative_partials(p.k, p.n) as u64 * 4 > caps.max_binding() {
            "an operand or its partial sums exceed one storage binding".to_string()
        } else {
            return None;
        };
        Some(reason)
    }

    /// `qmv_coop`'s workgroups along n (each 16 rows of w per subgroup), and n padded to them.
    fn cooperative_tiles(n: usize) -> (usize, usize) {
        let rows_per_group = 16 * QMV_COOP_SUBGROUPS as usize;
        let tile_groups = n.div_ceil(rows_per_group);
        (tile_groups, tile_groups * rows_per_group)
    }

    /// f32 elements of `qmv_coop`'s partial sums: per slice of k, 16 rows of padded outputs.
    fn cooperative_partials(&self, k: usize, n: usize) -> usize {
        (k / QMV_COOP_SLICE as usize) * 16 * Self::cooperative_tiles(n).1
    }

    /// `qmv_coop`'s two dispatches: the slices' partial sums, then their sum into y.
    fn cooperative(&self, ops: &Operands<'_>) -> Result<Plan> {
        let p = self.problem;
        let (tile_groups, n_pad) = Self::cooperative_tiles(p.n);
        let slices = p.k / QMV_COOP_SLICE as usize;
        let count = self.cooperative_partials(p.k, p.n);
        let params = CoopParams {
            m: to_u32(p.m)?,
            n: to_u32(p.n)?,
            k: to_u32(p.k)?,
            n_pad: to_u32(n_pad)?,
            tile_groups: to_u32(tile_groups)?,
            slices: to_u32(slices)?,
            pad: [0; 2],
        };
        let whole = |source, tensor: &Tensor| Window { source, offset: 0, size: tensor.buffer().size() };
        let partials = Window { source: Source::Partials, offset: 0, size: (count * 4) as u64 };
        let products = Step {
            key: KernelKey::QmvCoop { subgroups: QMV_COOP_SUBGROUPS },
            params: bytemuck::bytes_of(&params).to_vec(),
            table: None,
            windows: vec![
                whole(Source::X, ops.x),
                whole(Source::Weight, &ops.q.weight),
                whole(Source::Scales, &ops.q.scales),
                whole(Source::Biases, ops.biases()),
                partials,
            ],
            workgroups: to_u32(tile_groups * slices)?,
        };
        let layout = PartialsLayout { slot_stride: 16 * n_pad, row: p.n, row_stride: n_pad };
        let sum = self.sum_step(partials, whole(Source::Y, ops.y), p.m * p.n, slices, layout, 0)?;
        Ok(Plan { steps: vec![products, sum], partials: Some(count) })
    }

    /// The kernel for pieces of `m` rows. The family follows the whole product's rows, so that
    /// every piece reads x as it was laid out.
    fn kernel(&self, m: usize) -> Result<Kernel> {
        let p = self.problem;
        let vector = self.vector();
        if !vector {
            // The smallest tile that covers m, else the largest.
            let largest = QMM_TILE_ROWS[QMM_TILE_ROWS.len() - 1];
            let bm = self
                .options
                .qmm_tile_rows
                .unwrap_or(QMM_TILE_ROWS.into_iter().find(|&r| m <= r as usize).unwrap_or(largest));
            if !QMM_TILE_ROWS.contains(&bm) {
                return Err(Error::ExceedsDeviceLimit {
                    op: OP,
                    what: "qmm tile rows (32, 64 or 128)",
                    value: bm.into(),
                    limit: largest.into(),
                });
            }
            let shape = self.options.qmm_shape.unwrap_or(QmmShape::default_for(bm));
            if !shape.is_supported() {
                let message = format!("{shape:?} is not a qmm shape (bn 128 or 256, columns 8 or 16)");
                return Err(Error::Validation { what: OP.to_string(), message });
            }
            return Ok(Kernel::Qmm { bm, shape });
        }
        if !p.transpose {
            return Ok(Kernel::Qvm { vecs: m.clamp(1, QVM_MAX_ROWS) as u32 });
        }
        // Prepared x is read by the several-rows path only; x as it is by the one-row path.
        let vecs = if p.x_prepared { m.clamp(2, QMV_MAX_ROWS) as u32 } else { 1 };
        let caps = self.gpu.caps();
        let (reduction, wg_size) = if caps.has_subgroups() {
            let min_size = caps.info.subgroup_min_size.max(1);
            (Reduction::Subgroup { min_size }, self.options.qmv_wg_size.unwrap_or(QMV_WG_SIZE))
        } else {
            // The tree keeps every invocation's partial sums (a vec4 per row of x) in workgroup
            // memory.
            let fits = u64::from(caps.limits.max_compute_workgroup_storage_size) / (u64::from(vecs) * 32);
            let largest = 1u32 << (63 - fits.max(1).leading_zeros()).min(31);
            (Reduction::Workgroup, self.options.qmv_wg_size.unwrap_or(QMV_WG_SIZE.min(largest)))
        };
        if !wg_size.is_power_of_two() {
            return Err(Error::ExceedsDeviceLimit {
                op: OP,
                what: "a power-of-two qmv workgroup size (invocations)",
                value: wg_size.into(),
                limit: caps.limits.max_compute_invocations_per_workgroup.into(),
            });
        }
        Ok(Kernel::Qmv { vecs, wg_size, reduction })
    }

    fn key(&self, kernel: Kernel, out_dtype: DType) -> KernelKey {
        let format = MatmulFormat { out_dtype, ..self.problem.format };
        match kernel {
            Kernel::Qmv { vecs, wg_size, reduction } => KernelKey::Qmv { format, vecs, wg_size, reduction },
            Kernel::Qvm { vecs } => KernelKey::Qvm { format, vecs, wg_size: QVM_WG_SIZE },
            Kernel::Qmm { bm, shape } => KernelKey::Qmm { format, transpose: self.problem.transpose, bm, shape },
        }
    }

    /// Slices of k over `piece`: enough for the GPU to have work, each long enough to pay for
    /// its partial sums (`qvm` and `qmm`; `qmv` has parallelism enough along n).
    fn k_splits(&self, kernel: Kernel, piece: &Piece) -> usize {
        // Invocations of one slice, and how many the slices should add up to.
        let (invocations, target, min_slice) = match kernel {
            Kernel::Qmv { .. } => return 1,
            Kernel::Qvm { vecs } => {
                (piece.m.div_ceil(vecs as usize) * piece.n / 4, QVM_TARGET_INVOCATIONS, QVM_MIN_SLICE)
            }
            Kernel::Qmm { bm, shape } => {
                let tiles = piece.m.div_ceil(bm as usize) * piece.n.div_ceil(shape.bn as usize);
                (tiles * shape.invocations(bm) as usize, QMM_TARGET_INVOCATIONS, QMM_MIN_SLICE)
            }
        };
        let wanted = match self.options.split_k {
            Some(s) => s as usize,
            None => target.div_ceil((invocations * piece.entries.len()).max(1)),
        };
        wanted.clamp(1, piece.k.div_ceil(min_slice).max(1))
    }

    /// The matmul dispatch of `piece` reading `operands` (x, w_q, scales, biases) and writing
    /// `output`.
    fn matmul_step(&self, kernel: Kernel, piece: &Piece, operands: [Window; 4], output: Output) -> Result<Step> {
        let Output { window: y, slices, slot_stride: y_slot_stride, dtype: out_dtype } = output;
        let p = self.problem;
        let (m_tile, n_tile) = match kernel {
            // Two groups of 4 outputs while up to 4 rows of x share the registers.
            Kernel::Qmv { vecs, .. } => (vecs as usize, if vecs <= 4 { 8 } else { 4 }),
            Kernel::Qvm { vecs } => (vecs as usize, 4 * QVM_WG_SIZE as usize),
            Kernel::Qmm { bm, shape } => (bm as usize, shape.bn as usize),
        };
        let k_per_split = piece.k.div_ceil(slices).next_multiple_of(32);
        let slices = piece.k.div_ceil(k_per_split);
        let (m_tiles, n_tiles) = (piece.m.div_ceil(m_tile), piece.n.div_ceil(n_tile));
        let workgroups =
            [piece.entries.len(), slices, m_tiles, n_tiles].iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let max_groups = u64::from(self.gpu.caps().limits.max_compute_workgroups_per_dimension);
        let workgroups = workgroups.filter(|&w| w <= max_groups * max_groups).ok_or(Error::ExceedsDeviceLimit {
            op: OP,
            what: "workgroups in one dispatch",
            value: u64::MAX,
            limit: max_groups * max_groups,
        })?;
        let params = MatmulParams {
            m: to_u32(piece.m)?,
            n: to_u32(piece.n)?,
            k: to_u32(piece.k)?,
            x_stride: to_u32(p.x_stride())?,
            y_stride: to_u32(p.n)?,
            w_stride: to_u32(p.w_words)?,
            s_stride: to_u32(p.groups)?,
            batches: to_u32(piece.entries.len())?,
            m_tiles: to_u32(m_tiles)?,
            n_tiles: to_u32(n_tiles)?,
            k_splits: to_u32(slices)?,
            k_per_split: to_u32(k_per_split)?,
            slot_stride: to_u32(y_slot_stride)?,
            pad: [0; 3],
        };
        let mut windows = operands.to_vec();
        windows.push(y);
        Ok(Step {
            key: self.key(kernel, out_dtype),
            params: bytemuck::bytes_of(&params).to_vec(),
            table: Some(piece.entries.iter().flatten().copied().collect()),
            windows,
            workgroups: workgroups as u32,
        })
    }

    /// The dispatch summing `slots` slots of partial sums (of `count` outputs, laid out in
    /// `partials` as `layout` says) into `y` at element `y_offset`.
    fn sum_step(
        &self,
        partials: Window,
        y: Window,
        count: usize,
        slots: usize,
        layout: PartialsLayout,
        y_offset: usize,
    ) -> Result<Step> {
        let params = SumParams {
            count: to_u32(count)?,
            slots: to_u32(slots)?,
            slot_stride: to_u32(layout.slot_stride)?,
            y_offset: to_u32(y_offset)?,
            row: to_u32(layout.row)?,
            row_stride: to_u32(layout.row_stride)?,
            pad: [0; 2],
        };
        Ok(Step {
            key: KernelKey::QmmSumPartials { out_dtype: self.problem.format.out_dtype },
            params: bytemuck::bytes_of(&params).to_vec(),
            table: None,
            windows: vec![partials, y],
            workgroups: to_u32(count.div_ceil(SUM_PARTIALS_WG_SIZE as usize))?,
        })
    }

    /// Every operand fits its binding: one dispatch over every batch entry (plus the sum of
    /// qvm's k slices).
    fn whole(&self, ops: &Operands<'_>) -> Result<Plan> {
        let p = self.problem;
        let entries = p
            .batches
            .iter()
            .enumerate()
            .map(|(b, &(xm, wm))| {
                Ok([to_u32(xm * p.m * p.x_stride())?, to_u32(wm * p.w_rows())?, to_u32(b * p.m * p.n)?])
            })
            .collect::<Result<Vec<_>>>()?;
        let piece = Piece { m: p.m, n: p.n, k: p.k, entries };
        let kernel = self.kernel(p.m)?;
        let whole = |source, tensor: &Tensor| Window { source, offset: 0, size: tensor.buffer().size() };
        let operands = [
            whole(Source::X, ops.x),
            whole(Source::Weight, &ops.q.weight),
            whole(Source::Scales, &ops.q.scales),
            whole(Source::Biases, ops.biases()),
        ];
        let y = whole(Source::Y, ops.y);
        let count = p.batches.len() * p.m * p.n;
        // The partial sums must fit one binding too.
        let max_slots = (self.gpu.caps().max_binding() / (count as u64 * 4)).max(1) as usize;
        let slices = self.k_splits(kernel, &piece).min(max_slots);
        if slices <= 1 {
            let step = self.matmul_step(kernel, &piece, operands, Output::y(y, p.format.out_dtype))?;
            return Ok(Plan { steps: vec![step], partials: None });
        }
        let partials = Window { source: Source::Partials, offset: 0, size: (slices * count * 4) as u64 };
        let matmul = self.matmul_step(kernel, &piece, operands, Output::partials(partials, slices, count))?;
        let sum = self.sum_step(partials, y, count, slices, PartialsLayout::dense(count), 0)?;
        Ok(Plan { steps: vec![matmul, sum], partials: Some(slices * count) })
    }

    /// Some operand exceeds its binding: dispatches per batch entry over windows of rows of x
    /// and y and, transposed, of rows of w (outputs); untransposed, of rows of w (k), summed
    /// through partial sums.
    fn chunked(&self, ops: &Operands<'_>) -> Result<Plan> {
        let p = self.problem;
        let caps = self.gpu.caps();
        let (max, align) = (caps.max_binding(), u64::from(caps.limits.min_storage_buffer_offset_alignment));
        let x_row = p.x_row_bytes();
        let y_row = (p.n * p.format.out_dtype.size_in_bytes()) as u64;
        let w_row = (p.w_words * 4) as u64;
        let s_row = (p.groups * p.format.scale_dtype.size_in_bytes()) as u64;
        // Rows a chunk may take so that its window, widened to an aligned start, still fits.
        let rows_fitting = |row_bytes: &[u64]| -> Result<usize> {
            let rows = row_bytes
                .iter()
                .map(|&b| (max / b.max(1)).saturating_sub(aligned_row_step(b, align) as u64 - 1) as usize)
                .min()
                .unwrap_or(usize::MAX);
            if rows == 0 {
                let widest = row_bytes.iter().copied().max().unwrap_or(0);
                return Err(Error::ExceedsDeviceLimit {
                    op: OP,
                    what: "one row of an operand, aligned, in a storage binding (bytes)",
                    value: widest * aligned_row_step(widest, align) as u64,
                    limit: max,
                });
            }
            Ok(rows)
        };
        let w_chunk = rows_fitting(&[w_row, s_row])?;
        let k_chunks = if p.transpose { 1 } else { p.k.div_ceil(w_chunk) };
        let mut m_chunk = rows_fitting(&[x_row, y_row])?;
        if k_chunks > 1 {
            m_chunk = m_chunk.min((max / (k_chunks * p.n * 4) as u64) as usize);
        }
        if m_chunk == 0 {
            return Err(Error::ExceedsDeviceLimit {
                op: OP,
                what: "partial sums of one row in a storage binding (bytes)",
                value: (k_chunks * p.n * 4) as u64,
                limit: max,
            });
        }

        // With k in chunks, one slot of partial sums per chunk of k, for the rows of one chunk of x.
        let partials_len = k_chunks * m_chunk.min(p.m) * p.n;
        let partials = Window { source: Source::Partials, offset: 0, size: (partials_len * 4) as u64 };
        let mut plan = Plan { steps: Vec::new(), partials: (k_chunks > 1).then_some(partials_len) };
        let window = |source: Source, tensor: &Tensor, row_bytes: u64, rows: Range<usize>| {
            let (w, early) = BufferWindow::aligned_rows(tensor.buffer(), row_bytes, &rows, align);
            (Window { source, offset: w.offset, size: w.size }, early)
        };
        for (b, &(xm, wm)) in p.batches.iter().enumerate() {
            for m0 in (0..p.m).step_by(m_chunk) {
                let m1 = (m0 + m_chunk).min(p.m);
                let (x_win, x_early) = window(Source::X, ops.x, x_row, xm * p.m + m0..xm * p.m + m1);
                let (y_win, y_early) = window(Source::Y, ops.y, y_row, b * p.m + m0..b * p.m + m1);
                let kernel = self.kernel(m1 - m0)?;
                let w_chunk_count = if p.transpose { p.n.div_ceil(w_chunk) } else { k_chunks };
                for c in 0..w_chunk_count {
                    let (r0, r1) = (c * w_chunk, ((c + 1) * w_chunk).min(p.w_rows()));
                    let rows = wm * p.w_rows() + r0..wm * p.w_rows() + r1;
                    let (w_win, w_early) = window(Source::Weight, &ops.q.weight, w_row, rows.clone());
                    let (s_win, _) = window(Source::Scales, &ops.q.scales, s_row, rows.clone());
                    let (b_win, _) = window(Source::Biases, ops.biases(), s_row, rows);
                    let operands = [x_win, w_win, s_win, b_win];
                    let x_offset = x_early * p.x_stride();
                    let step = if p.transpose {
                        let entry = [to_u32(x_offset)?, to_u32(w_early)?, to_u32(y_early * p.n + r0)?];
                        let piece = Piece { m: m1 - m0, n: r1 - r0, k: p.k, entries: vec![entry] };
                        self.matmul_step(kernel, &piece, operands, Output::y(y_win, p.format.out_dtype))?
                    } else if k_chunks == 1 {
                        let entry = [to_u32(x_offset)?, to_u32(w_early)?, to_u32(y_early * p.n)?];
                        let piece = Piece { m: m1 - m0, n: p.n, k: p.k, entries: vec![entry] };
                        self.matmul_step(kernel, &piece, operands, Output::y(y_win, p.format.out_dtype))?
                    } else {
                        // Slot c of the partial sums: k rows r0..r1 of this chunk of x.
                        let slot = c * (m1 - m0) * p.n;
                        let entry = [to_u32(x_offset + r0)?, to_u32(w_early)?, to_u32(slot)?];
                        let piece = Piece { m: m1 - m0, n: p.n, k: r1 - r0, entries: vec![entry] };
                        self.matmul_step(kernel, &piece, operands, Output::partials(partials, 1, 0))?
                    };
                    plan.steps.push(step);
                }
                if k_chunks > 1 {
                    let count = (m1 - m0) * p.n;
                    let layout = PartialsLayout::dense(count);
                    plan.steps.push(self.sum_step(partials, y_win, count, k_chunks, layout, y_early * p.n)?);
                }
            }
        }
        Ok(plan)
    }
}

/// Where a matmul dispatch writes: a window of y in its dtype, or of f32 partial sums, with k
/// cut into `slices` slices whose sums go to slots `slot_stride` elements apart.
#[derive(Clone, Copy, Debug)]
struct Output {
    window: Window,
    slices: usize,
    slot_stride: usize,
    dtype: DType,
}

impl Output {
    fn y(window: Window, dtype: DType) -> Output {
        Output { window, slices: 1, slot_stride: 0, dtype }
    }

    fn partials(window: Window, slices: usize, slot_stride: usize) -> Output {
        Output { window, slices, slot_stride, dtype: DType::F32 }
    }
}

/// The dispatches of one call and the f32 partial sums they need, if any (elements, in the
/// scratch buffer of [`Gpu::scratch`]).
struct Plan {
    steps: Vec<Step>,
    partials: Option<usize>,
}

/// 16-byte vectors in a row of x of `k` elements laid out by `qmv_prepare`: per block of 32
/// elements, 8 quads and the block's sum, in whole chunks of [`PREPARED_CHUNK`] blocks.
fn prepared_row_vectors(k: usize) -> usize {
    9 * (k / 32).next_multiple_of(PREPARED_CHUNK as usize)
}

/// Bytes in a row of x of `k` elements laid out by `qmv_prepare`.
fn prepared_row_bytes(k: usize) -> u64 {
    prepared_row_vectors(k) as u64 * VECTOR_BYTES
}

/// `qmv_prepare.wgsl`'s uniform parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct PrepareParams {
    rows: u32,
    blocks: u32,
}

/// Every row of x laid out for `qmv` with several rows of `bits`-bit weights (see
/// `wgsl/qmv_prepare.wgsl`): f32, [`prepared_row_vectors`] per row.
fn prepare_x(x: &Tensor, bits: u32) -> Result<Tensor> {
    let gpu = x.gpu();
    let (rows, k) = x.rows_and_width();
    let blocks = k / 32;
    let prepared = Tensor::zeros(gpu, &[rows, prepared_row_vectors(k) * 4], DType::F32)?;
    let row_bytes = [(k * x.dtype().size_in_bytes()) as u64, prepared_row_bytes(k)];
    let key = KernelKey::QmvPrepare { x_dtype: x.dtype(), bits };
    launch_chunks(OP, gpu, rows, &row_bytes, &key, |chunk| {
        let params = PrepareParams { rows: to_u32(chunk.len())?, blocks: to_u32(blocks)? };
        Ok(Launch {
            params: bytemuck::bytes_of(&params).to_vec(),
            buffers: vec![
                BufferWindow::rows(x.buffer(), row_bytes[0], chunk),
                BufferWindow::rows(prepared.buffer(), row_bytes[1], chunk),
            ],
            // One invocation per quad; workgroups (a multiple of 8) hold whole blocks.
            workgroups: to_u32((chunk.len() * k / 4).div_ceil(ELEMENTWISE_WG_SIZE as usize))?,
        })
    })?;
    Ok(prepared)
}

fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::ExceedsDeviceLimit {
        op: OP,
        what: "an index into one binding",
        value: v as u64,
        limit: u32::MAX.into(),
    })
}

/// Creates the plan's buffers and pipelines and submits its dispatches in one pass.
fn run(gpu: &Gpu, ops: &Operands<'_>, plan: &Plan) -> Result<()> {
    let scratch = plan.partials.map(|count| gpu.scratch(count as u64 * 4)).transpose()?;
    let tables = plan
        .steps
        .iter()
        .map(|s| {
            s.table.as_ref().map(|t| gpu.create_buffer_init("wgquant batch table", bytemuck::cast_slice(t))).transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let pipelines = plan.steps.iter().map(|s| gpu.pipeline(&s.key)).collect::<Result<Vec<_>>>()?;
    let buffer = |source: Source| -> &wgpu::Buffer {
        match source {
            Source::X => ops.x.buffer(),
            Source::Weight => ops.q.weight.buffer(),
            Source::Scales => ops.q.scales.buffer(),
            Source::Biases => ops.biases().buffer(),
            Source::Y => ops.y.buffer(),
            Source::Partials => scratch.as_deref().expect("the plan lists its partial sums"),
        }
    };
    let dispatches: Vec<Dispatch<'_>> = plan
        .steps
        .iter()
        .zip(&tables)
        .zip(&pipelines)
        .map(|((step, table), pipeline)| {
            let table = table.iter().map(|t| BufferWindow { buffer: t, offset: 0, size: t.size() });
            let windows =
                step.windows.iter().map(|w| BufferWindow { buffer: buffer(w.source), offset: w.offset, size: w.size });
            Dispatch {
                pipeline,
                params: step.params.clone(),
                buffers: table.chain(windows).collect(),
                workgroups: step.workgroups,
            }
        })
        .collect();
    gpu.submit(OP, &dispatches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes(&[2, 1], &[3]).unwrap(), vec![2, 3]);
        assert_eq!(broadcast_shapes(&[], &[4]).unwrap(), vec![4]);
        assert!(broadcast_shapes(&[2], &[3]).is_err());
        // out (2, 3): x batch (2, 1) ignores the second axis; w batch (3,) ignores the first.
        let out = [2, 3];
        let x: Vec<usize> = (0..6).map(|b| broadcast_index(b, &out, &[2, 1])).collect();
        let w: Vec<usize> = (0..6).map(|b| broadcast_index(b, &out, &[3])).collect();
        assert_eq!(x, [0, 0, 0, 1, 1, 1]);
        assert_eq!(w, [0, 1, 2, 0, 1, 2]);
    }
}
