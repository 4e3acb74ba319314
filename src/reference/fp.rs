//! CPU twins of `quantize` and `dequantize` in the fp modes (mxfp4, mxfp8, nvfp4), as MLX
//! 0.32.4's CPU computes them: MLX has no native CPU kernel for these modes and runs the
//! ops-level graph of `fp_quantize` / `fp_dequantize` in `mlx/ops.cpp`, each operation in the
//! input's dtype T (half types compute in f32 and round to T). Checked bit for bit against real
//! MLX by `tests/mlx_parity.rs` (`tests/fixtures/gen_fp_fixtures.py`).
//!
//! Quantize, per group of `group_size` elements of a row:
//! - `amax = max |w|` (a NaN anywhere makes it NaN), `x = round_T(amax / m)` with `m` the
//!   element format's largest value (6 for E2M1, 448 for E4M3).
//! - mxfp4 / mxfp8: the scale is `2^e`, `e` the smallest integer with `2^e >= x` (0 for a zero
//!   group), stored as the byte `e + 127` wrapped to 8 bits (an f32 group of subnormals gets
//!   `e < -127`, and MLX's conversion wraps: `e = -132` is stored as 251, while its elements are
//!   still divided by `2^-132`). A NaN or infinite `x` stores byte 128 for f32 input and 0 for
//!   f16 and bf16, and its elements are divided by zero.
//! - nvfp4: the scale is the E4M3 byte of `x` (round to nearest even, saturating at 448, NaN to
//!   448); a scale of zero makes every code 0.
//! - Each element becomes `y = round_T(w / scale)`, then the nearest E2M1 value (MLX's argmin
//!   over the 16-entry table of `round_T(|y - v|)`: ties go to the lowest table index, so
//!   midpoints round to the smaller magnitude, a tiny negative to +0, and a huge or infinite `y`,
//!   whose distances are all equal, to +0) or the E4M3 byte of `y`.
//!
//! Dequantize: `round_O(element * scale)` in the output dtype O, the scale first rounded to O
//! (an E8M0 scale of `2^e` below f16's range is 0 in f16).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::params::{Mode, QuantParams};

use super::quantize::{group_size_of, pack, unpack};

/// E2M1 values by code (`sign << 3 | magnitude index`), in MLX's table order.
pub const E2M1_VALUES: [f32; 16] =
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Host-side result of [`fp_quantize`]: packed codes and one scale byte per group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFpQuantized {
    /// Packed codes, `k * bits / 32` words per row.
    pub weight: Vec<u32>,
    /// One E8M0 (mxfp4, mxfp8) or E4M3 (nvfp4) scale byte per group.
    pub scales: Vec<u8>,
}

/// `x` rounded to `dtype` as MLX rounds: to nearest, ties to even, with MLX's bfloat16 turning
/// every NaN into the positive quiet NaN (f16 and f32 keep a NaN's sign).
pub fn mlx_round(dtype: DType, x: f32) -> f32 {
    if dtype == DType::BF16 && x.is_nan() {
        return f32::NAN;
    }
    dtype.round_f32(x)
}

/// The E4M3 ("FN") byte of `y`: round to nearest even, saturating: NaN and every magnitude from
/// 464 up (including infinity) give 448 (0x7E), with `y`'s sign bit (MLX's `ToFP8`, PyTorch's
/// algorithm).
pub fn e4m3_code(y: f32) -> u8 {
    let bits = y.to_bits();
    let sign = bits & 0x8000_0000;
    let magnitude = bits ^ sign;
    let code = if magnitude >= 543 << 21 {
        0x7e
    } else if magnitude < 121 << 23 {
        // Below 2^-6, E4M3's subnormals: units of 2^-9 (exact in f64), rounded half to even.
        (f64::from(f32::from_bits(magnitude)) * 512.0).round_ties_even() as u32
    } else {
        // Rebias the exponent (127 to 7) and round the 20 dropped mantissa bits half to even.
        let odd = (magnitude >> 20) & 1;
        (magnitude.wrapping_add((7u32.wrapping_sub(127) << 23).wrapping_add(0x7ffff)) + odd) >> 20
    };
    (code | (sign >> 24)) as u8
}

