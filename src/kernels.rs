//! WGSL kernels: one key per specialisation, the source it compiles, and a naga check of the
//! resources it uses.
//!
//! A kernel's source is a generated prelude of `const` declarations (the format: dtypes, bits,
//! group size), then the shared snippets of `wgsl/common/` (all kernels see most of them; a few
//! go only to the kernels that name them), then the kernel's own file. This is
//! the only place WGSL strings are joined. Tuning knobs are WGSL `override`s, passed as
//! pipeline constants. The key's `Display` is both the pipeline-cache key and the wgpu label.

use std::fmt;

use crate::dtype::DType;

/// The shared snippets every kernel sees, in this order.
const COMMON: [Snippet; 4] = [
    ("common/softfloat.wgsl", include_str!("../wgsl/common/softfloat.wgsl")),
    ("common/dtype.wgsl", include_str!("../wgsl/common/dtype.wgsl")),
    ("common/element.wgsl", include_str!("../wgsl/common/element.wgsl")),
    ("common/grid.wgsl", include_str!("../wgsl/common/grid.wgsl")),
];

const QUANTIZE: &str = include_str!("../wgsl/quantize.wgsl");
const DEQUANTIZE: &str = include_str!("../wgsl/dequantize.wgsl");
const MATMUL: &str = include_str!("../wgsl/matmul.wgsl");
const GATHER: &str = include_str!("../wgsl/gather.wgsl");
const RMS_NORM: &str = include_str!("../wgsl/rms_norm.wgsl");
const SOFTMAX: &str = include_str!("../wgsl/softmax.wgsl");
const UNARY: &str = include_str!("../wgsl/unary.wgsl");
const BINARY: &str = include_str!("../wgsl/binary.wgsl");
/// Shared by the row kernels only (it declares their workgroup size and memory).
const ROW_REDUCE: Snippet = ("common/row_reduce.wgsl", include_str!("../wgsl/common/row_reduce.wgsl"));
const QMV: &str = include_str!("../wgsl/qmv.wgsl");
const QMV_PREPARE: &str = include_str!("../wgsl/qmv_prepare.wgsl");
const QVM: &str = include_str!("../wgsl/qvm.wgsl");
const QMM: &str = include_str!("../wgsl/qmm.wgsl");
const QMM_SUM_PARTIALS: &str = include_str!("../wgsl/qmm_sum_partials.wgsl");
const QMV_COOP: &str = include_str!("../wgsl/qmv_coop.wgsl");

/// Snippets of the quantized-matmul kernels (each kernel names the ones it includes).
const QMM_IO: Snippet = ("common/qmm_io.wgsl", include_str!("../wgsl/common/qmm_io.wgsl"));
const CODE_SCALE: Snippet = ("common/code_scale.wgsl", include_str!("../wgsl/common/code_scale.wgsl"));
const PREPARED_X: Snippet = ("common/prepared_x.wgsl", include_str!("../wgsl/common/prepared_x.wgsl"));
const QMM_OPERANDS: Snippet = ("common/qmm_operands.wgsl", include_str!("../wgsl/common/qmm_operands.wgsl"));
const QMM_WORDS: Snippet = ("common/qmm_words.wgsl", include_str!("../wgsl/common/qmm_words.wgsl"));
const REDUCE_SUBGROUP: Snippet = ("common/reduce_subgroup.wgsl", include_str!("../wgsl/common/reduce_subgroup.wgsl"));
const REDUCE_WORKGROUP: Snippet =
    ("common/reduce_workgroup.wgsl", include_str!("../wgsl/common/reduce_workgroup.wgsl"));

/// Invocations per workgroup of the element-wise kernels.
pub(crate) const ELEMENTWISE_WG_SIZE: u32 = 64;
/// Side of the square output tile one matmul workgroup computes (TILE x TILE invocations).
pub(crate) const MATMUL_TILE: u32 = 16;
/// Invocations per workgroup of the row kernels (RMSNorm, softmax): one workgroup per row.
pub(crate) const ROW_WG_SIZE: u32 = 64;

