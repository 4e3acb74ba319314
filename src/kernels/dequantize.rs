//! Dequantize into a float dtype: affine (`scale · q + bias` per element) and the fp modes
//! (element times scale), one kernel body with the mode as a prelude constant.

use std::fmt;

use super::fp_quantize::FP_FORMATS;
use super::matmul_format::{CODES, MODES};
use super::{bindings, params, Binding, Family, ParamsLayout, ResourceUsage, Snippet, ELEMENTWISE_WG_SIZE, FLOATS};
use crate::dtype::DType;
use crate::params::{Mode, FP_MODES};

/// A dequantize kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DequantizeKey {
    /// The mode (an fp mode fixes the group size and bits, and has `u8` scales and no biases).
    pub mode: Mode,
    /// Scales and biases dtype (affine: the compute type; fp modes: `U8`).
    pub scale_dtype: DType,
    /// Output dtype.
    pub out_dtype: DType,
    /// Bits per code.
    pub bits: u32,
    /// Elements per group.
    pub group_size: u32,
}

params! {
    /// `wgsl/dequantize.wgsl`'s uniform parameters.
    DequantizeParams { n_elements: u32, pad0: u32, pad1: u32, pad2: u32 }
}

bindings! {
    /// `wgsl/dequantize.wgsl`'s bindings (the fp modes, which have no biases, bind the scales
    /// twice).
    DequantizeBindings {
        w_q: 1 Read "array<u32>",
        scales: 2 Read "array<u32>",
        biases: 3 Read "array<u32>",
        out: 4 ReadWrite "array<u32>",
    }
}

impl DequantizeKey {
    /// The kernel of an fp mode into `out_dtype`.
    pub fn fp(mode: Mode, out_dtype: DType) -> DequantizeKey {
        let (group_size, bits) = mode.defaults();
        DequantizeKey { mode, scale_dtype: DType::U8, out_dtype, bits, group_size }
    }
}

impl fmt::Display for DequantizeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mode.is_fp() {
            return write!(f, "dequantize_{}_to_{}", self.mode, self.out_dtype.short_name());
        }
        write!(
            f,
            "dequantize_{}_to_{}_gs{}_b{}",
            self.scale_dtype.short_name(),
            self.out_dtype.short_name(),
            self.group_size,
            self.bits
        )
    }
}

impl Family for DequantizeKey {
    fn op(&self) -> &'static str {
        "dequantize"
    }

    fn body(&self) -> &'static str {
        include_str!("../../wgsl/dequantize.wgsl")
    }

    fn prelude(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("MODE", self.mode.wgsl_id()),
            ("BITS", self.bits),
            ("GROUP_SIZE", self.group_size),
            ("SCALE_DTYPE", self.scale_dtype.wgsl_id()),
            ("OUT_DTYPE", self.out_dtype.wgsl_id()),
        ]
    }

    fn snippets(&self) -> Vec<Snippet> {
        vec![MODES, CODES, FP_FORMATS]
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("WG_SIZE", ELEMENTWISE_WG_SIZE)]
    }

    fn workgroup(&self) -> ResourceUsage {
        ResourceUsage { workgroup_memory: 0, invocations: ELEMENTWISE_WG_SIZE.into() }
    }

    fn params(&self) -> ParamsLayout {
        DequantizeParams::LAYOUT
    }

    fn bindings(&self) -> &'static [Binding] {
        DequantizeBindings::<()>::TABLE
    }

    fn keys() -> Vec<Self> {
        let mut keys = Vec::new();
        for bits in crate::params::SUPPORTED_BITS {
            for group_size in crate::params::SUPPORTED_GROUP_SIZES {
                for scale_dtype in FLOATS {
                    keys.extend(FLOATS.map(|out_dtype| DequantizeKey {
                        mode: Mode::Affine,
                        scale_dtype,
                        out_dtype,
                        bits,
                        group_size,
                    }));
                }
            }
        }
        for mode in FP_MODES {
            keys.extend(FLOATS.map(|out_dtype| DequantizeKey::fp(mode, out_dtype)));
        }
        keys
    }
}
