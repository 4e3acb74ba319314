//! Planning a product: which kernels run, with which knobs, over which windows of the operands.
//! [`plan`] is a pure function of the problem, the operands' sizes, the options and the
//! device's capabilities ([`PlanCaps`]): unit tests call it without a GPU.
//!
//! Candidates, chosen as MLX chooses (`mlx/backend/metal/quantized.cpp`): `qmv_coop` where it
//! can run (asked for, or from [`QMV_COOP_AUTO_ROWS`] rows), else the vector kernels for few
//! rows of x (`qmv` transposed, preceded by `qmv_prepare` with several rows; `qvm` otherwise),
//! else the tiled `qmm` with the largest tile the device's limits allow.

use std::fmt;
use std::ops::Range;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{aligned_row_step, row_chunks, Caps, VECTOR_BYTES};
use crate::kernels::{
    CoopBindings, CoopParams, KernelKey, MatmulFormat, PrepareBindings, PrepareParams, QmmKey, QmmShape, QmvCoopKey,
    QmvKey, QmvPrepareKey, QuantizedMatmulBindings, QuantizedMatmulParams, QvmKey, Reduction, ResourceUsage,
    SumPartialsBindings, SumPartialsKey, SumPartialsParams, ELEMENTWISE_WG_SIZE, PREPARED_CHUNK, QMM_TILE_ROWS,
    QMV_COOP_SLICE, QMV_COOP_SUBGROUPS, QMV_COOP_SUBGROUP_SIZE, QMV_WG_SIZE, QVM_WG_SIZE, SUM_PARTIALS_WG_SIZE,
};

use super::problem::Problem;
use super::{QmmKernel, QmmOptions, OP};

/// Rows of x per `qmv` workgroup at most (MLX's qmv_wide keeps small batches on the vector path).
const QMV_MAX_ROWS: usize = 8;
/// Rows of x up to which transposed products use `qmv` (in tiles of 8 rows): measured on an
/// H100, it stays ahead of the tiled kernel to about 32 rows (benches/RESULTS.md).
const QMV_AUTO_ROWS: usize = 32;
/// Rows of x from which `Auto` takes `qmv_coop` where it can run: below 4 rows `qmv` is faster
/// on the Llama shapes, from 5 `qmv_coop` is (benches/RESULTS.md).
pub(super) const QMV_COOP_AUTO_ROWS: usize = 5;
/// Rows of x up to which untransposed products use the `qvm` kernel (MLX: M < 4 goes to qvm).
const QVM_MAX_ROWS: usize = 4;
/// `qvm` splits k until about this many invocations run (enough to fill a large GPU).
const QVM_TARGET_INVOCATIONS: usize = 16384;
/// Rows of w a `qvm` slice walks at least: fewer would cost more in partial sums than it saves.
const QVM_MIN_SLICE: usize = 64;
/// `qmm` splits k until about this many invocations run: on an H100 this lands on the fastest
/// splits (benches/RESULTS.md); more slices cost their partial sums.
const QMM_TARGET_INVOCATIONS: usize = 24576;
/// k a `qmm` slice walks at least (16 steps of 16).
const QMM_MIN_SLICE: usize = 256;

/// What planning reads of a device: its limits and the capabilities kernels depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanCaps {
    /// The largest storage binding, in whole 16-byte vectors (see [`Caps::max_binding`]).
    pub max_binding: u64,
    /// Bindings start at multiples of this many bytes.
    pub offset_alignment: u64,
    /// Bytes of workgroup memory a workgroup may use.
    pub workgroup_memory: u64,
    /// Invocations per workgroup at most.
    pub invocations: u32,
    /// Workgroups along one dimension of a dispatch at most.
    pub workgroups_per_dim: u32,
    /// The adapter's smallest and largest subgroup, where subgroup operations are available.
    pub subgroups: Option<(u32, u32)>,
    /// See [`Caps::cooperative_f16`].
    pub cooperative_f16: bool,
}

impl PlanCaps {
    /// The caps of a device opened with `limits`.
    pub fn new(limits: &wgpu::Limits, subgroups: Option<(u32, u32)>, cooperative_f16: bool) -> PlanCaps {
        PlanCaps {
            max_binding: limits.max_storage_buffer_binding_size & !(VECTOR_BYTES - 1),
            offset_alignment: u64::from(limits.min_storage_buffer_offset_alignment),
            workgroup_memory: u64::from(limits.max_compute_workgroup_storage_size),
            invocations: limits.max_compute_invocations_per_workgroup,
            workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            subgroups,
            cooperative_f16,
        }
    }

    /// The caps of an open device.
    pub fn of(caps: &Caps) -> PlanCaps {
        let subgroups = caps.has_subgroups().then_some((caps.info.subgroup_min_size, caps.info.subgroup_max_size));
        PlanCaps::new(&caps.limits, subgroups, caps.cooperative_f16)
    }

    /// Whether a workgroup asking for `usage` fits.
    fn fits(&self, usage: ResourceUsage) -> bool {
        usage.workgroup_memory <= self.workgroup_memory && usage.invocations <= u64::from(self.invocations)
    }
}

/// Bytes of each operand's buffer (bound whole when every one fits a binding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct OperandSizes {
    pub x: u64,
    pub weight: u64,
    pub scales: u64,
    pub biases: u64,
    pub y: u64,
}

/// Which buffer a window views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// x as the caller gave it.
    X,
    /// x laid out by the plan's `qmv_prepare` steps, in the device's scratch for it
    /// ([`crate::Gpu::scratch`]).
    PreparedX,
    Weight,
    Scales,
    Biases,
    Y,
    /// The scratch buffer of f32 partial sums ([`crate::Gpu::scratch`]).
    Partials,
    /// The step's own batch table ([`Step::table`]).
    Table,
}

/// A window of a source buffer, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub source: Source,
    pub offset: u64,
    pub size: u64,
}

/// Bytes of one batch-table entry: x offset, w_q row offset, y offset ([`Step::table`]).
pub(super) const TABLE_ENTRY_BYTES: usize = std::mem::size_of::<[u32; 3]>();

/// One dispatch, before its buffers exist.
#[derive(Debug)]
pub(super) struct Step {
    pub key: KernelKey,
    pub params: Vec<u8>,
    /// The batch table (3 words per entry) of a matmul kernel; `None` for the others.
    pub table: Option<Vec<u32>>,
    /// Bindings 1, 2, ..., in the order of the kernel's bindings table.
    pub windows: Vec<Window>,
    pub workgroups: u32,
    /// Whether the step ORs 16-bit outputs into words of y that other workgroups share, so
    /// that y must start zeroed (see `store_y` in `wgsl/common/qmm_io.wgsl`).
    pub ors_into_y: bool,
}

/// The work of one call: dispatches in order, and the scratch they need.
#[derive(Debug)]
pub(super) struct Plan {
    pub steps: Vec<Step>,
    /// Bytes of x laid out by `qmv_prepare` ([`Source::PreparedX`]), if the steps prepare x.
    pub prepared_x: Option<u64>,
    /// f32 partial sums the steps need (elements, in the scratch buffer), if any.
    pub partials: Option<usize>,
}

