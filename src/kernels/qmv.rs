//! `qmv`: the quantized matrix-vector product of transposed weights for up to 8 rows of x
//! (MLX's qmv / qmv_wide), its invocations splitting k and totalling their partial sums.

use std::fmt;

use super::matmul_format::F16_4_64;
use super::matmul_format::{CODES, MODES, PREPARED_X, QMM_IO, QMM_OPERANDS, QMV_BINDINGS};
use super::{Binding, Family, MatmulFormat, ParamsLayout, QuantizedMatmulParams, ResourceUsage, Snippet};
use crate::dtype::DType;

/// Default invocations per workgroup (they split k): on an H100, 32 and 64 run level and ahead
/// of 128 from one to 32 rows of x (benches/RESULTS.md).
pub(crate) const QMV_WG_SIZE: u32 = 64;
/// vec4s of partial sums per invocation (`SLOTS` in `wgsl/qmv.wgsl`).
const SLOTS: u64 = 8;

const REDUCE_SUBGROUP: Snippet =
    ("common/reduce_subgroup.wgsl", include_str!("../../wgsl/common/reduce_subgroup.wgsl"));
const REDUCE_WORKGROUP: Snippet =
    ("common/reduce_workgroup.wgsl", include_str!("../../wgsl/common/reduce_workgroup.wgsl"));

/// How a `qmv` workgroup totals its invocations' partial sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// `subgroupAdd`, then the subgroups' totals through workgroup memory, sized for subgroups
    /// of at least `min_size` invocations (a power of two).
    Subgroup {
        /// Smallest subgroup size the adapter may use, rounded down to a power of two.
        min_size: u32,
    },
    /// A tree in workgroup memory (devices without subgroup operations).
    Workgroup,
}

/// A `qmv` kernel: 8 outputs (4 when `vecs` > 4) and `vecs` rows of x per workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QmvKey {
    /// dtypes and format (x is f32 when prepared, with several rows).
    pub format: MatmulFormat,
    /// Rows of x per workgroup (1 ..= 8).
    pub vecs: u32,
    /// Invocations per workgroup (they split k).
    pub wg_size: u32,
    /// How partial sums are totalled.
    pub reduction: Reduction,
}

impl QmvKey {
    /// The subgroup minimums the planner may assume: the powers of two wgpu reports (from
    /// `wgpu::MINIMUM_SUBGROUP_MIN_SIZE` to `wgpu::MAXIMUM_SUBGROUP_MAX_SIZE`).
    pub const SUBGROUP_SIZES: [u32; 6] = [4, 8, 16, 32, 64, 128];
    /// The workgroup sizes a caller may ask for (powers of two to the largest any device
    /// allows).
    pub const WG_SIZES: [u32; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

    /// Bytes of workgroup memory a workgroup of `wg_size` invocations uses with `reduction`.
    pub fn workgroup_memory(wg_size: u32, reduction: Reduction) -> u64 {
        let slots = match reduction {
            Reduction::Subgroup { min_size } => u64::from(wg_size.div_ceil(min_size)),
            Reduction::Workgroup => u64::from(wg_size),
        };
        slots * SLOTS * 16
    }
}

impl fmt::Display for QmvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reduction = match self.reduction {
            Reduction::Subgroup { min_size } => format!("sg{min_size}"),
            Reduction::Workgroup => "wgsum".to_string(),
        };
        write!(f, "qmv_{}_v{}_wg{}_{reduction}", self.format, self.vecs, self.wg_size)
    }
}

impl Family for QmvKey {
    fn op(&self) -> &'static str {
        "quantized_matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/qmv.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        let mut prelude = self.format.prelude();
        prelude.extend([("VECS", self.vecs), ("PREPARED_CHUNK", super::PREPARED_CHUNK)]);
        prelude
    }

    fn snippets(&self) -> Vec<Snippet> {
        let reduce = match self.reduction {
            Reduction::Subgroup { .. } => REDUCE_SUBGROUP,
            Reduction::Workgroup => REDUCE_WORKGROUP,
        };
        vec![QMM_IO, MODES, CODES, PREPARED_X, QMM_OPERANDS, reduce]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        match self.reduction {
            Reduction::Subgroup { min_size } => vec![("WG_SIZE", self.wg_size), ("MIN_SUBGROUP_SIZE", min_size)],
            Reduction::Workgroup => vec![("WG_SIZE", self.wg_size)],
        }
    }

    fn workgroup(&self) -> ResourceUsage {
        let workgroup_memory = QmvKey::workgroup_memory(self.wg_size, self.reduction);
        ResourceUsage { workgroup_memory, invocations: self.wg_size.into() }
    }

    fn params(&self) -> ParamsLayout {
        QuantizedMatmulParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        QMV_BINDINGS
    }

    /// Every format, for every rows of x and both reductions (the subgroup minimum and the
    /// workgroup size are overrides: [`Family::override_variants`]). One row of x reads x as
    /// it comes; several read it prepared (f32).
    fn keys() -> Vec<Self> {
        let reductions = [Reduction::Subgroup { min_size: QmvKey::SUBGROUP_SIZES[0] }, Reduction::Workgroup];
        let mut keys = Vec::new();
        for format in MatmulFormat::all() {
            for vecs in 1..=8 {
                let format = if vecs > 1 { format.with_x(DType::F32) } else { format };
                for reduction in reductions {
                    let key = QmvKey { format, vecs, wg_size: QMV_WG_SIZE, reduction };
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        keys
    }

    /// Every subgroup minimum at the default workgroup size; at 4 bits and group 64, in every
    /// dtype, every workgroup size a caller may ask for too (the shader tests show that bits
    /// and group size combine with no other axis, so these cover every format's).
    fn override_variants(&self) -> Vec<Self> {
        let canonical = self.format.same_bits_and_group_size(&F16_4_64);
        let sizes = if canonical { QmvKey::WG_SIZES.to_vec() } else { vec![QMV_WG_SIZE] };
        let reductions: Vec<Reduction> = match self.reduction {
            Reduction::Subgroup { .. } => {
                QmvKey::SUBGROUP_SIZES.iter().map(|&min_size| Reduction::Subgroup { min_size }).collect()
            }
            Reduction::Workgroup => vec![Reduction::Workgroup],
        };
        let mut variants = Vec::new();
        for wg_size in sizes {
            for &reduction in &reductions {
                let key = QmvKey { wg_size, reduction, ..*self };
                if key != *self {
                    variants.push(key);
                }
            }
        }
        variants
    }
}
