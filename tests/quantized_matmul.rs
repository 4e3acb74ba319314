//! `quantized_matmul` on the GPU against its CPU twin (`reference::quantized_matmul`:
//! MLX's dequantize, then an f32 matmul) and against real MLX: the affine cases of MLX's
//! `python/tests/test_quantized.py`, shrunk where lavapipe would be slow but
//! covering every kernel, bits value, group size, tail in M, N and K, batching and broadcasting.

mod common;

use common::{Fixture, Rng};
use wgquant::kernels::QmmShape;
use wgquant::reference::{self, HostMatrix};
use wgquant::{DType, Gpu, QmmKernel, QmmOptions, QuantParams, Quantized, Tensor};

/// How far our f32 results may be from MLX's f32 results on its fixtures. Each side is an f32
/// sum in its own order, within `common::f32_matmul_bound` of the exact product (about 1e-4 at
/// K = 256 in the worst case); in practice orders differ by a few ulps of the outputs (below
/// 1e-6 on every fixture), and every bug planted in `planted_bugs_fail_the_checks` moves some
/// output of every fixture it applies to by more than 1e-5.
const TOL_MLX_F32: f32 = 1e-5;

/// Outputs within this of each other pass any bound: drivers may flush f32 subnormals (the
/// "f32 subnormals" edge group is about 1e-39, its products smaller still).
const SUBNORMAL_FLUSH: f32 = 1e-30;

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

/// Quantizes w ~ N(0, 1)/√K (per MLX's tests) on the CPU twin, one matrix per batch entry: the
/// twin is bit-exact with the GPU kernel (tests/mlx_parity.rs).
fn host_weight(case: &Case, rng: &mut Rng) -> Vec<reference::HostQuantized> {
    let (k, n) = (case.k(), case.n);
    let (rows, cols) = if case.transpose { (n, k) } else { (k, n) };
    let params = QuantParams::affine(case.group_size, case.bits);
    let matrices: usize = case.w_batch.iter().product();
    let scale = 1.0 / (k as f32).sqrt();
    (0..matrices)
        .map(|_| {
            let w = common::round_to(&rng.normals(rows * cols, scale), case.scale_dtype);
            reference::quantize(&w, cols, params, case.scale_dtype).unwrap()
        })
        .collect()
}

/// [`host_weight`], uploaded.
fn make_weight(gpu: &Gpu, case: &Case, rng: &mut Rng) -> Weight {
    let (k, n) = (case.k(), case.n);
    let (rows, cols) = if case.transpose { (n, k) } else { (k, n) };
    let params = QuantParams::affine(case.group_size, case.bits);
    let host = host_weight(case, rng);
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

/// The output batches of `case` with MLX's broadcasting: the output shape, and per output
/// matrix the offset of its rows in x and the index of its weight matrix.
fn batches(case: &Case) -> (Vec<usize>, Vec<(usize, usize)>) {
    let (k, n) = (case.k(), case.n);
    let xs = &case.x_shape;
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
        let parts = (0..out_batch.iter().product()).map(|b| (index(b, &xb) * m * k, index(b, &wb))).collect();
        (out_batch.into_iter().chain([m, n]).collect(), parts)
    } else {
        let shape = xs[..xs.len() - 1].iter().copied().chain([n]).collect();
        (shape, vec![(0, 0)])
    }
}

/// Rows of x per output matrix.
fn rows_per_batch(case: &Case, x_len: usize) -> usize {
    let xs = &case.x_shape;
    if xs.len() > 2 && !case.w_batch.is_empty() {
        xs[xs.len() - 2]
    } else {
        x_len / case.k()
    }
}

/// The expected result, the CPU twin per output batch with MLX's broadcasting, and each output's
/// bound on |GPU − twin|: `common::f32_matmul_bound` for the two f32 sums, one ulp of the output
/// dtype for their two roundings to it, and `SUBNORMAL_FLUSH`.
fn expected(case: &Case, x: &[f32], weight: &Weight, out_dtype: DType) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let product =
        |x: &[f32], m: usize, w: &HostMatrix<'_>| reference::quantized_matmul(x, m, w, case.transpose, out_dtype);
    expected_with(case, x, &weight.host, weight.rows, out_dtype, &product)
}