/// Element-wise functions of one tensor ([`crate::ops::relu`], [`crate::ops::silu`], casts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `x`, converted to the output dtype.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl UnaryOp {
    fn name(self) -> &'static str {
        match self {
            UnaryOp::Identity => "cast",
            UnaryOp::Relu => "relu",
            UnaryOp::Silu => "silu",
        }
    }

    /// The id `wgsl/unary.wgsl` switches on.
    fn wgsl_id(self) -> u32 {
        match self {
            UnaryOp::Identity => 0,
            UnaryOp::Relu => 1,
            UnaryOp::Silu => 2,
        }
    }
}

/// Element-wise functions of two tensors ([`crate::ops::add`], [`crate::ops::multiply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a * b`.
    Multiply,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Multiply => "multiply",
        }
    }

    /// The id `wgsl/binary.wgsl` switches on.
    fn wgsl_id(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Multiply => 1,
        }
    }
}

/// A WGSL snippet: its path under `wgsl/` (for the source's section headers) and its text.
type Snippet = (&'static str, &'static str);

/// Invocations per workgroup of [`KernelKey::QmmSumPartials`].
pub(crate) const SUM_PARTIALS_WG_SIZE: u32 = 64;
/// Default invocations per [`KernelKey::Qmv`] workgroup (they split k): on an H100, 32 and 64
/// run level and ahead of 128 from one to 32 rows of x (benches/RESULTS.md).
pub(crate) const QMV_WG_SIZE: u32 = 64;
/// Blocks of 32 elements per chunk of x laid out by [`KernelKey::QmvPrepare`]: within a chunk,
/// a block's quads lie this many 16-byte vectors apart (`wgsl/common/prepared_x.wgsl`). 8 makes each
/// quad's run one 128-byte cache line, as coalesced as any longer run, and pads a row by at
/// most 7 blocks.
pub(crate) const PREPARED_CHUNK: u32 = 8;
/// Codes of k per [`KernelKey::QmvCoop`] workgroup (8 groups of 64): the products split k into
/// slices this long, summed by [`KernelKey::QmmSumPartials`].
pub(crate) const QMV_COOP_SLICE: u32 = 512;
/// Subgroups per [`KernelKey::QmvCoop`] workgroup, each a tile of 16 rows of w: 8 keep two
/// workgroups resident per H100 multiprocessor (its 48 KB of workgroup memory; 4 and 6 were
/// slower, benches/RESULTS.md round 8).
pub(crate) const QMV_COOP_SUBGROUPS: u32 = 8;
/// Quads of outputs per [`KernelKey::Qvm`] workgroup.
pub(crate) const QVM_WG_SIZE: u32 = 64;
/// The rows of y per [`KernelKey::Qmm`] tile the kernel supports.
pub const QMM_TILE_ROWS: [u32; 3] = [32, 64, 128];

/// How a [`KernelKey::Qmm`] workgroup cuts its tile of y.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QmmShape {
    /// Columns of y per tile: 128 or 256.
    pub bn: u32,
    /// Columns of y per invocation: 8 or 16 (each invocation makes 8 rows).
    pub columns: u32,
}

impl QmmShape {
    /// What the dispatcher uses for tiles of `bm` rows. Measured on an H100 at M = 512 (see
    /// benches/RESULTS.md): 256 columns decode each row of x for twice the outputs of 128, and
    /// 8 x 16 per invocation does twice the FMAs of 8 x 8 per read of workgroup memory; tiles of
    /// 32 rows keep 8 x 8, so that a workgroup still has 128 invocations.
    pub fn default_for(bm: u32) -> QmmShape {
        QmmShape { bn: 256, columns: if bm >= 64 { 16 } else { 8 } }
    }

    /// Whether `qmm.wgsl` supports this shape (with any of [`QMM_TILE_ROWS`]).
    pub fn is_supported(&self) -> bool {
        [128, 256].contains(&self.bn) && [8, 16].contains(&self.columns)
    }

