//! Sums slots of f32 partial sums (slices of k) into y.

use std::fmt;

use super::matmul_format::QMM_IO;
use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, Snippet, FLOATS};
use crate::dtype::DType;

/// Invocations per workgroup.
pub(crate) const SUM_PARTIALS_WG_SIZE: u32 = 64;

/// A kernel summing partial sums into y of `out_dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SumPartialsKey {
    /// dtype of y.
    pub out_dtype: DType,
}

params! {
    /// `wgsl/qmm_sum_partials.wgsl`'s uniform parameters.
    SumPartialsParams { count: u32, slots: u32, slot_stride: u32, y_offset: u32, row: u32, row_stride: u32, pad0: u32, pad1: u32 }
}

bindings! {
    /// `wgsl/qmm_sum_partials.wgsl`'s bindings.
    SumPartialsBindings {
        partials: 1 Read "array<f32>",
        y: 2 ReadWrite "array<atomic<u32>>",
    }
}

impl fmt::Display for SumPartialsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "qmm_sum_partials_{}", self.out_dtype.short_name())
    }
}

impl Family for SumPartialsKey {
    fn op(&self) -> &'static str {
        "quantized_matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/qmm_sum_partials.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![("OUT_DTYPE", self.out_dtype.wgsl_id())]
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![QMM_IO]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", SUM_PARTIALS_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: SUM_PARTIALS_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        SumPartialsParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        SumPartialsBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        FLOATS.map(|out_dtype| SumPartialsKey { out_dtype }).to_vec()
    }
}
