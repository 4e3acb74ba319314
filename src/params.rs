//! Quantization parameters: MLX's `group_size`, `bits` and `mode`.
//!
//! Mirrors `quantization_params_from_mode` and the affine checks of `affine_quantize` in
//! `mlx/ops.cpp`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The quantization mode (MLX's `mode=` string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `scale * q + bias` per group, any of 1–6 or 8 bits.
    #[default]
    Affine,
    /// E2M1 elements with an E8M0 scale per 32.
    Mxfp4,
    /// E4M3 elements with an E8M0 scale per 32.
    Mxfp8,
    /// E2M1 elements with an E4M3 scale per 16 (no global scale yet).
    Nvfp4,
}

impl Mode {
    /// MLX's default `(group_size, bits)` for the mode.
    pub const fn defaults(self) -> (u32, u32) {
        match self {
            Mode::Affine => (64, 4),
            Mode::Mxfp4 => (32, 4),
            Mode::Mxfp8 => (32, 8),
            Mode::Nvfp4 => (16, 4),
        }
    }

    /// Whether the mode is one of the floating-point formats (no biases, `uint8` scales).
    pub const fn is_fp(self) -> bool {
        !matches!(self, Mode::Affine)
    }

    /// The id the WGSL kernels use for this mode (`wgsl/common/fp_formats.wgsl`).
    pub(crate) const fn wgsl_id(self) -> u32 {
        match self {
            Mode::Affine => 0,
            Mode::Mxfp4 => 1,
            Mode::Mxfp8 => 2,
            Mode::Nvfp4 => 3,
        }
    }

    /// The mode's MLX name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Affine => "affine",
            Mode::Mxfp4 => "mxfp4",
            Mode::Mxfp8 => "mxfp8",
            Mode::Nvfp4 => "nvfp4",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;

    /// Exact, case-sensitive, as MLX's `string_to_quantization_mode`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "affine" => Ok(Mode::Affine),
            "mxfp4" => Ok(Mode::Mxfp4),
            "mxfp8" => Ok(Mode::Mxfp8),
            "nvfp4" => Ok(Mode::Nvfp4),
            other => Err(Error::InvalidMode(other.to_string())),
        }
    }
}

/// The floating-point modes.
pub const FP_MODES: [Mode; 3] = [Mode::Mxfp4, Mode::Mxfp8, Mode::Nvfp4];

/// Affine bit widths MLX 0.32.4 accepts.
pub const SUPPORTED_BITS: [u32; 7] = [1, 2, 3, 4, 5, 6, 8];
/// Affine group sizes MLX accepts.
pub const SUPPORTED_GROUP_SIZES: [u32; 3] = [32, 64, 128];

/// How a tensor is quantized. `Default` is MLX's: affine, group size 64, 4 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuantParams {
    /// Consecutive elements of the last axis that share one scale and bias.
    pub group_size: u32,
    /// Bits per quantized element.
    pub bits: u32,
    /// The quantization mode.
    pub mode: Mode,
}

impl Default for QuantParams {
    fn default() -> Self {
        QuantParams::for_mode(Mode::Affine)
    }
}

impl QuantParams {
    /// Affine parameters with the given group size and bits (checked when used).
    pub const fn affine(group_size: u32, bits: u32) -> Self {
        QuantParams { group_size, bits, mode: Mode::Affine }
    }

    /// The mode with MLX's default group size and bits.
    pub const fn for_mode(mode: Mode) -> Self {
        let (group_size, bits) = mode.defaults();
        QuantParams { group_size, bits, mode }
    }

    /// Replaces the group size.
    pub const fn with_group_size(mut self, group_size: u32) -> Self {
        self.group_size = group_size;
        self
    }

    /// Replaces the bit width.
    pub const fn with_bits(mut self, bits: u32) -> Self {
        self.bits = bits;
        self
    }

    /// Quantized elements per packed `u32` word, when whole (1, 2, 4 or 8 bits).
    pub const fn elements_per_word(self) -> Option<u32> {
        if 32 % self.bits == 0 {
            Some(32 / self.bits)
        } else {
            None
        }
    }