/// A product of `m` rows of x with one weight matrix: the twin, or a planted bug.
type Product<'a> = &'a dyn Fn(&[f32], usize, &HostMatrix<'_>) -> Vec<f32>;

/// [`expected`] with `product` in place of the twin: the planted bugs' check uses it.
fn expected_with(
    case: &Case,
    x: &[f32],
    host: &[reference::HostQuantized],
    rows: usize,
    out_dtype: DType,
    product: Product<'_>,
) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let (k, n) = (case.k(), case.n);
    let params = QuantParams::affine(case.group_size, case.bits);
    let m = rows_per_batch(case, x.len());
    let (shape, parts) = batches(case);
    let (mut want, mut bounds) = (Vec::new(), Vec::new());
    for (x_offset, w_index) in parts {
        let xm = &x[x_offset..][..m * k];
        let w = HostMatrix { quantized: &host[w_index], rows, params, scale_dtype: case.scale_dtype };
        let y = product(xm, m, &w);
        let terms = common::WeightTerms::new(w.quantized, w.params, w.scale_dtype);
        for (i, &v) in y.iter().enumerate() {
            let (row, out) = (i / n, i % n);
            let (reach, rounding) =
                terms.sums(&xm[row * k..][..k], |kk| if case.transpose { out * k + kk } else { kk * n + out });
            let bound = common::f32_matmul_bound(k, reach, rounding);
            bounds.push(bound + common::ulp(out_dtype, v.abs() + bound) + SUBNORMAL_FLUSH);
        }
        want.extend(y);
    }
    (shape, want, bounds)
}

/// Runs `case` on the GPU and compares with the twin; returns the worst |Δ| / bound.
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
    let (shape, want, bounds) = expected(case, &x, &weight, out_dtype);
    assert_eq!(y.shape(), &shape[..], "{}: shape", case.name());
    let got = common::download(&y);
    assert_within_bounds(&case.name(), &got, &want, &bounds);
    common::worst_ratio(&got, &want, &bounds)
}

fn assert_within_bounds(name: &str, got: &[f32], want: &[f32], bounds: &[f32]) {
    if let Some((i, g, w, ratio)) = common::first_outside_bound(got, want, bounds) {
        panic!("{name}: output {i}: got {g}, twin {w}: |Δ| = {ratio:.3} bounds ({:e})", bounds[i]);
    }
}

fn check_all(gpu: &Gpu, cases: &[Case]) {
    let mut worst = 0.0f32;
    for (i, case) in cases.iter().enumerate() {
        worst = worst.max(check(gpu, case, 1000 + i as u64));
    }
    eprintln!("{} cases, worst |Δ| = {worst:.3} of its bound", cases.len());
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

/// `test_throw`: each of MLX's invalid calls fails with MLX's error (recorded from MLX 0.32.4,
/// tests/fixtures/mlx_errors.txt), and the valid one runs.
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
    let mlx = common::mlx_errors();
    // quantized_matmul(x, w_q.T, scales, biases): the weight and scales disagree.
    assert_eq!(message(&q(&weight_t, &scales, &scales), true), mlx["throw_w_transposed"]);
    // quantized_matmul(x, w_q.T, scales.T, biases): scales and biases differ.
    assert_eq!(message(&q(&weight_t, &scales_t, &scales), true), mlx["throw_scales_transposed"]);
    // quantized_matmul(x, w_q, scales, biases, transpose=False): 512 against 32 rows.
    assert_eq!(message(&q(&weight, &scales, &scales), false), mlx["throw_not_transposed"]);
    // quantized_matmul(x, w_q, scales.T, biases.T).
    assert_eq!(message(&q(&weight, &scales_t, &scales_t), true), mlx["throw_both_transposed"]);
    let y = wgquant::quantized_matmul(&x, &q(&weight, &scales, &scales), true).unwrap();
    assert_eq!(y.shape(), &[10, 32]);
    assert!(common::download(&y).iter().all(|&v| v == 0.0));
}

