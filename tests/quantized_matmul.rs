//! `quantized_matmul` on the GPU against its CPU twin (`reference::quantized_matmul`:
//! MLX's dequantize, then an f32 matmul) and against real MLX: the affine cases of MLX's
//! `python/tests/test_quantized.py` (spec §6.1), shrunk where lavapipe would be slow but
//! covering every kernel, bits value, group size, tail in M, N and K, batching and broadcasting.

mod common;

use common::{Fixture, Rng};
use wgquant::kernels::QmmShape;
use wgquant::reference::{self, HostMatrix};
use wgquant::{DType, Gpu, QmmKernel, QmmOptions, QuantParams, Quantized, Tensor};

/// MLX's tolerance for float32 results (`test_qmm`, `test_qmv`, ...): max |Δ| against
/// dequantize-then-matmul, with x and w ~ N(0, 1)/√K.
const TOL_F32: f32 = 1e-3;
/// MLX's tolerance for float16 results (`test_qmm` on the GPU).
const TOL_F16: f32 = 1.5e-3;
/// bfloat16 keeps 8 bits of mantissa: outputs of magnitude up to ~0.5 round by up to 2^-9;
/// MLX's own bf16 tolerance for quantized matmuls (`test_fp_qmv_large_output`) is 1e-2.
const TOL_BF16: f32 = 1e-2;

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => TOL_F16,
        DType::BF16 => TOL_BF16,
        _ => TOL_F32,
    }
}

/// One product to check.
#[derive(Clone, Debug)]
struct Case {
    transpose: bool,
    group_size: u32,
    bits: u32,
    /// Shape of x, last axis K.
    x_shape: Vec<usize>,
    /// Batch shape of w (may be empty).
    w_batch: Vec<usize>,
    /// Outputs N.
    n: usize,
    x_dtype: DType,
    scale_dtype: DType,
    options: QmmOptions,
}

impl Case {
    fn new(transpose: bool, group_size: u32, bits: u32, x_shape: &[usize], w_batch: &[usize], n: usize) -> Case {
        Case {
            transpose,
            group_size,
            bits,
            x_shape: x_shape.to_vec(),
            w_batch: w_batch.to_vec(),
            n,
            x_dtype: DType::F32,
            scale_dtype: DType::F32,
            options: QmmOptions::default(),
        }
    }

    fn dtypes(mut self, x_dtype: DType, scale_dtype: DType) -> Case {
        self.x_dtype = x_dtype;
        self.scale_dtype = scale_dtype;
        self
    }

    fn kernel(mut self, kernel: QmmKernel) -> Case {
        self.options.kernel = kernel;
        self
    }

    fn options(mut self, options: QmmOptions) -> Case {
        self.options = options;
        self
    }

    fn k(&self) -> usize {
        *self.x_shape.last().unwrap()
    }

    fn name(&self) -> String {
        format!(
            "t{} gs{} b{} x{:?} w_batch{:?} n{} {}/{} {:?}",
            u8::from(self.transpose),
            self.group_size,
            self.bits,
            self.x_shape,
            self.w_batch,
            self.n,
            self.x_dtype,
            self.scale_dtype,
            self.options.kernel
        )
    }
}

/// A quantized weight on the host and the GPU.
struct Weight {
    host: Vec<reference::HostQuantized>,
    gpu: Quantized,
    /// Rows of one packed matrix.
    rows: usize,
}

/// Quantizes w ~ N(0, 1)/√K (per MLX's tests) on the CPU twin, which is bit-exact with the GPU
/// kernel (tests/mlx_parity.rs), and uploads it.
fn make_weight(gpu: &Gpu, case: &Case, rng: &mut Rng) -> Weight {
    let (k, n) = (case.k(), case.n);
    let (rows, cols) = if case.transpose { (n, k) } else { (k, n) };
    let params = QuantParams::affine(case.group_size, case.bits);
    let matrices: usize = case.w_batch.iter().product();
    let scale = 1.0 / (k as f32).sqrt();
    let host: Vec<_> = (0..matrices)
        .map(|_| {
            let w = common::round_to(&rng.normals(rows * cols, scale), case.scale_dtype);
            reference::quantize(&w, cols, params, case.scale_dtype).unwrap()
        })
        .collect();
    let shape = |last: usize| [case.w_batch.as_slice(), &[rows, last]].concat();
    let words: Vec<u32> = host.iter().flat_map(|h| h.weight.iter().copied()).collect();
    let scales: Vec<f32> = host.iter().flat_map(|h| h.scales.iter().copied()).collect();
    let biases: Vec<f32> = host.iter().flat_map(|h| h.biases.iter().copied()).collect();
    let groups = cols / case.group_size as usize;
    let weight = Tensor::from_slice(gpu, &words, &shape(params.packed_width(cols))).unwrap();
    let scales = common::upload(gpu, &scales, &shape(groups), case.scale_dtype);
    let biases = common::upload(gpu, &biases, &shape(groups), case.scale_dtype);
    Weight { host, gpu: Quantized::from_parts(weight, scales, Some(biases), params).unwrap(), rows }
}

