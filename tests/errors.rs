//! Every bad input of quantize/dequantize returns a typed error whose message is MLX's, word for
//! word (`tests/fixtures/mlx_errors.txt`, recorded from mlx 0.32.4), and nothing panics. Where
//! MLX has no message (it runs, crashes, or has no such API), the test says the message is
//! wgquant's own.

mod common;

use wgquant::{DType, Error, Mode, QuantParams, Quantized, Tensor};

fn expect_mlx(result: wgquant::Result<impl std::fmt::Debug>, case: &str) {
    let errors = common::mlx_errors();
    let expected = errors.get(case).unwrap_or_else(|| panic!("no MLX message for {case}"));
    let err = result.expect_err(case);
    assert_eq!(&err.to_string(), expected, "{case}");
}

#[test]
fn quantize_errors_are_mlx_words() {
    let gpu = gpu_or_skip!();
    let zeros = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    expect_mlx(wgquant::quantize(&zeros(&[4, 100]), QuantParams::affine(64, 4)), "quantize_not_divisible");
    expect_mlx(wgquant::quantize(&zeros(&[4, 96]), QuantParams::affine(48, 4)), "quantize_group_48");
    for bits in [0, 7, 9] {
        expect_mlx(
            wgquant::quantize(&zeros(&[4, 64]), QuantParams::affine(64, bits)),
            &format!("quantize_bits_{bits}"),
        );
    }
    expect_mlx(wgquant::quantize(&zeros(&[64]), QuantParams::default()), "quantize_ndim_1");
    let ints = Tensor::zeros(&gpu, &[4, 64], DType::U32).unwrap();
    expect_mlx(wgquant::quantize(&ints, QuantParams::default()), "quantize_uint32");
}

#[test]
fn dequantize_errors_are_mlx_words() {
    let gpu = gpu_or_skip!();
    let t = |shape: &[usize], dtype| Tensor::zeros(&gpu, shape, dtype).unwrap();
    let p64 = QuantParams::affine(64, 4);
    let float_w =
        Quantized::from_parts(t(&[32, 32], DType::F32), t(&[32, 4], DType::F32), Some(t(&[32, 4], DType::F32)), p64);
    expect_mlx(float_w, "dequantize_not_u32");
    let flat = Quantized::from_parts(t(&[32], DType::U32), t(&[4], DType::F32), Some(t(&[4], DType::F32)), p64);
    expect_mlx(flat, "dequantize_ndim_1");
    let shape = Quantized::from_parts(
        t(&[32, 32], DType::U32),
        t(&[32, 4], DType::F32),
        Some(t(&[32, 4], DType::F32)),
        QuantParams::affine(32, 4),
    );
    expect_mlx(shape, "dequantize_shape_mismatch");
    let batch = Quantized::from_parts(
        t(&[2, 32, 32], DType::U32),
        t(&[32, 16], DType::F32),
        Some(t(&[32, 16], DType::F32)),
        p64,
    );
    expect_mlx(batch, "dequantize_batch_mismatch");
    let no_biases = Quantized::from_parts(t(&[32, 32], DType::U32), t(&[32, 4], DType::F32), None, p64);
    expect_mlx(no_biases, "dequantize_no_biases");

    // The fields are public: dequantize checks again rather than trusting them.
    let good = wgquant::quantize(&t(&[4, 64], DType::F32), p64).unwrap();
    let mut tampered = good.clone();
    tampered.params = QuantParams::affine(32, 4);
    assert!(matches!(wgquant::dequantize(&tampered, None), Err(Error::ScalesShape { .. })));
    expect_mlx(wgquant::dequantize(&good, Some(DType::U32)), "dequantize_uint32_out");
}

