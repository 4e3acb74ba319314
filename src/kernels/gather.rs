//! Row gather (`table[ids]`), copying elements bit for bit.

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, ELEMENTWISE_WG_SIZE};

/// A gather kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatherKey {
    /// Bytes per element: 4 or 2.
    pub element_bytes: u32,
}

params! {
    /// `wgsl/gather.wgsl`'s uniform parameters.
    GatherParams { n_elements: u32, width: u32, table_rows: u32, pad0: u32 }
}

bindings! {
    /// `wgsl/gather.wgsl`'s bindings.
    GatherBindings {
        ids: 1 Read "array<u32>",
        table: 2 Read "array<u32>",
        out: 3 ReadWrite "array<u32>",
    }
}

impl fmt::Display for GatherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gather_{}", self.element_bytes * 8)
    }
}

impl Family for GatherKey {
    fn op(&self) -> &'static str {
        "gather"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/gather.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![("ELEMENT_BYTES", self.element_bytes)]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        GatherParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        GatherBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        vec![GatherKey { element_bytes: 1 }, GatherKey { element_bytes: 2 }, GatherKey { element_bytes: 4 }]
    }
}