impl Plan {
    /// Whether y must be zeroed before the steps run; where no step needs it, y is left as
    /// the pool hands it (every word is written whole), which saves a clear per call.
    pub fn zeroes_y(&self) -> bool {
        self.steps.iter().any(|s| s.ors_into_y)
    }

    /// Every kernel the plan runs.
    #[cfg(test)]
    pub fn keys(&self) -> Vec<KernelKey> {
        self.steps.iter().map(|s| s.key.clone()).collect()
    }
}

/// Why a kernel cannot run a product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Obstacle {
    /// The device has no cooperative matrices.
    NoCooperativeMatrices,
    /// The kernel assumes subgroups of one size, which the device does not guarantee.
    SubgroupSize { assumed: u32, sizes: Option<(u32, u32)> },
    /// The kernel needs transposed weights.
    Untransposed,
    /// The kernel is specialised for another format.
    Format(MatmulFormat),
    /// The kernel takes 2 to [`QMV_MAX_ROWS`] rows of x.
    Rows(usize),
    /// The kernel needs k a multiple of its slice.
    InnerLength(usize),
    /// The kernel takes one matrix of w.
    BatchEntries(usize),
    /// An operand or its partial sums exceed one storage binding.
    Binding,
    /// The kernel's workgroup needs more memory or invocations than the device allows.
    Workgroup { usage: ResourceUsage, caps: PlanCaps },
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obstacle::NoCooperativeMatrices => {
                write!(f, "the device has no cooperative matrices (see Caps::cooperative_f16 and Gpu::from_device)")
            }
            Obstacle::SubgroupSize { assumed, sizes: Some((min, max)) } => {
                write!(f, "it needs subgroups of {assumed} invocations, and the device's run from {min} to {max}")
            }
            Obstacle::SubgroupSize { assumed, sizes: None } => {
                write!(f, "it needs subgroups of {assumed} invocations, and the device has no subgroup operations")
            }
            Obstacle::Untransposed => write!(f, "it needs transpose = true"),
            Obstacle::Format(format) => write!(
                f,
                "it needs f16 x and scales, 4 bits, group size 64, not x {} with {} scales, {} bits, group size {}",
                format.x_dtype, format.scale_dtype, format.bits, format.group_size
            ),
            Obstacle::Rows(m) => write!(f, "it needs 2 to {QMV_MAX_ROWS} rows of x, not {m}"),
            Obstacle::InnerLength(k) => write!(f, "it needs k a multiple of {QMV_COOP_SLICE}, not {k}"),
            Obstacle::BatchEntries(entries) => write!(f, "it takes one matrix of w, not {entries} batch entries"),
            Obstacle::Binding => write!(f, "an operand or its partial sums exceed one storage binding"),
            Obstacle::Workgroup { usage, caps } => write!(
                f,
                "its workgroup needs {} bytes of workgroup memory and {} invocations, but the device allows at \
                 most {} and {}",
                usage.workgroup_memory, usage.invocations, caps.workgroup_memory, caps.invocations
            ),
        }
    }
}

/// The plan for `problem` (not empty) on a device with `caps`, its operands of `sizes`.
///
/// # Errors
/// [`Error::InvalidOption`] for a knob no kernel supports, [`Error::KernelUnavailable`] where
/// `qmv_coop` was asked for and cannot run, [`Error::ExceedsDeviceLimit`] where a knob or an
/// operand exceeds the device.
pub(super) fn plan(problem: &Problem, sizes: &OperandSizes, options: &QmmOptions, caps: &PlanCaps) -> Result<Plan> {
    check_options(options)?;
    let planner = Planner { problem, options, caps, prepared: false, format: problem.format, sizes: *sizes };
    let cooperative = match options.kernel {
        QmmKernel::Cooperative => match planner.cooperative_obstacle() {
            Some(reason) => {
                let reason = reason.to_string();
                return Err(Error::KernelUnavailable { op: OP, kernel: "cooperative (qmv_coop)", reason });
            }
            None => true,
        },
        QmmKernel::Auto => problem.m >= QMV_COOP_AUTO_ROWS && planner.cooperative_obstacle().is_none(),
        QmmKernel::Vector | QmmKernel::Tiled => false,
    };
    if cooperative {
        return planner.cooperative();
    }
    // With several rows of x, `qmv` reads x laid out by `qmv_prepare` (see there).
    let prepares = problem.m > 1 && planner.uses_qmv();
    let planner = if prepares {
        let x = (problem.x_rows as u64).saturating_mul(prepared_row_bytes(problem.k));
        Planner {
            prepared: true,
            format: MatmulFormat { x_dtype: DType::F32, ..problem.format },
            sizes: OperandSizes { x, ..*sizes },
            ..planner
        }
    } else {
        planner
    };
    let mut plan = if planner.operands_fit() { planner.whole()? } else { planner.chunked()? };
    if prepares {
        let mut steps = prepare_steps(problem, sizes.x, caps)?;
        steps.append(&mut plan.steps);
        plan.steps = steps;
        plan.prepared_x = Some(planner.sizes.x);
    }
    Ok(plan)
}

/// `qmv_prepare` over every row of x (`x_size` bytes), into [`Source::PreparedX`], in chunks
/// whose windows fit a binding.
fn prepare_steps(problem: &Problem, x_size: u64, caps: &PlanCaps) -> Result<Vec<Step>> {
    let (k, format) = (problem.k, problem.format);
    let key: KernelKey = QmvPrepareKey { mode: format.mode, x_dtype: format.x_dtype, bits: format.bits }.into();
    let (x_row, prepared_row) = ((k * format.x_dtype.size_in_bytes()) as u64, prepared_row_bytes(k));
    let prepared_size = problem.x_rows as u64 * prepared_row;
    let align = caps.offset_alignment;
    let chunks = row_chunks(OP, problem.x_rows, &[x_row, prepared_row], caps.max_binding, align)?;
    chunks
        .iter()
        .map(|chunk| {
            // Chunks start aligned in both buffers, so no window starts early.
            let (x, _) = aligned_rows(Source::X, x_size, x_row, chunk, align);
            let (prepared, _) = aligned_rows(Source::PreparedX, prepared_size, prepared_row, chunk, align);
            let params = PrepareParams { rows: to_u32(chunk.len())?, blocks: to_u32(k / 32)?, ..Default::default() };
            Ok(Step {
                key: key.clone(),
                params: bytemuck::bytes_of(&params).to_vec(),
                table: None,
                windows: PrepareBindings { x, prepared }.into_vec(),
                // One invocation per quad; workgroups (a multiple of 8) hold whole blocks.
                workgroups: to_u32((chunk.len() * k / 4).div_ceil(ELEMENTWISE_WG_SIZE as usize))?,
                ors_into_y: false,
            })
        })
        .collect()
}

