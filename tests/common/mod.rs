//! Shared test helpers: the GPU (required: a missing adapter fails the tests), MLX fixtures,
//! seeded random data and the error bounds of quantized matmuls.
#![allow(dead_code)]

use std::sync::OnceLock;

use half::{bf16, f16};
use wgquant::{DType, Gpu, Tensor};

/// The shared GPU for tests. A missing adapter fails the test (install lavapipe where there is
/// no GPU, README), unless `WGQUANT_SKIP_GPU_TESTS` is set: then `None`, with a skip line, and
/// GPU tests return without checking anything, so a run with it set proves nothing about the
/// GPU. `CI` (or `WGQUANT_REQUIRE_GPU`) overrides it.
pub fn gpu() -> Option<Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(gpu) => {
            eprintln!("wgquant tests on {}", gpu.describe());
            Some(gpu)
        }
        Err(e) if !skip_allowed() => panic!("a GPU adapter is required (set WGQUANT_SKIP_GPU_TESTS=1 to skip): {e}"),
        Err(e) => {
            eprintln!("SKIP (WGQUANT_SKIP_GPU_TESTS): no GPU adapter ({e})");
            None
        }
    })
    .clone()
}

fn skip_allowed() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some();
    set("WGQUANT_SKIP_GPU_TESTS") && !set("CI") && !set("WGQUANT_REQUIRE_GPU")
}

/// Returns from the test when GPU tests are explicitly skipped (see [`gpu`]).
#[macro_export]
macro_rules! gpu_or_skip {
    () => {
        match common::gpu() {
            Some(gpu) => gpu,
            None => return,
        }
    };
}

/// The crate's seeded generator (SplitMix64), so tests need no extra crate.
pub type Rng = wgquant::random::SplitMix64;

/// Uploads f32 values as a tensor of `dtype` (rounded to it).
pub fn upload(gpu: &Gpu, values: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    match dtype {
        DType::F32 => Tensor::from_slice(gpu, values, shape),
        DType::F16 => Tensor::from_slice(gpu, &values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(), shape),
        DType::BF16 => Tensor::from_slice(gpu, &values.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), shape),
        other => panic!("upload: {other} is not a float dtype"),
    }
    .expect("upload")
}

/// Reads a float tensor back as f32 (exact widening).
pub fn download(t: &Tensor) -> Vec<f32> {
    match t.dtype() {
        DType::F32 => t.to_vec::<f32>().expect("read f32"),
        DType::F16 => t.to_vec::<f16>().expect("read f16").into_iter().map(f16::to_f32).collect(),
        DType::BF16 => t.to_vec::<bf16>().expect("read bf16").into_iter().map(bf16::to_f32).collect(),
        other => panic!("download: {other} is not a float dtype"),
    }
}

/// Values rounded to `dtype`, as the GPU will hold them.
pub fn round_to(values: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        DType::BF16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => values.to_vec(),
    }
}

/// Index and values of the first place two float slices differ in their bits (NaN equals NaN).
pub fn first_bit_difference(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
        .map(|(i, (x, y))| (i, *x, *y))
}

/// A safetensors fixture file made by real MLX (`tests/fixtures/gen_fixtures.py`).
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Fixture { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")) }
    }

    pub fn tensors(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture parses")
    }

    /// Case names: tensor names before the first `.`, sorted, without duplicates.
    pub fn cases(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.tensors().names().iter().map(|n| n.split('.').next().unwrap().to_string()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// A float tensor as (f32 values, shape, dtype).
    pub fn float(&self, name: &str) -> (Vec<f32>, Vec<usize>, DType) {
        let view = self.tensors().tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = view.data();
        let (values, dtype) = match view.dtype() {
            safetensors::Dtype::F32 => (bytemuck::pod_collect_to_vec::<u8, f32>(data), DType::F32),
            safetensors::Dtype::F16 => (
                bytemuck::pod_collect_to_vec::<u8, u16>(data).into_iter().map(|b| f16::from_bits(b).to_f32()).collect(),
                DType::F16,
            ),
            safetensors::Dtype::BF16 => (
                bytemuck::pod_collect_to_vec::<u8, u16>(data)
                    .into_iter()
                    .map(|b| bf16::from_bits(b).to_f32())
                    .collect(),
                DType::BF16,
            ),
            other => panic!("{name}: {other:?} is not a float"),
        };
        (values, view.shape().to_vec(), dtype)
    }

    /// A u32 tensor as (values, shape).
    pub fn u32(&self, name: &str) -> (Vec<u32>, Vec<usize>) {
        let view = self.tensors().tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), safetensors::Dtype::U32, "{name}");
        (bytemuck::pod_collect_to_vec(view.data()), view.shape().to_vec())
    }
}

