//! `qmv_coop`: the quantized matrix-vector product on cooperative matrices (tensor cores) for
//! transposed weights: f16 x, scales and y, 4 bits, groups of 64, 2 to 8 rows of x, k in slices
//! whose f32 partial sums `qmm_sum_partials` adds. Written for subgroups of 32 invocations.

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage};

/// Codes of k per workgroup (8 groups of 64): the products split k into slices this long.
pub(crate) const QMV_COOP_SLICE: u32 = 512;
/// Subgroups per workgroup, each a tile of 16 rows of w: 8 keep two workgroups resident per
/// H100 multiprocessor (its 48 KB of workgroup memory; benches/RESULTS.md).
pub(crate) const QMV_COOP_SUBGROUPS: u32 = 8;
/// The subgroup size the kernel is written for.
pub(crate) const QMV_COOP_SUBGROUP_SIZE: u32 = 32;

/// A `qmv_coop` kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QmvCoopKey {
    /// Subgroups per workgroup (each a tile of 16 rows of w).
    pub subgroups: u32,
}

params! {
    /// `wgsl/qmv_coop.wgsl`'s uniform parameters.
    CoopParams { m: u32, n: u32, k: u32, n_pad: u32, tile_groups: u32, slices: u32, pad0: u32, pad1: u32 }
}

bindings! {
    /// `wgsl/qmv_coop.wgsl`'s bindings.
    CoopBindings {
        x: 1 Read "array<vec4<u32>>",
        w_q: 2 Read "array<vec4<u32>>",
        scales: 3 Read "array<vec4<u32>>",
        biases: 4 Read "array<vec4<u32>>",
        partials: 5 ReadWrite "array<f32>",
    }
}

impl fmt::Display for QmvCoopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "qmv_coop_f16_b4_gs64_sg{}", self.subgroups)
    }
}

impl Family for QmvCoopKey {
    fn op(&self) -> &'static str {
        "quantized_matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/qmv_coop.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![("SLICE", QMV_COOP_SLICE)]
    }

    fn enables(&self) -> &'static [&'static str] {
        &["f16", "wgpu_cooperative_matrix"]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("SUBGROUPS", self.subgroups)]
    }

    fn workgroup(&self) -> ResourceUsage {
        // Staged x (16 rows of SLICE / 8 + 1 runs of 8 f16) and a tile per subgroup (16 rows of
        // 3 runs).
        let x = 16 * u64::from(QMV_COOP_SLICE / 8 + 1) * 16;
        let tiles = u64::from(self.subgroups) * 16 * 3 * 16;
        ResourceUsage { workgroup_memory: x + tiles, invocations: u64::from(self.subgroups * QMV_COOP_SUBGROUP_SIZE) }
    }

    fn params(&self) -> ParamsLayout {
        CoopParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        CoopBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        vec![QmvCoopKey { subgroups: QMV_COOP_SUBGROUPS }]
    }
}
