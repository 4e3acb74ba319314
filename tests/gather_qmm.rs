//! `gather_qmm` on the GPU against its CPU twin (`reference::gather_qmm`, which pairs matrices by
//! index and runs the twin of `quantized_matmul`) and against real MLX
//! (tests/fixtures/mlx_gather_qmm.safetensors, made by gen_gather_fixtures.py): ports of MLX's
//! `test_gather_qmm` (index shapes) and `test_gather_qmm_sorted` (mlx-lm's sort and unsort),
//! decode and sorted-prefill shapes on every kernel, and MLX's errors.

mod common;

use common::{Fixture, Rng};
use wgquant::reference::{self, HostIndices, HostMatrix, HostQuantized};
use wgquant::{DType, Gpu, QuantParams, Quantized, Tensor};

/// How far our f32 results may be from MLX's f32 ones: as for `quantized_matmul`
/// (tests/quantized_matmul.rs, `TOL_MLX_F32`): two f32 sums in their own orders, a few ulps of
/// outputs below 1.
const TOL_MLX_F32: f32 = 1e-5;

/// Outputs within this of each other pass any bound (drivers may flush f32 subnormals).
const SUBNORMAL_FLUSH: f32 = 1e-30;

/// Experts (the weight's batch) in the random cases.
const EXPERTS: usize = 4;

/// One index array of a case.
#[derive(Clone, Debug)]
struct Indices {
    values: Vec<u32>,
    shape: Vec<usize>,
}

impl Indices {
    fn new(values: &[u32], shape: &[usize]) -> Indices {
        Indices { values: values.to_vec(), shape: shape.to_vec() }
    }

    fn host(&self) -> HostIndices<'_> {
        HostIndices { values: &self.values, shape: &self.shape }
    }

    fn upload(&self, gpu: &Gpu) -> Tensor {
        Tensor::from_slice(gpu, &self.values, &self.shape).unwrap()
    }
}

/// A gathered product: x of `x_batch + (m, k)`, w of `w_batch + (rows, packed)`.
#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    transpose: bool,
    params: QuantParams,
    x_batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    w_batch: Vec<usize>,
    lhs: Option<Indices>,
    rhs: Option<Indices>,
    dtype: DType,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "{} t{} gs{} b{} m{} k{} n{} {}",
            self.name,
            u8::from(self.transpose),
            self.params.group_size,
            self.params.bits,
            self.m,
            self.k,
            self.n,
            self.dtype
        )
    }
}

/// The quantized weights of a case, one host matrix per batch entry, and on the GPU.
struct Weights {
    host: Vec<HostQuantized>,
    gpu: Quantized,
    rows: usize,
}

fn upload_weights(
    gpu: &Gpu,
    host: Vec<HostQuantized>,
    w_shape: &[usize],
    s_shape: &[usize],
    params: QuantParams,
    dtype: DType,
) -> Weights {
    let words: Vec<u32> = host.iter().flat_map(|h| h.weight.iter().copied()).collect();
    let scales: Vec<f32> = host.iter().flat_map(|h| h.scales.iter().copied()).collect();
    let biases: Vec<f32> = host.iter().flat_map(|h| h.biases.iter().copied()).collect();
    let q = Quantized::from_parts(
        Tensor::from_slice(gpu, &words, w_shape).unwrap(),
        common::upload(gpu, &scales, s_shape, dtype),
        Some(common::upload(gpu, &biases, s_shape, dtype)),
        params,
    )
    .unwrap();
    Weights { host, gpu: q, rows: w_shape[w_shape.len() - 2] }
}

impl Weights {
    fn matrices(&self, params: QuantParams, scale_dtype: DType) -> Vec<HostMatrix<'_>> {
        self.host.iter().map(|q| HostMatrix { quantized: q, rows: self.rows, params, scale_dtype }).collect()
    }
}