    /// Invocations per workgroup for tiles of `bm` rows.
    pub fn invocations(&self, bm: u32) -> u32 {
        bm / 8 * (self.bn / self.columns)
    }
}

/// The element types and quantization format a quantized-matmul kernel is specialised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulFormat {
    /// dtype of x.
    pub x_dtype: DType,
    /// dtype of the scales and biases.
    pub scale_dtype: DType,
    /// dtype of y.
    pub out_dtype: DType,
    /// Bits per code.
    pub bits: u32,
    /// Codes per group.
    pub group_size: u32,
}

impl fmt::Display for MatmulFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_to_{}_gs{}_b{}",
            self.x_dtype.short_name(),
            self.scale_dtype.short_name(),
            self.out_dtype.short_name(),
            self.group_size,
            self.bits
        )
    }
}

impl MatmulFormat {
    /// Prelude constants every matmul kernel gets.
    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("BITS", self.bits),
            ("GROUP_SIZE", self.group_size),
            ("X_DTYPE", self.x_dtype.wgsl_id()),
            ("SCALE_DTYPE", self.scale_dtype.wgsl_id()),
            ("OUT_DTYPE", self.out_dtype.wgsl_id()),
        ]
    }

    /// The snippets of the kernels that read quantized weights word by word (qvm, qmm; qmv
    /// reads whole blocks its own way).
    fn operand_snippets(&self) -> Vec<Snippet> {
        vec![QMM_IO, CODE_SCALE, QMM_OPERANDS, QMM_WORDS]
    }
}

/// How [`KernelKey::Qmv`] totals its invocations' partial sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// `subgroupAdd`, then the subgroups' totals through workgroup memory; `min_size` is the
    /// adapter's smallest subgroup.
    Subgroup {
        /// Smallest subgroup size the adapter may use.
        min_size: u32,
    },
    /// A tree in workgroup memory (devices without subgroup operations).
    Workgroup,
}