impl Fixture {
    /// A u8 tensor as (values, shape).
    pub fn u8(&self, name: &str) -> (Vec<u8>, Vec<usize>) {
        let view = self.tensors().tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), safetensors::Dtype::U8, "{name}");
        (view.data().to_vec(), view.shape().to_vec())
    }
}

/// Parses `case<TAB>message` lines.
pub fn mlx_errors() -> std::collections::HashMap<String, String> {
    let path = format!("{}/tests/fixtures/mlx_errors.txt", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .expect("mlx_errors.txt")
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Named groups of 64 values that stress quantization's branches (MLX's edge flip, eps, NaN
/// handling, rounding ties): for quantize and dequantize, and as weights of quantized matmuls.
pub fn edge_groups() -> Vec<(&'static str, Vec<f32>)> {
    // a(1 - t) + bt: no overflow at the ends of the f32 range.
    let ramp =
        |a: f32, b: f32| (0..64).map(move |i| i as f32 / 63.0).map(move |t| a * (1.0 - t) + b * t).collect::<Vec<_>>();
    vec![
        ("all zero", vec![0.0; 64]),
        ("negative zero", vec![-0.0; 64]),
        ("constant", vec![0.37; 64]),
        ("negative constant", vec![-1.25; 64]),
        ("all negative", ramp(-2.0, -1.0)),
        ("all positive", ramp(1.0, 2.0)),
        ("equal magnitude extremes", ramp(-1.0, 1.0)),
        ("ties on the grid", (0..64).map(|i| (i % 16) as f32 + if i % 3 == 0 { 0.5 } else { 0.0 }).collect()),
        ("huge", ramp(-1e4, 3e4)),
        ("tiny", ramp(-1e-6, 2e-6)),
        ("f32 extremes overflow the range", ramp(-3e38, 3e38)),
        ("all non-finite", (0..64).map(|i| [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3]).collect()),
        ("f16 extremes", ramp(-65504.0, 65504.0)),
        ("near eps", ramp(0.0, 5e-7)),
        ("one outlier", (0..64).map(|i| if i == 17 { 100.0 } else { (i as f32).sin() }).collect()),
        ("nan element", (0..64).map(|i| if i == 5 { f32::NAN } else { i as f32 / 10.0 }).collect()),
        ("infinite element", (0..64).map(|i| if i == 9 { f32::INFINITY } else { -(i as f32) }).collect()),
        ("f32 subnormals", ramp(-1e-39, 1e-39)),
    ]
}

// ---- error bounds for quantized matmuls -----------------------------------------------------

/// The spacing of `dtype`'s numbers at magnitude `v`: one ulp (the subnormal step below the
/// normal range).
pub fn ulp(dtype: DType, v: f32) -> f32 {
    let (mantissa_bits, min_exponent) = match dtype {
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
        _ => (23, -126),
    };
    let exponent = if v == 0.0 || !v.is_finite() { min_exponent } else { v.abs().log2().floor() as i32 };
    2f32.powi(exponent.max(min_exponent) - mantissa_bits)
}

/// What each weight of a quantized matrix contributes to the error bounds of a product, per
/// code in row-major order of the packed matrix: `reach`, q_max |s| + |b| of its group (no
/// dequantized weight of the group is larger, and neither is any partial term the kernels
/// form, s · q or b); `rounding`, |w_T − (s q + b)|, how far the weight MLX dequantizes
/// (`round_T(round_T(s q) + b)` in the scales' dtype T) is from the exact one the GPU kernels use
/// (they compute s · Σ x q + b · Σ x in f32, never rounding a weight to T).
pub struct WeightTerms {
    pub reach: Vec<f32>,
    pub rounding: Vec<f32>,
}

impl WeightTerms {
    pub fn new(q: &wgquant::reference::HostQuantized, params: wgquant::QuantParams, scale_dtype: DType) -> WeightTerms {
        let codes = q.weight.len() * 32 / params.bits as usize;
        let q_max = ((1u32 << params.bits) - 1) as f32;
        let (mut reach, mut rounding) = (Vec::with_capacity(codes), Vec::with_capacity(codes));
        for i in 0..codes {
            let g = i / params.group_size as usize;
            let (s, b) = (q.scales[g], q.biases[g]);
            let code = wgquant::reference::unpack(&q.weight, params.bits, i);
            let exact = f64::from(code) * f64::from(s) + f64::from(b);
            let w_t = wgquant::reference::dequantize_value(code, s, b, scale_dtype);
            reach.push(q_max * s.abs() + b.abs());
            rounding.push((f64::from(w_t) - exact).abs() as f32);
        }
        WeightTerms { reach, rounding }
    }

    /// (S, D) of one output: Σ_k |x_k| reach and Σ_k |x_k| rounding over its terms, the weight of
    /// term k at index `at(k)`.
    pub fn sums(&self, x: &[f32], at: impl Fn(usize) -> usize) -> (f32, f32) {
        x.iter().enumerate().fold((0.0, 0.0), |(s, d), (kk, v)| {
            let i = at(kk);
            (s + v.abs() * self.reach[i], d + v.abs() * self.rounding[i])
        })
    }
}

/// How far an f32 quantized matmul may be from the twin's f32 result for one output, before
/// either is rounded to the output dtype, given S = Σ_k |x_k| reach_k and D = Σ_k |x_k|
/// rounding_k over the output's k terms (`WeightTerms`).
///
/// Derivation, with u = 2^-24 (f32's unit roundoff), γ_n = n u / (1 − n u) (the bound on n
/// roundings in a row) and E = Σ x (s q + b) the exact sum: the twin sums K rounded products of
/// x and w_T in f32, so it is within γ_K Σ |x w_T| ≤ γ_K (S + D) of Σ x w_T, which is within D
/// of E. The GPU kernels form s · Σ x q + b · Σ x per group (or stage s q + b in f32) and add the
/// groups: every term of every partial sum is at most |x| · reach, and no term passes through
/// more than K + 4 roundings (a group's products and sums, the scale and bias products, their
/// sum, the sum over groups or slices of k), so they are within γ_(K+4) S of E. Together:
/// γ_(2K+4) (S + D) + D, about (K + 2) ε (S + D) + D with ε = 2u = `f32::EPSILON`; for K = 192
/// that is the 192 ε S the edge-case test first used, plus the weights' rounding to T.
pub fn f32_matmul_bound(k: usize, reach_sum: f32, rounding_sum: f32) -> f32 {
    let n = (2 * k + 4) as f64 * f64::from(f32::EPSILON) / 2.0;
    (n / (1.0 - n) * f64::from(reach_sum + rounding_sum) + f64::from(rounding_sum)) as f32
}

/// Per rounding of an f16 or bf16 operation computed in f32 (as MLX's half types compute):
/// half an ulp of the result, plus f32's own rounding of a sum that f32 cannot hold exactly
/// (at most 2^-24 of it, below 2^-13 ulps of f16 or bf16).
const HALF_ULP_AND_F32: f32 = 0.5 + 1.0 / 8192.0;

/// One output of MLX 0.32.4's CPU `quantized_matmul` in `dtype` (f16 or bf16): `x` and the
/// dequantized weights `w` (values of `dtype`, the k terms of this output) accumulated in `dtype`
/// in order of k, `y ← round(y + round(x_k w_k))`, each operation in f32 and rounded (the
/// `_qmm` and `_qmm_t` kernels for every bits value; tests/fixtures/gen_fixtures.py checks this
/// on MLX itself). Returns the result and a bound on its distance from Σ x w: each of the 2K
/// roundings is at most `HALF_ULP_AND_F32` ulps of its result, so the bound is about K ulps of
/// the largest partial sum.
pub fn mlx_sequential_dot(x: &[f32], w: &[f32], dtype: DType) -> (f32, f32) {
    let round = |v: f32| round_to(&[v], dtype)[0];
    let (mut y, mut bound) = (0f32, 0f32);
    for (&a, &b) in x.iter().zip(w) {
        let product = round(a * b);
        y = round(y + product);
        bound += HALF_ULP_AND_F32 * (ulp(dtype, product) + ulp(dtype, y));
    }
    (y, bound)
}

/// Whether |got − want| <= bound (false for a NaN `got`).
pub fn within(got: f32, want: f32, bound: f32) -> bool {
    (got - want).abs() <= bound
}

/// The first output where `got` is not within `bounds` of `want` (a non-finite `want` needs a
/// non-finite `got`; a NaN `got` fails a finite `want`), as (index, got, want, |Δ| / bound);
/// `None` when every output is within its bound.
pub fn first_outside_bound(got: &[f32], want: &[f32], bounds: &[f32]) -> Option<(usize, f32, f32, f32)> {
    assert_eq!(got.len(), want.len(), "lengths differ");
    assert_eq!(got.len(), bounds.len(), "one bound per output");
    (0..got.len())
        .map(|i| (i, got[i], want[i], bounds[i]))
        .find(|&(_, g, w, b)| if w.is_finite() { !within(g, w, b) } else { g.is_finite() })
        .map(|(i, g, w, b)| (i, g, w, (g - w).abs() / b))
}

/// The largest |Δ| / bound over all outputs with a finite `want` (how close a check came to
/// failing, or by how much it failed).
pub fn worst_ratio(got: &[f32], want: &[f32], bounds: &[f32]) -> f32 {
    (0..got.len())
        .filter(|&i| want[i].is_finite())
        .map(|i| if got[i].is_nan() { f32::INFINITY } else { (got[i] - want[i]).abs() / bounds[i] })
        .fold(0.0, f32::max)
}

/// One output of an f16 or bf16 quantized matmul of ours, `got`, against MLX's CPU result: the
/// output's k terms of x, of the dequantized weights `w` (MLX's, `dtype` values) and of their
/// `WeightTerms`. Returns MLX's result as [`mlx_sequential_dot`] computes it and the bound on
/// |got − MLX|: MLX's 2K roundings in `dtype` (about K ulps), our f32 sum's distance from
/// Σ x w ([`f32_matmul_bound`]) and one ulp of `dtype` for our rounding of it.
pub fn bound_against_mlx_half(
    x: &[f32],
    w: &[f32],
    reach: &[f32],
    rounding: &[f32],
    dtype: DType,
    got: f32,
) -> (f32, f32) {
    let (y, mlx_rounding) = mlx_sequential_dot(x, w, dtype);
    let dot = |terms: &[f32]| x.iter().zip(terms).map(|(a, t)| a.abs() * t).sum::<f32>();
    let ours = f32_matmul_bound(x.len(), dot(reach), dot(rounding));
    (y, mlx_rounding + ours + ulp(dtype, got.abs().max(y.abs())))
}

/// `v` rounded to `dtype`.
pub fn round(v: f32, dtype: DType) -> f32 {
    round_to(&[v], dtype)[0]
}
