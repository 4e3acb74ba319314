//! `qmv_coop`, the opt-in tensor-core path of `quantized_matmul`, against its CPU twin
//! (`reference::quantized_matmul_fused`: each weight q · s + b rounded once to f16, then f32
//! sums). The path runs only on a device its caller opened with wgpu's experimental cooperative
//! matrices, which CI's lavapipe (Mesa 22.3) lacks: there, `cooperative_is_refused_without_them`
//! checks the refusal; the other tests are `#[ignore]`d and run on the benchmark card with
//! `cargo test --test qmv_coop -- --ignored` (benches/RESULTS.md, rounds 7 and 8), where they
//! fail, rather than skip, if the adapter has no cooperative matrices.

mod common;

use std::sync::OnceLock;

use common::Rng;
use wgquant::reference::{self, HostMatrix, HostQuantized};
use wgquant::{DType, Error, Gpu, GpuOptions, QmmKernel, QmmOptions, QuantParams, Quantized, Tensor};

/// Why the cooperative tests are ignored by default.
const NEEDS_COOPERATIVE: &str = "needs an adapter with 16 x 16 f16 cooperative matrices: run with --ignored on one";

/// A GPU opened with wgpu's experimental cooperative matrices; panics where no adapter
/// multiplies 16 x 16 f16 matrices (NVIDIA's Vulkan driver does).
fn cooperative_gpu() -> Gpu {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        // SAFETY: wgpu validates experimental features less than stable ones; these tests run
        // wgquant's own kernel, whose resources `Gpu::pipeline` checks like every other's.
        let enable = |d: &mut wgpu::DeviceDescriptor<'_>| {
            d.experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() }
        };
        let gpu = Gpu::with_cooperative_matrices(GpuOptions::default(), enable).map_err(|e| e.to_string())?;
        eprintln!("cooperative tests on {}", gpu.describe());
        Ok(gpu)
    })
    .clone()
    .unwrap_or_else(|e| panic!("{NEEDS_COOPERATIVE} ({e})"))
}

/// Outputs here stay below 0.25 (x, w ~ N(0, 1)/√K, as in MLX's tests). The twin and the
/// tensor cores add the same exact products in f32 in different orders (a difference near
/// 1e-7), so their f16 results can land on the two sides of one rounding boundary: one f16
/// step, 2^-12 below 0.25.
const TOL_COOP: f32 = 1.0 / 4096.0;

const OPTIONS: QmmOptions = QmmOptions {
    kernel: QmmKernel::Cooperative,
    qmv_wg_size: None,
    qmm_tile_rows: None,
    qmm_shape: None,
    split_k: None,
};

/// A (rows, cols) weight quantized at `bits` bits, group 64, with f16 scales, on the host and the
/// GPU.
fn upload_weight(gpu: &Gpu, values: &[f32], rows: usize, cols: usize, bits: u32) -> (HostQuantized, Quantized) {
    let params = QuantParams::affine(64, bits);
    let host = reference::quantize(values, cols, params, DType::F16).unwrap();
    let weight = Tensor::from_slice(gpu, &host.weight, &[rows, params.packed_width(cols)]).unwrap();
    let scales = common::upload(gpu, &host.scales, &[rows, cols / 64], DType::F16);
    let biases = common::upload(gpu, &host.biases, &[rows, cols / 64], DType::F16);
    let q = Quantized::from_parts(weight, scales, Some(biases), params).unwrap();
    (host, q)
}

/// `x (m, k) @ w (n, k)ᵀ` through `options` and through the twin, as f32 values.
fn run(
    gpu: &Gpu,
    x: &[f32],
    m: usize,
    host: &HostQuantized,
    q: &Quantized,
    options: &QmmOptions,
) -> (Vec<f32>, Vec<f32>) {
    let k = x.len() / m;
    let x_gpu = common::upload(gpu, x, &[m, k], DType::F16);
    let y = wgquant::quantized_matmul_with(&x_gpu, q, true, options).unwrap_or_else(|e| panic!("m {m} k {k}: {e}"));
    assert_eq!(y.dtype(), DType::F16);
    let n = host.scales.len() / (k / 64);
    let matrix = HostMatrix { quantized: host, rows: n, params: QuantParams::affine(64, 4), scale_dtype: DType::F16 };
    (common::download(&y), reference::quantized_matmul_fused(x, m, &matrix, true, DType::F16))
}

/// Rows of x from 2 to 8, n with and without tails of the 128-row workgroups (down to 1), and
/// one to eight slices of k; from 5 rows, Auto takes the same path, bit for bit.
#[test]
#[ignore = "needs an adapter with 16 x 16 f16 cooperative matrices: run with --ignored on one"]
fn cooperative_matches_the_twin_on_awkward_shapes() {
    let gpu = cooperative_gpu();
    let cases =
        [(8, 512, 512), (2, 100, 1024), (5, 1000, 1536), (3, 1, 512), (7, 129, 2048), (8, 136, 4096), (6, 4104, 512)];
    for (i, &(m, n, k)) in cases.iter().enumerate() {
        let mut rng = Rng::new(100 + i as u64);
        let scale = 1.0 / (k as f32).sqrt();
        let w = common::round_to(&rng.normals(n * k, scale), DType::F16);
        let (host, q) = upload_weight(&gpu, &w, n, k, 4);
        let x = common::round_to(&rng.normals(m * k, scale), DType::F16);
        let (got, want) = run(&gpu, &x, m, &host, &q, &OPTIONS);
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max);
        assert!(worst <= TOL_COOP, "m {m} n {n} k {k}: max |Δ| = {worst}");
        if m >= 5 {
            let (auto, _) = run(&gpu, &x, m, &host, &q, &QmmOptions::default());
            assert!(common::first_bit_difference(&auto, &got).is_none(), "m {m} n {n} k {k}: Auto took another path");
        }
    }
}

