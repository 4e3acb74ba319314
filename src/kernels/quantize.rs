//! Affine quantize of a float matrix, group by group, bit-exact with MLX through the
//! exact integer arithmetic of `common/softfloat.wgsl`.

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, ELEMENTWISE_WG_SIZE, FLOATS};
use crate::dtype::DType;

/// A quantize kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantizeKey {
    /// Input (and scales/biases) dtype.
    pub dtype: DType,
    /// Bits per code.
    pub bits: u32,
    /// Elements per group.
    pub group_size: u32,
}

params! {
    /// `wgsl/quantize.wgsl`'s uniform parameters.
    QuantizeParams { n_groups: u32, pad0: u32, pad1: u32, pad2: u32 }
}

bindings! {
    /// `wgsl/quantize.wgsl`'s bindings.
    QuantizeBindings {
        w: 1 Read "array<u32>",
        w_q: 2 ReadWrite "array<u32>",
        scales: 3 ReadWrite "array<u32>",
        biases: 4 ReadWrite "array<u32>",
    }
}

impl fmt::Display for QuantizeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quantize_{}_gs{}_b{}", self.dtype.short_name(), self.group_size, self.bits)
    }
}

impl Family for QuantizeKey {
    fn op(&self) -> &'static str {
        "quantize"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/quantize.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("BITS", self.bits),
            ("GROUP_SIZE", self.group_size),
            ("W_DTYPE", self.dtype.wgsl_id()),
            ("GROUPS_PER_INVOCATION", 4 / self.dtype.size_in_bytes() as u32),
        ]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        QuantizeParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        QuantizeBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for bits in crate::params::SUPPORTED_BITS {
            for group_size in crate::params::SUPPORTED_GROUP_SIZES {
                keys.extend(FLOATS.map(|dtype| QuantizeKey { dtype, bits, group_size }));
            }
        }
        keys
    }
}