/// The `qmm_*` messages recorded from real MLX 0.32.4 (tests/fixtures/mlx_errors.txt), and
/// wgquant's own messages where MLX runs or fails differently, labelled as such.
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
    assert_eq!(qmm(&f32s(&[3, 256]), u32s(&[32, 32]), f32s(&[32, 4]), None, 64, 4, true), mlx["qmm_no_biases"]);
    // Batch axes that do not broadcast.
    assert_eq!(
        qmm(&f32s(&[2, 5, 64]), u32s(&[3, 8, 8]), f32s(&[3, 8, 1]), Some(f32s(&[3, 8, 1])), 64, 4, true),
        mlx["qmm_batch_broadcast"]
    );

    // wgquant's own refusals, where MLX behaves otherwise:
    // MLX promotes an integer x to the scales' dtype and multiplies; wgquant takes float x only.
    assert_eq!(mlx["qmm_uint32_x"], "<no error>");
    let ints = Tensor::zeros(&gpu, &[3, 256], DType::U32).unwrap();
    assert_eq!(
        qmm(&ints, u32s(&[32, 32]), f32s(&[32, 4]), Some(f32s(&[32, 4])), 64, 4, true),
        "[quantized_matmul] Only real floating types are supported but x.dtype() == uint32."
    );
    // Shapes that agree at group size 16: MLX's kernel refuses it only when it runs, with an
    // untagged RuntimeError; wgquant refuses it at the call, in the words of MLX's quantize.
    assert_eq!(mlx["qmm_group_16"], "<RuntimeError> Quantization group size must be 32, 64 or 128.");
    assert_eq!(
        qmm(&f32s(&[3, 1024]), u32s(&[32, 32]), f32s(&[32, 64]), Some(f32s(&[32, 64])), 16, 1, true),
        "[quantized_matmul] The requested group size 16 is not supported. The supported group sizes are 32, 64, and 128."
    );
}

/// One case of tests/fixtures/mlx_qmm.safetensors: real `mx.quantized_matmul` operands and
/// result.
struct MlxCase {
    name: String,
    params: QuantParams,
    transpose: bool,
    x: Vec<f32>,
    x_shape: Vec<usize>,
    dtype: DType,
    host: reference::HostQuantized,
    w_shape: Vec<usize>,
    s_shape: Vec<usize>,
    y: Vec<f32>,
    y_shape: Vec<usize>,
    y_dtype: DType,
}

impl MlxCase {
    fn all() -> Vec<MlxCase> {
        let fixture = Fixture::load("mlx_qmm.safetensors");
        let cases: Vec<MlxCase> = fixture
            .cases()
            .into_iter()
            .map(|name| {
                let field = |prefix: &str| -> u32 {
                    name.split('_')
                        .find_map(|p| p.strip_prefix(prefix)?.parse().ok())
                        .unwrap_or_else(|| panic!("{name}"))
                };
                let (x, x_shape, dtype) = fixture.float(&format!("{name}.x"));
                let (weight, w_shape) = fixture.u32(&format!("{name}.wq"));
                let (scales, s_shape, _) = fixture.float(&format!("{name}.scales"));
                let (biases, _, _) = fixture.float(&format!("{name}.biases"));
                let (y, y_shape, y_dtype) = fixture.float(&format!("{name}.y"));
                MlxCase {
                    params: QuantParams::affine(field("gs"), field("b")),
                    transpose: name.starts_with("t1"),
                    name,
                    x,
                    x_shape,
                    dtype,
                    host: reference::HostQuantized { weight, scales, biases },
                    w_shape,
                    s_shape,
                    y,
                    y_shape,
                    y_dtype,
                }
            })
            .collect();
        assert_eq!(cases.len(), 27, "fixture cases");
        cases
    }

    /// (m, k, n) of a 2-D case.
    fn mkn(&self) -> (usize, usize, usize) {
        let [m, k] = self.x_shape[..] else { panic!("{}: x is not 2-D", self.name) };
        (m, k, *self.y_shape.last().unwrap())
    }