/// One kernel specialisation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelKey {
    /// Affine quantize of a `dtype` matrix.
    Quantize {
        /// Input (and scales/biases) dtype.
        dtype: DType,
        /// Bits per code.
        bits: u32,
        /// Elements per group.
        group_size: u32,
    },
    /// Affine dequantize with `scale_dtype` scales into `out_dtype`.
    Dequantize {
        /// Scales and biases dtype (the compute type).
        scale_dtype: DType,
        /// Output dtype.
        out_dtype: DType,
        /// Bits per code.
        bits: u32,
        /// Elements per group.
        group_size: u32,
    },
    /// Float matrix product with f32 accumulation, optionally plus a bias row.
    Matmul {
        /// Left operand dtype.
        x_dtype: DType,
        /// Right operand (weight) dtype.
        w_dtype: DType,
        /// Bias dtype, when a bias is added before the final rounding (MLX's `addmm`).
        bias_dtype: Option<DType>,
        /// Output dtype.
        out_dtype: DType,
        /// Whether `w` is read as `(N, K)` (`x @ wᵀ`, the Linear layout) rather than `(K, N)`.
        transpose: bool,
    },
    /// Row gather (`table[ids]`), copying elements bit for bit.
    Gather {
        /// Bytes per element: 4 or 2.
        element_bytes: u32,
    },
    /// RMS normalisation of rows, times a weight vector.
    RmsNorm {
        /// Input dtype.
        x_dtype: DType,
        /// Weight dtype.
        w_dtype: DType,
        /// Output dtype.
        out_dtype: DType,
    },
    /// Softmax of rows (scaled, optionally causal).
    Softmax {
        /// Input dtype.
        in_dtype: DType,
        /// Output dtype.
        out_dtype: DType,
    },
    /// An element-wise function of one tensor.
    Unary {
        /// The function.
        op: UnaryOp,
        /// Input dtype.
        in_dtype: DType,
        /// Output dtype.
        out_dtype: DType,
    },
    /// An element-wise function of two tensors, the second repeated along the first.
    Binary {
        /// The function.
        op: BinaryOp,
        /// First operand dtype.
        a_dtype: DType,
        /// Second operand dtype.
        b_dtype: DType,
        /// Output dtype.
        out_dtype: DType,
    },
    /// Quantized matrix-vector product, transposed weights: 8 outputs (4 when `vecs` > 4) and
    /// `vecs` rows of x per workgroup.
    Qmv {
        /// dtypes and format.
        format: MatmulFormat,
        /// Rows of x per workgroup (1 ..= 8).
        vecs: u32,
        /// Invocations per workgroup (they split k).
        wg_size: u32,
        /// How partial sums are totalled.
        reduction: Reduction,
    },
    /// Lays rows of x out for [`KernelKey::Qmv`] with several rows of x (f32, quad-major, each
    /// quad times the code scale of `bits`).
    QmvPrepare {
        /// dtype of x.
        x_dtype: DType,
        /// Bits per code of the weights x will multiply.
        bits: u32,
    },
    /// Quantized vector-matrix product, untransposed weights, 4 outputs and `vecs` rows of x per
    /// invocation.
    Qvm {
        /// dtypes and format.
        format: MatmulFormat,
        /// Rows of x per invocation (1 ..= 4).
        vecs: u32,
        /// Invocations per workgroup.
        wg_size: u32,
    },
    /// Tiled quantized matrix product, either layout, `bm` x `shape.bn` tiles of y.
    Qmm {
        /// dtypes and format.
        format: MatmulFormat,
        /// Whether w_q is `(n, k)` (groups along k) rather than `(k, n)`.
        transpose: bool,
        /// Rows of y per tile: one of [`QMM_TILE_ROWS`].
        bm: u32,
        /// Columns of the tile and of each invocation's part.
        shape: QmmShape,
    },
    /// Quantized matrix-vector product on cooperative matrices (tensor cores), transposed
    /// weights: f16 x, scales and y, 4 bits, groups of 64, 2 to 8 rows of x, k in slices of 512
    /// whose f32 partial sums [`KernelKey::QmmSumPartials`] adds. Needs a device with
    /// [`crate::gpu::Caps::cooperative_f16`].
    QmvCoop {
        /// Subgroups per workgroup (each a tile of 16 rows of w).
        subgroups: u32,
    },
    /// Sums k-slices of f32 partial sums into y.
    QmmSumPartials {
        /// dtype of y.
        out_dtype: DType,
    },
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelKey::Quantize { dtype, bits, group_size } => {
                write!(f, "quantize_{}_gs{group_size}_b{bits}", dtype.short_name())
            }
            KernelKey::Dequantize { scale_dtype, out_dtype, bits, group_size } => write!(
                f,
                "dequantize_{}_to_{}_gs{group_size}_b{bits}",
                scale_dtype.short_name(),
                out_dtype.short_name()
            ),
            KernelKey::Matmul { x_dtype, w_dtype, bias_dtype, out_dtype, transpose } => {
                write!(f, "matmul_{}_{}", x_dtype.short_name(), w_dtype.short_name())?;
                if let Some(bias) = bias_dtype {
                    write!(f, "_bias_{}", bias.short_name())?;
                }
                write!(f, "_to_{}{}", out_dtype.short_name(), if *transpose { "_t" } else { "" })
            }
            KernelKey::Gather { element_bytes } => write!(f, "gather_{}", element_bytes * 8),
            KernelKey::RmsNorm { x_dtype, w_dtype, out_dtype } => {
                write!(f, "rms_norm_{}_{}_to_{}", x_dtype.short_name(), w_dtype.short_name(), out_dtype.short_name())
            }
            KernelKey::Softmax { in_dtype, out_dtype } => {
                write!(f, "softmax_{}_to_{}", in_dtype.short_name(), out_dtype.short_name())
            }
            KernelKey::Unary { op, in_dtype, out_dtype } => {
                write!(f, "{}_{}_to_{}", op.name(), in_dtype.short_name(), out_dtype.short_name())
            }
            KernelKey::Binary { op, a_dtype, b_dtype, out_dtype } => write!(
                f,
                "{}_{}_{}_to_{}",
                op.name(),
                a_dtype.short_name(),
                b_dtype.short_name(),
                out_dtype.short_name()
            ),
            KernelKey::Qmv { format, vecs, wg_size, reduction } => {
                let reduction = match reduction {
                    Reduction::Subgroup { min_size } => format!("sg{min_size}"),
                    Reduction::Workgroup => "wgsum".to_string(),
                };
                write!(f, "qmv_{format}_v{vecs}_wg{wg_size}_{reduction}")
            }
            KernelKey::Qvm { format, vecs, wg_size } => write!(f, "qvm_{format}_v{vecs}_wg{wg_size}"),
            KernelKey::Qmm { format, transpose, bm, shape } => {
                let QmmShape { bn, columns } = shape;
                write!(f, "qmm_{}_{format}_{bm}x{bn}_c{columns}", if *transpose { "t" } else { "n" })
            }
            KernelKey::QmvCoop { subgroups } => write!(f, "qmv_coop_f16_b4_gs64_sg{subgroups}"),
            KernelKey::QmmSumPartials { out_dtype } => write!(f, "qmm_sum_partials_{}", out_dtype.short_name()),
            KernelKey::QmvPrepare { x_dtype, bits } => write!(f, "qmv_prepare_{}_b{bits}", x_dtype.short_name()),
        }
    }
}