/// Knobs outside what the kernels support, whatever the device.
fn check_options(options: &QmmOptions) -> Result<()> {
    if let Some(bm) = options.qmm_tile_rows.filter(|bm| !QMM_TILE_ROWS.contains(bm)) {
        return Err(Error::InvalidOption {
            op: OP,
            option: "qmm_tile_rows",
            value: bm.to_string(),
            allowed: "32, 64 or 128".into(),
        });
    }
    if let Some(shape) = options.qmm_shape.filter(|s| !s.is_supported()) {
        return Err(Error::InvalidOption {
            op: OP,
            option: "qmm_shape",
            value: format!("{shape:?}"),
            allowed: "bn 128 or 256, columns 8 or 16".into(),
        });
    }
    if let Some(size) = options.qmv_wg_size.filter(|s| !s.is_power_of_two()) {
        return Err(Error::InvalidOption {
            op: OP,
            option: "qmv_wg_size",
            value: size.to_string(),
            allowed: "a power of two".into(),
        });
    }
    if options.split_k == Some(0) {
        return Err(Error::InvalidOption { op: OP, option: "split_k", value: "0".into(), allowed: "1 or more".into() });
    }
    Ok(())
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

/// Where `qmm_sum_partials` finds output `e`'s partial sums: slot `s` holds it at
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

/// 16-byte vectors in a row of x of `k` elements laid out by `qmv_prepare`: per block of 32
/// elements, 8 quads and the block's sum, in whole chunks of [`PREPARED_CHUNK`] blocks.
pub(super) fn prepared_row_vectors(k: usize) -> usize {
    9 * (k / 32).next_multiple_of(PREPARED_CHUNK as usize)
}

/// Bytes in a row of x of `k` elements laid out by `qmv_prepare`.
pub(super) fn prepared_row_bytes(k: usize) -> u64 {
    prepared_row_vectors(k) as u64 * VECTOR_BYTES
}

pub(super) fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::ExceedsDeviceLimit {
        op: OP,
        what: "an index into one binding",
        value: v as u64,
        limit: u32::MAX.into(),
    })
}

/// Rows `rows` of a buffer of `buffer_size` bytes in rows of `row_bytes`, widened at the start to
/// the nearest row whose offset is a multiple of `alignment` and at the end to whole 16-byte
/// vectors where the buffer allows (as [`crate::gpu::BufferWindow`] binds them). Returns the
/// window and how many rows it starts early.
fn aligned_rows(
    source: Source,
    buffer_size: u64,
    row_bytes: u64,
    rows: &Range<usize>,
    alignment: u64,
) -> (Window, usize) {
    let early = rows.start % aligned_row_step(row_bytes, alignment);
    let offset = (rows.start - early) as u64 * row_bytes;
    let size = (rows.end - rows.start + early) as u64 * row_bytes;
    let room = buffer_size.saturating_sub(offset);
    let size = size.max(1).next_multiple_of(VECTOR_BYTES).min(room).max(4);
    (Window { source, offset, size }, early)
}

struct Planner<'a> {
    problem: &'a Problem,
    options: &'a QmmOptions,
    caps: &'a PlanCaps,
    /// Whether the steps read x as `qmv_prepare` lays it out.
    prepared: bool,
    /// The format the kernels read (x is f32 once prepared).
    format: MatmulFormat,
    /// The operands as the steps read them.
    sizes: OperandSizes,
}

