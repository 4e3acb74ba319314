//! GPU quantize/dequantize against the CPU reference: random shapes over every format, named
//! edge cases, empty tensors, tensors split across bindings, 2-D dispatch grids and threads.
//! Everything here is compared bit for bit: the math allows it.

mod common;

use common::{first_bit_difference, Rng};
use wgquant::{reference, DType, Gpu, GpuOptions, QuantParams, Tensor};

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Quantizes `values` (shape `shape`, rounded to `dtype`) on the GPU and on the CPU reference,
/// and requires identical packed words, scales, biases and dequantized values.
fn assert_matches_reference(gpu: &Gpu, name: &str, values: &[f32], shape: &[usize], dtype: DType, params: QuantParams) {
    if let Err(mismatch) = compare_with_reference(gpu, name, values, shape, dtype, params) {
        panic!("{mismatch}");
    }
}

/// The first difference between the GPU and the CPU reference, described.
fn compare_with_reference(
    gpu: &Gpu,
    name: &str,
    values: &[f32],
    shape: &[usize],
    dtype: DType,
    params: QuantParams,
) -> Result<(), String> {
    let values = common::round_to(values, dtype);
    let k = *shape.last().unwrap();
    let q = wgquant::quantize(&common::upload(gpu, &values, shape, dtype), params)
        .map_err(|e| format!("{name}: quantize failed: {e}"))?;
    let host = reference::quantize(&values, k, params, dtype).unwrap();
    let words = q.weight.to_vec::<u32>().unwrap();
    if let Some(i) = (0..words.len()).find(|&i| words[i] != host.weight[i]) {
        return Err(format!("{name}: packed word {i}: gpu {:#010x}, reference {:#010x}", words[i], host.weight[i]));
    }
    let scales = common::download(&q.scales);
    let biases = common::download(q.biases.as_ref().unwrap());
    for (what, gpu_values, expected) in [("scale", &scales, &host.scales), ("bias", &biases, &host.biases)] {
        if let Some((i, a, b)) = first_bit_difference(gpu_values, expected) {
            return Err(format!("{name}: {what} {i}: gpu {a:e}, reference {b:e}"));
        }
    }
    let deq = common::download(&wgquant::dequantize(&q, None).unwrap());
    let expected = reference::dequantize(&host.weight, &host.scales, &host.biases, params, dtype, dtype);
    if let Some((i, a, b)) = first_bit_difference(&deq, &expected) {
        return Err(format!("{name}: dequantized {i}: gpu {a:e}, reference {b:e}"));
    }
    Ok(())
}

