//! The float ops behind the nn layers against their CPU twins (`wgquant::reference`) on random
//! data, awkward sizes and every float dtype; tensors split into chunks on a device with a tiny
//! binding limit; errors for bad input. Tolerances are named below with their reason.

mod common;

use common::{download, first_bit_difference, round_to, upload, Rng};
use wgquant::{ops, reference, DType, Error, Gpu, GpuOptions, Tensor};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// One unit in the last place of `v` in `dtype`: the rounding a last step may flip.
fn ulp(dtype: DType, v: f32) -> f32 {
    let mantissa_bits = match dtype {
        DType::F16 => 10,
        DType::BF16 => 7,
        _ => 23,
    };
    let exponent = v.abs().max(f32::MIN_POSITIVE).log2().floor();
    // f16 subnormals stop shrinking at 2^-24.
    let floor = if dtype == DType::F16 { -24.0 } else { -149.0 };
    (exponent - mantissa_bits as f32).max(floor).exp2()
}

/// Asserts `|gpu - cpu| <= bound(i) + ulp(dtype, cpu)` everywhere: `bound` covers differences
/// in f32 arithmetic, the ulp a final rounding to `dtype` that those may flip.
fn assert_close(case: &str, gpu: &[f32], cpu: &[f32], dtype: DType, bound: impl Fn(usize) -> f32) {
    assert_eq!(gpu.len(), cpu.len(), "{case}: lengths");
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let tol = bound(i) + ulp(dtype, c);
        assert!((g - c).abs() <= tol, "{case}: element {i}: gpu {g} cpu {c} (|Δ| {} > {tol})", (g - c).abs());
    }
}

/// f32 sums on the GPU may be fused (FMA) where the CPU rounds each product: the standard bound
/// for a k-term dot product is k · ε · Σ|x_i w_i|.
fn dot_bound(k: usize, abs_sum: f32) -> f32 {
    k as f32 * f32::EPSILON * abs_sum
}

/// `exp` and `inverseSqrt` are not correctly rounded in WGSL (a few ulp): relative error of the
/// functions the softmax, SiLU and RMSNorm kernels call, with margin.
const TRANSCENDENTAL_REL: f32 = 1e-5;

fn matmul_case(
    gpu: &Gpu,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    dtypes: (DType, DType),
    transpose: bool,
    bias: bool,
) {
    let (x_dtype, w_dtype) = dtypes;
    let x = round_to(&rng.normals(m * k, 1.0), x_dtype);
    let w = round_to(&rng.normals(n * k, 0.5), w_dtype);
    let b = round_to(&rng.normals(n, 1.0), w_dtype);
    let w_shape = if transpose { [n, k] } else { [k, n] };
    let xt = upload(gpu, &x, &[m, k], x_dtype);
    let wt = upload(gpu, &w, &w_shape, w_dtype);
    let out = if bias {
        ops::linear(&xt, &wt, Some(&upload(gpu, &b, &[n], w_dtype))).unwrap()
    } else {
        ops::matmul(&xt, &wt, transpose).unwrap()
    };
    let out_dtype = x_dtype.promote(w_dtype);
    let case = format!("matmul {x_dtype}x{w_dtype} m={m} n={n} k={k} t={transpose} bias={bias}");
    assert_eq!(out.shape(), &[m, n], "{case}");
    assert_eq!(out.dtype(), out_dtype, "{case}");
    let cpu = reference::matmul(&x, &w, bias.then_some(&b[..]), (m, n, k), transpose, out_dtype);
    assert_close(&case, &download(&out), &cpu, out_dtype, |i| {
        let (row, col) = (i / n, i % n);
        let w_at = |j: usize| if transpose { w[col * k + j] } else { w[j * n + col] };
        dot_bound(k + 1, (0..k).map(|j| (x[row * k + j] * w_at(j)).abs()).sum::<f32>() + b[col].abs())
    });
}

#[test]
fn matmul_matches_reference() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[(1, 1, 1), (1, 33, 64), (3, 5, 7), (17, 31, 16), (33, 64, 100), (2, 17, 129)] {
        for transpose in [true, false] {
            matmul_case(&gpu, &mut rng, (m, n, k), (DType::F32, DType::F32), transpose, false);
        }
    }
    for dtypes in
        [(DType::F16, DType::F16), (DType::BF16, DType::BF16), (DType::F32, DType::F16), (DType::F16, DType::BF16)]
    {
        matmul_case(&gpu, &mut rng, (5, 19, 40), dtypes, true, false);
        matmul_case(&gpu, &mut rng, (5, 19, 40), dtypes, false, false);
        matmul_case(&gpu, &mut rng, (7, 9, 33), dtypes, true, true);
    }
    matmul_case(&gpu, &mut rng, (9, 13, 24), (DType::F32, DType::F32), true, true);
}