/// The expected result: the CPU twin per output batch, with MLX's broadcasting.
fn expected(case: &Case, x: &[f32], weight: &Weight, out_dtype: DType) -> (Vec<usize>, Vec<f32>) {
    let (k, n) = (case.k(), case.n);
    let xs = &case.x_shape;
    let params = QuantParams::affine(case.group_size, case.bits);
    let matrix =
        |i: usize| HostMatrix { quantized: &weight.host[i], rows: weight.rows, params, scale_dtype: case.scale_dtype };
    if xs.len() > 2 && !case.w_batch.is_empty() {
        let x_batch = &xs[..xs.len() - 2];
        let m = xs[xs.len() - 2];
        let rank = x_batch.len().max(case.w_batch.len());
        let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
        let (xb, wb) = (pad(x_batch), pad(&case.w_batch));
        let out_batch: Vec<usize> = xb.iter().zip(&wb).map(|(&a, &b)| a.max(b)).collect();
        let index = |flat: usize, shape: &[usize]| {
            let (mut rest, mut idx, mut stride) = (flat, 0, 1);
            for (d, &extent) in out_batch.iter().enumerate().rev() {
                let coord = rest % extent;
                rest /= extent;
                if shape[d] != 1 {
                    idx += coord * stride;
                }
                stride *= shape[d];
            }
            idx
        };
        let mut y = Vec::new();
        for b in 0..out_batch.iter().product() {
            let xm = &x[index(b, &xb) * m * k..][..m * k];
            y.extend(reference::quantized_matmul(xm, m, &matrix(index(b, &wb)), case.transpose, out_dtype));
        }
        (out_batch.into_iter().chain([m, n]).collect(), y)
    } else {
        let m = x.len() / k;
        let shape = xs[..xs.len() - 1].iter().copied().chain([n]).collect();
        (shape, reference::quantized_matmul(x, m, &matrix(0), case.transpose, out_dtype))
    }
}

/// Runs `case` on the GPU and compares with the twin; returns max |Δ|.
fn check(gpu: &Gpu, case: &Case, seed: u64) -> f32 {
    let mut rng = Rng::new(seed);
    let k = case.k();
    let weight = make_weight(gpu, case, &mut rng);
    let count: usize = case.x_shape.iter().product();
    let x = common::round_to(&rng.normals(count, 1.0 / (k as f32).sqrt()), case.x_dtype);
    let x_gpu = common::upload(gpu, &x, &case.x_shape, case.x_dtype);
    let y = wgquant::quantized_matmul_with(&x_gpu, &weight.gpu, case.transpose, &case.options)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name()));
    let out_dtype = case.x_dtype.promote(case.scale_dtype);
    assert_eq!(y.dtype(), out_dtype, "{}: dtype", case.name());
    let (shape, want) = expected(case, &x, &weight, out_dtype);
    assert_eq!(y.shape(), &shape[..], "{}: shape", case.name());
    let got = common::download(&y);
    let err = max_abs_diff(&got, &want);
    assert!(err < tolerance(out_dtype), "{}: max |Δ| = {err}", case.name());
    err
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f32::INFINITY } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

fn check_all(gpu: &Gpu, cases: &[Case]) {
    let mut worst = 0.0f32;
    for (i, case) in cases.iter().enumerate() {
        worst = worst.max(check(gpu, case, 1000 + i as u64));
    }
    eprintln!("{} cases, worst max |Δ| = {worst:.2e}", cases.len());
    assert!(gpu.take_uncaptured_errors().is_empty());
}

const ALL_BITS: [u32; 7] = [1, 2, 3, 4, 5, 6, 8];
const GROUP_SIZES: [u32; 3] = [128, 64, 32];

/// Every (group size, bits) pair MLX accepts.
fn formats() -> impl Iterator<Item = (u32, u32)> {
    GROUP_SIZES.into_iter().flat_map(|gs| ALL_BITS.into_iter().map(move |b| (gs, b)))
}

// ---- MLX's python/tests/test_quantized.py, affine cases ----------------------------------------

/// `test_qmm`: gs 128/64/32 x bits 2/4/8 x M 8/32/33/64 x N, K 128/256, both layouts.
#[test]
fn test_qmm() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for gs in GROUP_SIZES {
        for bits in [2, 4, 8] {
            for m in [8, 32, 33, 64] {
                for n in [128, 256] {
                    for k in [128, 256] {
                        for transpose in [true, false] {
                            cases.push(Case::new(transpose, gs, bits, &[m, k], &[], n));
                        }
                    }
                }
            }
        }
    }
    check_all(&gpu, &cases);
}

/// `test_qmm_shapes`: gs 64 b 4; w (32, 256) with x (3, 256) and (2, 1, 7, 256), transposed;
/// w (256, 256) untransposed.
#[test]
fn test_qmm_shapes() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for x_shape in [&[3, 256][..], &[2, 1, 7, 256]] {
        cases.push(Case::new(true, 64, 4, x_shape, &[], 32));
        cases.push(Case::new(false, 64, 4, x_shape, &[], 256));
    }
    check_all(&gpu, &cases);
}

/// `test_qmv`: every group size and bits x outputs 256/512/67 x K 64/256 x batch none/1/3/8
/// (x (3, 1, K) against a 2-D w, or (B, 1, K) against (B, N, K)).
#[test]
fn test_qmv() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for (gs, bits) in formats() {
        for n in [256, 512, 67] {
            for k in [64, 256] {
                if gs as usize > k {
                    continue;
                }
                for batch in [0, 1, 3, 8] {
                    cases.push(match batch {
                        0 => Case::new(true, gs, bits, &[3, 1, k], &[], n),
                        b => Case::new(true, gs, bits, &[b, 1, k], &[b], n),
                    });
                }
            }
        }
    }
    check_all(&gpu, &cases);
}

/// `test_qvm` (transpose=false): every group size and bits x outputs 32/128 (skipping outputs
/// below the group size) x K 128/67 x batch none/3. (MLX also runs outputs 256 and batches 1
/// and 8, which take the same paths.)
#[test]
fn test_qvm() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for (gs, bits) in formats() {
        for n in [32, 128] {
            if n < gs as usize {
                continue;
            }
            for k in [128, 67] {
                cases.push(Case::new(false, gs, bits, &[3, 1, k], &[], n));
                cases.push(Case::new(false, gs, bits, &[3, 1, k], &[3], n));
            }
        }
    }
    check_all(&gpu, &cases);
}

