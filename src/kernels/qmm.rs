//! `qmm`: the tiled quantized matrix product, either layout (MLX's qmm_t / qmm_n), staging
//! tiles of x and of dequantized w in workgroup memory.

use std::fmt;

use super::matmul_format::{CODES, F16_4_64, MODES, QMM_IO, QMM_OPERANDS, QMM_WORDS};
use super::{
    Binding, Family, MatmulFormat, ParamsLayout, QuantizedMatmulBindings, QuantizedMatmulParams, ResourceUsage, Snippet,
};

/// The rows of y per tile the kernel supports.
pub const QMM_TILE_ROWS: [u32; 3] = [32, 64, 128];
/// k per step of a tile (`BK` in `wgsl/qmm.wgsl`).
const BK: u32 = 16;

/// How a `qmm` workgroup cuts its tile of y.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QmmShape {
    /// Columns of y per tile: 128 or 256.
    pub bn: u32,
    /// Columns of y per invocation: 8 or 16 (each invocation makes 8 rows).
    pub columns: u32,
}

impl QmmShape {
    /// Every shape the kernel supports.
    pub const ALL: [QmmShape; 4] = [
        QmmShape { bn: 128, columns: 8 },
        QmmShape { bn: 128, columns: 16 },
        QmmShape { bn: 256, columns: 8 },
        QmmShape { bn: 256, columns: 16 },
    ];

    /// What the dispatcher uses for tiles of `bm` rows where the device allows it: 256 columns
    /// decode each row of x for twice the outputs of 128, and 8 x 16 per invocation does twice
    /// the FMAs of 8 x 8 per read of workgroup memory; tiles of 32 rows keep 8 x 8, so that a
    /// workgroup still has 128 invocations.
    pub fn default_for(bm: u32) -> QmmShape {
        QmmShape { bn: 256, columns: if bm >= 64 { 16 } else { 8 } }
    }

    /// Whether `qmm.wgsl` supports this shape (with any of [`QMM_TILE_ROWS`]).
    pub fn is_supported(&self) -> bool {
        QmmShape::ALL.contains(self)
    }

    /// Invocations per workgroup for tiles of `bm` rows.
    pub fn invocations(&self, bm: u32) -> u32 {
        bm / 8 * (self.bn / self.columns)
    }

    /// Bytes of workgroup memory for tiles of `bm` rows: a step of x and of w, f32.
    pub fn workgroup_memory(&self, bm: u32) -> u64 {
        u64::from(BK * (bm + self.bn) * 4)
    }
}

/// A `qmm` kernel: `bm` x `shape.bn` tiles of y.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QmmKey {
    /// dtypes and format.
    pub format: MatmulFormat,
    /// Whether w_q is `(n, k)` (groups along k) rather than `(k, n)`.
    pub transpose: bool,
    /// Rows of y per tile: one of [`QMM_TILE_ROWS`].
    pub bm: u32,
    /// Columns of the tile and of each invocation's part.
    pub shape: QmmShape,
}

impl fmt::Display for QmmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let QmmShape { bn, columns } = self.shape;
        let layout = if self.transpose { "t" } else { "n" };
        write!(f, "qmm_{layout}_{}_{}x{bn}_c{columns}", self.format, self.bm)
    }
}

impl Family for QmmKey {
    fn op(&self) -> &'static str {
        "quantized_matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/qmm.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        let mut prelude = self.format.prelude();
        prelude.extend([
            ("TRANSPOSE", u32::from(self.transpose)),
            ("BM", self.bm),
            ("BN", self.shape.bn),
            ("TN", self.shape.columns),
        ]);
        prelude
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![QMM_IO, MODES, CODES, QMM_OPERANDS, QMM_WORDS]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage {
            workgroup_memory: self.shape.workgroup_memory(self.bm),
            invocations: self.shape.invocations(self.bm).into(),
        }
    }

    fn params(&self) -> ParamsLayout {
        QuantizedMatmulParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        QuantizedMatmulBindings::<()>::TABLE
    }

    /// Every format (with f32 out for partial sums) in both layouts, with every tile the
    /// planner picks by itself: each tile rows with its default shape, and that shape narrowed
    /// to 128 columns (devices with 16 KiB of workgroup memory); at 4 bits and group 64, in
    /// every dtype, every tile a caller may ask for (the shader tests show that bits and group
    /// size combine with no other axis, so these cover every format's tiles).
    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for format in MatmulFormat::all_with_partials() {
            let canonical = format.same_bits_and_group_size(&F16_4_64);
            for transpose in [true, false] {
                for bm in QMM_TILE_ROWS {
                    let default = QmmShape::default_for(bm);
                    let shapes =
                        if canonical { QmmShape::ALL.to_vec() } else { vec![default, QmmShape { bn: 128, ..default }] };
                    keys.extend(shapes.into_iter().map(|shape| QmmKey { format, transpose, bm, shape }));
                }
            }
        }
        keys
    }
}
