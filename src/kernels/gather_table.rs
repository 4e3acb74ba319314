//! `gather_qmm`'s batch table, built on the GPU from the index arrays (see
//! `wgsl/gather_table.wgsl`); the matmul kernels then read it as they read a host-built one.

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, ELEMENTWISE_WG_SIZE};

/// The gather-table kernel (one specialisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatherTableKey;

params! {
    /// `wgsl/gather_table.wgsl`'s uniform parameters.
    GatherTableParams {
        entries: u32,
        rank: u32,
        given: u32,
        x_matrices: u32,
        w_matrices: u32,
        x_step: u32,
        w_step: u32,
        y_step: u32,
    }
}

bindings! {
    /// `wgsl/gather_table.wgsl`'s bindings.
    GatherTableBindings {
        axes: 1 Read "array<u32>",
        lhs: 2 Read "array<u32>",
        rhs: 3 Read "array<u32>",
        table: 4 ReadWrite "array<u32>",
    }
}

/// [`GatherTableParams::given`]: the lhs indices are given (else arange).
pub(crate) const GIVEN_LHS: u32 = 1;
/// [`GatherTableParams::given`]: the rhs indices are given (else arange).
pub(crate) const GIVEN_RHS: u32 = 2;

impl fmt::Display for GatherTableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gather_table")
    }
}

impl Family for GatherTableKey {
    fn op(&self) -> &'static str {
        "gather_qmm"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/gather_table.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        GatherTableParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        GatherTableBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        vec![GatherTableKey]
    }
}