#[test]
fn unsupported_modes_and_parameters_are_named() {
    let gpu = gpu_or_skip!();
    let w = Tensor::zeros(&gpu, &[4, 64], DType::F16).unwrap();
    // wgquant's own: its kernels read x in blocks of 32 along K, which nvfp4 (groups of 16)
    // need not fill.
    let q = wgquant::quantize(&Tensor::zeros(&gpu, &[4, 48], DType::F16).unwrap(), QuantParams::for_mode(Mode::Nvfp4));
    let err = wgquant::quantized_matmul(&Tensor::zeros(&gpu, &[1, 48], DType::F16).unwrap(), &q.unwrap(), true);
    assert_eq!(
        err.unwrap_err().to_string(),
        "[quantized_matmul] nvfp4 weights with transpose=true need the inner dimension K to be a multiple of 32 in \
         wgquant, but K is 48."
    );
    // wgquant's own: MLX 0.32.4's quantize dies of a division by zero (SIGFPE) at group size 0.
    let err = wgquant::quantize(&w, QuantParams::affine(0, 4)).unwrap_err();
    assert!(matches!(err, Error::UnsupportedGroupSize { group_size: 0, .. }), "{err}");
    // MLX's words, without the op: parsing a mode is not an op call.
    let mlx = common::mlx_errors();
    for case in ["quantize_mode_xyz", "dequantize_mode_xyz"] {
        let expected = mlx[case].split_once("] ").unwrap().1;
        assert_eq!("xyz".parse::<Mode>().unwrap_err().to_string(), expected);
    }
}

#[test]
fn fp_mode_quantize_errors_are_mlx_words() {
    let gpu = gpu_or_skip!();
    let zeros = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let mode = |mode: Mode, group_size: u32, bits: u32| QuantParams { group_size, bits, mode };
    for (case, shape, params) in [
        ("quantize_mxfp4_group_64", [4, 64], mode(Mode::Mxfp4, 64, 4)),
        ("quantize_mxfp4_bits_3", [4, 64], mode(Mode::Mxfp4, 32, 3)),
        ("quantize_mxfp4_group_64_bits_3", [4, 64], mode(Mode::Mxfp4, 64, 3)),
        ("quantize_mxfp8_bits_4", [4, 64], mode(Mode::Mxfp8, 32, 4)),
        ("quantize_nvfp4_group_32", [4, 64], mode(Mode::Nvfp4, 32, 4)),
        ("quantize_mxfp4_not_divisible", [4, 48], QuantParams::for_mode(Mode::Mxfp4)),
    ] {
        expect_mlx(wgquant::quantize(&zeros(&shape), params), case);
    }
    // wgquant's own: MLX's CPU cannot quantize nvfp4 unless w.size divides by 32 (its fallback
    // reshapes the codes in fours of eight); wgquant quantizes any whole groups.
    let mlx = common::mlx_errors();
    assert!(mlx["quantize_nvfp4_size_48"].starts_with("[reshape] Cannot reshape array of size 48"));
    let q = wgquant::quantize(&zeros(&[3, 16]), QuantParams::for_mode(Mode::Nvfp4)).unwrap();
    assert_eq!((q.weight.shape(), q.scales.shape()), (&[3, 2][..], &[3, 1][..]));
}

