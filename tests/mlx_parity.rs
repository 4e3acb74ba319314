//! Parity with real MLX 0.32.4: the CPU twin against MLX's fixtures, then the GPU kernels
//! against the same fixtures. Quantize must match bit for bit (packed words, scale and bias
//! bits); dequantize too (MLX's CPU rounds twice in the scales' dtype, and so do we).

mod common;

use common::{first_bit_difference, Fixture};
use wgquant::{reference, DType, Mode, QuantParams};

/// `f16_gs64_b4` or `bf16_gs64_b4_rank3` -> parameters.
fn case_params(case: &str) -> QuantParams {
    let field = |prefix: &str| -> u32 {
        case.split('_').find_map(|p| p.strip_prefix(prefix)?.parse().ok()).unwrap_or_else(|| panic!("{case}"))
    };
    QuantParams::affine(field("gs"), field("b"))
}

#[test]
fn reference_quantize_matches_mlx_bit_for_bit() {
    let fixture = Fixture::load("mlx_quantize.safetensors");
    let cases = fixture.cases();
    assert_eq!(cases.len(), 87, "fixture cases: 66, and 21 of edge groups");
    for case in &cases {
        let params = case_params(case);
        let (w, shape, dtype) = fixture.float(&format!("{case}.w"));
        let k = *shape.last().unwrap();
        let host = reference::quantize(&w, k, params, dtype).unwrap();
        let (wq, _) = fixture.u32(&format!("{case}.wq"));
        assert_eq!(host.weight, wq, "{case}: packed words");
        let (scales, _, _) = fixture.float(&format!("{case}.scales"));
        let (biases, _, _) = fixture.float(&format!("{case}.biases"));
        assert_eq!(first_bit_difference(&host.scales, &scales), None, "{case}: scales");
        assert_eq!(first_bit_difference(&host.biases, &biases), None, "{case}: biases");
        let (deq, _, _) = fixture.float(&format!("{case}.deq"));
        let ours = reference::dequantize(&wq, &scales, &biases, params, dtype, dtype);
        assert_eq!(first_bit_difference(&ours, &deq), None, "{case}: dequantize");
    }
}

/// `mxfp4_bf16_edges` or `nvfp4_f32_rank3` -> the mode's parameters (MLX's defaults).
fn fp_case_params(case: &str) -> QuantParams {
    let mode: Mode = case.split('_').next().unwrap().parse().unwrap();
    QuantParams::for_mode(mode)
}

/// The fp-mode fixture's cases: 3 modes x (f32, f16, bf16) x (random, edges), and one rank-3
/// case per mode.
const FP_CASES: usize = 21;

/// MLX's dequantized outputs of a case, by dtype: the default (bfloat16), float32, float16.
const FP_DEQ_KEYS: [(&str, DType); 3] = [("deq", DType::BF16), ("deq_f32", DType::F32), ("deq_f16", DType::F16)];

#[test]
fn reference_fp_quantize_matches_mlx_bit_for_bit() {
    let fixture = Fixture::load("mlx_fp_quantize.safetensors");
    let cases = fixture.cases();
    assert_eq!(cases.len(), FP_CASES);
    for case in &cases {
        let params = fp_case_params(case);
        let (w, shape, dtype) = fixture.float(&format!("{case}.w"));
        let host = reference::fp_quantize(&w, *shape.last().unwrap(), params, dtype).unwrap();
        let (wq, _) = fixture.u32(&format!("{case}.wq"));
        let (scales, _) = fixture.u8(&format!("{case}.scales"));
        assert_eq!(host.scales, scales, "{case}: scales");
        assert_eq!(host.weight, wq, "{case}: packed words");
        for (key, out_dtype) in FP_DEQ_KEYS {
            let (deq, _, _) = fixture.float(&format!("{case}.{key}"));
            let ours = reference::fp_dequantize(&wq, &scales, params, out_dtype);
            assert_eq!(first_bit_difference(&ours, &deq), None, "{case}: dequantize to {out_dtype}");
        }
    }
}