/// `test_qmv_wide`: M 2..7 and 9 rows of x, outputs 256/67, K 128/512, batch 1/3, at gs 64 b 4
/// and at gs 32 b 3 (codes straddling words); every group size and bits at M = 5; and MLX's tiny
/// (M, K, N) cases.
#[test]
fn test_qmv_wide() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for (gs, bits) in [(64, 4), (32, 3)] {
        for m in [2, 3, 4, 5, 6, 7, 9] {
            for n in [256, 67] {
                for k in [128, 512] {
                    for batch in [1, 3] {
                        cases.push(Case::new(true, gs, bits, &[batch, m, k], &[batch], n));
                    }
                }
            }
        }
    }
    for (gs, bits) in formats() {
        cases.push(Case::new(true, gs, bits, &[5, 128], &[], 67));
    }
    for (m, k, n) in [(2, 32, 10), (4, 32, 7), (3, 64, 5), (5, 64, 3)] {
        for bits in [4, 6] {
            cases.push(Case::new(true, 32, bits, &[m, k], &[], n));
        }
    }
    check_all(&gpu, &cases);
}

/// `test_small_matrix`: w (8, 256), (1, 8, 256), (3, 8, 256) at gs 64 b 4: qmv with x (3, 1, 256)
/// and (3, 4, 256), qmm_t with (3, 10, 256), qvm with (3, 1, 8), qmm_n with (3, 10, 8).
#[test]
fn test_small_matrix() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for w_batch in [&[][..], &[1], &[3]] {
        for x_shape in [&[3, 1, 256][..], &[3, 4, 256], &[3, 10, 256]] {
            cases.push(Case::new(true, 64, 4, x_shape, w_batch, 8));
        }
        for x_shape in [&[3, 1, 8][..], &[3, 10, 8]] {
            cases.push(Case::new(false, 64, 4, x_shape, w_batch, 256));
        }
    }
    check_all(&gpu, &cases);
}

/// `test_non_multiples`: w (33, 256) through qmv, qmm_t, qvm and qmm_n; w (3, 256) (fewer rows
/// than one qmv workgroup makes); w (99, 256) with x (129, 256).
#[test]
fn test_non_multiples() {
    let gpu = gpu_or_skip!();
    let cases = [
        Case::new(true, 64, 4, &[1, 256], &[], 33),
        Case::new(true, 64, 4, &[10, 256], &[], 33),
        Case::new(false, 64, 4, &[1, 33], &[], 256),
        Case::new(false, 64, 4, &[10, 33], &[], 256),
        Case::new(true, 64, 4, &[1, 256], &[], 3),
        Case::new(true, 64, 4, &[10, 256], &[], 3),
        Case::new(false, 64, 4, &[1, 3], &[], 256),
        Case::new(false, 64, 4, &[10, 3], &[], 256),
        Case::new(true, 64, 4, &[129, 256], &[], 99),
        Case::new(false, 64, 4, &[129, 99], &[], 256),
    ];
    check_all(&gpu, &cases);
}

/// `test_qmv_small_non_multiples`: (M, K, N) in (1, 32, 3), (2, 32, 10), (1, 32, 5), (4, 32, 7)
/// at gs 32, bits 4 and 6.
#[test]
fn test_qmv_small_non_multiples() {
    let gpu = gpu_or_skip!();
    let mut cases = Vec::new();
    for (m, k, n) in [(1, 32, 3), (2, 32, 10), (1, 32, 5), (4, 32, 7)] {
        for bits in [4, 6] {
            cases.push(Case::new(true, 32, bits, &[m, k], &[], n));
        }
    }
    check_all(&gpu, &cases);
}

/// `test_qmm_large_dims` (a regression for index overflow in MLX's NAX kernels): gs 64 b 4,
/// K = 128, (M, N) = (16, 32840), (33, 32840), (33000, 64). MLX also runs (32, 32840).
#[test]
fn test_qmm_large_dims() {
    let gpu = gpu_or_skip!();
    let cases = [
        Case::new(true, 64, 4, &[16, 128], &[], 32840),
        Case::new(true, 64, 4, &[33, 128], &[], 32840),
        Case::new(true, 64, 4, &[33000, 128], &[], 64),
    ];
    check_all(&gpu, &cases);
}

/// A dispatch of more than 65535 workgroups is laid out as a 2-D grid: qmv (8 outputs per
/// workgroup for one row of x) over 530000 outputs, with workgroups smaller than their outputs.
#[test]
fn dispatch_beyond_65535_workgroups() {
    let gpu = gpu_or_skip!();
    let options = QmmOptions { qmv_wg_size: Some(8), ..QmmOptions::default() };
    check_all(&gpu, &[Case::new(true, 32, 4, &[1, 32], &[], 530_000).options(options)]);
}