    fn matrix(&self) -> HostMatrix<'_> {
        HostMatrix {
            quantized: &self.host,
            rows: self.w_shape[self.w_shape.len() - 2],
            params: self.params,
            scale_dtype: self.dtype,
        }
    }

    /// Whether `got` (this case's y, computed by us) is close enough to MLX's: within
    /// `TOL_MLX_F32` for f32; for f16 and bf16, where MLX accumulates in that dtype, within
    /// `common::bound_against_mlx_half` (about K ulps) of every output.
    fn check(&self, got: &[f32]) -> Result<(), String> {
        if self.y_dtype == DType::F32 {
            let worst = got
                .iter()
                .zip(&self.y)
                .map(|(g, w)| if g.is_nan() { f32::INFINITY } else { (g - w).abs() })
                .fold(0.0, f32::max);
            return if worst <= TOL_MLX_F32 {
                Ok(())
            } else {
                Err(format!("{}: max |Δ| = {worst:e} against MLX", self.name))
            };
        }
        let (m, k, n) = self.mkn();
        let dense = reference::dequantize(
            &self.host.weight,
            &self.host.scales,
            &self.host.biases,
            self.params,
            self.dtype,
            self.dtype,
        );
        let terms = common::WeightTerms::new(&self.host, self.params, self.dtype);
        let column = |t: &[f32], out: usize| -> Vec<f32> {
            (0..k).map(|kk| if self.transpose { t[out * k + kk] } else { t[kk * n + out] }).collect()
        };
        for (i, &ours) in got.iter().enumerate().take(m * n) {
            let (row, out) = (i / n, i % n);
            let x_row = &self.x[row * k..][..k];
            let (y, bound) = common::bound_against_mlx_half(
                x_row,
                &column(&dense, out),
                &column(&terms.reach, out),
                &column(&terms.rounding, out),
                self.y_dtype,
                ours,
            );
            assert_eq!(y.to_bits(), self.y[i].to_bits(), "{}: output {i}: MLX's sum is not sequential", self.name);
            if !common::within(ours, y, bound) {
                let ratio = (ours - y).abs() / bound;
                return Err(format!("{}: output {i}: {ours} against MLX's {y}, |Δ| = {ratio:.3} bounds", self.name));
            }
        }
        Ok(())
    }
}

/// MLX's f16 and bf16 results are sequential sums in their dtype, bit for bit, for bits 1 to 8
/// in both layouts (the fact `common::mlx_sequential_dot` and the bounds against MLX rest on),
/// and the twin is within `MlxCase::check` of every case (no GPU needed).
#[test]
fn twin_matches_mlx_fixtures() {
    for case in MlxCase::all() {
        if case.x_shape.len() != 2 {
            continue; // the batched case, checked on the GPU
        }
        let (m, _, _) = case.mkn();
        let y = reference::quantized_matmul(&case.x, m, &case.matrix(), case.transpose, case.y_dtype);
        case.check(&y).unwrap();
    }
}

/// Real `mx.quantized_matmul` results (tests/fixtures/mlx_qmm.safetensors): 27 cases over both
/// layouts, every bits value and group size, f32, f16 and bf16, and a broadcast batch.
#[test]
fn matches_mlx_fixtures() {
    let gpu = gpu_or_skip!();
    for case in MlxCase::all() {
        let q = Quantized::from_parts(
            Tensor::from_slice(&gpu, &case.host.weight, &case.w_shape).unwrap(),
            common::upload(&gpu, &case.host.scales, &case.s_shape, case.dtype),
            Some(common::upload(&gpu, &case.host.biases, &case.s_shape, case.dtype)),
            case.params,
        )
        .unwrap();
        let x = common::upload(&gpu, &case.x, &case.x_shape, case.dtype);
        let y = wgquant::quantized_matmul(&x, &q, case.transpose).unwrap();
        assert_eq!(y.shape(), &case.y_shape[..], "{}", case.name);
        assert_eq!(y.dtype(), case.y_dtype, "{}", case.name);
        case.check(&common::download(&y)).unwrap();
    }
}

// ---- the checks themselves: planted bugs fail them -------------------------------------------

/// Bugs a quantized-matmul kernel could have, planted in the CPU twin.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Planted {
    /// Sums in f16 instead of f32.
    AccumulateInF16,
    /// Reads f32 scales and biases as f16.
    ScalesAsF16,
    /// Reads f32 scales and biases as bf16.
    ScalesAsBf16,
    /// One 8-bit code per group off by one.
    CodeOffByOne,
    /// Every group takes the next group's scale.
    NextGroupsScale,
}