#[test]
fn gpu_quantize_and_dequantize_match_mlx_bit_for_bit() {
    let gpu = gpu_or_skip!();
    let fixture = Fixture::load("mlx_quantize.safetensors");
    let cases = fixture.cases();
    let mut exact = 0;
    for case in &cases {
        let params = case_params(case);
        let (w, shape, dtype) = fixture.float(&format!("{case}.w"));
        let q = wgquant::quantize(&common::upload(&gpu, &w, &shape, dtype), params).unwrap();

        let (wq, wq_shape) = fixture.u32(&format!("{case}.wq"));
        assert_eq!(q.weight.shape(), &wq_shape[..], "{case}: packed shape");
        assert_eq!(q.weight.to_vec::<u32>().unwrap(), wq, "{case}: packed words");
        let (scales, scales_shape, _) = fixture.float(&format!("{case}.scales"));
        let (biases, _, _) = fixture.float(&format!("{case}.biases"));
        assert_eq!(q.scales.shape(), &scales_shape[..], "{case}: scales shape");
        assert_eq!(q.scales.dtype(), dtype, "{case}: scales dtype");
        assert_eq!(first_bit_difference(&common::download(&q.scales), &scales), None, "{case}: scales");
        let biases_gpu = common::download(q.biases.as_ref().unwrap());
        assert_eq!(first_bit_difference(&biases_gpu, &biases), None, "{case}: biases");

        let (deq, deq_shape, _) = fixture.float(&format!("{case}.deq"));
        let out = wgquant::dequantize(&q, None).unwrap();
        assert_eq!(out.shape(), &deq_shape[..], "{case}: dequantized shape");
        assert_eq!(out.dtype(), dtype);
        assert_eq!(first_bit_difference(&common::download(&out), &deq), None, "{case}: dequantize");
        exact += 1;
    }
    eprintln!("MLX fixture parity on {}: {exact}/{} cases bit-exact", gpu.adapter_name(), cases.len());
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn gpu_fp_quantize_and_dequantize_match_mlx_bit_for_bit() {
    let gpu = gpu_or_skip!();
    let fixture = Fixture::load("mlx_fp_quantize.safetensors");
    let cases = fixture.cases();
    assert_eq!(cases.len(), FP_CASES);
    let mut exact = 0;
    for case in &cases {
        let params = fp_case_params(case);
        let (w, shape, dtype) = fixture.float(&format!("{case}.w"));
        let q = wgquant::quantize(&common::upload(&gpu, &w, &shape, dtype), params).unwrap();
        assert!(q.biases.is_none(), "{case}: no biases");

        let (wq, wq_shape) = fixture.u32(&format!("{case}.wq"));
        assert_eq!(q.weight.shape(), &wq_shape[..], "{case}: packed shape");
        assert_eq!(q.weight.to_vec::<u32>().unwrap(), wq, "{case}: packed words");
        let (scales, scales_shape) = fixture.u8(&format!("{case}.scales"));
        assert_eq!(q.scales.shape(), &scales_shape[..], "{case}: scales shape");
        assert_eq!(q.scales.to_vec::<u8>().unwrap(), scales, "{case}: scales");

        let default = wgquant::dequantize(&q, None).unwrap();
        assert_eq!(default.dtype(), DType::BF16, "{case}: MLX's default dtype for the fp modes");
        for (key, out_dtype) in FP_DEQ_KEYS {
            let (deq, deq_shape, _) = fixture.float(&format!("{case}.{key}"));
            let out = if out_dtype == DType::BF16 {
                default.clone()
            } else {
                wgquant::dequantize(&q, Some(out_dtype)).unwrap()
            };
            assert_eq!(out.shape(), &deq_shape[..], "{case}: dequantized shape");
            assert_eq!(first_bit_difference(&common::download(&out), &deq), None, "{case}: dequantize to {out_dtype}");
        }
        exact += 1;
    }
    eprintln!("MLX fp-mode fixture parity on {}: {exact}/{} cases bit-exact", gpu.adapter_name(), cases.len());
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn gpu_dequantize_casts_to_requested_dtype() {
    let gpu = gpu_or_skip!();
    let fixture = Fixture::load("mlx_quantize.safetensors");
    for case in ["f16_gs64_b4", "bf16_gs32_b3", "f32_gs128_b6"] {
        let params = case_params(case);
        let (w, shape, dtype) = fixture.float(&format!("{case}.w"));
        let q = wgquant::quantize(&common::upload(&gpu, &w, &shape, dtype), params).unwrap();
        let (deq, _, _) = fixture.float(&format!("{case}.deq"));
        for out_dtype in [DType::F32, DType::F16, DType::BF16] {
            let out = wgquant::dequantize(&q, Some(out_dtype)).unwrap();
            assert_eq!(out.dtype(), out_dtype);
            let expected = common::round_to(&deq, out_dtype);
            assert_eq!(first_bit_difference(&common::download(&out), &expected), None, "{case} -> {out_dtype}");
        }
    }
}