#[test]
fn matmul_keeps_leading_dimensions() {
    let gpu = gpu_or_skip!();
    let x = Tensor::from_slice(&gpu, &[1f32, 2., 3., 4., 5., 6.], &[1, 2, 3]).unwrap();
    let w = Tensor::from_slice(&gpu, &[1f32, 0., 0., 0., 1., 1.], &[2, 3]).unwrap();
    let y = ops::matmul(&x, &w, true).unwrap();
    assert_eq!(y.shape(), &[1, 2, 2]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1., 5., 4., 11.]);
    // A vector times a matrix: (K,) @ (K, N) -> (N,).
    let v = Tensor::from_slice(&gpu, &[1f32, 1.], &[2]).unwrap();
    let y = ops::matmul(&v, &w, false).unwrap();
    assert_eq!(y.shape(), &[3]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1., 1., 1.]);
}

#[test]
fn take_copies_rows_bit_for_bit() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(2);
    let ids: Vec<u32> = vec![3, 0, 6, 3, 1, 99];
    let ids_t = Tensor::from_slice(&gpu, &ids, &[2, 3]).unwrap();
    for dtype in FLOATS {
        // Width 5: 16-bit rows straddle words.
        let table = round_to(&rng.normals(7 * 5, 1.0), dtype);
        let out = ops::take(&upload(&gpu, &table, &[7, 5], dtype), &ids_t).unwrap();
        assert_eq!(out.shape(), &[2, 3, 5]);
        let cpu = reference::take(&table, 5, &ids);
        assert_eq!(first_bit_difference(&download(&out), &cpu), None, "take {dtype}");
    }
    let packed: Vec<u32> = (0..7 * 3).map(|_| rng.next_u64() as u32).collect();
    let out = ops::take(&Tensor::from_slice(&gpu, &packed, &[7, 3]).unwrap(), &ids_t).unwrap();
    assert_eq!(out.to_vec::<u32>().unwrap(), reference::take(&packed, 3, &ids), "take u32");
}

#[test]
fn rms_norm_matches_reference() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(3);
    for (x_dtype, w_dtype) in [(DType::F32, DType::F32), (DType::F16, DType::F16), (DType::BF16, DType::F32)] {
        for dims in [1, 7, 64, 300] {
            let x = round_to(&rng.normals(3 * dims, 2.0), x_dtype);
            let w = round_to(&rng.normals(dims, 1.0), w_dtype);
            let out = ops::rms_norm(&upload(&gpu, &x, &[3, dims], x_dtype), &upload(&gpu, &w, &[dims], w_dtype), 1e-5)
                .unwrap();
            let out_dtype = x_dtype.promote(w_dtype);
            let cpu = reference::rms_norm(&x, &w, 1e-5, out_dtype);
            // Two roundings to out_dtype: the first may flip by one ulp, which the weight scales.
            assert_close(&format!("rms_norm {x_dtype} {w_dtype} dims={dims}"), &download(&out), &cpu, out_dtype, |i| {
                let g = w[i % dims].abs();
                TRANSCENDENTAL_REL * cpu[i].abs() + g * ulp(out_dtype, cpu[i] / g.max(1e-30))
            });
        }
    }
}

#[test]
fn softmax_and_activations_match_reference() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(4);
    for dtype in FLOATS {
        let x = round_to(&rng.normals(5 * 37, 3.0), dtype);
        let xt = upload(&gpu, &x, &[5, 37], dtype);
        let case = |name: &str| format!("{name} {dtype}");
        let cpu = reference::softmax(&x, 37, 1.0, None, dtype);
        assert_close(&case("softmax"), &download(&ops::softmax(&xt).unwrap()), &cpu, dtype, |i| {
            TRANSCENDENTAL_REL * cpu[i].abs()
        });
        let cpu = reference::silu(&x, dtype);
        assert_close(&case("silu"), &download(&ops::silu(&xt).unwrap()), &cpu, dtype, |i| {
            TRANSCENDENTAL_REL * cpu[i].abs()
        });
        let cpu = reference::relu(&x, dtype);
        assert_eq!(first_bit_difference(&download(&ops::relu(&xt).unwrap()), &cpu), None, "{}", case("relu"));
        for to in FLOATS {
            let cast = ops::astype(&xt, to).unwrap();
            assert_eq!(cast.dtype(), to);
            assert_eq!(first_bit_difference(&download(&cast), &round_to(&x, to)), None, "astype {dtype} -> {to}");
        }
    }
}