/// The value of an E4M3 byte (0x7F and 0xFF are NaN; there is no infinity).
pub fn e4m3_value(code: u8) -> f32 {
    let magnitude = code & 0x7f;
    let value = if magnitude == 0x7f {
        f32::NAN
    } else {
        let (exponent, mantissa) = (i32::from(magnitude >> 3), f32::from(magnitude & 7));
        if exponent == 0 {
            mantissa * 2f32.powi(-9)
        } else {
            (8.0 + mantissa) * 2f32.powi(exponent - 10)
        }
    };
    if code & 0x80 != 0 {
        -value
    } else {
        value
    }
}

/// The value of an E8M0 byte, `2^(byte - 127)` in f32: byte 0 is the subnormal 2^-127 and
/// byte 255 overflows to infinity, as MLX's `power(2, byte - 127)` gives them.
pub fn e8m0_value(byte: u8) -> f32 {
    if byte == 0 {
        f32::from_bits(0x0040_0000)
    } else {
        f32::from_bits(u32::from(byte) << 23)
    }
}

/// The E2M1 code MLX's CPU picks for `y` (a value of `dtype`): the argmin over the table of
/// `round_dtype(|y - v|)`, the first index among equals. NaN and infinite `y` give 0.
pub fn e2m1_code(y: f32, dtype: DType) -> u32 {
    let distance = |v: f32| mlx_round(dtype, (y - v).abs());
    let mut best = (0, distance(E2M1_VALUES[0]));
    for (code, &v) in E2M1_VALUES.iter().enumerate().skip(1) {
        let d = distance(v);
        if d < best.1 {
            best = (code as u32, d);
        }
    }
    best.0
}

/// `2^e` in f32, exactly, for `e` in [-149, 127].
fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1 << (e + 149))
    }
}

/// The smallest `e` with `2^e >= x`, for a finite `x > 0`, from its bits (exact; a rounded
/// `log2` would land on the power of two just below for `x` a hair above it).
fn ceil_log2(x: f32) -> i32 {
    let bits = x.to_bits();
    let (exponent, mantissa) = ((bits >> 23) as i32, bits & 0x7f_ffff);
    if exponent == 0 {
        // Subnormal: mantissa · 2^-149; bits needed by mantissa - 1 is ceil(log2(mantissa)).
        (32 - (mantissa - 1).leading_zeros()) as i32 - 149
    } else {
        exponent - 127 + i32::from(mantissa != 0)
    }
}

/// `w / 0` as MLX's CPU computes it on x86-64, where MLX's Linux wheels run: a NaN `w` stays
/// itself, `±0 / 0` is the processor's default NaN (negative), anything else is infinite with
/// `w`'s sign. (Rust's own `0.0 / 0.0` may be folded to a positive NaN at compile time.)
fn divide_by_zero(w: f32) -> f32 {
    if w.is_nan() {
        w
    } else if w == 0.0 {
        f32::from_bits(0xffc0_0000)
    } else {
        f32::INFINITY.copysign(w)
    }
}

/// The scale byte of one group of `mode` with values of `dtype`, and what its elements are
/// divided by (0 where MLX divides by zero: a non-finite MX group, an nvfp4 scale of zero).
pub fn fp_group_scale(group: &[f32], mode: Mode, dtype: DType) -> (u8, f32) {
    let amax = group.iter().fold(0.0f32, |m, &v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) });
    let largest = if mode == Mode::Mxfp8 { 448.0 } else { 6.0 };
    let x = mlx_round(dtype, amax / largest);
    if mode == Mode::Nvfp4 {
        let byte = e4m3_code(x);
        return (byte, e4m3_value(byte));
    }
    if !x.is_finite() {
        // MLX's conversion of the non-finite exponent to a byte: 128 from f32, 0 from f16 and
        // bf16 (what its CPU gives; the fixtures record both).
        return (if dtype == DType::F32 { 128 } else { 0 }, 0.0);
    }
    let e = if x == 0.0 { 0 } else { ceil_log2(x) };
    // `2^e` is exact in `dtype` (x >= the smallest subnormal of `dtype`), so it needs no rounding.
    ((e + 127).rem_euclid(256) as u8, pow2(e))
}