impl Planted {
    const ALL: [Planted; 5] = [
        Planted::AccumulateInF16,
        Planted::ScalesAsF16,
        Planted::ScalesAsBf16,
        Planted::CodeOffByOne,
        Planted::NextGroupsScale,
    ];

    /// Whether the bug changes anything for this format (only 8-bit codes are off by one here; a
    /// product whose scales or output are already f16 is not changed by reading them as such).
    fn applies(self, bits: u32, scale_dtype: DType, out_dtype: DType) -> bool {
        match self {
            Planted::AccumulateInF16 => out_dtype == DType::F32,
            Planted::ScalesAsF16 | Planted::ScalesAsBf16 => scale_dtype == DType::F32,
            Planted::CodeOffByOne => bits == 8,
            Planted::NextGroupsScale => true,
        }
    }

    /// The twin's `x @ w` with this bug.
    fn product(self, x: &[f32], m: usize, w: &HostMatrix<'_>, transpose: bool, out_dtype: DType) -> Vec<f32> {
        let mut q = w.quantized.clone();
        let params = w.params;
        match self {
            Planted::AccumulateInF16 => {
                let dense =
                    reference::dequantize(&q.weight, &q.scales, &q.biases, params, w.scale_dtype, w.scale_dtype);
                let k = x.len() / m.max(1);
                let n = dense.len() / k;
                let f16 = |v: f32| common::round(v, DType::F16);
                let mut y = Vec::with_capacity(m * n);
                for row in 0..m {
                    for out in 0..n {
                        let at = |kk: usize| if transpose { out * k + kk } else { kk * n + out };
                        let sum = (0..k).fold(0f32, |acc, kk| f16(acc + x[row * k + kk] * dense[at(kk)]));
                        y.push(common::round(sum, out_dtype));
                    }
                }
                return y;
            }
            Planted::ScalesAsF16 | Planted::ScalesAsBf16 => {
                let dtype = if self == Planted::ScalesAsF16 { DType::F16 } else { DType::BF16 };
                q.scales = common::round_to(&q.scales, dtype);
                q.biases = common::round_to(&q.biases, dtype);
            }
            Planted::CodeOffByOne => {
                let count = q.weight.len() * 32 / params.bits as usize;
                let top = (1u32 << params.bits) - 1;
                let mut codes: Vec<u32> = (0..count).map(|i| reference::unpack(&q.weight, params.bits, i)).collect();
                for c in codes.iter_mut().step_by(params.group_size as usize) {
                    *c = if *c == top { *c - 1 } else { *c + 1 };
                }
                q.weight = reference::pack(&codes, params.bits);
            }
            Planted::NextGroupsScale => q.scales.rotate_left(1),
        }
        reference::quantized_matmul(x, m, &HostMatrix { quantized: &q, ..*w }, transpose, out_dtype)
    }
}