/// `test_throw`: each of MLX's invalid calls fails with MLX's error, and the valid one runs.
#[test]
fn test_throw() {
    let gpu = gpu_or_skip!();
    let x = Tensor::zeros(&gpu, &[10, 512], DType::F32).unwrap();
    let weight = Tensor::zeros(&gpu, &[32, 64], DType::U32).unwrap();
    let scales = Tensor::zeros(&gpu, &[32, 8], DType::F32).unwrap();
    let params = QuantParams::affine(64, 4);
    let q = |w: &Tensor, s: &Tensor, b: &Tensor| Quantized {
        weight: w.clone(),
        scales: s.clone(),
        biases: Some(b.clone()),
        params,
    };
    let weight_t = weight.reshape(&[64, 32]).unwrap();
    let scales_t = scales.reshape(&[8, 32]).unwrap();
    let message = |q: &Quantized, transpose: bool| wgquant::quantized_matmul(&x, q, transpose).unwrap_err().to_string();
    // quantized_matmul(x, w_q.T, scales, biases): the weight and scales disagree.
    assert_eq!(
        message(&q(&weight_t, &scales, &scales), true),
        "[quantized_matmul] The shapes of the weight and scales are incompatible based on bits and group_size. \
         w.shape() == (64,32) and scales.shape() == (32,8) with group_size=64 and bits=4"
    );
    // quantized_matmul(x, w_q.T, scales.T, biases): scales and biases differ.
    assert_eq!(
        message(&q(&weight_t, &scales_t, &scales), true),
        "[quantized_matmul] Scales and biases should have the same shape. Received scales with shape (8,32) and \
         biases with (32,8)"
    );
    // quantized_matmul(x, w_q, scales, biases, transpose=False): 512 against 32 rows.
    assert_eq!(
        message(&q(&weight, &scales, &scales), false),
        "[quantized_matmul] Last dimension of first input with shape (..., 512) does not match the expanded \
         quantized matrix (32, 512) computed from shape (32,64) with group_size=64, bits=4 and transpose=false"
    );
    // quantized_matmul(x, w_q, scales.T, biases.T).
    assert_eq!(
        message(&q(&weight, &scales_t, &scales_t), true),
        "[quantized_matmul] The shapes of the weight and scales are incompatible based on bits and group_size. \
         w.shape() == (32,64) and scales.shape() == (8,32) with group_size=64 and bits=4"
    );
    let y = wgquant::quantized_matmul(&x, &q(&weight, &scales, &scales), true).unwrap();
    assert_eq!(y.shape(), &[10, 32]);
    assert!(common::download(&y).iter().all(|&v| v == 0.0));
}

/// The `qmm_*` messages recorded from real MLX 0.32.4 (tests/fixtures/mlx_errors.txt), and the
/// checks MLX makes before them (mode, biases, dtypes).
#[test]
fn errors_match_mlx_words() {
    let gpu = gpu_or_skip!();
    let mlx = common::mlx_errors();
    let f32s = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let u32s = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::U32).unwrap();
    let qmm = |x: &Tensor, w: Tensor, s: Tensor, b: Option<Tensor>, gs: u32, bits: u32, transpose: bool| {
        let q = Quantized { weight: w, scales: s, biases: b, params: QuantParams::affine(gs, bits) };
        wgquant::quantized_matmul(x, &q, transpose).unwrap_err().to_string()
    };
    let cases = [
        ("qmm_not_u32", qmm(&f32s(&[3, 256]), f32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 4])), 64, 4, true)),
        (
            "qmm_scales_biases_shape",
            qmm(&f32s(&[3, 256]), u32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 2])), 64, 4, true),
        ),
        ("qmm_incompatible", qmm(&f32s(&[3, 128]), u32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 4])), 16, 8, true)),
        (
            "qmm_inner_mismatch_t",
            qmm(&f32s(&[3, 128]), u32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 4])), 64, 4, true),
        ),
        (
            "qmm_inner_mismatch_n",
            qmm(&f32s(&[3, 256]), u32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 4])), 64, 4, false),
        ),
    ];
    for (name, ours) in cases {
        assert_eq!(ours, mlx[name], "{name}");
    }
    assert_eq!(
        qmm(&f32s(&[3, 256]), u32s(&[32, 32]), f32s(&[32, 4]), None, 64, 4, true),
        "[quantized_matmul] Biases must be provided for affine quantization."
    );
    let ints = Tensor::zeros(&gpu, &[3, 256], DType::U32).unwrap();
    assert_eq!(
        qmm(&ints, u32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 4])), 64, 4, true),
        "[quantized_matmul] Only real floating types are supported but x.dtype() == uint32."
    );
    // After the shape checks, MLX's kernels accept only its group sizes and bits.
    assert_eq!(
        qmm(&f32s(&[3, 1024]), u32s(&[32, 32]), f32s(&[32, 64]), Some(f32s(&[32, 64])), 16, 1, true),
        "[quantized_matmul] The requested group size 16 is not supported. The supported group sizes are 32, 64, and 128."
    );
    // Batch axes that do not broadcast.
    assert_eq!(
        qmm(&f32s(&[2, 5, 64]), u32s(&[3, 8, 8]), f32s(&[3, 8, 1]), Some(f32s(&[3, 8, 1])), 64, 4, true),
        "[broadcast_shapes] Shapes (2) and (3) cannot be broadcast."
    );
}