/// The code of `w` in a group whose elements are divided by `divisor` ([`fp_group_scale`]).
pub fn fp_quantize_value(w: f32, divisor: f32, mode: Mode, dtype: DType) -> u32 {
    let y = mlx_round(dtype, if divisor == 0.0 { divide_by_zero(w) } else { w / divisor });
    if mode == Mode::Mxfp8 {
        u32::from(e4m3_code(y))
    } else {
        e2m1_code(y, dtype)
    }
}

/// `mx.quantize` in an fp mode on rows of `k` values of `dtype` (MLX 0.32.4's CPU semantics).
///
/// # Errors
/// An affine mode, `k` not divisible by the group size, parameters the mode does not take.
pub fn fp_quantize(w: &[f32], k: usize, params: QuantParams, dtype: DType) -> Result<HostFpQuantized> {
    if !params.mode.is_fp() {
        return Err(Error::InvalidOption {
            op: "reference::fp_quantize",
            option: "mode",
            value: params.mode.to_string(),
            allowed: "mxfp4, mxfp8, nvfp4 (affine: reference::quantize)".into(),
        });
    }
    let gs = group_size_of(w, k, params)?;
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / gs);
    for group in w.chunks(gs) {
        let (byte, divisor) = fp_group_scale(group, params.mode, dtype);
        codes.extend(group.iter().map(|&v| fp_quantize_value(v, divisor, params.mode, dtype)));
        scales.push(byte);
    }
    Ok(HostFpQuantized { weight: pack(&codes, params.bits), scales })
}

/// One dequantized value in dtype `out`: `round_out(element * round_out(scale))`.
pub fn fp_dequantize_value(code: u32, scale: u8, mode: Mode, out: DType) -> f32 {
    let element = if mode == Mode::Mxfp8 { e4m3_value(code as u8) } else { E2M1_VALUES[(code & 15) as usize] };
    let scale = if mode == Mode::Nvfp4 { e4m3_value(scale) } else { e8m0_value(scale) };
    // Both factors are exact in `out` and in f32, and so is their product (at most 8
    // significant bits, never below f32's subnormals): one rounding, to `out`.
    mlx_round(out, element * mlx_round(out, scale))
}