/// The checks the GPU tests make, run on the CPU twin with each bug of `Planted` in it: every
/// bug fails the check against MLX's f32 fixtures on every fixture it applies to, and the
/// derived bound against the twin on random cases (a worst case over every summation order, so
/// the bug that moves outputs least, scales read as f16, gets through it on one case of 9),
/// while the correct twin, and an f32 sum of the exact weights in the opposite order
/// (a correct kernel's other order), pass.
#[test]
fn planted_bugs_fail_the_checks() {
    let (mut fixtures, mut random) = (Vec::new(), Vec::new());
    // MLX's fixtures: the f32 ones (f16 and bf16 ones accumulate in their own dtype).
    for case in MlxCase::all() {
        if case.y_dtype != DType::F32 || case.x_shape.len() != 2 {
            continue;
        }
        let (m, _, _) = case.mkn();
        let w = case.matrix();
        case.check(&reference::quantized_matmul(&case.x, m, &w, case.transpose, DType::F32)).unwrap();
        for bug in Planted::ALL.into_iter().filter(|b| b.applies(case.params.bits, case.dtype, DType::F32)) {
            let got = bug.product(&case.x, m, &w, case.transpose, DType::F32);
            let worst = got.iter().zip(&case.y).map(|(g, y)| (g - y).abs()).fold(0.0, f32::max);
            assert!(case.check(&got).is_err(), "{bug:?} passes the MLX fixture {}", case.name);
            fixtures.push((bug, worst / TOL_MLX_F32));
        }
    }
    // Random cases against the twin's bounds.
    let cases = [
        Case::new(true, 64, 4, &[8, 256], &[], 128),
        Case::new(false, 64, 4, &[3, 128], &[], 128),
        Case::new(true, 32, 8, &[5, 128], &[], 40),
        Case::new(false, 32, 8, &[2, 67], &[], 64),
        Case::new(true, 128, 2, &[1, 256], &[], 67),
        Case::new(true, 32, 3, &[3, 96], &[], 37),
        Case::new(false, 128, 5, &[4, 45], &[], 128),
        Case::new(true, 64, 1, &[2, 3, 128], &[2], 24),
        Case::new(true, 64, 6, &[3, 192], &[], 16).dtypes(DType::F16, DType::F32),
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut rng = Rng::new(7000 + i as u64);
        let rows = if case.transpose { case.n } else { case.k() };
        let host = host_weight(case, &mut rng);
        let count: usize = case.x_shape.iter().product();
        let x = common::round_to(&rng.normals(count, 1.0 / (case.k() as f32).sqrt()), case.x_dtype);
        let out_dtype = case.x_dtype.promote(case.scale_dtype);
        let run = |product: Product<'_>| expected_with(case, &x, &host, rows, out_dtype, product);
        let (_, want, bounds) = run(&|x, m, w| reference::quantized_matmul(x, m, w, case.transpose, out_dtype));
        let (_, reversed, _) = run(&|x, m, w| reversed_exact_sum(x, m, w, case.transpose, out_dtype));
        assert_within_bounds(&format!("{}: the reversed exact sum", case.name()), &reversed, &want, &bounds);
        for bug in Planted::ALL.into_iter().filter(|b| b.applies(case.bits, case.scale_dtype, out_dtype)) {
            let (_, got, _) = run(&|x, m, w| bug.product(x, m, w, case.transpose, out_dtype));
            random.push((bug, case.name(), common::worst_ratio(&got, &want, &bounds)));
        }
    }
    for bug in Planted::ALL {
        let on_fixtures: Vec<f32> = fixtures.iter().filter(|r| r.0 == bug).map(|r| r.1).collect();
        let on_random: Vec<f32> = random.iter().filter(|r| r.0 == bug).map(|r| r.2).collect();
        let failed = on_random.iter().filter(|&&r| r > 1.0).count();
        let range =
            |v: &[f32]| (v.iter().copied().fold(f32::INFINITY, f32::min), v.iter().copied().fold(0.0, f32::max));
        let ((fmin, fmax), (rmin, rmax)) = (range(&on_fixtures), range(&on_random));
        eprintln!(
            "{bug:?}: fails all {} MLX fixtures it applies to, worst |Δ| {fmin:.1} to {fmax:.3e} times 1e-5; \
             fails {failed} of {} random cases, worst |Δ| {rmin:.2} to {rmax:.3e} times the bound",
            on_fixtures.len(),
            on_random.len()
        );
        assert!(!on_fixtures.is_empty() && failed > 0, "{bug:?} is never caught");
    }
}

