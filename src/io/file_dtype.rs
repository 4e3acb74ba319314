//! Element types of tensors in safetensors files: every whole-byte type the format names.
//!
//! A checkpoint holds more types than the GPU computes with ([`DType`]): `int64` position ids,
//! `bool` masks, `float64` constants, fp8 weights. mlx-lm quantizes or casts only floating
//! weights and carries every other tensor as it is; wgquant does the same, byte for byte.
//!
//! What MLX 0.32.4 does with the types it lacks decides the rest (checked with `mx.load`):
//! - `F8_E4M3` loads as `uint8`, `F8_E5M2`, `F8_E8M0`, `F64` and `C64` fail to load, so none
//!   of them is a weight mlx-lm would quantize or cast. wgquant carries them unchanged, keeping
//!   their safetensors name (MLX reads an `F8_E4M3` tensor written so as the same `uint8` bytes).
//! - `float64` is floating in MLX (`mx.issubdtype(mx.float64, mx.floating)`), so a target
//!   dtype casts it like any float; it is never quantized, since no GPU kernel reads it.

use std::fmt;

use crate::dtype::DType;

/// The element type of a tensor in a safetensors file. `Display` uses MLX's names where MLX
/// has the type (`int64`, `bool`), the safetensors name otherwise (`F8_E4M3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileDType {
    /// `BOOL`: one byte, 0 or 1.
    Bool,
    /// `U8`.
    U8,
    /// `I8`.
    I8,
    /// `F8_E5M2`.
    F8E5M2,
    /// `F8_E4M3`.
    F8E4M3,
    /// `F8_E8M0`: the power-of-two scales of the OCP microscaling formats.
    F8E8M0,
    /// `I16`.
    I16,
    /// `U16`.
    U16,
    /// `F16`.
    F16,
    /// `BF16`.
    BF16,
    /// `I32`.
    I32,
    /// `U32`: packed quantized weights.
    U32,
    /// `F32`.
    F32,
    /// `C64`: complex64, two f32.
    C64,
    /// `F64`.
    F64,
    /// `I64`.
    I64,
    /// `U64`.
    U64,
}

impl FileDType {
    /// Every type, in the safetensors crate's order (by alignment, then name).
    pub const ALL: [FileDType; 17] = [
        FileDType::Bool,
        FileDType::U8,
        FileDType::I8,
        FileDType::F8E5M2,
        FileDType::F8E4M3,
        FileDType::F8E8M0,
        FileDType::I16,
        FileDType::U16,
        FileDType::F16,
        FileDType::BF16,
        FileDType::I32,
        FileDType::U32,
        FileDType::F32,
        FileDType::C64,
        FileDType::F64,
        FileDType::I64,
        FileDType::U64,
    ];

    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            FileDType::Bool
            | FileDType::U8
            | FileDType::I8
            | FileDType::F8E5M2
            | FileDType::F8E4M3
            | FileDType::F8E8M0 => 1,
            FileDType::I16 | FileDType::U16 | FileDType::F16 | FileDType::BF16 => 2,
            FileDType::I32 | FileDType::U32 | FileDType::F32 => 4,
            FileDType::C64 | FileDType::F64 | FileDType::I64 | FileDType::U64 => 8,
        }
    }

    /// Whether MLX counts this as a real floating type, i.e. whether a target dtype casts it
    /// (`float16`, `bfloat16`, `float32`, `float64`; MLX has no fp8 type).
    pub const fn is_float(self) -> bool {
        matches!(self, FileDType::F16 | FileDType::BF16 | FileDType::F32 | FileDType::F64)
    }

    /// The GPU dtype holding this type, for the five types tensors on the GPU have.
    pub const fn to_dtype(self) -> Option<DType> {
        match self {
            FileDType::F32 => Some(DType::F32),
            FileDType::F16 => Some(DType::F16),
            FileDType::BF16 => Some(DType::BF16),
            FileDType::U32 => Some(DType::U32),
            FileDType::U8 => Some(DType::U8),
            _ => None,
        }
    }

    /// The name in a safetensors header (`"I64"`).
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            FileDType::Bool => "BOOL",
            FileDType::U8 => "U8",
            FileDType::I8 => "I8",
            FileDType::F8E5M2 => "F8_E5M2",
            FileDType::F8E4M3 => "F8_E4M3",
            FileDType::F8E8M0 => "F8_E8M0",
            FileDType::I16 => "I16",
            FileDType::U16 => "U16",
            FileDType::F16 => "F16",
            FileDType::BF16 => "BF16",
            FileDType::I32 => "I32",
            FileDType::U32 => "U32",
            FileDType::F32 => "F32",
            FileDType::C64 => "C64",
            FileDType::F64 => "F64",
            FileDType::I64 => "I64",
            FileDType::U64 => "U64",
        }
    }

    /// The type a safetensors header names, or `None` for names wgquant does not carry (the
    /// sub-byte `F4`, `F6_E2M3`, `F6_E3M2`, whose sizes are not whole bytes, and unknown names).
    pub fn from_safetensors_name(name: &str) -> Option<FileDType> {
        FileDType::ALL.into_iter().find(|d| d.safetensors_name() == name)
    }
}

impl From<DType> for FileDType {
    fn from(dtype: DType) -> FileDType {
        match dtype {
            DType::F32 => FileDType::F32,
            DType::F16 => FileDType::F16,
            DType::BF16 => FileDType::BF16,
            DType::U32 => FileDType::U32,
            DType::U8 => FileDType::U8,
        }
    }
}

impl PartialEq<DType> for FileDType {
    fn eq(&self, other: &DType) -> bool {
        *self == FileDType::from(*other)
    }
}

impl PartialEq<FileDType> for DType {
    fn eq(&self, other: &FileDType) -> bool {
        FileDType::from(*self) == *other
    }
}

impl fmt::Display for FileDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dtype) = self.to_dtype() {
            return dtype.fmt(f);
        }
        f.write_str(match self {
            FileDType::Bool => "bool",
            FileDType::I8 => "int8",
            FileDType::I16 => "int16",
            FileDType::U16 => "uint16",
            FileDType::I32 => "int32",
            FileDType::C64 => "complex64",
            FileDType::F64 => "float64",
            FileDType::I64 => "int64",
            FileDType::U64 => "uint64",
            other => other.safetensors_name(),
        })
    }
}