/// `mx.dequantize` in an fp mode: `k` values per row from packed `weight` and one scale byte
/// per group, in `out_dtype`.
pub fn fp_dequantize(weight: &[u32], scales: &[u8], params: QuantParams, out_dtype: DType) -> Vec<f32> {
    let n = weight.len() * 32 / params.bits as usize;
    (0..n)
        .map(|i| {
            let scale = scales[i / params.group_size as usize];
            fp_dequantize_value(unpack(weight, params.bits, i), scale, params.mode, out_dtype)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_matches_mlx_examples() {
        // MLX (spec §1.7): 1.0625 -> 0x38, 1.1875 -> 0x3A, 300 -> 288 (0x79), -0.001 -> 0x81.
        assert_eq!(e4m3_code(1.0625), 0x38);
        assert_eq!(e4m3_code(1.1875), 0x3a);
        assert_eq!(e4m3_value(e4m3_code(300.0)), 288.0);
        assert_eq!(e4m3_code(-0.001), 0x81);
        // nvfp4 scales: amax 18 -> 0x44 (3.0), amax 1 -> 0x23, amax 1000 -> 0x72 (160).
        assert_eq!(e4m3_code(18.0 / 6.0), 0x44);
        assert_eq!(e4m3_code(1.0 / 6.0), 0x23);
        assert_eq!(e4m3_value(0x72), 160.0);
        assert_eq!(e4m3_code(f32::INFINITY), 0x7e);
        assert_eq!(e4m3_code(-1000.0), 0xfe);
        assert_eq!(e4m3_code(f32::NAN), 0x7e);
        for code in 0..=255u8 {
            let v = e4m3_value(code);
            if !v.is_nan() {
                assert_eq!(e4m3_code(v), code, "{code:#x} round-trips");
            }
        }
    }

    #[test]
    fn e2m1_ties_go_to_the_lower_table_index() {
        // MLX's CPU (spec §1.7): 0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3, -0.75 -> -0.5, 2.5 -> 2, 5 -> 4,
        // tiny negatives -> +0.
        let value = |y: f32| E2M1_VALUES[e2m1_code(y, DType::F32) as usize];
        for (y, v) in [(0.75, 0.5), (1.75, 1.5), (3.5, 3.0), (-0.75, -0.5), (2.5, 2.0), (5.0, 4.0), (7.0, 6.0)] {
            assert_eq!(value(y), v, "{y}");
        }
        assert_eq!(e2m1_code(-1e-3, DType::F32), 0);
        assert_eq!(e2m1_code(f32::NAN, DType::F32), 0);
        assert_eq!(e2m1_code(f32::NEG_INFINITY, DType::F32), 0);
        // So large that every distance rounds to the same f32: the first entry, +0.
        assert_eq!(e2m1_code(1e30, DType::F32), 0);
    }

    #[test]
    fn mx_scales_round_up_to_a_power_of_two() {
        // MLX: amax 6 -> byte 127; 7 and 12 -> 128; zero group -> 127.
        for (amax, byte) in [(6.0, 127), (7.0, 128), (12.0, 128), (0.0, 127)] {
            assert_eq!(fp_group_scale(&[amax; 32], Mode::Mxfp4, DType::F32).0, byte, "{amax}");
        }
        // A hair above a power of two takes the next one.
        let above = f32::from_bits(6.0f32.to_bits() + 1);
        assert_eq!(fp_group_scale(&[above], Mode::Mxfp4, DType::F32).0, 128);
        // f32 subnormals wrap below byte 0: -132 + 127 = -5 -> 251.
        assert_eq!(fp_group_scale(&[1e-39], Mode::Mxfp4, DType::F32), (251, pow2(-132)));
    }

    #[test]
    fn nan_groups_divide_by_zero() {
        let group = [0.0, 0.1, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        assert_eq!(fp_group_scale(&group, Mode::Mxfp8, DType::F32), (128, 0.0));
        assert_eq!(fp_group_scale(&group, Mode::Mxfp8, DType::F16), (0, 0.0));
        let codes: Vec<u32> = group.iter().map(|&w| fp_quantize_value(w, 0.0, Mode::Mxfp8, DType::F32)).collect();
        assert_eq!(codes, [0xfe, 0x7e, 0xfe, 0x7e, 0x7e, 0xfe]);
        // bfloat16 makes every NaN positive.
        assert_eq!(fp_quantize_value(0.0, 0.0, Mode::Mxfp8, DType::BF16), 0x7e);
    }

    #[test]
    fn dequantize_rounds_the_scale_to_the_output_first() {
        // 448 · 2^-26: an f32 (and bf16) number, but 2^-26 is 0 in f16.
        let code = u32::from(e4m3_code(448.0));
        assert_eq!(fp_dequantize_value(code, 101, Mode::Mxfp8, DType::F32), 448.0 * 2f32.powi(-26));
        assert_eq!(fp_dequantize_value(code, 101, Mode::Mxfp8, DType::F16), 0.0);
        assert_eq!(fp_dequantize_value(7, 255, Mode::Mxfp4, DType::BF16), f32::INFINITY);
    }
}
