//! What the benchmarks share: seeded random weights and activations (timing does not depend on
//! the values, only on their shapes and dtypes), the raw-dispatch floor and the copy ceiling.
#![allow(dead_code)] // each bench uses its own part

use std::time::{Duration, Instant};

use wgquant::random::SplitMix64;
use wgquant::{bf16, f16, wgpu, DType, Gpu, QuantParams, Quantized, Result, Tensor};

/// Values in (-0.05, 0.05).
pub fn smalls(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.uniform() - 0.5) * 0.1).collect()
}

/// A tensor of small values in `dtype` (f32, f16 or bf16).
pub fn tensor(gpu: &Gpu, rng: &mut SplitMix64, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let values = smalls(rng, shape.iter().product());
    match dtype {
        DType::BF16 => Tensor::from_slice(gpu, &values.into_iter().map(bf16::from_f32).collect::<Vec<_>>(), shape),
        DType::F16 => Tensor::from_slice(gpu, &values.into_iter().map(f16::from_f32).collect::<Vec<_>>(), shape),
        _ => Tensor::from_slice(gpu, &values, shape),
    }
}

/// A quantized `n` x `k` weight of random codes with `dtype` scales and biases, or (fp modes)
/// scale bytes near 2^0 and no biases.
pub fn random_weight(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    (n, k): (usize, usize),
    params: QuantParams,
    dtype: DType,
) -> Result<Quantized> {
    random_stacked(gpu, rng, &[], (n, k), params, dtype)
}

/// [`random_weight`]s stacked along `batch` (a layer of experts).
pub fn random_stacked(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    batch: &[usize],
    (n, k): (usize, usize),
    params: QuantParams,
    dtype: DType,
) -> Result<Quantized> {
    let shape = |last: usize| [batch, &[n, last]].concat();
    let matrices: usize = batch.iter().product();
    let width = params.packed_width(k);
    let packed: Vec<u32> = (0..matrices * n * width).map(|_| rng.next_u64() as u32).collect();
    let weight = Tensor::from_slice(gpu, &packed, &shape(width))?;
    let groups = k / params.group_size as usize;
    if params.mode.is_fp() {
        let bytes: Vec<u8> = (0..matrices * n * groups).map(|_| 120 + (rng.next_u64() % 16) as u8).collect();
        return Quantized::from_parts(weight, Tensor::from_slice(gpu, &bytes, &shape(groups))?, None, params);
    }
    let scales = tensor(gpu, rng, &shape(groups), dtype)?;
    let biases = tensor(gpu, rng, &shape(groups), dtype)?;
    Quantized::from_parts(weight, scales, Some(biases), params)
}

/// A trivial kernel (the floor) and a grid-stride copy (the bandwidth ceiling).
const PROBES_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(64)
fn trivial(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x == 0u {
        dst[0] = dst[0] + vec4<u32>(1u);
    }
}

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    for (var i = id.x; i < arrayLength(&src); i += stride) {
        dst[i] = src[i];
    }
}
"#;

pub struct Probes {
    trivial: wgpu::ComputePipeline,
    trivial_group: wgpu::BindGroup,
    copy: wgpu::ComputePipeline,
    copy_group: wgpu::BindGroup,
    pub copy_bytes: u64,
}

impl Probes {
    pub fn new(gpu: &Gpu, copy_bytes: u64) -> Probes {
        let device = gpu.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("probes"),
            source: wgpu::ShaderSource::Wgsl(PROBES_WGSL.into()),
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let buffer = |size: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("probes"),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let copy_bytes = copy_bytes.min(gpu.caps().max_binding() & !15);
        let (src, dst, small) = (buffer(copy_bytes), buffer(copy_bytes), buffer(16));
        let (trivial, copy) = (pipeline("trivial"), pipeline("copy"));
        let trivial_group = bind_whole(device, &trivial, &[(1, &small)]);
        let copy_group = bind_whole(device, &copy, &[(0, &src), (1, &dst)]);
        Probes { trivial, trivial_group, copy, copy_group, copy_bytes }
    }

    /// Host time to record `count` trivial dispatches into one pass and submit them, in plain
    /// wgpu (the GPU's time is waited for, not counted).
    pub fn raw_dispatches(&self, gpu: &Gpu, count: usize) -> Result<Duration> {
        let start = Instant::now();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for _ in 0..count {
                pass.set_pipeline(&self.trivial);
                pass.set_bind_group(0, &self.trivial_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
        }
        gpu.queue().submit([encoder.finish()]);
        let host = start.elapsed();
        gpu.synchronize()?;
        Ok(host)
    }

    /// Copy GB/s, counting bytes read and written.
    pub fn copy_gbs(&self, gpu: &Gpu, runs: usize) -> Result<f64> {
        let mut times = (0..runs + 3)
            .map(|_| gpu.time(|| gpu.dispatch("copy", &self.copy, &self.copy_group, (4096, 1, 1))).map(|t| t.1))
            .collect::<Result<Vec<_>>>()?;
        let time = median(&mut times[3..]);
        Ok(2.0 * self.copy_bytes as f64 / time.as_secs_f64() / 1e9)
    }
}

/// A bind group of `pipeline` binding each of `entries`' buffers whole at its binding.
pub fn bind_whole(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    entries: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> =
        entries.iter().map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }).collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

pub fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