impl KernelKey {
    /// The op this kernel serves, for error messages.
    pub fn op(&self) -> &'static str {
        match self {
            KernelKey::Quantize { .. } => "quantize",
            KernelKey::Dequantize { .. } => "dequantize",
            KernelKey::Matmul { .. } => "matmul",
            KernelKey::Gather { .. } => "gather",
            KernelKey::RmsNorm { .. } => "rms_norm",
            KernelKey::Softmax { .. } => "softmax",
            KernelKey::Unary { op, .. } => op.name(),
            KernelKey::Binary { op, .. } => op.name(),
            KernelKey::Qmv { .. }
            | KernelKey::QmvPrepare { .. }
            | KernelKey::Qvm { .. }
            | KernelKey::Qmm { .. }
            | KernelKey::QmvCoop { .. }
            | KernelKey::QmmSumPartials { .. } => "quantized_matmul",
        }
    }

    /// The kernel's own WGSL file, the prelude constants it needs and the snippets (beyond
    /// [`COMMON`]) it includes.
    fn body_and_prelude(&self) -> (&'static str, Vec<(&'static str, u32)>, Vec<Snippet>) {
        match *self {
            KernelKey::Quantize { dtype, bits, group_size } => (
                QUANTIZE,
                vec![
                    ("BITS", bits),
                    ("GROUP_SIZE", group_size),
                    ("W_DTYPE", dtype.wgsl_id()),
                    ("GROUPS_PER_INVOCATION", 4 / dtype.size_in_bytes() as u32),
                ],
                vec![],
            ),
            KernelKey::Dequantize { scale_dtype, out_dtype, bits, group_size } => (
                DEQUANTIZE,
                vec![
                    ("BITS", bits),
                    ("GROUP_SIZE", group_size),
                    ("SCALE_DTYPE", scale_dtype.wgsl_id()),
                    ("OUT_DTYPE", out_dtype.wgsl_id()),
                ],
                vec![],
            ),
            KernelKey::Matmul { x_dtype, w_dtype, bias_dtype, out_dtype, transpose } => (
                MATMUL,
                vec![
                    ("X_DTYPE", x_dtype.wgsl_id()),
                    ("W_DTYPE", w_dtype.wgsl_id()),
                    ("HAS_BIAS", u32::from(bias_dtype.is_some())),
                    // Without a bias the binding still exists (it aliases w) and is never read.
                    ("BIAS_DTYPE", bias_dtype.unwrap_or(w_dtype).wgsl_id()),
                    ("OUT_DTYPE", out_dtype.wgsl_id()),
                    ("TRANSPOSE", u32::from(transpose)),
                ],
                vec![],
            ),
            KernelKey::Gather { element_bytes } => (GATHER, vec![("ELEMENT_BYTES", element_bytes)], vec![]),
            KernelKey::RmsNorm { x_dtype, w_dtype, out_dtype } => (
                RMS_NORM,
                vec![
                    ("X_DTYPE", x_dtype.wgsl_id()),
                    ("W_DTYPE", w_dtype.wgsl_id()),
                    ("OUT_DTYPE", out_dtype.wgsl_id()),
                ],
                vec![ROW_REDUCE],
            ),
            KernelKey::Softmax { in_dtype, out_dtype } => {
                (SOFTMAX, vec![("IN_DTYPE", in_dtype.wgsl_id()), ("OUT_DTYPE", out_dtype.wgsl_id())], vec![ROW_REDUCE])
            }
            KernelKey::Unary { op, in_dtype, out_dtype } => (
                UNARY,
                vec![("OP", op.wgsl_id()), ("IN_DTYPE", in_dtype.wgsl_id()), ("OUT_DTYPE", out_dtype.wgsl_id())],
                vec![],
            ),
            KernelKey::Binary { op, a_dtype, b_dtype, out_dtype } => (
                BINARY,
                vec![
                    ("OP", op.wgsl_id()),
                    ("A_DTYPE", a_dtype.wgsl_id()),
                    ("B_DTYPE", b_dtype.wgsl_id()),
                    ("OUT_DTYPE", out_dtype.wgsl_id()),
                ],
                vec![],
            ),
            KernelKey::Qmv { format, vecs, reduction, .. } => {
                let mut snippets = vec![QMM_IO, CODE_SCALE, PREPARED_X, QMM_OPERANDS];
                snippets.push(match reduction {
                    Reduction::Subgroup { .. } => REDUCE_SUBGROUP,
                    Reduction::Workgroup => REDUCE_WORKGROUP,
                });
                let mut prelude = format.prelude();
                prelude.extend([("VECS", vecs), ("PREPARED_CHUNK", PREPARED_CHUNK)]);
                (QMV, prelude, snippets)
            }
            KernelKey::QmvPrepare { x_dtype, bits } => (
                QMV_PREPARE,
                vec![("X_DTYPE", x_dtype.wgsl_id()), ("BITS", bits), ("PREPARED_CHUNK", PREPARED_CHUNK)],
                vec![CODE_SCALE, PREPARED_X],
            ),
            KernelKey::Qvm { format, vecs, .. } => {
                let mut prelude = format.prelude();
                prelude.push(("VECS", vecs));
                (QVM, prelude, format.operand_snippets())
            }
            KernelKey::Qmm { format, transpose, bm, shape } => {
                let mut prelude = format.prelude();
                prelude.extend([
                    ("TRANSPOSE", u32::from(transpose)),
                    ("BM", bm),
                    ("BN", shape.bn),
                    ("TN", shape.columns),
                ]);
                (QMM, prelude, format.operand_snippets())
            }
            KernelKey::QmvCoop { .. } => (QMV_COOP, vec![("SLICE", QMV_COOP_SLICE)], vec![]),
            KernelKey::QmmSumPartials { out_dtype } => {
                (QMM_SUM_PARTIALS, vec![("OUT_DTYPE", out_dtype.wgsl_id())], vec![QMM_IO])
            }
        }
    }

    /// WGSL `enable` directives the kernel needs (they must open the source).
    fn enables(&self) -> &'static [&'static str] {
        match self {
            KernelKey::QmvCoop { .. } => &["f16", "wgpu_cooperative_matrix"],
            _ => &[],
        }
    }

    /// Pipeline-overridable constants (tuning knobs) for this key.
    pub fn constants(&self) -> Vec<(String, f64)> {
        match self {
            KernelKey::Quantize { .. }
            | KernelKey::Dequantize { .. }
            | KernelKey::Gather { .. }
            | KernelKey::Unary { .. }
            | KernelKey::Binary { .. }
            | KernelKey::QmvPrepare { .. } => vec![("WG_SIZE".to_string(), f64::from(ELEMENTWISE_WG_SIZE))],
            KernelKey::Matmul { .. } => vec![("TILE".to_string(), f64::from(MATMUL_TILE))],
            KernelKey::RmsNorm { .. } | KernelKey::Softmax { .. } => {
                vec![("WG_SIZE".to_string(), f64::from(ROW_WG_SIZE))]
            }
            KernelKey::Qmv { wg_size, reduction, .. } => {
                let mut constants = vec![("WG_SIZE".to_string(), f64::from(*wg_size))];
                if let Reduction::Subgroup { min_size } = reduction {
                    constants.push(("MIN_SUBGROUP_SIZE".to_string(), f64::from(*min_size)));
                }
                constants
            }
            KernelKey::Qvm { wg_size, .. } => vec![("WG_SIZE".to_string(), f64::from(*wg_size))],
            KernelKey::Qmm { .. } => Vec::new(),
            KernelKey::QmvCoop { subgroups } => vec![("SUBGROUPS".to_string(), f64::from(*subgroups))],
            KernelKey::QmmSumPartials { .. } => {
                vec![("WG_SIZE".to_string(), f64::from(SUM_PARTIALS_WG_SIZE))]
            }
        }
    }

    /// The specialisations wgquant builds, for the shader portability test: quantize and
    /// dequantize for every format; every quantized-matmul kernel and knob value the dispatcher
    /// picks by default, for every bits and group size with one dtype throughout, and each mixed
    /// x and scales dtype once per kernel (dtypes only change the load and store functions).
    pub fn all() -> Vec<KernelKey> {
        let floats = [DType::F32, DType::F16, DType::BF16];
        let mut keys = Vec::new();
        for bits in crate::params::SUPPORTED_BITS {
            for group_size in crate::params::SUPPORTED_GROUP_SIZES {
                for dtype in floats {
                    keys.push(KernelKey::Quantize { dtype, bits, group_size });
                    for out_dtype in floats {
                        keys.push(KernelKey::Dequantize { scale_dtype: dtype, out_dtype, bits, group_size });
                    }
                    let format =
                        MatmulFormat { x_dtype: dtype, scale_dtype: dtype, out_dtype: dtype, bits, group_size };
                    keys.extend(Self::matmul_kernels(format));
                }
            }
        }
        for element_bytes in [2, 4] {
            keys.push(KernelKey::Gather { element_bytes });
        }
        for a in floats {
            for out_dtype in floats {
                keys.push(KernelKey::Softmax { in_dtype: a, out_dtype });
                for op in [UnaryOp::Identity, UnaryOp::Relu, UnaryOp::Silu] {
                    keys.push(KernelKey::Unary { op, in_dtype: a, out_dtype });
                }
                for b in floats {
                    keys.push(KernelKey::RmsNorm { x_dtype: a, w_dtype: b, out_dtype });
                    for op in [BinaryOp::Add, BinaryOp::Multiply] {
                        keys.push(KernelKey::Binary { op, a_dtype: a, b_dtype: b, out_dtype });
                    }
                    for bias_dtype in [None, Some(DType::F32), Some(DType::F16), Some(DType::BF16)] {
                        for transpose in [false, true] {
                            keys.push(KernelKey::Matmul { x_dtype: a, w_dtype: b, bias_dtype, out_dtype, transpose });
                        }
                    }
                }
            }
        }
        for x_dtype in floats {
            for scale_dtype in floats.into_iter().filter(|&s| s != x_dtype) {
                let out_dtype = x_dtype.promote(scale_dtype);
                keys.extend(Self::matmul_kernels(MatmulFormat {
                    x_dtype,
                    scale_dtype,
                    out_dtype,
                    bits: 4,
                    group_size: 64,
                }));
            }
        }
        keys.extend(floats.map(|out_dtype| KernelKey::QmmSumPartials { out_dtype }));
        for bits in crate::params::SUPPORTED_BITS {
            keys.extend(floats.map(|x_dtype| KernelKey::QmvPrepare { x_dtype, bits }));
        }
        keys
    }

    /// The quantized-matmul kernels `quantized_matmul` may build for `format` with default knobs.
    fn matmul_kernels(format: MatmulFormat) -> Vec<KernelKey> {
        let mut keys = Vec::new();
        for vecs in 1..=8 {
            for reduction in [Reduction::Subgroup { min_size: 8 }, Reduction::Workgroup] {
                keys.push(KernelKey::Qmv { format, vecs, wg_size: QMV_WG_SIZE, reduction });
            }
        }
        for vecs in 1..=4 {
            keys.push(KernelKey::Qvm { format, vecs, wg_size: QVM_WG_SIZE });
        }
        for transpose in [true, false] {
            for bm in QMM_TILE_ROWS {
                keys.push(KernelKey::Qmm { format, transpose, bm, shape: QmmShape::default_for(bm) });
            }
        }
        keys
    }
}

