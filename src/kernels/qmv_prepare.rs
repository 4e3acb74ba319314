//! Lays rows of x out for `qmv` with several rows of x: f32, quad-major, each quad times the
//! code scale of `bits` (1 for the fp modes), with block sums.

use std::fmt;

use super::matmul_format::{CODES, MODES, PREPARED_X};
use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, Snippet, ELEMENTWISE_WG_SIZE, FLOATS};
use crate::dtype::DType;
use crate::params::{Mode, FP_MODES};

/// Blocks of 32 elements per chunk of prepared x: within a chunk, a block's quads lie this many
/// 16-byte vectors apart (`wgsl/common/prepared_x.wgsl`). 8 makes each quad's run one 128-byte
/// cache line, as coalesced as any longer run, and pads a row by at most 7 blocks.
pub(crate) const PREPARED_CHUNK: u32 = 8;

/// A `qmv_prepare` kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QmvPrepareKey {
    /// The mode of the weights x will multiply (an fp mode's codes are unscaled elements).
    pub mode: Mode,
    /// dtype of x.
    pub x_dtype: DType,
    /// Bits per code of the weights x will multiply.
    pub bits: u32,
}

params! {
    /// `wgsl/qmv_prepare.wgsl`'s uniform parameters.
    PrepareParams { rows: u32, blocks: u32, pad0: u32, pad1: u32 }
}

bindings! {
    /// `wgsl/qmv_prepare.wgsl`'s bindings.
    PrepareBindings {
        x: 1 Read "array<u32>",
        prepared: 2 ReadWrite "array<vec4<f32>>",
    }
}

impl fmt::Display for QmvPrepareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mode.is_fp() {
            return write!(f, "qmv_prepare_{}_{}", self.x_dtype.short_name(), self.mode);
        }
        write!(f, "qmv_prepare_{}_b{}", self.x_dtype.short_name(), self.bits)
    }
}

impl Family for QmvPrepareKey {
    fn op(&self) -> &'static str {
        "quantized_matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/qmv_prepare.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("X_DTYPE", self.x_dtype.wgsl_id()),
            ("MODE", self.mode.wgsl_id()),
            ("BITS", self.bits),
            ("PREPARED_CHUNK", PREPARED_CHUNK),
        ]
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![MODES, CODES, PREPARED_X]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        // One f32 per invocation (a quad's sum).
        ResourceUsage { workgroup_memory: u64::from(ELEMENTWISE_WG_SIZE) * 4, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        PrepareParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        PrepareBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for bits in crate::params::SUPPORTED_BITS {
            keys.extend(FLOATS.map(|x_dtype| QmvPrepareKey { mode: Mode::Affine, x_dtype, bits }));
        }
        for mode in FP_MODES {
            let bits = mode.defaults().1;
            keys.extend(FLOATS.map(|x_dtype| QmvPrepareKey { mode, x_dtype, bits }));
        }
        keys
    }
}