/// For every entry of the broadcast index shape, the matrix of x and of w it pairs (clamped as
/// the op documents): written out independently of the twin, for the per-output bounds.
fn pairs(x_batch: &[usize], w_batch: &[usize], lhs: Option<&Indices>, rhs: Option<&Indices>) -> Vec<(usize, usize)> {
    let ls = lhs.map_or(x_batch.to_vec(), |i| i.shape.clone());
    let rs = rhs.map_or(w_batch.to_vec(), |i| i.shape.clone());
    let rank = ls.len().max(rs.len());
    let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
    let (ls, rs) = (pad(&ls), pad(&rs));
    let out: Vec<usize> = ls.iter().zip(&rs).map(|(a, b)| *a.max(b)).collect();
    let total: usize = out.iter().product();
    let at = |e: usize, shape: &[usize]| {
        // Coordinates of e in `out`, then the row-major position in `shape` (broadcast axes 0).
        let mut coords = vec![0; rank];
        let mut rest = e;
        for d in (0..rank).rev() {
            coords[d] = rest % out[d];
            rest /= out[d];
        }
        coords.iter().zip(shape).fold(0, |pos, (&c, &extent)| pos * extent + if extent == 1 { 0 } else { c })
    };
    let x_count: usize = x_batch.iter().product();
    let w_count: usize = w_batch.iter().product();
    (0..total)
        .map(|e| {
            let xi = lhs.map_or(at(e, &ls), |i| i.values[at(e, &ls)] as usize).min(x_count - 1);
            let wi = rhs.map_or(at(e, &rs), |i| i.values[at(e, &rs)] as usize).min(w_count - 1);
            (xi, wi)
        })
        .collect()
}

