//! fp-mode quantize (mxfp4, mxfp8, nvfp4), bit-exact with MLX's CPU through the exact integer
//! arithmetic of `common/softfloat.wgsl` and `common/fp_formats.wgsl`.

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, Snippet, ELEMENTWISE_WG_SIZE, FLOATS};
use crate::dtype::DType;
use crate::params::{Mode, FP_MODES};

/// The fp element and scale formats (quantize and dequantize).
pub(super) const FP_FORMATS: Snippet = ("common/fp_formats.wgsl", include_str!("../../wgsl/common/fp_formats.wgsl"));

/// An fp-mode quantize kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FpQuantizeKey {
    /// Input dtype (the dtype MLX computes the scales and codes in).
    pub dtype: DType,
    /// The fp mode (its group size and bits are the mode's).
    pub mode: Mode,
}

params! {
    /// `wgsl/fp_quantize.wgsl`'s uniform parameters.
    FpQuantizeParams { n_groups: u32, pad0: u32, pad1: u32, pad2: u32 }
}

bindings! {
    /// `wgsl/fp_quantize.wgsl`'s bindings.
    FpQuantizeBindings {
        w: 1 Read "array<u32>",
        w_q: 2 ReadWrite "array<u32>",
        scales: 3 ReadWrite "array<u32>",
    }
}

/// Groups each invocation quantizes: the four scale bytes of one word.
pub(crate) const FP_GROUPS_PER_INVOCATION: usize = 4;

impl fmt::Display for FpQuantizeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fp_quantize_{}_{}", self.mode, self.dtype.short_name())
    }
}

impl Family for FpQuantizeKey {
    fn op(&self) -> &'static str {
        "quantize"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/fp_quantize.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        let (group_size, bits) = self.mode.defaults();
        vec![
            ("MODE", self.mode.wgsl_id()),
            ("BITS", bits),
            ("GROUP_SIZE", group_size),
            ("W_DTYPE", self.dtype.wgsl_id()),
        ]
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![super::matmul_format::MODES, FP_FORMATS]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        FpQuantizeParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        FpQuantizeBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        FP_MODES.into_iter().flat_map(|mode| FLOATS.map(|dtype| FpQuantizeKey { dtype, mode })).collect()
    }
}
