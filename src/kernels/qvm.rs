//! `qvm`: the quantized vector-matrix product of untransposed weights for up to 4 rows of x
//! (MLX's qvm / qvm_split_k).

use std::fmt;

use super::matmul_format::{CODES, MODES, QMM_IO, QMM_OPERANDS, QMM_WORDS};
use super::{
    Binding, Family, MatmulFormat, ParamsLayout, QuantizedMatmulBindings, QuantizedMatmulParams, ResourceUsage, Snippet,
};

/// Quads of outputs per workgroup.
pub(crate) const QVM_WG_SIZE: u32 = 64;

/// A `qvm` kernel: 4 outputs and `vecs` rows of x per invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QvmKey {
    /// dtypes and format.
    pub format: MatmulFormat,
    /// Rows of x per invocation (1 ..= 4).
    pub vecs: u32,
}

impl fmt::Display for QvmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "qvm_{}_v{}_wg{QVM_WG_SIZE}", self.format, self.vecs)
    }
}

impl Family for QvmKey {
    fn op(&self) -> &'static str {
        "quantized_matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/qvm.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        let mut prelude = self.format.prelude();
        prelude.push(("VECS", self.vecs));
        prelude
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![QMM_IO, MODES, CODES, QMM_OPERANDS, QMM_WORDS]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", QVM_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: QVM_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        QuantizedMatmulParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        QuantizedMatmulBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for format in MatmulFormat::all_with_partials() {
            keys.extend((1..=4).map(|vecs| QvmKey { format, vecs }));
        }
        keys
    }
}
