//! Shared test helpers: the GPU (skipped cleanly on a machine with no adapter, required in CI),
//! MLX fixtures, seeded random data and named tolerances.
#![allow(dead_code)]

use std::sync::OnceLock;

use half::{bf16, f16};
use wgquant::{DType, Gpu, Tensor};

/// The shared GPU for tests, or `None` (with a skip line) where no adapter exists. Under CI
/// (`CI` or `WGQUANT_REQUIRE_GPU` set) a missing adapter fails the test instead.
pub fn gpu() -> Option<Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(gpu) => {
            eprintln!("wgquant tests on {}", gpu.describe());
            Some(gpu)
        }
        Err(e) if required() => panic!("a GPU adapter is required here (CI): {e}"),
        Err(e) => {
            eprintln!("SKIP: no GPU adapter ({e})");
            None
        }
    })
    .clone()
}

fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("WGQUANT_REQUIRE_GPU").is_some()
}

/// Returns from the test when there is no GPU (see [`gpu`]).
#[macro_export]
macro_rules! gpu_or_skip {
    () => {
        match common::gpu() {
            Some(gpu) => gpu,
            None => return,
        }
    };
}

/// SplitMix64: a tiny seeded generator so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in `range`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

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

/// Named groups of 64 values that stress quantization's branches (spec §1.3 and reliability
/// notes §1.2): for quantize and dequantize, and as weights of quantized matmuls.
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
