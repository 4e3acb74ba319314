//! RMS normalisation of rows, times a weight vector: one workgroup per row.

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, Snippet, FLOATS, ROW_WG_SIZE};
use crate::dtype::DType;

/// The row-reduction entry point and workgroup memory the row kernels share.
pub(super) const ROW_REDUCE: Snippet = ("common/row_reduce.wgsl", include_str!("../../wgsl/common/row_reduce.wgsl"));

/// What a row kernel asks of a device: a workgroup per row and one f32 per invocation.
pub(super) const ROW_WORKGROUP: ResourceUsage =
    ResourceUsage { workgroup_memory: ROW_WG_SIZE as u64 * 4, invocations: ROW_WG_SIZE as u64 };

/// An RMSNorm kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RmsNormKey {
    /// Input dtype.
    pub x_dtype: DType,
    /// Weight dtype.
    pub w_dtype: DType,
    /// Output dtype.
    pub out_dtype: DType,
}

params! {
    /// `wgsl/rms_norm.wgsl`'s uniform parameters.
    RmsNormParams { rows: u32, dims: u32, eps: f32, pad0: u32 }
}

bindings! {
    /// `wgsl/rms_norm.wgsl`'s bindings.
    RmsNormBindings {
        x: 1 Read "array<u32>",
        w: 2 Read "array<u32>",
        y: 3 ReadWrite "array<atomic<u32>>",
    }
}

impl fmt::Display for RmsNormKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (x, w, out) = (self.x_dtype.short_name(), self.w_dtype.short_name(), self.out_dtype.short_name());
        write!(f, "rms_norm_{x}_{w}_to_{out}")
    }
}

impl Family for RmsNormKey {
    fn op(&self) -> &'static str {
        "rms_norm"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/rms_norm.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("X_DTYPE", self.x_dtype.wgsl_id()),
            ("W_DTYPE", self.w_dtype.wgsl_id()),
            ("OUT_DTYPE", self.out_dtype.wgsl_id()),
        ]
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![ROW_REDUCE]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ROW_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ROW_WORKGROUP
    }

    fn params(&self) -> ParamsLayout {
        RmsNormParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        RmsNormBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for x_dtype in FLOATS {
            for w_dtype in FLOATS {
                keys.extend(FLOATS.map(|out_dtype| RmsNormKey { x_dtype, w_dtype, out_dtype }));
            }
        }
        keys
    }
}
