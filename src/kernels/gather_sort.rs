//! mlx-lm's `_gather_sort` of (token, expert) pairs by expert (see `wgsl/gather_sort.wgsl`).

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, ELEMENTWISE_WG_SIZE};

/// The gather-sort kernel (one specialisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatherSortKey;

params! {
    /// `wgsl/gather_sort.wgsl`'s uniform parameters.
    GatherSortParams { pairs: u32, per_token: u32, pad0: u32, pad1: u32 }
}

bindings! {
    /// `wgsl/gather_sort.wgsl`'s bindings.
    GatherSortBindings {
        indices: 1 Read "array<u32>",
        x_rows: 2 ReadWrite "array<u32>",
        sorted: 3 ReadWrite "array<u32>",
        inv_order: 4 ReadWrite "array<u32>",
    }
}

impl fmt::Display for GatherSortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gather_sort")
    }
}

impl Family for GatherSortKey {
    fn op(&self) -> &'static str {
        "gather_sort"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/gather_sort.wgsl")
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
        GatherSortParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        GatherSortBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        vec![GatherSortKey]
    }
}
