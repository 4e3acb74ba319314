//! Every op runs on a device opened with WebGPU's default limits and no optional features (16 KiB
//! of workgroup memory, 256 invocations, no subgroups: what browsers give and what
//! `wgpu::DeviceDescriptor::default()` asks for), on a shape that reaches each kernel. Results
//! match the same ops on the test device with its own limits: bit for bit where both run the
//! same kernel, and within the f32 reordering bound where the planner picked other tiles or
//! reductions.

mod common;

use wgquant::{ops, quantize, quantized_matmul, DType, Gpu, QuantParams, Tensor};

/// The test adapter, opened as a browser would open it.
fn webgpu_default_gpu() -> Option<Gpu> {
    let reference = common::gpu()?;
    let backends = reference.caps().info.backend.into();
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    let name = reference.caps().info.name.clone();
    let adapter =
        pollster::block_on(instance.enumerate_adapters(backends)).into_iter().find(|a| a.get_info().name == name)?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).ok()?;
    Some(Gpu::from_device(&adapter, device, queue))
}

/// Both devices, or a skip where there is no GPU.
fn devices() -> Option<(Gpu, Gpu)> {
    let reference = common::gpu()?;
    let small = webgpu_default_gpu().expect("the test adapter opens with WebGPU's default limits");
    let limits = &small.caps().limits;
    assert_eq!(limits.max_compute_workgroup_storage_size, 16384);
    assert_eq!(limits.max_compute_invocations_per_workgroup, 256);
    assert!(!small.caps().has_subgroups());
    Some((small, reference))
}

fn bits_of(t: &Tensor) -> Vec<u32> {
    match t.dtype() {
        DType::U32 => t.to_vec::<u32>().unwrap(),
        DType::F32 => t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect(),
        _ => common::download(t).iter().map(|v| v.to_bits()).collect(),
    }
}

#[test]
fn quantize_dequantize_and_float_ops_match_bit_for_bit() {
    let Some((small, reference)) = devices() else { return };
    let mut rng = common::Rng::new(18);
    let (rows, k) = (40, 256);
    let values = rng.normals(rows * k, 1.0);
    let row = rng.normals(k, 1.0);
    let run = |gpu: &Gpu| -> Vec<Vec<u32>> {
        let w = common::upload(gpu, &values, &[rows, k], DType::F16);
        let weight = common::upload(gpu, &row, &[k], DType::F16);
        let q = quantize(&w, QuantParams::affine(64, 4)).unwrap();
        let ids = Tensor::from_slice(gpu, &[3u32, 0, 39], &[3]).unwrap();
        vec![
            bits_of(&q.weight),
            bits_of(&q.scales),
            bits_of(&wgquant::dequantize(&q, Some(DType::F32)).unwrap()),
            bits_of(&ops::matmul(&w, &w, true).unwrap()),
            bits_of(&ops::rms_norm(&w, &weight, 1e-5).unwrap()),
            bits_of(&ops::softmax(&w).unwrap()),
            bits_of(&ops::add(&w, &weight).unwrap()),
            bits_of(&ops::silu(&w).unwrap()),
            bits_of(&ops::take(&w, &ids).unwrap()),
        ]
    };
    let (a, b) = (run(&small), run(&reference));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "op {i} differs on WebGPU's default limits");
    }
}

/// `quantized_matmul` on a shape reaching each kernel: qmv (1 row; 8 rows, prepared x), qvm
/// (2 rows), qmm (33 and 130 rows, both layouts; the planner narrows the tiles to 16 KiB).
#[test]
fn quantized_matmul_runs_every_kernel() {
    let Some((small, reference)) = devices() else { return };
    let mut rng = common::Rng::new(1812);
    let (n, k) = (256, 512);
    let w_values = rng.normals(n * k, 1.0);
    for (m, transpose) in [(1, true), (8, true), (33, true), (130, true), (2, false), (33, false)] {
        let (rows, cols) = if transpose { (n, k) } else { (k, n) };
        let x_values = rng.normals(m * k, 1.0);
        let run = |gpu: &Gpu| -> (Vec<f32>, Vec<f32>) {
            let w = Tensor::from_slice(gpu, &w_values[..rows * cols], &[rows, cols]).unwrap();
            let q = quantize(&w, QuantParams::affine(64, 4)).unwrap();
            let x = Tensor::from_slice(gpu, &x_values, &[m, k]).unwrap();
            let y = quantized_matmul(&x, &q, transpose).unwrap().to_vec::<f32>().unwrap();
            (y, wgquant::dequantize(&q, Some(DType::F32)).unwrap().to_vec::<f32>().unwrap())
        };
        let ((got, _), (want, dense)) = (run(&small), run(&reference));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (row, out) = (i / n, i % n);
            let reach: f32 = (0..k)
                .map(|kk| {
                    let weight = if transpose { dense[out * k + kk] } else { dense[kk * n + out] };
                    (x_values[row * k + kk] * weight).abs()
                })
                .sum();
            // Two f32 sums of the same k products in different orders (tiles, k slices,
            // reductions): each within k·2^-24 of Σ |x w| of the exact sum.
            let bound = 2.0 * k as f32 * f32::EPSILON / 2.0 * reach;
            assert!((g - w).abs() <= bound, "m {m}, transpose {transpose}, ({row}, {out}): {g} vs {w}, bound {bound}");
        }
    }
}
