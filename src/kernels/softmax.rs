//! Softmax of rows (scaled, optionally causal): one workgroup per row.

use std::fmt;

use super::rms_norm::{ROW_REDUCE, ROW_WORKGROUP};
use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, Snippet, FLOATS, ROW_WG_SIZE};
use crate::dtype::DType;

/// A softmax kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftmaxKey {
    /// Input dtype.
    pub in_dtype: DType,
    /// Output dtype.
    pub out_dtype: DType,
}

params! {
    /// `wgsl/softmax.wgsl`'s uniform parameters.
    SoftmaxParams { rows: u32, cols: u32, queries: u32, offset: u32, causal: u32, first_row: u32, scale: f32, pad0: u32 }
}

bindings! {
    /// `wgsl/softmax.wgsl`'s bindings.
    SoftmaxBindings {
        s: 1 Read "array<u32>",
        y: 2 ReadWrite "array<atomic<u32>>",
    }
}

impl fmt::Display for SoftmaxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "softmax_{}_to_{}", self.in_dtype.short_name(), self.out_dtype.short_name())
    }
}

impl Family for SoftmaxKey {
    fn op(&self) -> &'static str {
        "softmax"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/softmax.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![("IN_DTYPE", self.in_dtype.wgsl_id()), ("OUT_DTYPE", self.out_dtype.wgsl_id())]
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
        SoftmaxParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        SoftmaxBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for in_dtype in FLOATS {
            keys.extend(FLOATS.map(|out_dtype| SoftmaxKey { in_dtype, out_dtype }));
        }
        keys
    }
}