/// Weights whose groups are zeros, constants, a ramp of ties, negatives only, tiny values (their
/// products are f16 subnormals) and huge ones (scales in the hundreds and more),
/// beside normal ones: every output within one f16 rounding of Σ |x w| of the twin's.
#[test]
#[ignore = "needs an adapter with 16 x 16 f16 cooperative matrices: run with --ignored on one"]
fn cooperative_edge_case_weights() {
    let gpu = cooperative_gpu();
    let (m, n, k) = (8, 16, 512);
    let mut rng = Rng::new(7);
    let kinds: [fn(&mut Rng, usize) -> f32; 8] = [
        |rng, _| rng.normal() * 0.05,
        |_, _| 0.0,
        |_, _| 3.0,
        |_, i| i as f32 * 0.5 - 16.0,
        |rng, _| -rng.uniform() * 2.0,
        |rng, _| rng.normal() * 2e-5,
        |rng, _| rng.normal() * 3000.0,
        |rng, _| rng.normal(),
    ];
    // Row r, group g: kind (r + g) % 8.
    let w: Vec<f32> = (0..n * k).map(|e| kinds[(e / k + (e % k) / 64) % 8](&mut rng, e % 64)).collect();
    let w = common::round_to(&w, DType::F16);
    let (host, q) = upload_weight(&gpu, &w, n, k, 4);
    let x = common::round_to(&rng.normals(m * k, 0.1), DType::F16);
    let (got, want) = run(&gpu, &x, m, &host, &q, &OPTIONS);
    let dense = reference::dequantize_with(
        &host.weight,
        &host.scales,
        &host.biases,
        QuantParams::affine(64, 4),
        DType::F16,
        |c, s, b| reference::dequantize_value_fused(c, s, b, DType::F16),
    );
    for (i, (&g, &t)) in got.iter().zip(&want).enumerate() {
        let (row, out) = (i / n, i % n);
        let reach: f32 = (0..k).map(|kk| (x[row * k + kk] * dense[out * k + kk]).abs()).sum();
        // One f16 rounding of the output (2^-11 of its size, at most Σ |x w|), twice; an f16
        // subnormal step for outputs near zero.
        let bound = reach / 1024.0 + 6e-8;
        assert!((g - t).abs() <= bound, "output ({row}, {out}): got {g}, twin {t} (Σ |x w| = {reach})");
    }
}

/// The refusal's message for a product of `m` rows of x (k columns) with a 64-output weight.
fn refusal(gpu: &Gpu, x_dtype: DType, m: usize, k: usize, bits: u32, transpose: bool) -> String {
    let n = 64;
    let (rows, cols) = if transpose { (n, k) } else { (k, n) };
    let (_, q) = upload_weight(gpu, &vec![0.5f32; rows * cols], rows, cols, bits);
    let x = common::upload(gpu, &vec![1.0; m * k], &[m, k], x_dtype);
    match wgquant::quantized_matmul_with(&x, &q, transpose, &OPTIONS) {
        Err(e @ Error::KernelUnavailable { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {:?}", other.map(|t| t.shape().to_vec())),
    }
}

/// Asked for by name on a device opened without cooperative matrices (every `Gpu::new`, CI's
/// included), the path is refused, in words.
#[test]
fn cooperative_is_refused_without_them() {
    let gpu = gpu_or_skip!();
    assert!(!gpu.caps().cooperative_f16, "Gpu::new enables no experimental features");
    let message = refusal(&gpu, DType::F16, 8, 512, 4, true);
    assert!(message.contains("has no cooperative matrices"), "{message}");
}

/// On a device with cooperative matrices, products outside the path's format or shapes are
/// refused, in words.
#[test]
#[ignore = "needs an adapter with 16 x 16 f16 cooperative matrices: run with --ignored on one"]
fn cooperative_is_refused_outside_its_shapes() {
    let gpu = cooperative_gpu();
    for (x_dtype, m, k, bits, transpose, words) in [
        (DType::BF16, 8, 512, 4, true, "f16 x and scales"),
        (DType::F16, 8, 512, 8, true, "4 bits"),
        (DType::F16, 1, 512, 4, true, "2 to 8 rows of x, not 1"),
        (DType::F16, 9, 512, 4, true, "not 9"),
        (DType::F16, 8, 768, 4, true, "a multiple of 512, not 768"),
        (DType::F16, 8, 512, 4, false, "transpose = true"),
    ] {
        let message = refusal(&gpu, x_dtype, m, k, bits, transpose);
        assert!(message.contains(words), "{message}");
        assert!(message.starts_with("quantized_matmul: the cooperative (qmv_coop) kernel"), "{message}");
    }
}