#[test]
fn fp_mode_dequantize_errors_are_mlx_words() {
    let gpu = gpu_or_skip!();
    let t = |shape: &[usize], dtype| Tensor::zeros(&gpu, shape, dtype).unwrap();
    let (mxfp4, nvfp4) = (QuantParams::for_mode(Mode::Mxfp4), QuantParams::for_mode(Mode::Nvfp4));
    let parts =
        |w: Tensor, scales: Tensor, biases: Option<Tensor>, params| Quantized::from_parts(w, scales, biases, params);
    let (u32_w, u8_s) = (|| t(&[4, 8], DType::U32), |shape: &[usize]| t(shape, DType::U8));
    let cases = [
        ("dequantize_mxfp4_scales_float", parts(u32_w(), t(&[4, 2], DType::F32), None, mxfp4)),
        (
            "dequantize_mxfp4_scales_float_and_biases",
            parts(u32_w(), t(&[4, 2], DType::F32), Some(t(&[4, 2], DType::F32)), mxfp4),
        ),
        ("dequantize_mxfp4_biases", parts(u32_w(), u8_s(&[4, 2]), Some(u8_s(&[4, 2])), mxfp4)),
        ("dequantize_mxfp4_shape", parts(u32_w(), u8_s(&[4, 3]), None, mxfp4)),
        ("dequantize_mxfp4_batch", parts(t(&[2, 4, 8], DType::U32), u8_s(&[4, 2]), None, mxfp4)),
        ("dequantize_mxfp4_batch_dims", parts(t(&[2, 4, 8], DType::U32), u8_s(&[3, 4, 2]), None, mxfp4)),
        ("dequantize_mxfp4_group_64", parts(u32_w(), u8_s(&[4, 1]), None, mxfp4.with_group_size(64))),
        ("dequantize_nvfp4_bits_8", parts(u32_w(), u8_s(&[4, 4]), None, nvfp4.with_bits(8))),
        (
            "dequantize_mxfp4_group_64_not_u32",
            parts(t(&[4, 8], DType::F32), u8_s(&[4, 2]), None, mxfp4.with_group_size(64)),
        ),
        ("dequantize_mxfp4_ndim_1", parts(t(&[8], DType::U32), u8_s(&[2]), None, mxfp4)),
        ("dequantize_mxfp4_group_0", parts(u32_w(), u8_s(&[4, 2]), None, mxfp4.with_group_size(0))),
    ];
    for (case, result) in cases {
        expect_mlx(result, case);
    }
    let good = parts(u32_w(), u8_s(&[4, 2]), None, mxfp4).unwrap();
    expect_mlx(wgquant::dequantize(&good, Some(DType::U32)), "dequantize_mxfp4_uint32_out");
    // The fields are public: dequantize checks again (an affine layout under an fp mode).
    let affine = wgquant::quantize(&t(&[4, 64], DType::F32), QuantParams::affine(32, 4)).unwrap();
    let tampered = Quantized { params: mxfp4, ..affine };
    assert!(matches!(wgquant::dequantize(&tampered, None), Err(Error::FpScalesNotU8 { .. })));
}

/// wgquant's own messages: `Tensor` has no MLX counterpart for these.
#[test]
fn tensor_misuse_is_an_error() {
    let gpu = gpu_or_skip!();
    let err = Tensor::from_slice(&gpu, &[1.0f32; 5], &[2, 3]).unwrap_err();
    assert_eq!(err.to_string(), "Tensor::from_slice: 5 elements do not fill shape (2,3)");
    let t = Tensor::from_slice(&gpu, &[1.0f32; 6], &[2, 3]).unwrap();
    let err = t.to_vec::<half::f16>().unwrap_err();
    assert_eq!(err.to_string(), "Tensor::to_vec: the tensor holds float32 but float16 was requested");
    assert!(t.reshape(&[4]).is_err());
    assert_eq!(t.reshape(&[3, 2]).unwrap().to_vec::<f32>().unwrap(), vec![1.0; 6]);
    let err = Tensor::zeros(&gpu, &[usize::MAX, 2], DType::F32).unwrap_err();
    assert!(matches!(err, Error::ShapeOverflow { .. }), "{err}");
    let err = Tensor::zeros(&gpu, &[1 << 20, 1 << 20], DType::F32).unwrap_err();
    assert!(matches!(err, Error::ExceedsDeviceLimit { .. }), "{err}");
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn no_adapter_is_an_error_not_a_panic() {
    let options = wgquant::GpuOptions { adapter_name: Some("no such adapter 1234".into()), ..Default::default() };
    let err = wgquant::Gpu::with_options(options).unwrap_err();
    assert!(matches!(err, Error::NoAdapter(_)), "{err}");
    assert!(err.to_string().contains("no such adapter 1234"), "{err}");
}