#[test]
fn add_and_multiply_are_exact() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(5);
    for (a_dtype, b_dtype) in
        [(DType::F32, DType::F32), (DType::F16, DType::F16), (DType::BF16, DType::BF16), (DType::F16, DType::F32)]
    {
        let out_dtype = a_dtype.promote(b_dtype);
        let a = round_to(&rng.normals(3 * 11, 1.0), a_dtype);
        let same = round_to(&rng.normals(3 * 11, 1.0), b_dtype);
        let row = round_to(&rng.normals(11, 1.0), b_dtype);
        let at = upload(&gpu, &a, &[3, 11], a_dtype);
        // One f32 operation rounded once to a narrower type is exactly the narrow operation.
        for (b, shape) in [(&same, vec![3, 11]), (&row, vec![11]), (&row, vec![1, 11])] {
            let bt = upload(&gpu, b, &shape, b_dtype);
            let case = format!("{a_dtype} {b_dtype} b={shape:?}");
            let sum = ops::add(&at, &bt).unwrap();
            assert_eq!(sum.dtype(), out_dtype);
            assert_eq!(first_bit_difference(&download(&sum), &reference::add(&a, b, out_dtype)), None, "add {case}");
            let product = download(&ops::multiply(&at, &bt).unwrap());
            assert_eq!(first_bit_difference(&product, &reference::multiply(&a, b, out_dtype)), None, "mul {case}");
        }
    }
}

#[test]
fn attention_matches_reference() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(6);
    for (dtype, batch, queries, keys, heads, causal) in [
        (DType::F32, 1, 5, 5, 2, true),
        (DType::F32, 2, 3, 7, 4, true),
        (DType::F32, 1, 4, 6, 1, false),
        (DType::F16, 1, 9, 9, 2, true),
        (DType::BF16, 2, 2, 2, 2, true),
    ] {
        let dims = heads * 8;
        let q = round_to(&rng.normals(batch * queries * dims, 1.0), dtype);
        let k = round_to(&rng.normals(batch * keys * dims, 1.0), dtype);
        let v = round_to(&rng.normals(batch * keys * dims, 1.0), dtype);
        let scale = (8f32).powf(-0.5);
        let out = ops::scaled_dot_product_attention(
            &upload(&gpu, &q, &[batch, queries, dims], dtype),
            &upload(&gpu, &k, &[batch, keys, dims], dtype),
            &upload(&gpu, &v, &[batch, keys, dims], dtype),
            heads,
            scale,
            causal,
        )
        .unwrap();
        assert_eq!(out.shape(), &[batch, queries, dims]);
        let cpu =
            reference::scaled_dot_product_attention(&q, &k, &v, (batch, queries, keys), heads, scale, causal, dtype);
        // Probabilities may differ by one ulp of dtype after exp; each output sums `keys` of them
        // times |v| (< 5 for these normals).
        let bound = keys as f32 * (ulp(dtype, 1.0) + TRANSCENDENTAL_REL) * 5.0;
        assert_close(
            &format!("sdpa {dtype} b={batch} q={queries} k={keys} h={heads}"),
            &download(&out),
            &cpu,
            dtype,
            |_| bound,
        );
    }
}

/// A device whose storage bindings hold 512 bytes (or 16 offset alignments, where the device
/// aligns bindings coarsely: under WebGPU's 256-byte alignment an aligned block of 10-float rows
/// is 1280 bytes), so every op above runs in several chunks. Returns the binding size too.
fn tiny_binding_gpu() -> Option<(Gpu, u64)> {
    let align = u64::from(common::gpu()?.caps().limits.min_storage_buffer_offset_alignment);
    let binding = 512.max(16 * align);
    let options = GpuOptions { max_storage_buffer_binding_size: Some(binding), ..GpuOptions::from_env().unwrap() };
    Some((Gpu::with_options(options).expect("the same adapter with a small binding limit"), binding))
}