/// Real `mx.quantized_matmul` results (tests/fixtures/mlx_qmm.safetensors): 12 cases over both
/// layouts, bits 2, 3, 4, 6, 8, every group size, f32 and f16, and a broadcast batch.
#[test]
fn matches_mlx_fixtures() {
    let gpu = gpu_or_skip!();
    let fixture = Fixture::load("mlx_qmm.safetensors");
    let cases = fixture.cases();
    assert_eq!(cases.len(), 12);
    for case in &cases {
        let field = |prefix: &str| -> u32 {
            case.split('_').find_map(|p| p.strip_prefix(prefix)?.parse().ok()).unwrap_or_else(|| panic!("{case}"))
        };
        let params = QuantParams::affine(field("gs"), field("b"));
        let transpose = case.starts_with("t1");
        let (x, x_shape, dtype) = fixture.float(&format!("{case}.x"));
        let (words, w_shape) = fixture.u32(&format!("{case}.wq"));
        let (scales, s_shape, _) = fixture.float(&format!("{case}.scales"));
        let (biases, _, _) = fixture.float(&format!("{case}.biases"));
        let (y_mlx, y_shape, y_dtype) = fixture.float(&format!("{case}.y"));
        let q = Quantized::from_parts(
            Tensor::from_slice(&gpu, &words, &w_shape).unwrap(),
            common::upload(&gpu, &scales, &s_shape, dtype),
            Some(common::upload(&gpu, &biases, &s_shape, dtype)),
            params,
        )
        .unwrap();
        let y = wgquant::quantized_matmul(&common::upload(&gpu, &x, &x_shape, dtype), &q, transpose).unwrap();
        assert_eq!(y.shape(), &y_shape[..], "{case}");
        assert_eq!(y.dtype(), y_dtype, "{case}");
        let err = max_abs_diff(&common::download(&y), &y_mlx);
        // MLX's CPU kernels accumulate in the input dtype for 3, 5 and 6 bits and for the
        // untransposed layout (spec §3.1), so f16 cases sit up to a few f16 steps from ours.
        assert!(err < tolerance(dtype), "{case}: max |Δ| against MLX = {err}");
    }
}

// ---- dtypes, layouts and kernels beyond MLX's cases --------------------------------------------

/// The result dtype is promote(x, scales); f16 and bf16 inputs and outputs through every kernel.
#[test]
fn dtypes_promote_as_mlx() {
    let gpu = gpu_or_skip!();
    let pairs = [
        (DType::F16, DType::F16),
        (DType::BF16, DType::BF16),
        (DType::BF16, DType::F16),
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
        (DType::BF16, DType::F32),
    ];
    let mut cases = Vec::new();
    for (x_dtype, scale_dtype) in pairs {
        for (transpose, m) in [(true, 1), (true, 3), (true, 20), (false, 2), (false, 20)] {
            let n = if transpose { 67 } else { 128 };
            let k = if transpose { 128 } else { 67 };
            cases.push(Case::new(transpose, 64, 4, &[m, k], &[], n).dtypes(x_dtype, scale_dtype));
        }
    }
    check_all(&gpu, &cases);
}

/// Every kernel on shapes with tails in M, N and K, whichever the shape would pick: qmv over
/// many tiles of rows, qvm beyond 4 rows, qmm for a single row; every qmm tile with and without
/// split k, qmv workgroup sizes, and qvm with and without split k.
#[test]
fn every_kernel_on_every_shape() {
    let gpu = gpu_or_skip!();
    let opts = |kernel| QmmOptions { kernel, ..QmmOptions::default() };
    let mut cases = Vec::new();
    for kernel in [QmmKernel::Vector, QmmKernel::Tiled] {
        for m in [1, 3, 9, 20] {
            cases.push(Case::new(true, 32, 3, &[m, 96], &[], 37).kernel(kernel));
            cases.push(Case::new(false, 32, 5, &[m, 45], &[], 96).kernel(kernel));
        }
    }
    for rows in [32, 64, 128] {
        for split in [1, 3] {
            let options = QmmOptions { qmm_tile_rows: Some(rows), split_k: Some(split), ..opts(QmmKernel::Tiled) };
            cases.push(Case::new(true, 64, 8, &[70, 384], &[], 200).options(options));
            cases.push(Case::new(false, 64, 2, &[70, 333], &[], 192).options(options));
        }
        for (bn, columns) in [(128, 8), (128, 16), (256, 8), (256, 16)] {
            let options = QmmOptions {
                qmm_tile_rows: Some(rows),
                qmm_shape: Some(QmmShape { bn, columns }),
                ..opts(QmmKernel::Tiled)
            };
            cases.push(Case::new(true, 32, 3, &[150, 416], &[], 200).options(options));
            cases.push(Case::new(false, 128, 5, &[150, 333], &[], 256).options(options));
            cases.push(Case::new(false, 64, 6, &[40, 100], &[], 128).dtypes(DType::BF16, DType::F32).options(options));
            let options = QmmOptions { split_k: Some(3), ..options };
            cases
                .push(Case::new(true, 64, 1, &[2, 3, 384], &[2], 100).dtypes(DType::F32, DType::BF16).options(options));
        }
    }
    for wg in [32, 64, 256] {
        let options = QmmOptions { qmv_wg_size: Some(wg), ..opts(QmmKernel::Vector) };
        cases.push(Case::new(true, 128, 6, &[2, 384], &[], 50).options(options));
    }
    for split in [1, 3, 100] {
        let options = QmmOptions { split_k: Some(split), ..opts(QmmKernel::Vector) };
        cases.push(Case::new(false, 32, 4, &[2, 300], &[2], 64).options(options));
    }
    check_all(&gpu, &cases);
}

/// How far an output may stray from the twin's, relative to Σ_k |x| (q_max |s| + |b|) over its
/// row: the kernels sum s · Σ x q + b · Σ x in f32 where the twin sums x · (s q + b), and an f32
/// sum of at most 192 terms (k here) is off by at most 192 · 2^-24 of that, whichever the order;
/// two orders differ by at most twice that. (lavapipe comes within 2.6e-8.) The absolute floor
/// is for drivers that flush f32 subnormals (the "f32 subnormals" group is about 1e-39).
const TOL_EDGE_RELATIVE: f32 = 192.0 * f32::EPSILON;
const TOL_EDGE_ABSOLUTE: f32 = 1e-30;

