//! The fp modes (mxfp4, mxfp8, nvfp4) on the GPU against their CPU twin
//! (`reference::fp_quantize`, itself checked against real MLX in `tests/mlx_parity.rs`): random
//! shapes, the named edge groups, tensors split across bindings, empty tensors; and ports of
//! MLX's own tests (`python/tests/test_quantized.py`). Codes, scale bytes and dequantized values
//! are compared bit for bit.

mod common;

use common::{first_bit_difference, Rng};
use wgquant::params::FP_MODES;
use wgquant::{reference, DType, Gpu, GpuOptions, Mode, QuantParams, Tensor};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The first difference between the GPU and the twin on `values` (rounded to `dtype`), described.
fn compare_with_twin(
    gpu: &Gpu,
    name: &str,
    values: &[f32],
    shape: &[usize],
    dtype: DType,
    mode: Mode,
) -> Result<(), String> {
    let params = QuantParams::for_mode(mode);
    let values = common::round_to(values, dtype);
    let q = wgquant::quantize(&common::upload(gpu, &values, shape, dtype), params)
        .map_err(|e| format!("{name}: quantize failed: {e}"))?;
    let host = reference::fp_quantize(&values, *shape.last().unwrap(), params, dtype).unwrap();
    let scales = q.scales.to_vec::<u8>().unwrap();
    if let Some(i) = (0..scales.len()).find(|&i| scales[i] != host.scales[i]) {
        return Err(format!("{name}: scale {i}: gpu {:#04x}, twin {:#04x}", scales[i], host.scales[i]));
    }
    let words = q.weight.to_vec::<u32>().unwrap();
    if let Some(i) = (0..words.len()).find(|&i| words[i] != host.weight[i]) {
        return Err(format!("{name}: packed word {i}: gpu {:#010x}, twin {:#010x}", words[i], host.weight[i]));
    }
    for out_dtype in FLOATS {
        let deq = common::download(&wgquant::dequantize(&q, Some(out_dtype)).unwrap());
        let expected = reference::fp_dequantize(&host.weight, &host.scales, params, out_dtype);
        if let Some((i, a, b)) = first_bit_difference(&deq, &expected) {
            return Err(format!("{name}: dequantized to {out_dtype} {i}: gpu {a:e}, twin {b:e}"));
        }
    }
    Ok(())
}

fn assert_matches_twin(gpu: &Gpu, name: &str, values: &[f32], shape: &[usize], dtype: DType, mode: Mode) {
    if let Err(mismatch) = compare_with_twin(gpu, name, values, shape, dtype, mode) {
        panic!("{mismatch}");
    }
}

