//! Element types of [`Tensor`](crate::Tensor)s and how they sit in GPU memory.
//!
//! Every tensor lives in a buffer of `u32` words: f32 and u32 one element a word, f16 and bf16
//! two (element `2k` in the low half), u8 four (little-endian bytes). Kernels read the words and
//! convert in WGSL, so nothing needs `SHADER_F16`.

use std::fmt;

use half::{bf16, f16};

/// The element type of a tensor. `Display` uses MLX's names (`float16`, `uint32`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
    /// 32-bit unsigned integer; packed quantized weights.
    U32,
    /// 8-bit unsigned integer.
    U8,
}

impl DType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// Whether MLX counts this as a real floating type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The id the WGSL kernels use for this type (`wgsl/common/dtype.wgsl`).
    pub(crate) const fn wgsl_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::U32 => 3,
            DType::U8 => 4,
        }
    }

    /// Short name used in kernel labels (`f16`, `bf16`, ...).
    pub(crate) const fn short_name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }

    /// MLX's type promotion for two floating types: equal types stay, f16 with bf16 gives f32,
    /// anything with f32 gives f32.
    pub fn promote(self, other: DType) -> DType {
        match (self, other) {
            (a, b) if a == b => a,
            (DType::F16, DType::BF16) | (DType::BF16, DType::F16) => DType::F32,
            (DType::F32, _) | (_, DType::F32) => DType::F32,
            (a, b) if a.is_float() && !b.is_float() => a,
            (a, b) if b.is_float() && !a.is_float() => b,
            _ => DType::U32,
        }
    }

    /// Rounds an f32 to this floating type (round to nearest, ties to even) and back.
    pub(crate) fn round_f32(self, x: f32) -> f32 {
        match self {
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::BF16 => bf16::from_f32(x).to_f32(),
            _ => x,
        }
    }

    /// Rounds an f64 to this floating type (round to nearest, ties to even) once, as an f32.
    pub(crate) fn round_f64(self, x: f64) -> f32 {
        match self {
            DType::F16 => f16::from_f64(x).to_f32(),
            DType::BF16 => bf16::from_f64(x).to_f32(),
            _ => x as f32,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::U32 => "uint32",
            DType::U8 => "uint8",
        })
    }
}

mod sealed {
    /// Only the types whose [`DType`](super::DType) they are may be elements.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for u32 {}
    impl Sealed for u8 {}
}

/// A Rust type that can be copied into and out of a [`Tensor`](crate::Tensor): `f32`, [`f16`],
/// [`bf16`], `u32` and `u8` (sealed: the list is wgquant's).
pub trait Element: sealed::Sealed + bytemuck::Pod + Send + Sync + 'static {
    /// The tensor dtype this type maps to.
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

/// Host-side floating elements: the three types quantization accepts.
pub trait FloatElement: Element {
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Narrows from f32, rounding to nearest even.
    fn from_f32(x: f32) -> Self;
}

impl FloatElement for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}
impl FloatElement for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}
impl FloatElement for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_follows_mlx() {
        assert_eq!(DType::F16.promote(DType::BF16), DType::F32);
        assert_eq!(DType::F16.promote(DType::F16), DType::F16);
        assert_eq!(DType::BF16.promote(DType::F32), DType::F32);
        assert_eq!(DType::U32.promote(DType::F16), DType::F16);
    }

    #[test]
    fn names_are_mlx_names() {
        assert_eq!(DType::BF16.to_string(), "bfloat16");
        assert_eq!(DType::U32.to_string(), "uint32");
    }
}