/// Per output, the bound on |GPU − twin| of tests/quantized_matmul.rs: `common::f32_matmul_bound`
/// for the two f32 sums, one ulp of the output dtype for their roundings, `SUBNORMAL_FLUSH`.
fn twin_bounds(case: &Case, x: &[f32], w: &[HostMatrix<'_>], want: &[f32]) -> Vec<f32> {
    let (m, k, n) = (case.m, case.k, case.n);
    let out_dtype = case.dtype;
    let mut bounds = Vec::with_capacity(want.len());
    for (e, (xi, wi)) in
        pairs(&case.x_batch, &case.w_batch, case.lhs.as_ref(), case.rhs.as_ref()).into_iter().enumerate()
    {
        let terms = common::WeightTerms::new(w[wi].quantized, case.params, case.dtype);
        for row in 0..m {
            let x_row = &x[(xi * m + row) * k..][..k];
            for out in 0..n {
                let (reach, rounding) =
                    terms.sums(x_row, |kk| if case.transpose { out * k + kk } else { kk * n + out });
                let bound = common::f32_matmul_bound(k, reach, rounding);
                let v = want[(e * m + row) * n + out];
                bounds.push(bound + common::ulp(out_dtype, v.abs() + bound) + SUBNORMAL_FLUSH);
            }
        }
    }
    bounds
}

/// Random x and w ~ N(0, 1)/√K (as MLX's tests), w quantized by the CPU twin (bit-exact with
/// the GPU's `quantize`, tests/mlx_parity.rs).
fn random_operands(gpu: &Gpu, case: &Case, rng: &mut Rng) -> (Vec<f32>, Tensor, Weights) {
    let (k, n) = (case.k, case.n);
    let (rows, cols) = if case.transpose { (n, k) } else { (k, n) };
    let scale = 1.0 / (k as f32).sqrt();
    let matrices: usize = case.w_batch.iter().product();
    let host: Vec<HostQuantized> = (0..matrices)
        .map(|_| {
            let w = common::round_to(&rng.normals(rows * cols, scale), case.dtype);
            reference::quantize(&w, cols, case.params, case.dtype).unwrap()
        })
        .collect();
    let shape = |last: usize| [case.w_batch.as_slice(), &[rows, last]].concat();
    let groups = cols / case.params.group_size as usize;
    let weights =
        upload_weights(gpu, host, &shape(case.params.packed_width(cols)), &shape(groups), case.params, case.dtype);
    let x_shape = [case.x_batch.as_slice(), &[case.m, k]].concat();
    let x = common::round_to(&rng.normals(x_shape.iter().product(), scale), case.dtype);
    let x_gpu = common::upload(gpu, &x, &x_shape, case.dtype);
    (x, x_gpu, weights)
}

/// Runs `case` on the GPU and checks it against the twin; returns the worst |Δ| / bound.
fn check(gpu: &Gpu, case: &Case, seed: u64) -> f32 {
    let mut rng = Rng::new(seed);
    let (x, x_gpu, weights) = random_operands(gpu, case, &mut rng);
    let (lhs, rhs) = (case.lhs.as_ref().map(|i| i.upload(gpu)), case.rhs.as_ref().map(|i| i.upload(gpu)));
    let y = wgquant::gather_qmm(&x_gpu, &weights.gpu, lhs.as_ref(), rhs.as_ref(), case.transpose, false)
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
    let w = weights.matrices(case.params, case.dtype);
    let (shape, want) = reference::gather_qmm(
        &x,
        &case.x_batch,
        case.m,
        &w,
        &case.w_batch,
        case.lhs.as_ref().map(Indices::host),
        case.rhs.as_ref().map(Indices::host),
        case.transpose,
        case.dtype,
    );
    assert_eq!(y.shape(), &shape[..], "{}: shape", case.label());
    assert_eq!(y.dtype(), case.dtype, "{}: dtype", case.label());
    let got = common::download(&y);
    let bounds = twin_bounds(case, &x, &w, &want);
    if let Some((i, g, t, ratio)) = common::first_outside_bound(&got, &want, &bounds) {
        panic!("{}: output {i}: got {g}, twin {t}: |Δ| = {ratio:.3} bounds", case.label());
    }
    common::worst_ratio(&got, &want, &bounds)
}

/// One index configuration: batch of x, lhs, batch of w, rhs.
type IndexConfig = (Vec<usize>, Option<Indices>, Vec<usize>, Option<Indices>);

/// MLX's `test_gather_qmm` index configurations.
fn mlx_index_configs() -> Vec<IndexConfig> {
    vec![
        (vec![1], Some(Indices::new(&[0], &[1])), vec![3], Some(Indices::new(&[2, 1], &[2]))),
        (vec![1], None, vec![3], Some(Indices::new(&[2, 1], &[2]))),
        (vec![2], None, vec![3], Some(Indices::new(&[2, 1], &[2]))),
        (vec![3], Some(Indices::new(&[0, 2], &[2])), vec![1], Some(Indices::new(&[0], &[1]))),
        (vec![5], Some(Indices::new(&[0, 2], &[2])), vec![3], Some(Indices::new(&[2, 1], &[2]))),
        (
            vec![4, 2],
            Some(Indices::new(&[7, 6, 5, 4, 1, 2], &[3, 2])),
            vec![4, 1],
            Some(Indices::new(&[2, 0, 1], &[3, 1])),
        ),
    ]
}

/// Port of MLX's `test_gather_qmm`: its six index configurations, transposed and not, one row
/// and several (shrunk from its (M, N, K) for lavapipe), at 4 bits and group 64 as MLX's test;
/// each run against the twin.
#[test]
fn test_gather_qmm() {
    let gpu = gpu_or_skip!();
    let mut worst = 0.0f32;
    // (m, n, k, transpose): one row (qmv / qvm), several rows (qmv prepared, qmm).
    let shapes = [(1, 32, 128, true), (5, 32, 128, true), (1, 64, 32, false), (9, 64, 32, false), (40, 32, 64, true)];
    let mut seed = 100;
    for (x_batch, lhs, w_batch, rhs) in mlx_index_configs() {
        for &(m, n, k, transpose) in &shapes {
            let case = Case {
                name: "test_gather_qmm",
                transpose,
                params: QuantParams::affine(64, 4),
                x_batch: x_batch.clone(),
                m,
                k,
                n,
                w_batch: w_batch.clone(),
                lhs: lhs.clone(),
                rhs: rhs.clone(),
                dtype: DType::F32,
            };
            seed += 1;
            worst = worst.max(check(&gpu, &case, seed));
        }
    }
    eprintln!("worst |Δ| = {worst:.3} of its bound");
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// Decode-shaped products (x (T, 1, 1, K), rhs (T, top_k)) at every bits value and group size,
/// in both layouts and all three dtypes, against the twin.
#[test]
fn decode_every_format_and_dtype() {
    let gpu = gpu_or_skip!();
    let rhs = Indices::new(&[3, 0, 1, 3, 2, 2], &[3, 2]);
    let mut worst = 0.0f32;
    let mut seed = 200;
    // Each format once, the layouts and dtypes taking turns (lavapipe time).
    let formats = [32, 64, 128].into_iter().flat_map(|gs| [1, 2, 3, 4, 5, 6, 8].map(|b| (gs, b)));
    let layouts = [(true, DType::F32), (false, DType::F16), (true, DType::BF16), (false, DType::F32)];
    for (i, (gs, bits)) in formats.enumerate() {
        let (transpose, dtype) = layouts[i % layouts.len()];
        let (k, n) = if transpose { (128, 16) } else { (24, 128) };
        let case = Case {
            name: "decode",
            transpose,
            params: QuantParams::affine(gs, bits),
            x_batch: vec![3, 1],
            m: 1,
            k,
            n,
            w_batch: vec![EXPERTS],
            lhs: None,
            rhs: Some(rhs.clone()),
            dtype,
        };
        seed += 1;
        worst = worst.max(check(&gpu, &case, seed));
    }
    eprintln!("worst |Δ| = {worst:.3} of its bound");
}

/// Products whose k the planner splits into slices summed through partial sums (`qvm` from
/// k = 128, `qmm` from k = 512 when its tiles are few), their entries paired on the GPU.
#[test]
fn split_k_over_gathered_entries() {
    let gpu = gpu_or_skip!();
    // (m, k, n, transpose): qvm split four ways; qmm split two ways.
    for (m, k, n, transpose) in [(1, 256, 64, false), (40, 512, 32, true)] {
        let case = Case {
            name: "split k",
            transpose,
            params: QuantParams::affine(64, 4),
            x_batch: vec![3],
            m,
            k,
            n,
            w_batch: vec![EXPERTS],
            lhs: Some(Indices::new(&[2, 0], &[2, 1])),
            rhs: Some(Indices::new(&[3, 1, 0], &[3])),
            dtype: DType::F32,
        };
        check(&gpu, &case, 600 + m as u64);
    }
}

/// Indices past their operand's batch are clamped to its last matrix (documented on
/// `gather_qmm`): nothing reads outside a buffer, and the result is the twin's.
#[test]
fn out_of_range_indices_clamp() {
    let gpu = gpu_or_skip!();
    for transpose in [true, false] {
        let case = Case {
            name: "out_of_range",
            transpose,
            params: QuantParams::affine(32, 4),
            x_batch: vec![2],
            m: 2,
            k: 64,
            n: 32,
            w_batch: vec![EXPERTS],
            lhs: Some(Indices::new(&[1, 9, u32::MAX], &[3])),
            rhs: Some(Indices::new(&[4, 0, 1_000_000], &[3])),
            dtype: DType::F32,
        };
        check(&gpu, &case, 300);
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// Port of MLX's `test_gather_qmm_sorted`: mlx-lm's sort of (token, expert) pairs by expert,
/// a product with `sorted_indices`, and the unsort, equal bit for bit to the unsorted product
/// (the same rows meet the same experts on the same kernel).
#[test]
fn test_gather_qmm_sorted() {
    let gpu = gpu_or_skip!();
    let (tokens, top_k, k, n) = (7usize, 2usize, 128usize, 24usize);
    let mut rng = Rng::new(400);
    let indices: Vec<u32> = (0..tokens * top_k).map(|_| rng.below(EXPERTS) as u32).collect();
    let case = Case {
        name: "sorted",
        transpose: true,
        params: QuantParams::affine(64, 4),
        x_batch: vec![tokens, 1],
        m: 1,
        k,
        n,
        w_batch: vec![EXPERTS],
        lhs: None,
        rhs: Some(Indices::new(&indices, &[tokens, top_k])),
        dtype: DType::F16,
    };
    let (x, x_gpu, weights) = random_operands(&gpu, &case, &mut rng);
    let rhs = case.rhs.as_ref().unwrap().upload(&gpu);
    let unsorted = common::download(&wgquant::gather_qmm(&x_gpu, &weights.gpu, None, Some(&rhs), true, false).unwrap());
    // gather_sort: order = argsort(indices) (stable), x rows order // top_k, indices[order].
    let mut order: Vec<usize> = (0..indices.len()).collect();
    order.sort_by_key(|&i| indices[i]);
    let xs: Vec<f32> = order.iter().flat_map(|&i| x[i / top_k * k..][..k].iter().copied()).collect();
    let idx: Vec<u32> = order.iter().map(|&i| indices[i]).collect();
    let xs_gpu = common::upload(&gpu, &xs, &[order.len(), 1, k], case.dtype);
    let idx_gpu = Tensor::from_slice(&gpu, &idx, &[order.len()]).unwrap();
    let y = wgquant::gather_qmm(&xs_gpu, &weights.gpu, None, Some(&idx_gpu), true, true).unwrap();
    assert_eq!(y.shape(), &[order.len(), 1, n]);
    let sorted = common::download(&y);
    // scatter_unsort: row order[j] of the result is row j of the sorted product.
    let mut unsorted_again = vec![0.0f32; sorted.len()];
    for (j, &i) in order.iter().enumerate() {
        unsorted_again[i * n..][..n].copy_from_slice(&sorted[j * n..][..n]);
    }
    assert_eq!(common::first_bit_difference(&unsorted_again, &unsorted), None);
    // And both are the twin's, within its bounds.
    check(&gpu, &case, 400);
}

/// Without indices, `gather_qmm` is `quantized_matmul` (MLX returns it), bit for bit.
#[test]
fn without_indices_is_quantized_matmul() {
    let gpu = gpu_or_skip!();
    let case = Case {
        name: "no indices",
        transpose: true,
        params: QuantParams::affine(64, 4),
        x_batch: vec![EXPERTS],
        m: 3,
        k: 128,
        n: 16,
        w_batch: vec![EXPERTS],
        lhs: None,
        rhs: None,
        dtype: DType::F32,
    };
    let (_, x_gpu, weights) = random_operands(&gpu, &case, &mut Rng::new(500));
    let gathered = wgquant::gather_qmm(&x_gpu, &weights.gpu, None, None, true, false).unwrap();
    let product = wgquant::quantized_matmul(&x_gpu, &weights.gpu, true).unwrap();
    assert_eq!(gathered.shape(), product.shape());
    assert_eq!(common::first_bit_difference(&common::download(&gathered), &common::download(&product)), None);
    // An explicit arange on both sides pairs the same matrices.
    let arange = Tensor::from_slice(&gpu, &[0u32, 1, 2, 3], &[EXPERTS]).unwrap();
    let explicit = wgquant::gather_qmm(&x_gpu, &weights.gpu, Some(&arange), Some(&arange), true, false).unwrap();
    assert_eq!(common::first_bit_difference(&common::download(&explicit), &common::download(&product)), None);
}

// ---- real MLX ---------------------------------------------------------------------------------

/// Real `mx.gather_qmm` results (tests/fixtures/mlx_gather_qmm.safetensors): decode and
/// sorted-prefill shapes, both index arrays broadcast, only lhs, a 2-D x, untransposed weights,
/// several bits and group sizes, f32, f16 and bf16. f32 outputs are within `TOL_MLX_F32` of
/// MLX's; f16 and bf16 ones within `common::bound_against_mlx_half` of MLX's sequential sums in
/// that dtype (about K ulps). The twin is checked against the same outputs.
#[test]
fn matches_mlx_fixtures() {
    let gpu = gpu_or_skip!();
    let fixture = Fixture::load("mlx_gather_qmm.safetensors");
    let names = fixture.cases();
    assert_eq!(names.len(), 12, "fixture cases");
    let has = |name: &str| fixture.tensors().names().contains(&name);
    for name in names {
        let field = |prefix: &str| -> u32 {
            name.split('_').find_map(|p| p.strip_prefix(prefix)?.parse().ok()).unwrap_or_else(|| panic!("{name}"))
        };
        let params = QuantParams::affine(field("gs"), field("b"));
        let transpose = field("t") == 1;
        let (x, x_shape, dtype) = fixture.float(&format!("{name}.x"));
        let (weight, w_shape) = fixture.u32(&format!("{name}.wq"));
        let (scales, s_shape, _) = fixture.float(&format!("{name}.scales"));
        let (biases, _, _) = fixture.float(&format!("{name}.biases"));
        let (y_mlx, y_shape, y_dtype) = fixture.float(&format!("{name}.y"));
        let (sorted, _) = fixture.u32(&format!("{name}.sorted"));
        let index = |key: &str| {
            let key = format!("{name}.{key}");
            has(&key).then(|| {
                let (values, shape) = fixture.u32(&key);
                Indices { values, shape }
            })
        };
        let (lhs, rhs) = (index("lhs"), index("rhs"));
        // One host matrix per batch entry of w.
        let w_batch = w_shape[..w_shape.len() - 2].to_vec();
        let matrices: usize = w_batch.iter().product();
        let (wm, sm) = (weight.len() / matrices, scales.len() / matrices);
        let host: Vec<HostQuantized> = (0..matrices)
            .map(|i| HostQuantized {
                weight: weight[i * wm..][..wm].to_vec(),
                scales: scales[i * sm..][..sm].to_vec(),
                biases: biases[i * sm..][..sm].to_vec(),
            })
            .collect();
        let weights = upload_weights(&gpu, host, &w_shape, &s_shape, params, dtype);
        let x_gpu = common::upload(&gpu, &x, &x_shape, dtype);
        let (lhs_gpu, rhs_gpu) = (lhs.as_ref().map(|i| i.upload(&gpu)), rhs.as_ref().map(|i| i.upload(&gpu)));
        let y =
            wgquant::gather_qmm(&x_gpu, &weights.gpu, lhs_gpu.as_ref(), rhs_gpu.as_ref(), transpose, sorted[0] == 1)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(y.shape(), &y_shape[..], "{name}");
        assert_eq!(y.dtype(), y_dtype, "{name}");
        let got = common::download(&y);

        let (x_batch, m, k) =
            (x_shape[..x_shape.len() - 2].to_vec(), x_shape[x_shape.len() - 2], x_shape[x_shape.len() - 1]);
        let n = *y_shape.last().unwrap();
        let w = weights.matrices(params, dtype);
        let (_, twin) = reference::gather_qmm(
            &x,
            &x_batch,
            m,
            &w,
            &w_batch,
            lhs.as_ref().map(Indices::host),
            rhs.as_ref().map(Indices::host),
            transpose,
            y_dtype,
        );
        for (what, ours) in [("GPU", &got), ("twin", &twin)] {
            if y_dtype == DType::F32 {
                let worst = ours
                    .iter()
                    .zip(&y_mlx)
                    .map(|(g, w)| if g.is_nan() { f32::INFINITY } else { (g - w).abs() })
                    .fold(0.0, f32::max);
                assert!(worst <= TOL_MLX_F32, "{name}: {what}: max |Δ| = {worst:e} against MLX");
                continue;
            }
            for (e, (xi, wi)) in pairs(&x_batch, &w_batch, lhs.as_ref(), rhs.as_ref()).into_iter().enumerate() {
                let q = &weights.host[wi];
                let dense = reference::dequantize(&q.weight, &q.scales, &q.biases, params, dtype, dtype);
                let terms = common::WeightTerms::new(q, params, dtype);
                let column = |t: &[f32], out: usize| -> Vec<f32> {
                    (0..k).map(|kk| if transpose { t[out * k + kk] } else { t[kk * n + out] }).collect()
                };
                for row in 0..m {
                    let x_row = &x[(xi * m + row) * k..][..k];
                    for out in 0..n {
                        let i = (e * m + row) * n + out;
                        let (mlx, bound) = common::bound_against_mlx_half(
                            x_row,
                            &column(&dense, out),
                            &column(&terms.reach, out),
                            &column(&terms.rounding, out),
                            y_dtype,
                            ours[i],
                        );
                        assert_eq!(
                            mlx.to_bits(),
                            y_mlx[i].to_bits(),
                            "{name}: output {i}: MLX's sum is not sequential"
                        );
                        assert!(
                            common::within(ours[i], mlx, bound),
                            "{name}: {what}: output {i}: {} against MLX's {mlx} (bound {bound:e})",
                            ours[i]
                        );
                    }
                }
            }
        }
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// MLX's errors in MLX's words (tests/fixtures/mlx_errors.txt, `gather_*`), and wgquant's own
/// refusal of integer indices other than uint32.
#[test]
fn errors_match_mlx_words() {
    let gpu = gpu_or_skip!();
    let mlx = common::mlx_errors();
    let f32s = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let u32s = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::U32).unwrap();
    let idx = |v: &[u32]| Tensor::from_slice(&gpu, v, &[v.len()]).unwrap();
    let experts = |w: Tensor, b: &[usize]| Quantized {
        weight: w,
        scales: f32s(&[4, 8, 1]),
        biases: Some(f32s(b)),
        params: QuantParams::affine(64, 4),
    };
    let err = |x: &Tensor, q: &Quantized, lhs: Option<&Tensor>, rhs: Option<&Tensor>| {
        wgquant::gather_qmm(x, q, lhs, rhs, true, false).unwrap_err().to_string()
    };
    let q = experts(u32s(&[4, 8, 8]), &[4, 8, 1]);
    let x = f32s(&[3, 2, 64]);
    let cases = [
        ("gather_indices_float", err(&x, &q, None, Some(&f32s(&[3])))),
        ("gather_broadcast", err(&x, &q, Some(&idx(&[0, 1, 2])), Some(&idx(&[0, 1])))),
        ("gather_inner_mismatch", err(&f32s(&[3, 2, 32]), &q, None, Some(&idx(&[0, 1, 2])))),
        ("gather_x_1d", err(&f32s(&[64]), &q, None, Some(&idx(&[0, 1, 2])))),
        ("gather_not_u32", err(&x, &experts(f32s(&[4, 8, 8]), &[4, 8, 1]), None, Some(&idx(&[0])))),
        ("gather_scales_biases_shape", err(&x, &experts(u32s(&[4, 8, 8]), &[4, 8, 2]), None, Some(&idx(&[0])))),
    ];
    for (name, ours) in cases {
        assert_eq!(ours, mlx[name], "{name}");
    }
    // wgquant's own: indices into an empty batch (MLX reads out of bounds; nothing to clamp to).
    assert_eq!(
        err(&f32s(&[0, 2, 64]), &q, Some(&idx(&[0, 1])), Some(&idx(&[0, 1]))),
        "[gather_qmm] x has no matrices for the indices to name (batch shape (0))."
    );
    // wgquant's own: MLX casts other integer indices to uint32; wgquant reads uint32 as they are.
    let bytes = Tensor::zeros(&gpu, &[4], DType::U8).unwrap();
    assert_eq!(
        err(&x, &q, None, Some(&bytes)),
        "[gather_qmm] Indices must be uint32 (wgquant reads them on the GPU as they are), but got uint8."
    );
}
