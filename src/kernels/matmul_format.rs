//! What the quantized-matmul families (qmv, qvm, qmm) share: the format they are specialised
//! for, their uniform parameters and bindings (`common/qmm_operands.wgsl`), and their snippets.

use std::fmt;

use super::{bindings, params, Binding, Snippet, FLOATS};
use crate::dtype::DType;
use crate::params::{Mode, FP_MODES};

/// Reading float inputs and writing the output of the quantized-matmul kernels.
pub(super) const QMM_IO: Snippet = ("common/qmm_io.wgsl", include_str!("../../wgsl/common/qmm_io.wgsl"));
/// The modes' ids (`MODE_AFFINE` ...), for kernels whose prelude names a mode.
pub(super) const MODES: Snippet = ("common/modes.wgsl", include_str!("../../wgsl/common/modes.wgsl"));
/// The one reading of quantized codes (dequantize and every matmul kernel); expects [`MODES`].
pub(super) const CODES: Snippet = ("common/codes.wgsl", include_str!("../../wgsl/common/codes.wgsl"));
/// x as `qmv_prepare` lays it out.
pub(super) const PREPARED_X: Snippet = ("common/prepared_x.wgsl", include_str!("../../wgsl/common/prepared_x.wgsl"));
/// Parameters, batch table, scales and biases, and the decoding of codes.
pub(super) const QMM_OPERANDS: Snippet =
    ("common/qmm_operands.wgsl", include_str!("../../wgsl/common/qmm_operands.wgsl"));
/// Quantized weights bound as words (qvm, qmm).
pub(super) const QMM_WORDS: Snippet = ("common/qmm_words.wgsl", include_str!("../../wgsl/common/qmm_words.wgsl"));

/// The format whose bits and group size every tuning variant is built at, in every dtype: the
/// shader tests show that bits and group size combine with no other axis of a kernel.
pub(super) const F16_4_64: MatmulFormat = MatmulFormat {
    mode: Mode::Affine,
    x_dtype: DType::F16,
    scale_dtype: DType::F16,
    out_dtype: DType::F16,
    bits: 4,
    group_size: 64,
};

/// The element types and quantization format a quantized-matmul kernel is specialised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulFormat {
    /// The quantization mode: an fp mode has `U8` scales, no biases, and its one group size and
    /// bits.
    pub mode: Mode,
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
        if self.mode.is_fp() {
            let (x, out) = (self.x_dtype.short_name(), self.out_dtype.short_name());
            return write!(f, "{x}_{}_to_{out}", self.mode);
        }
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
    /// Prelude constants every quantized-matmul kernel gets.
    pub(super) fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("MODE", self.mode.wgsl_id()),
            ("BITS", self.bits),
            ("GROUP_SIZE", self.group_size),
            ("X_DTYPE", self.x_dtype.wgsl_id()),
            ("SCALE_DTYPE", self.scale_dtype.wgsl_id()),
            ("OUT_DTYPE", self.out_dtype.wgsl_id()),
        ]
    }

    /// Every format the kernels are built for: each bits and group size with one dtype
    /// throughout; and each mixed x and scales dtype once, at 4 bits and group 64 (dtypes only
    /// change the load and store functions); each fp mode with x in each dtype (the output is
    /// x's dtype). x is f32 wherever `qmv_prepare` laid it out.
    pub(crate) fn all() -> Vec<MatmulFormat> {
        let mut formats = Vec::new();
        for bits in crate::params::SUPPORTED_BITS {
            for group_size in crate::params::SUPPORTED_GROUP_SIZES {
                formats.extend(FLOATS.map(|d| MatmulFormat {
                    mode: Mode::Affine,
                    x_dtype: d,
                    scale_dtype: d,
                    out_dtype: d,
                    bits,
                    group_size,
                }));
            }
        }
        for x_dtype in FLOATS {
            for scale_dtype in FLOATS.into_iter().filter(|&s| s != x_dtype) {
                let out_dtype = x_dtype.promote(scale_dtype);
                formats.push(MatmulFormat {
                    mode: Mode::Affine,
                    x_dtype,
                    scale_dtype,
                    out_dtype,
                    bits: 4,
                    group_size: 64,
                });
            }
        }
        for mode in FP_MODES {
            formats.extend(FLOATS.map(|d| MatmulFormat::fp(mode, d)));
        }
        formats
    }

    /// [`MatmulFormat::all`], and each with f32 out: what the kernels that split k (qvm, qmm)
    /// write their partial sums in.
    pub(super) fn all_with_partials() -> Vec<MatmulFormat> {
        let mut formats = MatmulFormat::all();
        for format in MatmulFormat::all() {
            let partials = MatmulFormat { out_dtype: DType::F32, ..format };
            if !formats.contains(&partials) {
                formats.push(partials);
            }
        }
        formats
    }

    /// The format of fp mode `mode` with x (and y) in `dtype`.
    pub(crate) const fn fp(mode: Mode, dtype: DType) -> MatmulFormat {
        let (group_size, bits) = mode.defaults();
        MatmulFormat { mode, x_dtype: dtype, scale_dtype: DType::U8, out_dtype: dtype, bits, group_size }
    }

    /// Whether `other` has the same mode, bits and group size.
    pub(super) fn same_bits_and_group_size(&self, other: &MatmulFormat) -> bool {
        (self.mode, self.bits, self.group_size) == (other.mode, other.bits, other.group_size)
    }

    /// The same format with `x` read in `x_dtype`.
    pub(crate) const fn with_x(self, x_dtype: DType) -> MatmulFormat {
        MatmulFormat {
            mode: self.mode,
            x_dtype,
            scale_dtype: self.scale_dtype,
            out_dtype: self.out_dtype,
            bits: self.bits,
            group_size: self.group_size,
        }
    }
}

params! {
    /// Uniform parameters of the qmv, qvm and qmm kernels (`Params` in `qmm_operands.wgsl`).
    QuantizedMatmulParams {
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
        pad0: u32,
        pad1: u32,
        pad2: u32,
    }
}

bindings! {
    /// Bindings of the qvm and qmm kernels (qmv binds x and w_q as vectors: [`QMV_BINDINGS`]).
    QuantizedMatmulBindings {
        batches: 1 Read "array<u32>",
        x: 2 Read "array<u32>",
        w_q: 3 Read "array<u32>",
        scales: 4 Read "array<u32>",
        biases: 5 Read "array<u32>",
        y: 6 ReadWrite "array<atomic<u32>>",
    }
}

/// `QuantizedMatmulBindings` as qmv declares them: x and w_q read as 16-byte vectors.
pub(super) const QMV_BINDINGS: &[Binding] = &{
    let mut table = *QUANTIZED_MATMUL_TABLE;
    table[1].ty = "array<vec4<u32>>";
    table[2].ty = "array<vec4<u32>>";
    table
};

const QUANTIZED_MATMUL_TABLE: &[Binding; 6] = match QuantizedMatmulBindings::<()>::TABLE.first_chunk::<6>() {
    Some(table) => table,
    None => panic!("six bindings"),
};
