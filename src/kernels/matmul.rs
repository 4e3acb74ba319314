//! Float matrix product with f32 accumulation, optionally plus a bias row (MLX's `addmm`).

use std::fmt;

use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, FLOATS};
use crate::dtype::DType;

/// Side of the square output tile one matmul workgroup computes (TILE x TILE invocations).
pub(crate) const MATMUL_TILE: u32 = 16;

/// A float matmul kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulKey {
    /// Left operand dtype.
    pub x_dtype: DType,
    /// Right operand (weight) dtype.
    pub w_dtype: DType,
    /// Bias dtype, when a bias is added before the final rounding (MLX's `addmm`).
    pub bias_dtype: Option<DType>,
    /// Output dtype.
    pub out_dtype: DType,
    /// Whether `w` is read as `(N, K)` (`x @ wᵀ`, the Linear layout) rather than `(K, N)`.
    pub transpose: bool,
}

params! {
    /// `wgsl/matmul.wgsl`'s uniform parameters.
    MatmulParams {
        m: u32,
        n: u32,
        k: u32,
        batches: u32,
        batch_inner: u32,
        tiles_m: u32,
        tiles_n: u32,
        x_outer: u32,
        x_inner: u32,
        x_row: u32,
        w_outer: u32,
        w_inner: u32,
        w_row: u32,
        y_outer: u32,
        y_inner: u32,
        y_row: u32,
    }
}

bindings! {
    /// `wgsl/matmul.wgsl`'s bindings. Without a bias, `bias` aliases `w` and is never read.
    MatmulBindings {
        x: 1 Read "array<u32>",
        w: 2 Read "array<u32>",
        bias: 3 Read "array<u32>",
        y: 4 ReadWrite "array<atomic<u32>>",
    }
}

impl fmt::Display for MatmulKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "matmul_{}_{}", self.x_dtype.short_name(), self.w_dtype.short_name())?;
        if let Some(bias) = self.bias_dtype {
            write!(f, "_bias_{}", bias.short_name())?;
        }
        write!(f, "_to_{}{}", self.out_dtype.short_name(), if self.transpose { "_t" } else { "" })
    }
}

impl Family for MatmulKey {
    fn op(&self) -> &'static str {
        "matmul"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/matmul.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("X_DTYPE", self.x_dtype.wgsl_id()),
            ("W_DTYPE", self.w_dtype.wgsl_id()),
            ("HAS_BIAS", u32::from(self.bias_dtype.is_some())),
            ("BIAS_DTYPE", self.bias_dtype.unwrap_or(self.w_dtype).wgsl_id()),
            ("OUT_DTYPE", self.out_dtype.wgsl_id()),
            ("TRANSPOSE", u32::from(self.transpose)),
        ]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("TILE", MATMUL_TILE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        // A tile of x and one of w, f32.
        let tile = u64::from(MATMUL_TILE * MATMUL_TILE);
        ResourceUsage { workgroup_memory: 2 * tile * 4, invocations: tile }
    }

    fn params(&self) -> ParamsLayout {
        MatmulParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        MatmulBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for x_dtype in FLOATS {
            for w_dtype in FLOATS {
                for out_dtype in FLOATS {
                    for bias_dtype in [None, Some(DType::F32), Some(DType::F16), Some(DType::BF16)] {
                        for transpose in [false, true] {
                            keys.push(MatmulKey { x_dtype, w_dtype, bias_dtype, out_dtype, transpose });
                        }
                    }
                }
            }
        }
        keys
    }
}