    /// Elements held by a row of `words` packed `u32` words (`words * 32 / bits`), computed wide
    /// since `words * 32` may overflow where the element count does not; `None` when the count
    /// itself does not fit (or `bits` is zero).
    pub const fn unpacked_width(self, words: usize) -> Option<usize> {
        if self.bits == 0 {
            return None;
        }
        let k = words as u128 * 32 / self.bits as u128;
        if k > usize::MAX as u128 {
            None
        } else {
            Some(k as usize)
        }
    }

    /// Packed `u32` words holding a row of `k` elements (`k * bits / 32`; computed wide, since
    /// an empty tensor's `k` may be near `usize::MAX`, and the result is at most `k`).
    pub const fn packed_width(self, k: usize) -> usize {
        (k as u128 * self.bits as u128 / 32) as usize
    }

    /// For the parts of wgquant that implement only the affine mode (quantized matmuls, layers,
    /// checkpoints, the CLI): a typed "not yet supported" for the fp modes.
    ///
    /// # Errors
    /// [`Error::UnsupportedMode`] for mxfp4, mxfp8 and nvfp4.
    pub fn require_affine(self, op: &'static str) -> Result<()> {
        match self.mode {
            Mode::Affine => Ok(()),
            mode => Err(Error::UnsupportedMode { op, mode }),
        }
    }

    /// Group-size and bits whitelist (MLX's `affine_quantize`).
    pub(crate) fn check_affine(self, op: &'static str) -> Result<()> {
        if !SUPPORTED_GROUP_SIZES.contains(&self.group_size) {
            return Err(Error::UnsupportedGroupSize { op, group_size: self.group_size });
        }
        if !SUPPORTED_BITS.contains(&self.bits) {
            return Err(Error::UnsupportedBits { op, bits: self.bits });
        }
        Ok(())
    }

    /// The fp modes' one group size and bit width (MLX's `fp_quantize`), group size first.
    fn check_fp(self, op: &'static str) -> Result<()> {
        let (group_size, bits) = self.mode.defaults();
        if self.group_size != group_size {
            return Err(Error::FpGroupSize { op, mode: self.mode, expected: group_size, got: self.group_size });
        }
        if self.bits != bits {
            return Err(Error::FpBits { op, mode: self.mode, expected: bits, got: self.bits });
        }
        Ok(())
    }

    /// All checks that do not depend on a tensor, MLX's for the mode: the affine whitelist of
    /// group sizes and bits, or the fp modes' one group size and bit width. Used where a
    /// tensor's shape has already been validated (`from_parts`, layers).
    pub fn validate(self, op: &'static str) -> Result<()> {
        if self.mode.is_fp() {
            self.check_fp(op)
        } else {
            self.check_affine(op)
        }
    }
}

impl fmt::Display for QuantParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group_size={}, bits={}, mode={}", self.group_size, self.bits, self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mlx_defaults() {
        assert_eq!(QuantParams::default(), QuantParams::affine(64, 4));
        assert_eq!(QuantParams::for_mode(Mode::Nvfp4), QuantParams { group_size: 16, bits: 4, mode: Mode::Nvfp4 });
    }

    #[test]
    fn fp_modes_take_one_group_size_and_bit_width() {
        for mode in [Mode::Mxfp4, Mode::Mxfp8, Mode::Nvfp4] {
            assert!(QuantParams::for_mode(mode).validate("quantize").is_ok(), "{mode}");
        }
        let err = QuantParams::for_mode(Mode::Mxfp4).with_group_size(64).with_bits(3).validate("quantize");
        assert_eq!(err.unwrap_err().to_string(), "[quantize] mxfp4 quantization requires group size 32 but got 64.");
        let err = QuantParams::for_mode(Mode::Mxfp8).with_bits(4).validate("dequantize");
        assert_eq!(err.unwrap_err().to_string(), "[dequantize] mxfp8 quantization requires bits to be 8 but got 4.");
    }

    #[test]
    fn mode_strings_are_exact() {
        assert_eq!("mxfp8".parse::<Mode>().unwrap(), Mode::Mxfp8);
        let err = "Affine".parse::<Mode>().unwrap_err();
        assert_eq!(err.to_string(), "Invalid quantization mode 'Affine'.");
    }
}