#[test]
fn ops_split_rows_across_small_bindings() {
    let Some((gpu, binding)) = tiny_binding_gpu() else { return };
    let mut rng = Rng::new(7);
    // 2800 bytes of f32 per 512 bytes of binding: six chunks.
    let (rows, width) = (70 * binding as usize / 512, 10);
    let x = rng.normals(rows * width, 1.0);
    let xt = upload(&gpu, &x, &[rows, width], DType::F32);
    let w = rng.normals(3 * width, 1.0);
    let y = ops::matmul(&xt, &upload(&gpu, &w, &[3, width], DType::F32), true).unwrap();
    let cpu = reference::matmul(&x, &w, None, (rows, 3, width), true, DType::F32);
    assert_close("chunked matmul", &download(&y), &cpu, DType::F32, |_| dot_bound(width, 50.0));

    let norm = rng.normals(width, 1.0);
    let y = ops::rms_norm(&xt, &upload(&gpu, &norm, &[width], DType::F32), 1e-5).unwrap();
    let cpu = reference::rms_norm(&x, &norm, 1e-5, DType::F32);
    assert_close("chunked rms_norm", &download(&y), &cpu, DType::F32, |i| TRANSCENDENTAL_REL * cpu[i].abs());

    let y = ops::softmax(&xt).unwrap();
    let cpu = reference::softmax(&x, width, 1.0, None, DType::F32);
    assert_close("chunked softmax", &download(&y), &cpu, DType::F32, |i| TRANSCENDENTAL_REL * cpu[i].abs());

    let y = ops::add(&xt, &xt).unwrap();
    assert_eq!(first_bit_difference(&download(&y), &reference::add(&x, &x, DType::F32)), None, "chunked add");
    // The table is bound whole (10 rows, 400 bytes); the ids and the output are chunked.
    let ids: Vec<u32> = (0..200).map(|i| (i * 7 % 10) as u32).collect();
    let table = &x[..10 * width];
    let y = ops::take(&upload(&gpu, table, &[10, width], DType::F32), &Tensor::from_slice(&gpu, &ids, &[200]).unwrap());
    assert_eq!(
        first_bit_difference(&download(&y.unwrap()), &reference::take(table, width, &ids)),
        None,
        "chunked take"
    );
    let y = ops::silu(&xt).unwrap();
    let cpu = reference::silu(&x, DType::F32);
    assert_close("chunked silu", &download(&y), &cpu, DType::F32, |i| TRANSCENDENTAL_REL * cpu[i].abs());
}

#[test]
fn operands_too_large_for_one_binding_are_errors() {
    let Some((gpu, binding)) = tiny_binding_gpu() else { return };
    let x = Tensor::zeros(&gpu, &[2, 200], DType::F32).unwrap();
    // 3200 bytes per 512 of binding, bound whole.
    let w = Tensor::zeros(&gpu, &[4 * binding as usize / 512, 200], DType::F32).unwrap();
    let err = ops::matmul(&x, &w, true).unwrap_err();
    assert!(matches!(err, Error::ExceedsDeviceLimit { op: "matmul", limit, .. } if limit == binding), "{err}");
    // Attention reads its heads in place, so q, k, v and the scores are bound whole.
    let q = Tensor::zeros(&gpu, &[2 * binding as usize / 512, 200], DType::F32).unwrap();
    let err = ops::scaled_dot_product_attention(&q, &q, &q, 2, 1.0, true).unwrap_err();
    assert!(matches!(err, Error::ExceedsDeviceLimit { op: "scaled_dot_product_attention", .. }), "{err}");
}

#[test]
fn bad_operands_are_typed_errors() {
    let gpu = gpu_or_skip!();
    let f = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let ids = Tensor::zeros(&gpu, &[3], DType::U32).unwrap();
    let err = ops::matmul(&f(&[2, 3]), &f(&[4, 5]), true).unwrap_err();
    assert_eq!(
        err.to_string(),
        "[matmul] Last dimension of first input with shape (2,3) must match the last dimension of the weight with shape (4,5) (transpose=true)."
    );
    assert!(matches!(ops::matmul(&ids, &f(&[4, 3]), true), Err(Error::NotFloatOperand { .. })));
    assert!(matches!(ops::matmul(&f(&[2, 3]), &f(&[2, 3, 4]), true), Err(Error::NdimMismatch { .. })));
    let err = ops::linear(&f(&[2, 3]), &f(&[4, 3]), Some(&f(&[3]))).unwrap_err();
    assert_eq!(err.to_string(), "[linear] the bias must have shape (4) but has shape (3).");
    assert!(matches!(ops::take(&f(&[4, 3]), &f(&[3])), Err(Error::UnsupportedDType { .. })));
    assert!(matches!(ops::rms_norm(&f(&[2, 3]), &f(&[4]), 1e-5), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(ops::add(&f(&[2, 3]), &f(&[2, 1])), Err(Error::ShapeMismatch { .. })));
    let q = f(&[4, 6]);
    assert!(matches!(ops::scaled_dot_product_attention(&q, &q, &q, 4, 1.0, true), Err(Error::NotDivisible { .. })));
    let k = f(&[3, 6]);
    let err = ops::scaled_dot_product_attention(&q, &k, &k, 2, 1.0, true).unwrap_err();
    assert!(matches!(err, Error::CausalQueriesExceedKeys { queries: 4, keys: 3, .. }), "{err}");
    assert!(gpu.take_uncaptured_errors().is_empty());
}
