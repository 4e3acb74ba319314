//! Element-wise functions of one tensor ([`crate::ops::relu`], [`crate::ops::silu`], casts).

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, ELEMENTWISE_WG_SIZE, FLOATS};
use crate::dtype::DType;

/// The function a unary kernel applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `x`, converted to the output dtype.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl UnaryOp {
    fn name(self) -> &'static str {
        match self {
            UnaryOp::Identity => "cast",
            UnaryOp::Relu => "relu",
            UnaryOp::Silu => "silu",
        }
    }

    /// The id `wgsl/unary.wgsl` switches on.
    fn wgsl_id(self) -> u32 {
        match self {
            UnaryOp::Identity => 0,
            UnaryOp::Relu => 1,
            UnaryOp::Silu => 2,
        }
    }
}

/// A unary kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnaryKey {
    /// The function.
    pub op: UnaryOp,
    /// Input dtype.
    pub in_dtype: DType,
    /// Output dtype.
    pub out_dtype: DType,
}

params! {
    /// `wgsl/unary.wgsl`'s uniform parameters.
    UnaryParams { n_elements: u32, pad0: u32, pad1: u32, pad2: u32 }
}

bindings! {
    /// `wgsl/unary.wgsl`'s bindings.
    UnaryBindings {
        x: 1 Read "array<u32>",
        y: 2 ReadWrite "array<u32>",
    }
}

impl fmt::Display for UnaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_to_{}", self.op.name(), self.in_dtype.short_name(), self.out_dtype.short_name())
    }
}

impl Family for UnaryKey {
    fn op(&self) -> &'static str {
        self.op.name()
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/unary.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![("OP", self.op.wgsl_id()), ("IN_DTYPE", self.in_dtype.wgsl_id()), ("OUT_DTYPE", self.out_dtype.wgsl_id())]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        UnaryParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        UnaryBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for op in [UnaryOp::Identity, UnaryOp::Relu, UnaryOp::Silu] {
            for in_dtype in FLOATS {
                keys.extend(FLOATS.map(|out_dtype| UnaryKey { op, in_dtype, out_dtype }));
            }
        }
        keys
    }
}