#[test]
fn random_shapes_every_format() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(0x5eed);
    for bits in wgquant::params::SUPPORTED_BITS {
        for group_size in wgquant::params::SUPPORTED_GROUP_SIZES {
            for dtype in FLOATS {
                let rank = 2 + rng.below(3);
                let mut shape: Vec<usize> = (0..rank - 1).map(|_| 1 + rng.below(4)).collect();
                shape.push(group_size as usize * (1 + rng.below(3)));
                let n: usize = shape.iter().product();
                // A different magnitude per row, from 1e-6 to 1e4.
                let k = *shape.last().unwrap();
                let values: Vec<f32> = (0..n)
                    .map(|i| {
                        let row_scale = 10f32.powi((i / k % 11) as i32 - 6);
                        rng.normal() * row_scale
                    })
                    .collect();
                let name = format!("{dtype} gs{group_size} b{bits} shape {shape:?}");
                assert_matches_reference(&gpu, &name, &values, &shape, dtype, QuantParams::affine(group_size, bits));
            }
        }
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn edge_cases_every_bits_and_dtype() {
    let gpu = gpu_or_skip!();
    let mut failures = Vec::new();
    for (name, group) in common::edge_groups() {
        for dtype in FLOATS {
            if name == "f32 subnormals" && dtype != DType::F32 {
                continue; // they round to zero in f16 and are covered by "all zero"
            }
            for bits in wgquant::params::SUPPORTED_BITS {
                // Two rows of the same group: the second reversed, so both orders are seen.
                let mut values = group.clone();
                values.extend(group.iter().rev());
                let case = format!("{name} {dtype} b{bits}");
                if let Err(e) =
                    compare_with_reference(&gpu, &case, &values, &[2, 64], dtype, QuantParams::affine(32, bits))
                {
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
    // MLX accepts (0, 64) and (4, 0).
    for (shape, packed, groups) in [([0usize, 64usize], [0usize, 8usize], [0usize, 1usize]), ([4, 0], [4, 0], [4, 0])] {
        let w = Tensor::from_slice::<f32>(&gpu, &[], &shape).unwrap();
        let q = wgquant::quantize(&w, QuantParams::default()).unwrap();
        assert_eq!(q.weight.shape(), &packed);
        assert_eq!(q.scales.shape(), &groups);
        assert!(q.weight.to_vec::<u32>().unwrap().is_empty());
        let back = wgquant::dequantize(&q, None).unwrap();
        assert_eq!(back.shape(), &shape);
        assert!(back.to_vec::<f32>().unwrap().is_empty());
    }
}

#[test]
fn tensors_larger_than_one_binding_are_split() {
    if common::gpu().is_none() {
        return;
    }
    // A 4 KiB binding limit: an f32 row of 256 values is 1 KiB, so 40 rows take 10 bindings.
    // Where bindings start at coarse offsets (WebGPU's 256 bytes), an aligned block of rows is
    // larger: the limit and the row counts grow by the same factor, so the split stays 10-way.
    let align = u64::from(common::gpu().unwrap().caps().limits.min_storage_buffer_offset_alignment);
    let scale = (align / 16).max(1) as usize;
    let binding = 4096 * scale as u64;
    let options = GpuOptions { max_storage_buffer_binding_size: Some(binding), ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(options).unwrap();
    assert_eq!(gpu.caps().max_binding(), binding);
    let mut rng = Rng::new(11);
    let shapes = [
        (DType::F32, vec![40 * scale, 256]),
        (DType::F16, vec![3, 37 * scale, 128]),
        (DType::BF16, vec![129 * scale, 96]),
    ];
    for (dtype, shape) in shapes {
        for (gs, bits) in [(32, 3), (64, 4), (32, 8)] {
            if shape.last().unwrap() % gs != 0 {
                continue;
            }
            let n: usize = shape.iter().product();
            let values = rng.normals(n, 1.0);
            let name = format!("split {dtype} {shape:?} gs{gs} b{bits}");
            assert_matches_reference(&gpu, &name, &values, &shape, dtype, QuantParams::affine(gs as u32, bits));
        }
    }
    // One row wider than a binding cannot be split by rows: a typed error, not a wgpu error.
    let wide = Tensor::from_slice(&gpu, &vec![1.0f32; 2 * 2048 * scale], &[2, 2048 * scale]).unwrap();
    let err = wgquant::quantize(&wide, QuantParams::default()).unwrap_err();
    assert!(matches!(err, wgquant::Error::ExceedsDeviceLimit { .. }), "{err}");
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn dispatches_past_the_workgroup_limit_use_a_2d_grid() {
    if common::gpu().is_none() {
        return;
    }
    let options = GpuOptions { max_compute_workgroups_per_dimension: Some(64), ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(options).unwrap();
    let mut rng = Rng::new(12);
    // f32 [200, 1024] gs32: 6400 groups = 100 quantize workgroups, a (64, 2) grid with overshoot;
    // 204800 values = 3200 dequantize workgroups, (64, 50).
    let values = rng.normals(400 * 1024, 1.0);
    assert_matches_reference(
        &gpu,
        "2-D grid f32",
        &values[..200 * 1024],
        &[200, 1024],
        DType::F32,
        QuantParams::affine(32, 4),
    );
    // bf16: two groups and two values per invocation.
    assert_matches_reference(&gpu, "2-D grid bf16", &values, &[400, 1024], DType::BF16, QuantParams::affine(32, 5));
    // Past 64 x 64 workgroups a dispatch cannot be laid out: a typed error before wgpu sees it.
    let big = Tensor::from_slice(&gpu, &values, &[400, 1024]).unwrap();
    let q = wgquant::quantize(&big, QuantParams::affine(32, 4)).unwrap();
    let err = wgquant::dequantize(&q, None).unwrap_err();
    assert!(matches!(err, wgquant::Error::ExceedsDeviceLimit { .. }), "{err}");
    assert!(gpu.take_uncaptured_errors().is_empty());
}

#[test]
fn threads_share_one_gpu() {
    let gpu = gpu_or_skip!();
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let gpu = gpu.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + t);
                let values = rng.normals(16 * 128, 1.0 + t as f32);
                for _ in 0..3 {
                    assert_matches_reference(
                        &gpu,
                        &format!("thread {t}"),
                        &values,
                        &[16, 128],
                        DType::F16,
                        QuantParams::affine(64, 2 + (t % 4) as u32),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked");
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}