/// A correct product the other way round: each weight s q + b exact (f64, rounded once to f32,
/// as no kernel rounds it to the scales' dtype), summed in f32 from the last k to the first.
fn reversed_exact_sum(x: &[f32], m: usize, w: &HostMatrix<'_>, transpose: bool, out_dtype: DType) -> Vec<f32> {
    let q = w.quantized;
    let dense = reference::dequantize_with(&q.weight, &q.scales, &q.biases, w.params, DType::F32, |c, s, b| {
        (f64::from(c) * f64::from(s) + f64::from(b)) as f32
    });
    let k = x.len() / m.max(1);
    let n = dense.len() / k;
    let mut y = Vec::with_capacity(m * n);
    for row in 0..m {
        for out in 0..n {
            let at = |kk: usize| if transpose { out * k + kk } else { kk * n + out };
            y.push(common::round((0..k).rev().fold(0f32, |acc, kk| acc + x[row * k + kk] * dense[at(kk)]), out_dtype));
        }
    }
    y
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
    // A tile or workgroup size asked for by the caller is kept, so where it exceeds the
    // device (WebGPU's 16 KiB of workgroup memory refuses every 256-column tile and, without
    // subgroups, qmv workgroups of 256) the call is refused with the limit, and every other
    // case runs.
    let (mut worst, mut refused) = (0.0f32, 0);
    for (i, case) in cases.iter().enumerate() {
        match asked_limit(&gpu, case) {
            None => worst = worst.max(check(&gpu, case, 1000 + i as u64)),
            Some((what, value, limit)) => {
                assert_refused(&gpu, case, what, value, limit);
                refused += 1;
            }
        }
    }
    eprintln!("{} cases ({refused} refused by the device's limits), worst |Δ| = {worst:.3} of its bound", cases.len());
    // WebGPU's defaults, which every device meets, refuse 25 of the 82.
    assert!(refused <= 25, "{refused} of {} cases refused", cases.len());
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// The device limit the tile or qmv workgroup size `case` asks for exceeds, if any: what
/// `quantized_matmul` must name (`what`, the knobs' need, the device's limit).
fn asked_limit(gpu: &Gpu, case: &Case) -> Option<(&'static str, u64, u64)> {
    use wgquant::kernels::{QmvKey, Reduction, ResourceUsage};
    let (caps, o) = (gpu.caps(), &case.options);
    let usage = match (o.kernel, o.qmm_tile_rows, o.qmm_shape, o.qmv_wg_size.filter(|_| case.transpose)) {
        (QmmKernel::Tiled, Some(bm), Some(shape), _) => {
            ResourceUsage { workgroup_memory: shape.workgroup_memory(bm), invocations: shape.invocations(bm).into() }
        }
        (QmmKernel::Vector, _, _, Some(wg_size)) => {
            // The planner sizes qmv's reduction for the adapter's smallest subgroup, within
            // what wgpu reports, rounded down to a power of two.
            let reduction = if caps.has_subgroups() {
                let min =
                    caps.info.subgroup_min_size.clamp(wgpu::MINIMUM_SUBGROUP_MIN_SIZE, wgpu::MAXIMUM_SUBGROUP_MAX_SIZE);
                Reduction::Subgroup { min_size: 1 << min.ilog2() }
            } else {
                Reduction::Workgroup
            };
            ResourceUsage {
                workgroup_memory: QmvKey::workgroup_memory(wg_size, reduction),
                invocations: wg_size.into(),
            }
        }
        _ => return None,
    };
    let memory = u64::from(caps.limits.max_compute_workgroup_storage_size);
    let invocations = u64::from(caps.limits.max_compute_invocations_per_workgroup);
    if usage.workgroup_memory > memory {
        Some(("workgroup memory (bytes)", usage.workgroup_memory, memory))
    } else if usage.invocations > invocations {
        Some(("invocations per workgroup", usage.invocations, invocations))
    } else {
        None
    }
}

/// `case` fails with `ExceedsDeviceLimit` naming `what`, `value` and `limit`.
fn assert_refused(gpu: &Gpu, case: &Case, what: &str, value: u64, limit: u64) {
    let weight = make_weight(gpu, case, &mut Rng::new(1));
    let x = Tensor::zeros(gpu, &case.x_shape, case.x_dtype).unwrap();
    match wgquant::quantized_matmul_with(&x, &weight.gpu, case.transpose, &case.options) {
        Err(wgquant::Error::ExceedsDeviceLimit { op: "quantized_matmul", what: w, value: v, limit: l })
            if (w, v, l) == (what, value, limit) => {}
        other => panic!("{}: expected {what} {value} over the limit {limit}, got {other:?}", case.name()),
    }
}

/// Weights quantized from the named edge groups (zeros, constants, ties, extremes, subnormals,
/// non-finite values; `common::edge_groups`), every bits value, through every kernel in both
/// layouts with one and three rows of x: each output is within the bound of `expected` (for
/// K = 192, about 194 ε Σ_k |x| (q_max |s| + |b|)) of the twin's, or non-finite where the twin's
/// is. (lavapipe comes within 2.6e-8 of Σ_k |x| (q_max |s| + |b|).)
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
        let terms = common::WeightTerms::new(&host, params, DType::F32);
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
                    let bounds: Vec<f32> = (0..m * n)
                        .map(|i| {
                            let (row, out) = (i / n, i % n);
                            let (reach, rounding) =
                                terms
                                    .sums(&x[row * k..][..k], |kk| if transpose { out * k + kk } else { kk * n + out });
                            let bound = common::f32_matmul_bound(k, reach, rounding);
                            bound + common::ulp(DType::F32, want[i].abs() + bound) + SUBNORMAL_FLUSH
                        })
                        .collect();
                    if let Some((i, g, w, ratio)) = common::first_outside_bound(&got, &want, &bounds) {
                        failures.push(format!(
                            "b{bits} t{} {kernel:?} m{m} output ({}, {}): got {g}, twin {w}: |Δ| = {ratio:.3} bounds",
                            u8::from(transpose),
                            i / n,
                            i % n
                        ));
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
    let (_, want, bounds) = expected(&batched, &x, &weight, DType::F32);
    assert_within_bounds("2-D x, batched w", &common::download(&y), &want, &bounds);

    let empty = Tensor::zeros(&gpu, &[0, 64], DType::F32).unwrap();
    let y = wgquant::quantized_matmul(&empty, &weight.gpu, true).unwrap();
    assert_eq!(y.shape(), &[0, 16]);
}

/// Operands larger than the device's storage binding are split across dispatches: transposed
/// weights by rows of outputs, untransposed ones by rows of k (through partial sums), x and y
/// by rows, batched weights per matrix. A row that cannot fit at all is an error.
#[test]
fn operands_larger_than_a_binding_are_split() {
    let Some(shared) = common::gpu() else { return };
    // Where bindings start at coarse offsets (WebGPU's 256 bytes), an aligned block of rows is
    // larger (16 rows of y of 300 f32 outputs): the binding limits and the rows of the split
    // operands (k of transposed weights and x, outputs of untransposed weights) grow by the same
    // factor, so each product splits as it does with 16-byte offsets.
    let align = u64::from(shared.caps().limits.min_storage_buffer_offset_alignment);
    let scale = (align / 16).max(1) as usize;
    eprintln!("offset alignment {align}: binding limits and split rows scaled by {scale}");
    let open = |bytes: u64| {
        let bytes = bytes * scale as u64;
        let gpu = Gpu::with_options(wgquant::GpuOptions {
            max_storage_buffer_binding_size: Some(bytes),
            ..wgquant::GpuOptions::from_env().unwrap()
        })
        .unwrap();
        assert_eq!(gpu.caps().max_binding(), bytes);
        gpu
    };
    let small = open(4096);
    let k = 256 * scale;
    check_all(
        &small,
        &[
            // Per 4 KiB of binding: w 300 rows of 128 B, x 1 KiB and y 1200 B per row: chunks of
            // 32 outputs and a few rows.
            Case::new(true, 64, 4, &[40, k], &[], 300),
            Case::new(true, 32, 3, &[5, k], &[], 300).dtypes(DType::F16, DType::F16),
            Case::new(true, 64, 4, &[3, 2, k], &[3], 40),
        ],
    );
    let medium = open(16384);
    let n = 256 * scale;
    check_all(
        &medium,
        &[
            // Per 16 KiB of binding: w 300 rows of 128 B: 3 chunks of k, summed through partial
            // sums.
            Case::new(false, 64, 4, &[5, 300], &[], n),
            Case::new(false, 64, 4, &[40, 300], &[], n).dtypes(DType::F16, DType::F16),
            Case::new(false, 32, 6, &[2, 3, 100], &[2], n),
        ],
    );
    let tiny = open(256);
    let x = Tensor::zeros(&tiny, &[1, 4096 * scale], DType::F32).unwrap();
    let q =
        wgquant::quantize(&Tensor::zeros(&tiny, &[1, 64], DType::F32).unwrap(), QuantParams::affine(64, 4)).unwrap();
    let w = Quantized { weight: Tensor::zeros(&tiny, &[1, 512 * scale], DType::U32).unwrap(), ..q.clone() };
    let scales = Tensor::zeros(&tiny, &[1, 64 * scale], DType::F32).unwrap();
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
        let (_, want, bounds) = expected(case, x, w, DType::F32);
        assert_within_bounds(&case.name(), &common::download(y), &want, &bounds);
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
