//! CPU twins of `quantize` and `dequantize` (affine, MLX's CPU semantics).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::params::QuantParams;

/// Host-side result of [`quantize`]: packed words, and scales and biases already rounded to the
/// input dtype (held as the f32 values of those dtype numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct HostQuantized {
    /// Packed codes, `k * bits / 32` words per row.
    pub weight: Vec<u32>,
    /// One scale per group.
    pub scales: Vec<f32>,
    /// One bias per group.
    pub biases: Vec<f32>,
}

/// The scale and bias of one group in f32, before rounding to the storage dtype
/// (`mlx/backend/cpu/quantized.cpp`).
pub fn group_scale_bias(group: &[f32], bits: u32) -> (f32, f32) {
    const EPS: f32 = 1e-7;
    let n_bins = ((1u32 << bits) - 1) as f32;
    // std::min / std::max: NaN never replaces the running value.
    let (mut w_min, mut w_max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in group {
        if v < w_min {
            w_min = v;
        }
        if v > w_max {
            w_max = v;
        }
    }
    let at_least_eps = |x: f32| if x < EPS { EPS } else { x };
    if bits == 1 {
        // MLX 0.32.4's 1-bit rule: no edge flip, the minimum is the bias.
        return (at_least_eps(w_max - w_min), w_min);
    }
    let step = at_least_eps((w_max - w_min) / n_bins);
    // The edge flip: the extreme with the larger magnitude becomes the bias (exact), and the
    // scale takes the sign that maps code 0 onto it.
    let min_is_edge = w_min.abs() > w_max.abs();
    let scale = if min_is_edge { step } else { -step };
    let edge = if min_is_edge { w_min } else { w_max };
    let q0 = (edge / scale).round_ties_even();
    if q0 != 0.0 {
        (edge / q0, edge)
    } else {
        (scale, 0.0)
    }
}

/// The group size of `params` once rows of `k` elements of `w` split into whole groups and
/// `params` pass MLX's checks (both quantizers' shared preconditions, in MLX's order).
pub(super) fn group_size_of(w: &[f32], k: usize, params: QuantParams) -> Result<usize> {
    let op = "quantize";
    let gs = params.group_size as usize;
    if gs == 0 || k == 0 || k % gs != 0 || w.len() % k != 0 {
        return Err(Error::NotDivisibleByGroup {
            op,
            group_size: params.group_size,
            shape: vec![w.len() / k.max(1), k],
        });
    }
    params.validate(op)?;
    Ok(gs)
}

/// The code of `v` in a group with f32 `scale` and `bias` (NaN gives 0, as MLX does in practice).
pub fn quantize_value(v: f32, scale: f32, bias: f32, bits: u32) -> u32 {
    let q = ((v - bias) / scale).round_ties_even();
    if q.is_nan() {
        return 0;
    }
    q.clamp(0.0, ((1u32 << bits) - 1) as f32) as u32
}

/// Packs codes of `bits` bits into an LSB-first bitstream of `u32` words, as MLX packs them. `codes`
/// must fill whole words (`codes.len() * bits` divisible by 32).
pub fn pack(codes: &[u32], bits: u32) -> Vec<u32> {
    let mut words = vec![0u32; codes.len() * bits as usize / 32];
    for (i, &code) in codes.iter().enumerate() {
        let bit = i * bits as usize;
        let (word, offset) = (bit / 32, (bit % 32) as u32);
        words[word] |= code << offset;
        if offset + bits > 32 {
            words[word + 1] |= code >> (32 - offset);
        }
    }
    words
}

/// Code `i` of an LSB-first bitstream.
pub fn unpack(words: &[u32], bits: u32, i: usize) -> u32 {
    let bit = i * bits as usize;
    let (word, offset) = (bit / 32, (bit % 32) as u32);
    let mut code = words[word] >> offset;
    if offset + bits > 32 {
        code |= words[word + 1] << (32 - offset);
    }
    code & ((1u32 << bits) - 1)
}

/// `mx.quantize` on rows of `k` values (affine, MLX CPU semantics). Scales and biases are
/// rounded to `dtype`, the dtype `w` had.
///
/// # Errors
/// An fp mode (its twin is [`super::fp_quantize`]), `k` not divisible by the group size,
/// unsupported parameters.
pub fn quantize(w: &[f32], k: usize, params: QuantParams, dtype: DType) -> Result<HostQuantized> {
    if params.mode.is_fp() {
        return Err(Error::InvalidOption {
            op: "reference::quantize",
            option: "mode",
            value: params.mode.to_string(),
            allowed: "affine (the fp modes: reference::fp_quantize)".into(),
        });
    }
    let gs = group_size_of(w, k, params)?;
    let mut codes = Vec::with_capacity(w.len());
    let (mut scales, mut biases) = (Vec::new(), Vec::new());
    for group in w.chunks(gs) {
        let (scale, bias) = group_scale_bias(group, params.bits);
        codes.extend(group.iter().map(|&v| quantize_value(v, scale, bias, params.bits)));
        scales.push(dtype.round_f32(scale));
        biases.push(dtype.round_f32(bias));
    }
    Ok(HostQuantized { weight: pack(&codes, params.bits), scales, biases })
}

/// One dequantized value as MLX's CPU computes it in the scales' dtype `t`:
/// `round_t(round_t(code * scale) + bias)`.
pub fn dequantize_value(code: u32, scale: f32, bias: f32, t: DType) -> f32 {
    t.round_f32(t.round_f32(code as f32 * scale) + bias)
}

/// One dequantized value as a fused multiply-add in dtype `t` gives it: `round_t(code * scale +
/// bias)`, rounded once. This is how `qmv_coop` dequantizes; MLX ([`dequantize_value`]) rounds
/// the product first, and about half of the weights of a random matrix come out one step apart.
pub fn dequantize_value_fused(code: u32, scale: f32, bias: f32, t: DType) -> f32 {
    // Exact in f64 for f16 scales and biases (qmv_coop's): both terms are multiples of 2^-24,
    // the smallest f16 step, below 2^25, so 49 bits hold the sum.
    t.round_f64(f64::from(code) * f64::from(scale) + f64::from(bias))
}

/// `mx.dequantize` (affine): `k` values per row from packed `weight` and per-group `scales` and
/// `biases` of dtype `scale_dtype`, cast to `out_dtype`.
pub fn dequantize(
    weight: &[u32],
    scales: &[f32],
    biases: &[f32],
    params: QuantParams,
    scale_dtype: DType,
    out_dtype: DType,
) -> Vec<f32> {
    dequantize_with(weight, scales, biases, params, out_dtype, |code, scale, bias| {
        dequantize_value(code, scale, bias, scale_dtype)
    })
}

/// Every code of `weight` through `value(code, scale, bias)`, cast to `out_dtype`: [`dequantize`]
/// with another rounding, such as [`dequantize_value_fused`].
pub fn dequantize_with(
    weight: &[u32],
    scales: &[f32],
    biases: &[f32],
    params: QuantParams,
    out_dtype: DType,
    value: impl Fn(u32, f32, f32) -> f32,
) -> Vec<f32> {
    let n = weight.len() * 32 / params.bits as usize;
    (0..n)
        .map(|i| {
            let g = i / params.group_size as usize;
            out_dtype.round_f32(value(unpack(weight, params.bits, i), scales[g], biases[g]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_mlx_worked_examples() {
        // MLX's packing of 4-bit 0..15 and 3-bit 0..7,0,1,...
        let codes: Vec<u32> = (0..16).collect();
        assert_eq!(pack(&codes, 4), vec![0x7654_3210, 0xfedc_ba98]);
        let codes: Vec<u32> = (0..32).map(|i| i % 8).collect();
        assert_eq!(pack(&codes, 3), vec![0x88fa_c688, 0xc688_fac6, 0xfac6_88fa]);
        for (i, &c) in codes.iter().enumerate() {
            assert_eq!(unpack(&pack(&codes, 3), 3, i), c);
        }
    }

    #[test]
    fn fused_dequantization_rounds_once() {
        // 3 · (1 + 2^-10) is 3 + 1.5 f16 steps: MLX rounds it to 3 + 2 steps (ties to even)
        // before adding -3; one rounding keeps 3 · 2^-10 exactly.
        let scale = 1.0 + 1.0 / 1024.0;
        assert_eq!(dequantize_value(3, scale, -3.0, DType::F16), 4.0 / 1024.0);
        assert_eq!(dequantize_value_fused(3, scale, -3.0, DType::F16), 3.0 / 1024.0);
        // Both agree where the product needs no rounding.
        assert_eq!(dequantize_value_fused(5, 0.25, 1.0, DType::F16), dequantize_value(5, 0.25, 1.0, DType::F16));
    }

    #[test]
    fn edge_flip_examples() {
        // MLX: [0..15] at 4 bits gives scale -1, bias 15; [-15..0] gives +1, -15.
        let up: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(group_scale_bias(&up, 4), (-1.0, 15.0));
        let down: Vec<f32> = (0..16).map(|i| -(i as f32)).collect();
        assert_eq!(group_scale_bias(&down, 4), (1.0, -15.0));
        // All zero: scale -eps, bias 0.
        assert_eq!(group_scale_bias(&[0.0; 32], 4), (-1e-7, 0.0));
    }

    #[test]
    fn ties_round_to_even() {
        // scale -1, bias 3 at 2 bits: 0.5 and 2.5 give codes 2 and 0.
        assert_eq!(quantize_value(0.5, -1.0, 3.0, 2), 2);
        assert_eq!(quantize_value(2.5, -1.0, 3.0, 2), 0);
    }
}