/// The complete WGSL source for `key`.
pub fn source(key: &KernelKey) -> String {
    let (body, prelude, snippets) = key.body_and_prelude();
    let mut src = format!("// {key}: generated prelude\n");
    for extension in key.enables() {
        src.push_str(&format!("enable {extension};\n"));
    }
    for (name, value) in prelude {
        src.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    for (file, text) in COMMON.into_iter().chain(snippets) {
        src.push_str(&format!("\n// ---- {file}\n{text}"));
    }
    src.push_str(&format!("\n// ---- {}\n{body}", key.op()));
    src
}

/// What a kernel asks of the device, read from its naga module after overrides are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceUsage {
    /// Bytes of `var<workgroup>` memory.
    pub workgroup_memory: u64,
    /// Invocations per workgroup.
    pub invocations: u64,
}

/// Parses and validates `source` with naga, applies `constants`, and measures the workgroup
/// memory and size of its `main` entry point.
pub fn resource_usage(
    source: &str,
    constants: &[(String, f64)],
    features: &wgpu::Features,
) -> Result<ResourceUsage, String> {
    let (module, _) = validated_module(source, constants, naga_capabilities(features))?;
    let layouter_ctx = module.to_ctx();
    let workgroup_memory = module
        .global_variables
        .iter()
        .filter(|(_, var)| var.space == naga::AddressSpace::WorkGroup)
        .map(|(_, var)| u64::from(module.types[var.ty].inner.size(layouter_ctx)))
        .sum();
    let entry = module.entry_points.iter().find(|e| e.name == "main").ok_or("no entry point `main`")?;
    let invocations = entry.workgroup_size.iter().map(|&d| u64::from(d)).product();
    Ok(ResourceUsage { workgroup_memory, invocations })
}

/// naga capabilities matching the device features wgquant requests.
pub fn naga_capabilities(features: &wgpu::Features) -> naga::valid::Capabilities {
    let mut caps = naga::valid::Capabilities::empty();
    if features.contains(wgpu::Features::SHADER_F16) {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    if features.contains(wgpu::Features::SUBGROUP) {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    if features.contains(wgpu::Features::SUBGROUP_BARRIER) {
        caps |= naga::valid::Capabilities::SUBGROUP_BARRIER;
    }
    if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        // (Devices with cooperative matrices are full Vulkan ones, whose downlevel flags give
        // `unpack2x16float`, which `qmv_coop` uses.)
        caps |= naga::valid::Capabilities::COOPERATIVE_MATRIX | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    caps
}

/// Parses, validates and resolves overrides: the module a backend would translate.
pub fn validated_module(
    source: &str,
    constants: &[(String, f64)],
    capabilities: naga::valid::Capabilities,
) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
    let info = validator.validate(&module).map_err(|e| e.emit_to_string(source))?;
    let overrides: naga::back::PipelineConstants = constants.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        &overrides,
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok((module.into_owned(), info.into_owned()))
}