/// Weights quantized from the named edge groups (zeros, constants, ties, extremes, subnormals,
/// non-finite values; `common::edge_groups`), every bits value, through every kernel in both
/// layouts with one and three rows of x: each output is within `TOL_EDGE_*` of the twin's, or
/// non-finite where the twin's is.
#[test]
fn edge_case_weights_on_every_kernel() {
    let gpu = gpu_or_skip!();
    let edges = common::edge_groups();
    // Each row of w: three edge groups, the middle one reversed.
    let rows: Vec<Vec<f32>> = (0..edges.len())
        .map(|i| {
            let (a, b, c) = (&edges[i].1, &edges[(i + 5) % edges.len()].1, &edges[(i + 11) % edges.len()].1);
            a.iter().chain(b.iter().rev()).chain(c).copied().collect()
        })
        .collect();
    let (rows_w, width) = (rows.len(), rows[0].len());
    let values: Vec<f32> = rows.concat();
    let mut rng = Rng::new(7);
    let mut failures = Vec::new();
    for bits in wgquant::params::SUPPORTED_BITS {
        let params = QuantParams::affine(64, bits);
        let host = reference::quantize(&values, width, params, DType::F32).unwrap();
        let weight = Tensor::from_slice(&gpu, &host.weight, &[rows_w, params.packed_width(width)]).unwrap();
        let scales = Tensor::from_slice(&gpu, &host.scales, &[rows_w, width / 64]).unwrap();
        let biases = Tensor::from_slice(&gpu, &host.biases, &[rows_w, width / 64]).unwrap();
        let q = Quantized::from_parts(weight, scales, Some(biases), params).unwrap();
        let matrix = HostMatrix { quantized: &host, rows: rows_w, params, scale_dtype: DType::F32 };
        let q_max = ((1u32 << bits) - 1) as f32;
        // |s| q_max + |b| of the group holding w's element (row, col).
        let reach = |row: usize, col: usize| {
            let g = row * (width / 64) + col / 64;
            host.scales[g].abs() * q_max + host.biases[g].abs()
        };
        for transpose in [true, false] {
            let (k, n) = if transpose { (width, rows_w) } else { (rows_w, width) };
            for kernel in [QmmKernel::Vector, QmmKernel::Tiled] {
                for m in [1, 3] {
                    let x = rng.normals(m * k, 0.1);
                    let x_gpu = Tensor::from_slice(&gpu, &x, &[m, k]).unwrap();
                    let options = QmmOptions { kernel, ..QmmOptions::default() };
                    let got =
                        common::download(&wgquant::quantized_matmul_with(&x_gpu, &q, transpose, &options).unwrap());
                    let want = reference::quantized_matmul(&x, m, &matrix, transpose, DType::F32);
                    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        let (row, out) = (i / n, i % n);
                        let bound: f32 = (0..k)
                            .map(|kk| x[row * k + kk].abs() * if transpose { reach(out, kk) } else { reach(kk, out) })
                            .sum();
                        let ok = if w.is_finite() {
                            (g - w).abs() <= TOL_EDGE_RELATIVE * bound + TOL_EDGE_ABSOLUTE
                        } else {
                            !g.is_finite()
                        };
                        if !ok {
                            failures.push(format!(
                                "b{bits} t{} {kernel:?} m{m} output ({row}, {out}): got {g}, twin {w} (bound {bound})",
                                u8::from(transpose)
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} outputs differ:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// x of rank 1 gives a vector; a 2-D x with a batched w uses its first matrix (MLX); batch axes
/// broadcast both ways; an empty x gives an empty result.
#[test]
fn ranks_and_broadcasting() {
    let gpu = gpu_or_skip!();
    let cases = [
        Case::new(true, 64, 4, &[128], &[], 24),
        Case::new(false, 64, 4, &[24], &[], 128),
        Case::new(true, 64, 4, &[2, 1, 5, 64], &[3], 8),
        Case::new(true, 64, 4, &[1, 3, 2, 64], &[2, 1], 8),
        Case::new(false, 32, 8, &[4, 1, 3, 40], &[1, 2], 32),
        Case::new(true, 32, 4, &[2, 2, 1, 64], &[2, 2], 40),
    ];
    check_all(&gpu, &cases);

    // A 2-D x with a batched weight multiplies the first matrix only.
    let mut rng = Rng::new(7);
    let batched = Case::new(true, 64, 4, &[3, 64], &[2], 16);
    let weight = make_weight(&gpu, &batched, &mut rng);
    let x = rng.normals(3 * 64, 0.125);
    let y = wgquant::quantized_matmul(&common::upload(&gpu, &x, &[3, 64], DType::F32), &weight.gpu, true).unwrap();
    assert_eq!(y.shape(), &[3, 16]);
    let first = HostMatrix {
        quantized: &weight.host[0],
        rows: 16,
        params: QuantParams::affine(64, 4),
        scale_dtype: DType::F32,
    };
    let want = reference::quantized_matmul(&x, 3, &first, true, DType::F32);
    assert!(max_abs_diff(&common::download(&y), &want) < TOL_F32);

    let empty = Tensor::zeros(&gpu, &[0, 64], DType::F32).unwrap();
    let y = wgquant::quantized_matmul(&empty, &weight.gpu, true).unwrap();
    assert_eq!(y.shape(), &[0, 16]);
}

/// Operands larger than the device's storage binding are split across dispatches: transposed
/// weights by rows of outputs, untransposed ones by rows of k (through partial sums), x and y
/// by rows, batched weights per matrix. A row that cannot fit at all is an error.
#[test]
fn operands_larger_than_a_binding_are_split() {
    if common::gpu().is_none() {
        return;
    }
    let open = |bytes: u64| {
        Gpu::with_options(wgquant::GpuOptions {
            max_storage_buffer_binding_size: Some(bytes),
            ..wgquant::GpuOptions::from_env().unwrap()
        })
        .unwrap()
    };
    let small = open(4096);
    assert_eq!(small.caps().max_binding(), 4096);
    check_all(
        &small,
        &[
            // w 300 x 128 B, x 1 KiB and y 1200 B per row: chunks of 32 outputs and 2 rows.
            Case::new(true, 64, 4, &[40, 256], &[], 300),
            Case::new(true, 32, 3, &[5, 256], &[], 300).dtypes(DType::F16, DType::F16),
            Case::new(true, 64, 4, &[3, 2, 256], &[3], 40),
        ],
    );
    let medium = open(16384);
    check_all(
        &medium,
        &[
            // w 300 rows of 128 B: 3 chunks of k, summed through partial sums.
            Case::new(false, 64, 4, &[5, 300], &[], 256),
            Case::new(false, 64, 4, &[40, 300], &[], 256).dtypes(DType::F16, DType::F16),
            Case::new(false, 32, 6, &[2, 3, 100], &[2], 256),
        ],
    );
    let tiny = open(256);
    let x = Tensor::zeros(&tiny, &[1, 4096], DType::F32).unwrap();
    let q =
        wgquant::quantize(&Tensor::zeros(&tiny, &[1, 64], DType::F32).unwrap(), QuantParams::affine(64, 4)).unwrap();
    let w = Quantized { weight: Tensor::zeros(&tiny, &[1, 512], DType::U32).unwrap(), ..q.clone() };
    let scales = Tensor::zeros(&tiny, &[1, 64], DType::F32).unwrap();
    let w = Quantized { scales: scales.clone(), biases: Some(scales), ..w };
    let err = wgquant::quantized_matmul(&x, &w, true).unwrap_err();
    assert!(matches!(err, wgquant::Error::ExceedsDeviceLimit { .. }), "{err}");
}

/// Without subgroup operations, qmv totals its partial sums with a tree in workgroup memory.
#[test]
fn workgroup_reduction_without_subgroups() {
    if common::gpu().is_none() {
        return;
    }
    let gpu = Gpu::with_options(wgquant::GpuOptions {
        without_features: wgpu::Features::SUBGROUP,
        ..wgquant::GpuOptions::from_env().unwrap()
    })
    .unwrap();
    assert!(!gpu.caps().has_subgroups());
    check_all(
        &gpu,
        &[
            Case::new(true, 64, 4, &[1, 256], &[], 40),
            Case::new(true, 32, 3, &[3, 96], &[], 19),
            Case::new(true, 128, 8, &[8, 384], &[], 9),
        ],
    );
}

/// `Gpu::batch` submits many matmuls at once; a read inside a batch first submits what the read
/// needs; a failing batch submits nothing; `Gpu::time` times a batch's pass.
#[test]
fn many_matmuls_in_one_submit() {
    if common::gpu().is_none() {
        return;
    }
    // A device of its own: other tests submit to the shared one concurrently.
    let gpu = Gpu::with_options(wgquant::GpuOptions::from_env().unwrap()).unwrap();
    let mut rng = Rng::new(11);
    let cases: Vec<Case> = [(1, 256, 40), (3, 128, 64), (40, 64, 100)]
        .iter()
        .map(|&(m, k, n)| Case::new(true, 64, 4, &[m, k], &[], n))
        .collect();
    let weights: Vec<Weight> = cases.iter().map(|c| make_weight(&gpu, c, &mut rng)).collect();
    let xs: Vec<Vec<f32>> = cases.iter().map(|c| rng.normals(c.x_shape.iter().product(), 0.1)).collect();
    let x_gpu: Vec<Tensor> =
        cases.iter().zip(&xs).map(|(c, x)| common::upload(&gpu, x, &c.x_shape, DType::F32)).collect();

    let before = gpu.submission_count();
    let ys = gpu
        .batch(|| {
            x_gpu
                .iter()
                .zip(&weights)
                .map(|(x, w)| wgquant::quantized_matmul(x, &w.gpu, true))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    assert_eq!(gpu.submission_count() - before, 1, "three matmuls, one submission");
    for ((case, x), (w, y)) in cases.iter().zip(&xs).zip(weights.iter().zip(&ys)) {
        let (_, want) = expected(case, x, w, DType::F32);
        assert!(max_abs_diff(&common::download(y), &want) < TOL_F32, "{}", case.name());
    }

    // Reading inside a batch submits the recorded work first.
    let inside = gpu
        .batch(|| {
            let y = wgquant::quantized_matmul(&x_gpu[0], &weights[0].gpu, true)?;
            Ok(common::download(&y))
        })
        .unwrap();
    assert_eq!(inside, common::download(&ys[0]));

    // A failing batch submits nothing.
    let before = gpu.submission_count();
    let failed: wgquant::Result<()> = gpu.batch(|| {
        wgquant::quantized_matmul(&x_gpu[0], &weights[0].gpu, true)?;
        wgquant::quantized_matmul(&x_gpu[1], &weights[0].gpu, true)?;
        Ok(())
    });
    assert!(failed.is_err());
    assert_eq!(gpu.submission_count(), before);

    if gpu.caps().has_timestamps() {
        let (y, elapsed) = gpu.time(|| wgquant::quantized_matmul(&x_gpu[2], &weights[2].gpu, true)).unwrap();
        assert_eq!(y.shape(), &[40, 100]);
        assert!(elapsed.as_nanos() > 0);
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// Every quantized-matmul kernel the dispatcher can build validates with naga and translates to
/// SPIR-V, MSL and HLSL (no GPU needed).
#[test]
fn kernels_translate_to_every_backend() {
    use wgquant::kernels::{self, KernelKey};
    let capabilities = naga::valid::Capabilities::SUBGROUP;
    let mut count = 0;
    for key in KernelKey::all() {
        if key.op() != "quantized_matmul" {
            continue;
        }
        let source = kernels::source(&key);
        let (module, info) =
            kernels::validated_module(&source, &key.constants(), capabilities).unwrap_or_else(|e| panic!("{key}: {e}"));
        naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{key}: SPIR-V: {e}"));
        let msl = naga::back::msl::Options { lang_version: (2, 4), ..Default::default() };
        naga::back::msl::write_string(&module, &info, &msl, &naga::back::msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{key}: MSL: {e}"));
        let mut hlsl = String::new();
        naga::back::hlsl::Writer::new(&mut hlsl, &naga::back::hlsl::Options::default(), &Default::default())
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{key}: HLSL: {e}"));
        count += 1;
    }
    eprintln!("{count} quantized-matmul kernels translated");
}

/// Every finite f16 pattern of x, and every bf16 one of moderate size, comes through the
/// kernels' own decoding exactly, on
/// the one-row path (which decodes x itself), the several-rows path (x prepared first) and the
/// tiled kernel: a one-hot 1-bit weight (scale 1, bias 0) makes output n equal x[n]. Finite
/// patterns fill whole rows; an infinity or NaN would turn every other output of its row into
/// 0 · inf = NaN, so those go one per row.
#[test]
fn every_16_bit_x_decodes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let k = 4096;
    let params = QuantParams::affine(64, 1);
    // Row n has its only 1 at column n.
    let words: Vec<u32> = (0..k * k / 32)
        .map(|i| if (i % (k / 32)) == (i / (k / 32)) / 32 { 1 << ((i / (k / 32)) % 32) } else { 0 })
        .collect();
    let weight = Tensor::from_slice(&gpu, &words, &[k, k / 32]).unwrap();
    let ones = common::upload(&gpu, &vec![1.0; k * k / 64], &[k, k / 64], DType::F16);
    let zeros = common::upload(&gpu, &vec![0.0; k * k / 64], &[k, k / 64], DType::F16);
    let q = Quantized::from_parts(weight, ones, Some(zeros), params).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let decode = |bits: u16| match dtype {
            DType::F16 => half::f16::from_bits(bits).to_f32(),
            _ => half::bf16::from_bits(bits).to_f32(),
        };
        // bf16 has f32's exponents: its subnormals are f32 subnormals, which drivers may flush in
        // arithmetic (decoding is exact, the products need not be), and near its largest values
        // a block's Σ x, which the biases multiply, overflows. So bf16 keeps to zero and
        // magnitudes in [2^-120, 2^100]; f16 takes every finite value.
        let in_range = |v: f32| match dtype {
            DType::F16 => v.is_finite(),
            _ => v == 0.0 || (2f32.powi(-120)..=2f32.powi(100)).contains(&v.abs()),
        };
        let finite: Vec<u16> = (0..=u16::MAX).filter(|&b| in_range(decode(b))).collect();
        // Both infinities, quiet and signalling NaNs of either sign, the largest payload.
        let special: Vec<u16> = match dtype {
            DType::F16 => vec![0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xfe00, 0x7fff],
            _ => vec![0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffc0, 0x7fff],
        };
        let x_of = |patterns: &[u16], rows: usize| -> (Vec<f32>, Tensor) {
            let mut values: Vec<f32> = patterns.iter().map(|&b| decode(b)).collect();
            values.resize(rows * k, 0.0);
            let t = common::upload(&gpu, &values, &[rows, k], dtype);
            (values, t)
        };
        for (kernel, rows) in [(QmmKernel::Vector, 1), (QmmKernel::Vector, 8), (QmmKernel::Tiled, 8)] {
            let options = QmmOptions { kernel, ..QmmOptions::default() };
            for patterns in finite.chunks(rows * k) {
                let (values, x) = x_of(patterns, rows);
                let y = common::download(&wgquant::quantized_matmul_with(&x, &q, true, &options).unwrap());
                let diff = y.iter().zip(&values).position(|(a, b)| a.to_bits() != b.to_bits() && a != b);
                assert_eq!(diff, None, "{dtype} {kernel:?} rows {rows}: first difference at {diff:?}");
            }
            // One special per row, at column 0. A NaN makes every output NaN. An infinity makes
            // output 0 infinite or NaN and the others NaN (0 · inf): the kernels add the biases
            // as bias · Σ x, as MLX's GPU kernels do, so a zero bias times an infinite sum is NaN
            // where dequantizing first gives ±inf · 1.
            for chunk in special.chunks(rows) {
                let mut values = vec![0.0f32; rows * k];
                for (r, &b) in chunk.iter().enumerate() {
                    values[r * k] = decode(b);
                }
                let x = common::upload(&gpu, &values, &[rows, k], dtype);
                let y = common::download(&wgquant::quantized_matmul_with(&x, &q, true, &options).unwrap());
                for (r, &b) in chunk.iter().enumerate() {
                    let v = decode(b);
                    let first = y[r * k];
                    assert!(!first.is_finite() && (v.is_infinite() || first.is_nan()), "{dtype} {b:#06x}: {first}");
                    assert!(first.is_nan() || first == v, "{dtype} {b:#06x}: {first}");
                    assert!(y[r * k + 1..(r + 1) * k].iter().all(|o| o.is_nan()), "{dtype} {b:#06x}: 0 · {v}");
                }
            }
        }
    }
}
