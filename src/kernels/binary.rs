//! Element-wise functions of two tensors, the second repeated along the first
//! ([`crate::ops::add`], [`crate::ops::multiply`]).

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, ELEMENTWISE_WG_SIZE, FLOATS};
use crate::dtype::DType;

/// The function a binary kernel applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a * b`.
    Multiply,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Multiply => "multiply",
        }
    }

    /// The id `wgsl/binary.wgsl` switches on.
    fn wgsl_id(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Multiply => 1,
        }
    }
}

/// A binary kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BinaryKey {
    /// The function.
    pub op: BinaryOp,
    /// First operand dtype.
    pub a_dtype: DType,
    /// Second operand dtype.
    pub b_dtype: DType,
    /// Output dtype.
    pub out_dtype: DType,
}

params! {
    /// `wgsl/binary.wgsl`'s uniform parameters.
    BinaryParams { n_elements: u32, b_len: u32, pad0: u32, pad1: u32 }
}

bindings! {
    /// `wgsl/binary.wgsl`'s bindings.
    BinaryBindings {
        a: 1 Read "array<u32>",
        b: 2 Read "array<u32>",
        y: 3 ReadWrite "array<u32>",
    }
}

impl fmt::Display for BinaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, out) = (self.a_dtype.short_name(), self.b_dtype.short_name(), self.out_dtype.short_name());
        write!(f, "{}_{a}_{b}_to_{out}", self.op.name())
    }
}

impl Family for BinaryKey {
    fn op(&self) -> &'static str {
        self.op.name()
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/binary.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("OP", self.op.wgsl_id()),
            ("A_DTYPE", self.a_dtype.wgsl_id()),
            ("B_DTYPE", self.b_dtype.wgsl_id()),
            ("OUT_DTYPE", self.out_dtype.wgsl_id()),
        ]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        BinaryParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        BinaryBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for op in [BinaryOp::Add, BinaryOp::Multiply] {
            for a_dtype in FLOATS {
                for b_dtype in FLOATS {
                    keys.extend(FLOATS.map(|out_dtype| BinaryKey { op, a_dtype, b_dtype, out_dtype }));
                }
            }
        }
        keys
    }
}