impl Planner<'_> {
    /// Whether every operand fits one binding whole.
    fn operands_fit(&self) -> bool {
        let s = self.sizes;
        [s.x, s.weight, s.scales, s.biases, s.y].iter().all(|&b| b <= self.caps.max_binding)
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

    /// How far apart the rows of x are, in the units the kernels index x in: elements, or
    /// 16-byte vectors when x is prepared.
    fn x_stride(&self) -> usize {
        if self.prepared {
            prepared_row_vectors(self.problem.k)
        } else {
            self.problem.k
        }
    }

    /// Where the steps read x.
    fn x_source(&self) -> Source {
        if self.prepared {
            Source::PreparedX
        } else {
            Source::X
        }
    }

    /// Bytes per row of x as the steps read it.
    fn x_row_bytes(&self) -> u64 {
        if self.prepared {
            prepared_row_bytes(self.problem.k)
        } else {
            (self.problem.k * self.format.x_dtype.size_in_bytes()) as u64
        }
    }

    /// What keeps `qmv_coop` from this product, if anything.
    fn cooperative_obstacle(&self) -> Option<Obstacle> {
        let p = self.problem;
        let caps = self.caps;
        let f = p.format;
        let usage = KernelKey::from(QmvCoopKey { subgroups: QMV_COOP_SUBGROUPS }).workgroup();
        if !caps.cooperative_f16 {
            Some(Obstacle::NoCooperativeMatrices)
        } else if caps.subgroups != Some((QMV_COOP_SUBGROUP_SIZE, QMV_COOP_SUBGROUP_SIZE)) {
            Some(Obstacle::SubgroupSize { assumed: QMV_COOP_SUBGROUP_SIZE, sizes: caps.subgroups })
        } else if !caps.fits(usage) {
            Some(Obstacle::Workgroup { usage, caps: *caps })
        } else if !p.transpose {
            Some(Obstacle::Untransposed)
        } else if (f.x_dtype, f.scale_dtype, f.bits, f.group_size) != (DType::F16, DType::F16, 4, 64) {
            Some(Obstacle::Format(f))
        } else if !(2..=QMV_MAX_ROWS).contains(&p.m) {
            Some(Obstacle::Rows(p.m))
        } else if p.k % QMV_COOP_SLICE as usize != 0 {
            Some(Obstacle::InnerLength(p.k))
        } else if p.batches.len() != 1 {
            Some(Obstacle::BatchEntries(p.batches.len()))
        } else if !self.operands_fit() || cooperative_partials(p.k, p.n) as u64 * 4 > caps.max_binding {
            Some(Obstacle::Binding)
        } else {
            None
        }
    }

    /// `qmv_coop`'s two dispatches: the slices' partial sums, then their sum into y.
    fn cooperative(&self) -> Result<Plan> {
        let p = self.problem;
        let (tile_groups, n_pad) = cooperative_tiles(p.n);
        let slices = p.k / QMV_COOP_SLICE as usize;
        let count = cooperative_partials(p.k, p.n);
        let params = CoopParams {
            m: to_u32(p.m)?,
            n: to_u32(p.n)?,
            k: to_u32(p.k)?,
            n_pad: to_u32(n_pad)?,
            tile_groups: to_u32(tile_groups)?,
            slices: to_u32(slices)?,
            ..CoopParams::default()
        };
        let partials = Window { source: Source::Partials, offset: 0, size: (count * 4) as u64 };
        let s = self.sizes;
        let whole = |source, size| Window { source, offset: 0, size };
        let bindings = CoopBindings {
            x: whole(Source::X, s.x),
            w_q: whole(Source::Weight, s.weight),
            scales: whole(Source::Scales, s.scales),
            biases: whole(Source::Biases, s.biases),
            partials,
        };
        let products = Step {
            key: QmvCoopKey { subgroups: QMV_COOP_SUBGROUPS }.into(),
            params: bytemuck::bytes_of(&params).to_vec(),
            table: None,
            windows: bindings.into_vec(),
            workgroups: to_u32(tile_groups * slices)?,
            ors_into_y: false,
        };
        let layout = PartialsLayout { slot_stride: 16 * n_pad, row: p.n, row_stride: n_pad };
        let sum = self.sum_step(partials, whole(Source::Y, s.y), p.m * p.n, slices, layout, 0)?;
        Ok(Plan { steps: vec![products, sum], prepared_x: None, partials: Some(count) })
    }

    /// The kernel for pieces of `m` rows. The family follows the whole product's rows, so that
    /// every piece reads x as it was laid out.
    fn kernel(&self, m: usize) -> Result<Kernel> {
        if !self.vector() {
            let (bm, shape) = self.qmm_tile(m)?;
            return Ok(Kernel::Qmm { bm, shape });
        }
        if !self.problem.transpose {
            return Ok(Kernel::Qvm { vecs: m.clamp(1, QVM_MAX_ROWS) as u32 });
        }
        // Prepared x is read by the several-rows path only; x as it is by the one-row path.
        let vecs = if self.prepared { m.clamp(2, QMV_MAX_ROWS) as u32 } else { 1 };
        let reduction = match self.caps.subgroups {
            // Rounded down to a power of two within what wgpu reports: the scratch is sized for
            // the smallest subgroup, and a smaller assumption only sizes it larger.
            Some((min, _)) => {
                let min = min.clamp(wgpu::MINIMUM_SUBGROUP_MIN_SIZE, wgpu::MAXIMUM_SUBGROUP_MAX_SIZE);
                Reduction::Subgroup { min_size: 1 << min.ilog2() }
            }
            None => Reduction::Workgroup,
        };
        let usage = |wg_size: u32| ResourceUsage {
            workgroup_memory: QmvKey::workgroup_memory(wg_size, reduction),
            invocations: wg_size.into(),
        };
        let fits = |wg_size: u32| self.caps.fits(usage(wg_size));
        let wg_size = match self.options.qmv_wg_size {
            Some(wg_size) => wg_size,
            // The default, halved until the device takes it.
            None => (0..=QMV_WG_SIZE.ilog2()).map(|i| QMV_WG_SIZE >> i).find(|&s| fits(s)).unwrap_or(1),
        };
        if !fits(wg_size) {
            return Err(self.workgroup_limit(usage(wg_size)));
        }
        Ok(Kernel::Qmv { vecs, wg_size, reduction })
    }

    /// The `qmm` tile for pieces of `m` rows: the smallest tile rows that cover `m` (else the
    /// largest) and its default shape; where the device's limits refuse that, the largest tile
    /// they allow, narrowing columns before rows. Knobs given in the options are kept.
    fn qmm_tile(&self, m: usize) -> Result<(u32, QmmShape)> {
        let largest = QMM_TILE_ROWS[QMM_TILE_ROWS.len() - 1];
        let covering = QMM_TILE_ROWS.into_iter().find(|&r| m <= r as usize).unwrap_or(largest);
        let rows: Vec<u32> = match self.options.qmm_tile_rows {
            Some(bm) => vec![bm],
            None => QMM_TILE_ROWS.into_iter().rev().filter(|&r| r <= covering).collect(),
        };
        let mut tried = None;
        for bm in rows {
            let shapes = match self.options.qmm_shape {
                Some(shape) => vec![shape],
                None => {
                    let default = QmmShape::default_for(bm);
                    vec![default, QmmShape { bn: 128, ..default }]
                }
            };
            for shape in shapes {
                if self.caps.fits(qmm_usage(bm, shape)) {
                    return Ok((bm, shape));
                }
                tried = Some((bm, shape));
            }
        }
        let (bm, shape) = tried.expect("at least one tile is tried");
        Err(self.workgroup_limit(qmm_usage(bm, shape)))
    }

    /// The limit a workgroup asking for `usage` exceeds.
    fn workgroup_limit(&self, usage: ResourceUsage) -> Error {
        if usage.workgroup_memory > self.caps.workgroup_memory {
            Error::ExceedsDeviceLimit {
                op: OP,
                what: "workgroup memory (bytes)",
                value: usage.workgroup_memory,
                limit: self.caps.workgroup_memory,
            }
        } else {
            Error::ExceedsDeviceLimit {
                op: OP,
                what: "invocations per workgroup",
                value: usage.invocations,
                limit: self.caps.invocations.into(),
            }
        }
    }

    fn key(&self, kernel: Kernel, out_dtype: DType) -> KernelKey {
        let format = MatmulFormat { out_dtype, ..self.format };
        match kernel {
            Kernel::Qmv { vecs, wg_size, reduction } => QmvKey { format, vecs, wg_size, reduction }.into(),
            Kernel::Qvm { vecs } => QvmKey { format, vecs }.into(),
            Kernel::Qmm { bm, shape } => QmmKey { format, transpose: self.problem.transpose, bm, shape }.into(),
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
        let workgroups = [piece.entries.len(), slices, m_tiles, n_tiles]
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        // The runtime lays a dispatch's workgroups out in two dimensions.
        let max_groups = u64::from(self.caps.workgroups_per_dim).pow(2).min(u32::MAX.into());
        if workgroups > max_groups {
            return Err(Error::ExceedsDeviceLimit {
                op: OP,
                what: "workgroups in one dispatch",
                value: workgroups,
                limit: max_groups,
            });
        }
        let params = QuantizedMatmulParams {
            m: to_u32(piece.m)?,
            n: to_u32(piece.n)?,
            k: to_u32(piece.k)?,
            x_stride: to_u32(self.x_stride())?,
            y_stride: to_u32(p.n)?,
            w_stride: to_u32(p.w_words)?,
            s_stride: to_u32(p.groups)?,
            batches: to_u32(piece.entries.len())?,
            m_tiles: to_u32(m_tiles)?,
            n_tiles: to_u32(n_tiles)?,
            k_splits: to_u32(slices)?,
            k_per_split: to_u32(k_per_split)?,
            slot_stride: to_u32(y_slot_stride)?,
            ..QuantizedMatmulParams::default()
        };
        let [x, w_q, scales, biases] = operands;
        let table = Window { source: Source::Table, offset: 0, size: (piece.entries.len() * TABLE_ENTRY_BYTES) as u64 };
        let windows = QuantizedMatmulBindings { batches: table, x, w_q, scales, biases, y }.into_vec();
        // `qmv` stores a pair of 16-bit outputs n, n + 1 (n even) as one word where both are
        // its own and the pair starts a word: everywhere when it writes an even number of
        // outputs per row and every row and batch entry of y starts on a word.
        let whole_words = matches!(kernel, Kernel::Qmv { .. })
            && piece.n % 2 == 0
            && p.n % 2 == 0
            && piece.entries.iter().all(|&[_, _, y_offset]| y_offset % 2 == 0);
        Ok(Step {
            key: self.key(kernel, out_dtype),
            params: bytemuck::bytes_of(&params).to_vec(),
            table: Some(piece.entries.iter().flatten().copied().collect()),
            windows,
            workgroups: workgroups as u32,
            ors_into_y: out_dtype.size_in_bytes() == 2 && !whole_words,
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
        let params = SumPartialsParams {
            count: to_u32(count)?,
            slots: to_u32(slots)?,
            slot_stride: to_u32(layout.slot_stride)?,
            y_offset: to_u32(y_offset)?,
            row: to_u32(layout.row)?,
            row_stride: to_u32(layout.row_stride)?,
            ..SumPartialsParams::default()
        };
        Ok(Step {
            key: SumPartialsKey { out_dtype: self.problem.format.out_dtype }.into(),
            params: bytemuck::bytes_of(&params).to_vec(),
            table: None,
            windows: SumPartialsBindings { partials, y }.into_vec(),
            workgroups: to_u32(count.div_ceil(SUM_PARTIALS_WG_SIZE as usize))?,
            ors_into_y: self.problem.format.out_dtype.size_in_bytes() == 2,
        })
    }

    /// Every operand fits its binding: one dispatch over every batch entry (plus the sum of
    /// k slices).
    fn whole(&self) -> Result<Plan> {
        let p = self.problem;
        let entries = p
            .batches
            .iter()
            .enumerate()
            .map(|(b, &(xm, wm))| {
                Ok([to_u32(xm * p.m * self.x_stride())?, to_u32(wm * p.w_rows())?, to_u32(b * p.m * p.n)?])
            })
            .collect::<Result<Vec<_>>>()?;
        let piece = Piece { m: p.m, n: p.n, k: p.k, entries };
        let kernel = self.kernel(p.m)?;
        let s = self.sizes;
        let whole = |source, size| Window { source, offset: 0, size };
        let operands = [
            whole(self.x_source(), s.x),
            whole(Source::Weight, s.weight),
            whole(Source::Scales, s.scales),
            whole(Source::Biases, s.biases),
        ];
        let y = whole(Source::Y, s.y);
        let count = p.batches.len() * p.m * p.n;
        // The partial sums must fit one binding too.
        let max_slots = (self.caps.max_binding / (count as u64 * 4)).max(1) as usize;
        let slices = self.k_splits(kernel, &piece).min(max_slots);
        if slices <= 1 {
            let step = self.matmul_step(kernel, &piece, operands, Output::y(y, p.format.out_dtype))?;
            return Ok(Plan { steps: vec![step], prepared_x: None, partials: None });
        }
        let partials = Window { source: Source::Partials, offset: 0, size: (slices * count * 4) as u64 };
        let matmul = self.matmul_step(kernel, &piece, operands, Output::partials(partials, slices, count))?;
        let sum = self.sum_step(partials, y, count, slices, PartialsLayout::dense(count), 0)?;
        Ok(Plan { steps: vec![matmul, sum], prepared_x: None, partials: Some(slices * count) })
    }

    /// Some operand exceeds its binding: dispatches per batch entry over windows of rows of x
    /// and y and, transposed, of rows of w (outputs); untransposed, of rows of w (k), summed
    /// through partial sums.
    fn chunked(&self) -> Result<Plan> {
        let p = self.problem;
        let (max, align) = (self.caps.max_binding, self.caps.offset_alignment);
        let x_row = self.x_row_bytes();
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
        let mut plan = Plan { steps: Vec::new(), prepared_x: None, partials: (k_chunks > 1).then_some(partials_len) };
        let s = self.sizes;
        for (b, &(xm, wm)) in p.batches.iter().enumerate() {
            for m0 in (0..p.m).step_by(m_chunk) {
                let m1 = (m0 + m_chunk).min(p.m);
                let (x_win, x_early) =
                    aligned_rows(self.x_source(), s.x, x_row, &(xm * p.m + m0..xm * p.m + m1), align);
                let (y_win, y_early) = aligned_rows(Source::Y, s.y, y_row, &(b * p.m + m0..b * p.m + m1), align);
                let kernel = self.kernel(m1 - m0)?;
                let w_chunk_count = if p.transpose { p.n.div_ceil(w_chunk) } else { k_chunks };
                for c in 0..w_chunk_count {
                    let (r0, r1) = (c * w_chunk, ((c + 1) * w_chunk).min(p.w_rows()));
                    let rows = wm * p.w_rows() + r0..wm * p.w_rows() + r1;
                    let (w_win, w_early) = aligned_rows(Source::Weight, s.weight, w_row, &rows, align);
                    let (s_win, _) = aligned_rows(Source::Scales, s.scales, s_row, &rows, align);
                    let (b_win, _) = aligned_rows(Source::Biases, s.biases, s_row, &rows, align);
                    let operands = [x_win, w_win, s_win, b_win];
                    let x_offset = x_early * self.x_stride();
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

/// What a `qmm` workgroup of `bm` x `shape` tiles asks of the device.
fn qmm_usage(bm: u32, shape: QmmShape) -> ResourceUsage {
    ResourceUsage { workgroup_memory: shape.workgroup_memory(bm), invocations: shape.invocations(bm).into() }
}

/// `qmv_coop`'s workgroups along n (each 16 rows of w per subgroup), and n padded to them.
fn cooperative_tiles(n: usize) -> (usize, usize) {
    let rows_per_group = 16 * QMV_COOP_SUBGROUPS as usize;
    let tile_groups = n.div_ceil(rows_per_group);
    (tile_groups, tile_groups * rows_per_group)
}

/// f32 elements of `qmv_coop`'s partial sums: per slice of k, 16 rows of padded outputs.
fn cooperative_partials(k: usize, n: usize) -> usize {
    (k / QMV_COOP_SLICE as usize) * 16 * cooperative_tiles(n).1
}

#[cfg(test)]
mod tests {
    //! The planner without a GPU: every kernel choice and every refusal, on WebGPU's default
    //! limits and on larger devices.

    use std::collections::HashSet;

    use super::*;
    use crate::params::Mode;

    const F16_4_64: MatmulFormat = MatmulFormat {
        mode: Mode::Affine,
        x_dtype: DType::F16,
        scale_dtype: DType::F16,
        out_dtype: DType::F16,
        bits: 4,
        group_size: 64,
    };

    /// WebGPU's default limits (16 KiB of workgroup memory, 256 invocations), with the
    /// subgroups of an NVIDIA GPU.
    fn webgpu() -> PlanCaps {
        PlanCaps::new(&wgpu::Limits::default(), Some((32, 32)), false)
    }

    /// A large desktop GPU: 48 KiB, 1024 invocations, 32-lane subgroups.
    fn desktop(cooperative_f16: bool) -> PlanCaps {
        let limits = wgpu::Limits {
            max_compute_workgroup_storage_size: 48 << 10,
            max_compute_invocations_per_workgroup: 1024,
            max_storage_buffer_binding_size: 2 << 30,
            ..wgpu::Limits::default()
        };
        PlanCaps::new(&limits, Some((32, 32)), cooperative_f16)
    }

    /// A product of `m` rows (one batch entry) with `n` outputs and inner length `k`.
    fn problem(m: usize, n: usize, k: usize, transpose: bool, format: MatmulFormat) -> Problem {
        let (w_rows, codes) = if transpose { (n, k) } else { (k, n) };
        Problem {
            m,
            n,
            k,
            batches: vec![(0, 0)],
            out_shape: vec![m, n],
            format,
            transpose,
            w_words: codes * format.bits as usize / 32,
            groups: codes / format.group_size as usize,
            x_rows: m,
            y_bytes: (m * n * format.out_dtype.size_in_bytes()) as u64,
        }
        .with_rows(w_rows)
    }

    impl Problem {
        /// (Checks the weight shape the helper above derives.)
        fn with_rows(self, w_rows: usize) -> Problem {
            assert_eq!(self.w_rows(), w_rows);
            self
        }
    }

    /// Whole-buffer sizes of `p`'s operands, as the op binds them.
    fn sizes(p: &Problem) -> OperandSizes {
        let f = p.format;
        let whole = |bytes: usize| (bytes as u64).next_multiple_of(VECTOR_BYTES);
        let scales = whole(p.w_rows() * p.groups * f.scale_dtype.size_in_bytes());
        OperandSizes {
            x: whole(p.x_rows * p.k * f.x_dtype.size_in_bytes()),
            weight: whole(p.w_rows() * p.w_words * 4),
            scales,
            biases: scales,
            y: whole(p.batches.len() * p.m * p.n * f.out_dtype.size_in_bytes()),
        }
    }

    fn plan_of(p: &Problem, options: &QmmOptions, caps: &PlanCaps) -> Result<Plan> {
        plan(p, &sizes(p), options, caps)
    }

    fn labels(plan: &Plan) -> Vec<String> {
        plan.keys().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn one_row_runs_qmv_on_x_as_it_comes() {
        let plan = plan_of(&problem(1, 4096, 4096, true, F16_4_64), &QmmOptions::default(), &webgpu()).unwrap();
        assert_eq!(labels(&plan), ["qmv_f16_f16_to_f16_gs64_b4_v1_wg64_sg32"]);
        assert!(plan.prepared_x.is_none() && plan.partials.is_none());
    }

    #[test]
    fn only_kernels_or_ing_16_bit_halves_into_shared_words_need_y_zeroed() {
        let f32_out = MatmulFormat { x_dtype: DType::F32, scale_dtype: DType::F32, out_dtype: DType::F32, ..F16_4_64 };
        let zeroes = |m, n, transpose, format| {
            plan_of(&problem(m, n, 1024, transpose, format), &QmmOptions::default(), &webgpu()).unwrap().zeroes_y()
        };
        // qmv stores pairs of f16 outputs as whole words when every pair starts a word.
        assert!(!zeroes(1, 4096, true, F16_4_64), "decode, one row");
        assert!(!zeroes(4, 4096, true, F16_4_64), "prepared x, four rows");
        assert!(zeroes(1, 4095, true, F16_4_64), "odd n: rows of y start mid-word");
        // qvm and qmm OR halves; the sum of k slices too.
        assert!(zeroes(1, 4096, false, F16_4_64), "qvm");
        assert!(zeroes(64, 4096, true, F16_4_64), "qmm");
        // f32 outputs are whole words everywhere.
        for (m, n, transpose) in [(1, 4095, true), (1, 4096, false), (64, 4096, true)] {
            assert!(!zeroes(m, n, transpose, f32_out), "f32, m = {m}, n = {n}, transpose = {transpose}");
        }
    }

    #[test]
    fn several_rows_prepare_x_then_run_qmv_on_f32() {
        for (m, vecs) in [(2, 2), (8, 8), (9, 8), (32, 8)] {
            let plan = plan_of(&problem(m, 512, 1024, true, F16_4_64), &QmmOptions::default(), &webgpu()).unwrap();
            let qmv = format!("qmv_f32_f16_to_f16_gs64_b4_v{vecs}_wg64_sg32");
            assert_eq!(labels(&plan), ["qmv_prepare_f16_b4".to_string(), qmv], "m = {m}");
        }
    }

    #[test]
    fn untransposed_few_rows_run_qvm_with_k_split() {
        for m in 1..=4 {
            let plan = plan_of(&problem(m, 512, 4096, false, F16_4_64), &QmmOptions::default(), &webgpu()).unwrap();
            // The slices of k write f32 partial sums.
            let qvm = format!("qvm_f16_f16_to_f32_gs64_b4_v{m}_wg64");
            assert_eq!(labels(&plan), [qvm, "qmm_sum_partials_f16".to_string()], "m = {m}");
            assert!(plan.partials.is_some());
        }
    }

    #[test]
    fn more_rows_run_qmm_with_the_smallest_covering_tile() {
        for (m, transpose, tile) in [
            (33, true, "64x256_c16"),
            (128, true, "128x256_c16"),
            (5, false, "32x256_c8"),
            (4096, false, "128x256_c16"),
        ] {
            let p = problem(m, 4096, 4096, transpose, F16_4_64);
            let plan = plan_of(&p, &QmmOptions::default(), &desktop(false)).unwrap();
            let (label, layout) = (&labels(&plan)[0], if transpose { "t" } else { "n" });
            assert!(label.starts_with(&format!("qmm_{layout}_f16_f16_to_")), "m = {m}: {label}");
            assert!(label.ends_with(&format!("gs64_b4_{tile}")), "m = {m}: {label}");
        }
    }

    #[test]
    fn webgpu_default_limits_narrow_qmm_tiles() {
        // The desktop tiles need 18-24 KiB of workgroup memory; WebGPU allows 16 KiB.
        for (m, transpose, tile) in [
            (33, true, "64x128_c16"),
            (128, true, "128x128_c16"),
            (5, false, "32x128_c8"),
            (4096, false, "128x128_c16"),
        ] {
            let p = problem(m, 4096, 4096, transpose, F16_4_64);
            let plan = plan_of(&p, &QmmOptions::default(), &webgpu()).unwrap();
            let (label, layout) = (&labels(&plan)[0], if transpose { "t" } else { "n" });
            assert!(label.starts_with(&format!("qmm_{layout}_f16_f16_to_")), "m = {m}: {label}");
            assert!(label.ends_with(&format!("gs64_b4_{tile}")), "m = {m}: {label}");
        }
    }

    #[test]
    fn every_shape_class_fits_webgpu_default_limits() {
        let caps = webgpu();
        let kernels = [QmmKernel::Auto, QmmKernel::Vector, QmmKernel::Tiled];
        for transpose in [true, false] {
            for m in [1, 2, 3, 4, 5, 8, 9, 32, 33, 64, 65, 128, 129, 1000] {
                for kernel in kernels {
                    let p = problem(m, 256, 512, transpose, F16_4_64);
                    let plan = plan_of(&p, &QmmOptions { kernel, ..Default::default() }, &caps).unwrap();
                    for key in plan.keys() {
                        let usage = key.workgroup();
                        assert!(caps.fits(usage), "{key}: {usage:?} (m {m}, transpose {transpose}, {kernel:?})");
                    }
                }
            }
        }
    }

    #[test]
    fn devices_without_subgroups_reduce_through_workgroup_memory() {
        let caps = PlanCaps { subgroups: None, ..webgpu() };
        let plan = plan_of(&problem(1, 512, 512, true, F16_4_64), &QmmOptions::default(), &caps).unwrap();
        assert_eq!(labels(&plan), ["qmv_f16_f16_to_f16_gs64_b4_v1_wg64_wgsum"]);
        // With a tiny workgroup memory, the default workgroup is halved until it fits.
        let caps = PlanCaps { workgroup_memory: 4096, ..caps };
        let plan = plan_of(&problem(1, 512, 512, true, F16_4_64), &QmmOptions::default(), &caps).unwrap();
        assert_eq!(labels(&plan), ["qmv_f16_f16_to_f16_gs64_b4_v1_wg32_wgsum"]);
    }

    #[test]
    fn subgroup_minimums_round_down_to_powers_of_two() {
        for (min, label) in [(4, "sg4"), (8, "sg8"), (24, "sg16"), (64, "sg64"), (128, "sg128")] {
            let caps = PlanCaps { subgroups: Some((min, 128)), ..webgpu() };
            let plan = plan_of(&problem(1, 512, 512, true, F16_4_64), &QmmOptions::default(), &caps).unwrap();
            assert!(labels(&plan)[0].ends_with(label), "{min}: {:?}", labels(&plan));
        }
    }

    #[test]
    fn cooperative_runs_where_it_can() {
        let caps = desktop(true);
        let p = problem(8, 4096, 4096, true, F16_4_64);
        let plan = plan_of(&p, &QmmOptions::default(), &caps).unwrap();
        assert_eq!(labels(&plan), ["qmv_coop_f16_b4_gs64_sg8", "qmm_sum_partials_f16"]);
        // Auto keeps qmv below 5 rows.
        let plan = plan_of(&problem(4, 4096, 4096, true, F16_4_64), &QmmOptions::default(), &caps).unwrap();
        assert!(labels(&plan)[1].starts_with("qmv_f32"), "{:?}", labels(&plan));
        let asked = QmmOptions { kernel: QmmKernel::Cooperative, ..Default::default() };
        let plan = plan_of(&problem(2, 4096, 4096, true, F16_4_64), &asked, &caps).unwrap();
        assert_eq!(labels(&plan)[0], "qmv_coop_f16_b4_gs64_sg8");
    }

    #[test]
    fn cooperative_refusals_name_their_obstacle() {
        let asked = QmmOptions { kernel: QmmKernel::Cooperative, ..Default::default() };
        let bf16 = MatmulFormat { x_dtype: DType::BF16, out_dtype: DType::F32, ..F16_4_64 };
        let eight_bits = MatmulFormat { bits: 8, ..F16_4_64 };
        let mut batched = problem(8, 512, 512, true, F16_4_64);
        batched.batches = vec![(0, 0), (1, 1)];
        batched.x_rows = 16;
        let cases: Vec<(Problem, PlanCaps, Obstacle)> = vec![
            (problem(8, 512, 512, true, F16_4_64), desktop(false), Obstacle::NoCooperativeMatrices),
            (
                problem(8, 512, 512, true, F16_4_64),
                PlanCaps { subgroups: Some((16, 64)), ..desktop(true) },
                Obstacle::SubgroupSize { assumed: 32, sizes: Some((16, 64)) },
            ),
            (
                problem(8, 512, 512, true, F16_4_64),
                PlanCaps { subgroups: None, ..desktop(true) },
                Obstacle::SubgroupSize { assumed: 32, sizes: None },
            ),
            (
                problem(8, 512, 512, true, F16_4_64),
                PlanCaps { cooperative_f16: true, ..webgpu() },
                Obstacle::Workgroup {
                    usage: KernelKey::from(QmvCoopKey { subgroups: QMV_COOP_SUBGROUPS }).workgroup(),
                    caps: PlanCaps { cooperative_f16: true, ..webgpu() },
                },
            ),
            (problem(8, 512, 512, false, F16_4_64), desktop(true), Obstacle::Untransposed),
            (problem(8, 512, 512, true, bf16), desktop(true), Obstacle::Format(bf16)),
            (problem(8, 512, 512, true, eight_bits), desktop(true), Obstacle::Format(eight_bits)),
            (problem(1, 512, 512, true, F16_4_64), desktop(true), Obstacle::Rows(1)),
            (problem(9, 512, 512, true, F16_4_64), desktop(true), Obstacle::Rows(9)),
            (problem(8, 512, 768, true, F16_4_64), desktop(true), Obstacle::InnerLength(768)),
            (batched, desktop(true), Obstacle::BatchEntries(2)),
            (
                problem(8, 4096, 4096, true, F16_4_64),
                PlanCaps { max_binding: 1 << 20, ..desktop(true) },
                Obstacle::Binding,
            ),
        ];
        for (p, caps, obstacle) in cases {
            match plan_of(&p, &asked, &caps) {
                Err(Error::KernelUnavailable { reason, .. }) => assert_eq!(reason, obstacle.to_string()),
                other => panic!("{obstacle:?}: {other:?}"),
            }
            // Auto takes the other kernels instead.
            if p.m >= QMV_COOP_AUTO_ROWS {
                let plan = plan_of(&p, &QmmOptions::default(), &caps).unwrap();
                assert!(!labels(&plan).iter().any(|l| l.starts_with("qmv_coop")), "{obstacle:?}");
            }
        }
    }

    #[test]
    fn options_no_kernel_supports_are_invalid() {
        let p = problem(64, 512, 512, true, F16_4_64);
        let tiled = QmmOptions { kernel: QmmKernel::Tiled, ..Default::default() };
        for (options, option) in [
            (QmmOptions { qmm_tile_rows: Some(48), ..tiled }, "qmm_tile_rows"),
            (QmmOptions { qmm_shape: Some(QmmShape { bn: 64, columns: 8 }), ..tiled }, "qmm_shape"),
            (QmmOptions { qmv_wg_size: Some(48), ..Default::default() }, "qmv_wg_size"),
            (QmmOptions { split_k: Some(0), ..tiled }, "split_k"),
        ] {
            match plan_of(&p, &options, &desktop(false)) {
                Err(Error::InvalidOption { option: o, .. }) => assert_eq!(o, option),
                other => panic!("{option}: {other:?}"),
            }
        }
    }

    #[test]
    fn options_over_the_device_limits_are_refused() {
        let caps = webgpu();
        let big_tile = QmmOptions {
            kernel: QmmKernel::Tiled,
            qmm_tile_rows: Some(128),
            qmm_shape: Some(QmmShape::default_for(128)),
            ..Default::default()
        };
        let wide_qmv = QmmOptions { kernel: QmmKernel::Vector, qmv_wg_size: Some(512), ..Default::default() };
        for (options, what) in [(big_tile, "workgroup memory (bytes)"), (wide_qmv, "invocations per workgroup")] {
            match plan_of(&problem(128, 512, 512, true, F16_4_64), &options, &caps) {
                Err(Error::ExceedsDeviceLimit { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{what}: {other:?}"),
            }
        }
        // The same knobs run where the device allows them.
        assert!(plan_of(&problem(128, 512, 512, true, F16_4_64), &big_tile, &desktop(false)).is_ok());
    }

    #[test]
    fn operands_over_one_binding_are_chunked() {
        let caps = PlanCaps { max_binding: 64 << 10, ..webgpu() };
        for transpose in [true, false] {
            let p = problem(64, 1024, 1024, transpose, F16_4_64);
            let plan = plan_of(&p, &QmmOptions::default(), &caps).unwrap();
            assert!(plan.steps.len() > 2, "transpose {transpose}: {}", plan.steps.len());
            for step in &plan.steps {
                for w in &step.windows {
                    assert!(w.size <= caps.max_binding, "{w:?}");
                    assert_eq!(w.offset % caps.offset_alignment, 0, "{w:?}");
                }
            }
        }
        // A row wider than a binding is refused.
        let caps = PlanCaps { max_binding: 1024, ..webgpu() };
        let p = problem(1, 16, 4096, true, F16_4_64);
        assert!(matches!(plan_of(&p, &QmmOptions::default(), &caps), Err(Error::ExceedsDeviceLimit { .. })));
    }

    /// `key` in affine mode at 4 bits and group size 64 (every other axis kept), for the
    /// quantized-matmul families, whose format's mode, bits and group size combine with no other
    /// axis of the WGSL (tests/wgsl.rs, `bits_and_group_size_combine_with_no_other_axis`), with
    /// the format's mode, bits and group size; `None` for the others. An fp mode's `u8` scales
    /// become affine scales in the dtype of y (of x where y holds f32 partial sums): the fp
    /// modes read their scale bytes without SCALE_DTYPE.
    fn at_canonical_bits(key: &KernelKey) -> Option<(KernelKey, (Mode, u32, u32))> {
        let canonical = |f: MatmulFormat| {
            let scale_dtype = match (f.mode, f.out_dtype) {
                (Mode::Affine, _) => f.scale_dtype,
                (_, DType::F32) => f.x_dtype,
                (_, out) => out,
            };
            MatmulFormat { mode: Mode::Affine, scale_dtype, bits: 4, group_size: 64, ..f }
        };
        let axis = |f: MatmulFormat| (f.mode, f.bits, f.group_size);
        Some(match key {
            KernelKey::Qmv(k) => (QmvKey { format: canonical(k.format), ..*k }.into(), axis(k.format)),
            KernelKey::Qvm(k) => (QvmKey { format: canonical(k.format), ..*k }.into(), axis(k.format)),
            KernelKey::Qmm(k) => (QmmKey { format: canonical(k.format), ..*k }.into(), axis(k.format)),
            _ => return None,
        })
    }

    #[test]
    fn every_key_the_planner_emits_is_validated() {
        // The shader tests validate `KernelKey::all()` (and the extension kernels) with their
        // override variants; the planner, over every format MLX accepts, every caller option,
        // every subgroup minimum from 1 to 128 and none, WebGPU's and a desktop's limits, must
        // emit nothing they do not cover. A quantized-matmul key is covered where the same key
        // at 4 bits and group 64 is validated and its bits and group size are validated in some
        // key of its family: bits and group size combine with no other axis of the WGSL
        // (checked by tests/wgsl.rs), while every dtype, tile, row count and override is
        // validated at 4 bits and group 64.
        let validated: HashSet<KernelKey> = KernelKey::all()
            .into_iter()
            .chain(KernelKey::extension_kernels())
            .flat_map(|key| key.override_variants().into_iter().chain([key]))
            .collect();
        let validated_bits: HashSet<(std::mem::Discriminant<KernelKey>, (Mode, u32, u32))> =
            validated.iter().filter_map(|key| Some((std::mem::discriminant(key), at_canonical_bits(key)?.1))).collect();
        let covered = |key: &KernelKey| match at_canonical_bits(key) {
            Some((canonical, bits)) => {
                validated.contains(&canonical) && validated_bits.contains(&(std::mem::discriminant(key), bits))
            }
            None => validated.contains(key),
        };
        let subgroups: Vec<Option<(u32, u32)>> =
            [None].into_iter().chain((1..=128).map(|min: u32| Some((min, min.max(32))))).collect();
        let mut formats = Vec::new();
        for x_dtype in [DType::F32, DType::F16, DType::BF16] {
            for scale_dtype in [DType::F32, DType::F16, DType::BF16] {
                for bits in crate::params::SUPPORTED_BITS {
                    for group_size in crate::params::SUPPORTED_GROUP_SIZES {
                        let out_dtype = x_dtype.promote(scale_dtype);
                        formats.push(MatmulFormat {
                            mode: Mode::Affine,
                            x_dtype,
                            scale_dtype,
                            out_dtype,
                            bits,
                            group_size,
                        });
                    }
                }
            }
            for mode in crate::params::FP_MODES {
                formats.push(MatmulFormat::fp(mode, x_dtype));
            }
        }
        assert_eq!(formats.len(), 189 + 9);
        // Every option a caller may set: the kernel, qmv's workgroup size, every qmm tile, and
        // k split or not.
        let mut options = Vec::new();
        for split_k in [None, Some(1), Some(3)] {
            for kernel in [QmmKernel::Auto, QmmKernel::Vector, QmmKernel::Tiled, QmmKernel::Cooperative] {
                options.push(QmmOptions { kernel, split_k, ..Default::default() });
            }
            for wg in crate::kernels::QmvKey::WG_SIZES {
                options.push(QmmOptions {
                    kernel: QmmKernel::Vector,
                    qmv_wg_size: Some(wg),
                    split_k,
                    ..Default::default()
                });
            }
            for bm in QMM_TILE_ROWS {
                options.push(QmmOptions {
                    kernel: QmmKernel::Tiled,
                    qmm_tile_rows: Some(bm),
                    split_k,
                    ..Default::default()
                });
                for shape in QmmShape::ALL {
                    options.push(QmmOptions {
                        kernel: QmmKernel::Tiled,
                        qmm_tile_rows: Some(bm),
                        qmm_shape: Some(shape),
                        split_k,
                        ..Default::default()
                    });
                }
            }
        }
        let (mut emitted, mut plans) = (0, 0);
        let mut check = |format: MatmulFormat, caps: &PlanCaps, options: &[QmmOptions], rows: &[usize]| {
            for o in options {
                for transpose in [true, false] {
                    for &m in rows {
                        let Ok(plan) = plan_of(&problem(m, 128, 256, transpose, format), o, caps) else { continue };
                        plans += 1;
                        for key in plan.keys() {
                            assert!(covered(&key), "{key} ({format}, {o:?}, {caps:?}) is not validated");
                            emitted += 1;
                        }
                    }
                }
            }
        };
        let rows = [1, 2, 4, 5, 8, 9, 33, 65, 129];
        for limits in [webgpu(), desktop(true)] {
            // Every format with every option, on devices with and without subgroups.
            for sizes in [None, Some((32, 32))] {
                let caps = PlanCaps { subgroups: sizes, ..limits };
                for &format in &formats {
                    check(format, &caps, &options, &rows);
                }
            }
            // Every subgroup minimum with every option, at 4 bits and group 64 in every dtype
            // (the minimum only sizes qmv's reduction, up to 32 rows).
            for &sizes in &subgroups {
                let caps = PlanCaps { subgroups: sizes, ..limits };
                for format in formats.iter().filter(|f| (f.bits, f.group_size) == (4, 64)) {
                    check(*format, &caps, &options, &[1, 2, 9, 33]);
                }
            }
        }
        assert!(plans > 500_000 && emitted > plans, "{plans} plans, {emitted} keys");
    }
}
