//! Shape arithmetic at the edges: empty tensors with huge axes, and shapes whose element or
//! code counts overflow. Each is a result (an empty product, or an error), never a panic, an
//! abort or host work proportional to a batch count of empty tensors.

mod common;

use wgquant::{dequantize, quantize, quantized_matmul, DType, Error, QuantParams, Quantized, Tensor};

const HUGE: usize = 1 << 40;

/// A tensor of zeros (empty when an axis is zero).
fn empty(gpu: &wgquant::Gpu, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(gpu, shape, dtype).expect("a small or empty tensor")
}

/// Small real weights: 8 outputs of 64 inputs, 4 bits, batched as `(1, 8, 8)`.
fn batched_weights(gpu: &wgquant::Gpu) -> Quantized {
    let w: Vec<f32> = (0..8 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    let w = Tensor::from_slice(gpu, &w, &[1, 8, 64]).unwrap();
    quantize(&w, QuantParams::affine(64, 4)).unwrap()
}

#[test]
fn empty_x_with_huge_batch_axes_gives_an_empty_product() {
    let gpu = gpu_or_skip!();
    let q = batched_weights(&gpu);
    // Rows of x are zero, so y is empty, though its batch axes name 2^32 (then 2^80) matrices.
    for batch in [[1 << 16, 1 << 16], [HUGE, HUGE]] {
        let x = empty(&gpu, &[batch[0], batch[1], 0, 64], DType::F32);
        let y = quantized_matmul(&x, &q, true).expect("an empty product is a result");
        assert_eq!(y.shape(), &[batch[0], batch[1], 0, 8]);
        assert!(y.to_vec::<f32>().unwrap().is_empty());
    }
}

#[test]
fn an_output_too_large_for_the_device_is_refused_before_any_work() {
    let gpu = gpu_or_skip!();
    // 2^16 x matrices against 2^16 weight matrices broadcast to 2^32 products of 1 x 8: y would
    // be 128 GiB, and its batch table alone 64 GiB of host memory. Both operands are real
    // (16 MiB each), so the refusal must come from the output's size, before the table exists.
    let batch = 1 << 16;
    let weight = empty(&gpu, &[1, batch, 8, 8], DType::U32);
    let scales = empty(&gpu, &[1, batch, 8, 1], DType::F32);
    let biases = empty(&gpu, &[1, batch, 8, 1], DType::F32);
    let q = Quantized::from_parts(weight, scales, Some(biases), QuantParams::affine(64, 4)).unwrap();
    let x = empty(&gpu, &[batch, 1, 1, 64], DType::F32);
    let err = quantized_matmul(&x, &q, true).unwrap_err();
    assert!(matches!(err, Error::ExceedsDeviceLimit { what: "the output's bytes", .. }), "{err}");
}

#[test]
fn quantize_and_dequantize_an_empty_matrix_with_a_huge_last_axis() {
    let gpu = gpu_or_skip!();
    let k = 1usize << 62;
    let w = empty(&gpu, &[0, k], DType::F32);
    let q = quantize(&w, QuantParams::affine(64, 4)).expect("an empty matrix quantizes");
    assert_eq!(q.weight.shape(), &[0, k / 8]);
    assert_eq!(q.scales.shape(), &[0, k / 64]);
    let w_hat = dequantize(&q, None).expect("and dequantizes");
    assert_eq!(w_hat.shape(), &[0, k]);
}

#[test]
fn packed_widths_whose_code_count_overflows_are_refused() {
    let gpu = gpu_or_skip!();
    // 2^63 words of 1-bit codes are 2^68 codes: more than usize holds.
    let weight = empty(&gpu, &[0, 1 << 63], DType::U32);
    let scales = empty(&gpu, &[0, 1], DType::F32);
    let biases = empty(&gpu, &[0, 1], DType::F32);
    let err = Quantized::from_parts(weight, scales, Some(biases), QuantParams::affine(64, 1)).unwrap_err();
    assert!(matches!(err, Error::ShapeOverflow { .. }), "{err}");
    // 2^60 words of 4-bit codes (2^63 codes) fit, and then only disagree with the scales, in
    // MLX's words.
    let weight = empty(&gpu, &[0, 1 << 60], DType::U32);
    let scales = empty(&gpu, &[0, 1], DType::F32);
    let biases = empty(&gpu, &[0, 1], DType::F32);
    let err = Quantized::from_parts(weight, scales, Some(biases), QuantParams::affine(64, 4)).unwrap_err();
    assert!(matches!(err, Error::ScalesShape { .. }), "{err}");
}