#[test]
fn random_shapes_every_mode_and_dtype() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(0xf9);
    for mode in FP_MODES {
        let group_size = mode.defaults().0 as usize;
        for dtype in FLOATS {
            let rank = 2 + rng.below(2);
            let mut shape: Vec<usize> = (0..rank - 1).map(|_| 1 + rng.below(5)).collect();
            // Odd group counts too: a row's scales then end inside a word.
            shape.push(group_size * (1 + rng.below(5)));
            let (n, k) = (shape.iter().product::<usize>(), *shape.last().unwrap());
            // A different magnitude per row, from 1e-6 to 1e4.
            let values: Vec<f32> = (0..n).map(|i| rng.normal() * 10f32.powi((i / k % 11) as i32 - 6)).collect();
            assert_matches_twin(&gpu, &format!("{mode} {dtype} {shape:?}"), &values, &shape, dtype, mode);
        }
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn edge_groups_every_mode_and_dtype() {
    let gpu = gpu_or_skip!();
    let mut failures = Vec::new();
    for (name, group) in common::edge_groups() {
        // Two rows of the same group: the second reversed, so both orders are seen.
        let mut values = group.clone();
        values.extend(group.iter().rev());
        for mode in FP_MODES {
            for dtype in FLOATS {
                let case = format!("{name} {mode} {dtype}");
                if let Err(e) = compare_with_twin(&gpu, &case, &values, &[2, 64], dtype, mode) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} edge cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn empty_tensors_quantize_to_empty_outputs() {
    let gpu = gpu_or_skip!();
    for mode in FP_MODES {
        for shape in [[0usize, 64usize], [4, 0]] {
            let w = Tensor::from_slice::<f32>(&gpu, &[], &shape).unwrap();
            let q = wgquant::quantize(&w, QuantParams::for_mode(mode)).unwrap();
            assert_eq!(q.scales.dtype(), DType::U8);
            assert_eq!(q.weight.shape()[0], shape[0]);
            let back = wgquant::dequantize(&q, None).unwrap();
            assert_eq!((back.shape(), back.dtype()), (&shape[..], DType::BF16), "{mode}");
        }
    }
}

#[test]
fn tensors_larger_than_one_binding_are_split() {
    if common::gpu().is_none() {
        return;
    }
    // Chunks of rows start where every binding's offset is aligned (A bytes: 32 on lavapipe,
    // 256 under WebGPU's limits): with rows of 64 values, whose 2 (mx) or 4 (nvfp4) scale bytes
    // make A / 2 rows the aligned block, a binding of 256 A bytes holds two blocks of f32 rows,
    // and 5 A + 3 rows take about ten bindings, the last one ending inside a scale word.
    let align = common::gpu().unwrap().caps().limits.min_storage_buffer_offset_alignment as usize;
    let options =
        GpuOptions { max_storage_buffer_binding_size: Some(256 * align as u64), ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(options).unwrap();
    let mut rng = Rng::new(12);
    for (dtype, shape) in [(DType::F32, vec![5 * align + 3, 64]), (DType::BF16, vec![3, 3 * align + 1, 64])] {
        let values = rng.normals(shape.iter().product(), 1.0);
        for mode in FP_MODES {
            assert_matches_twin(&gpu, &format!("split {mode} {dtype} {shape:?}"), &values, &shape, dtype, mode);
        }
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// `mx.allclose(a, b, rtol, atol)`: |a - b| <= atol + rtol |b| everywhere.
fn allclose(a: &[f32], b: &[f32], rtol: f32, atol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= atol + rtol * y.abs())
}

/// E2M1 values (MLX's `lut`) picked at random: `rows` x `k`, every group's first element 6,
/// plus `offset`, in bfloat16 (the first half of MLX's test_mxfp4_quantize_dequantize and
/// test_nvfp4_quantize_dequantize).
fn lut_matrix(rng: &mut Rng, rows: usize, k: usize, group_size: usize, offset: f32) -> Vec<f32> {
    let values: Vec<f32> = (0..rows * k)
        .map(|i| if i % group_size == 0 { 6.0 } else { reference::E2M1_VALUES[rng.below(16)] } + offset)
        .collect();
    common::round_to(&values, DType::BF16)
}

/// What MLX's tests check of every fp mode: the mode's parameters are the only ones quantize and
/// dequantize take, dequantize refuses a non-float dtype, and zeros come back as zeros.
fn check_parameters_and_zeros(gpu: &Gpu, w: &Tensor, mode: Mode, bad: [QuantParams; 2]) {
    for params in bad {
        assert!(wgquant::quantize(w, params).is_err(), "{mode}: quantize with {params}");
    }
    let q = wgquant::quantize(w, QuantParams::for_mode(mode)).unwrap();
    for params in bad {
        let tampered = wgquant::Quantized { params, ..q.clone() };
        assert!(wgquant::dequantize(&tampered, None).is_err(), "{mode}: dequantize with {params}");
    }
    assert!(wgquant::dequantize(&q, Some(DType::U32)).is_err(), "{mode}: dequantize to uint32");
    let zeros = Tensor::zeros(gpu, &[64, 128], DType::F32).unwrap();
    let q = wgquant::quantize(&zeros, QuantParams::for_mode(mode)).unwrap();
    let back = common::download(&wgquant::dequantize(&q, None).unwrap());
    assert!(back.iter().all(|&v| v == 0.0), "{mode}: zeros");
}

/// MLX's test_mxfp4_quantize_dequantize (a (32, 256) matrix for lavapipe's sake; MLX's is
/// (128, 512)).
#[test]
fn mlx_test_mxfp4_quantize_dequantize() {
    let gpu = gpu_or_skip!();
    let values = lut_matrix(&mut Rng::new(1), 32, 256, 32, 3e-6);
    let w = common::upload(&gpu, &values, &[32, 256], DType::BF16);
    let p = QuantParams::for_mode(Mode::Mxfp4);
    check_parameters_and_zeros(&gpu, &w, Mode::Mxfp4, [p.with_bits(3), p.with_group_size(64)]);
    let w_hat = common::download(&wgquant::dequantize(&wgquant::quantize(&w, p).unwrap(), None).unwrap());
    // MLX's tolerance: every bf16 value is an E2M1 value of a group scaled by 2^0.
    assert!(allclose(&values, &w_hat, 1e-5, 1e-5));
}

/// MLX's test_mxfp8_quantize_dequantize.
#[test]
fn mlx_test_mxfp8_quantize_dequantize() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(2);
    let values = common::round_to(&(0..512 * 32).map(|_| rng.uniform() * 2.0 - 1.0).collect::<Vec<_>>(), DType::BF16);
    let w = common::upload(&gpu, &values, &[512, 32], DType::BF16);
    let p = QuantParams::for_mode(Mode::Mxfp8);
    check_parameters_and_zeros(&gpu, &w, Mode::Mxfp8, [p.with_bits(3), p.with_bits(7)]);
    let tampered =
        wgquant::Quantized { params: p.with_group_size(16).with_bits(4), ..wgquant::quantize(&w, p).unwrap() };
    assert!(wgquant::dequantize(&tampered, None).is_err());
    let w_hat = common::download(&wgquant::dequantize(&wgquant::quantize(&w, p).unwrap(), None).unwrap());
    // MLX's tolerance (3 mantissa bits, and a power-of-two scale that may waste one).
    assert!(allclose(&values, &w_hat, 0.1, 0.1));
}

/// MLX's test_nvfp4_quantize_dequantize, without its global-scale part (wgquant takes no global
/// scale yet).
#[test]
fn mlx_test_nvfp4_quantize_dequantize() {
    let gpu = gpu_or_skip!();
    let values = lut_matrix(&mut Rng::new(3), 32, 256, 16, 0.0);
    let w = common::upload(&gpu, &values, &[32, 256], DType::BF16);
    let p = QuantParams::for_mode(Mode::Nvfp4);
    check_parameters_and_zeros(&gpu, &w, Mode::Nvfp4, [p.with_bits(3), p.with_group_size(64)]);
    let tampered = wgquant::Quantized { params: p.with_group_size(32), ..wgquant::quantize(&w, p).unwrap() };
    assert!(wgquant::dequantize(&tampered, None).is_err());
    let w_hat = common::download(&wgquant::dequantize(&wgquant::quantize(&w, p).unwrap(), None).unwrap());
    assert!(allclose(&values, &w_hat, 1e-5, 1e-5));

    // Alternating-magnitude rows: even rows 6 · 2^-9, odd rows 6; each group of 16 has its own
    // scale, so both round-trip (MLX: rtol 1e-5, atol 1e-6).
    let values: Vec<f32> = (0..64 * 16).map(|i| if (i / 16) % 2 == 0 { 6.0 * 2f32.powi(-9) } else { 6.0 }).collect();
    let w = common::upload(&gpu, &values, &[64, 16], DType::F32);
    let w_hat = common::download(&wgquant::dequantize(&wgquant::quantize(&w, p).unwrap(), Some(DType::F32)).unwrap());
    assert!(allclose(&values, &w_hat, 1e-5, 1e-6));
}
