//! What the benches share: seeded random weights, the raw-dispatch floor and the copy ceiling.
#![allow(dead_code)] // each bench uses its own part

use std::time::{Duration, Instant};

use wgquant::{f16, wgpu, Gpu, QuantParams, Quantized, Result, Tensor};

/// SplitMix64: random codes and scales (timing does not depend on the values).
pub struct Words(pub u64);

impl Words {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn halves(&mut self, gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let values: Vec<f16> = (0..shape.iter().product())
            .map(|_| f16::from_f32(((self.next() >> 40) as f32 / 16_777_216.0 - 0.5) * 0.1))
            .collect();
        Tensor::from_slice(gpu, &values, shape)
    }

    pub fn weight(&mut self, gpu: &Gpu, (n, k): (usize, usize), params: QuantParams) -> Result<Quantized> {
        self.stacked(gpu, &[], (n, k), params)
    }

    /// Matrices `(n, k)` stacked along `batch` (a layer of experts), quantized with `params`.
    pub fn stacked(
        &mut self,
        gpu: &Gpu,
        batch: &[usize],
        (n, k): (usize, usize),
        params: QuantParams,
    ) -> Result<Quantized> {
        let matrices: usize = batch.iter().product();
        let shape = |last: usize| [batch, &[n, last]].concat();
        let width = params.packed_width(k);
        let packed: Vec<u32> = (0..matrices * n * width).map(|_| self.next() as u32).collect();
        let weight = Tensor::from_slice(gpu, &packed, &shape(width))?;
        let groups = k / params.group_size as usize;
        let scales = self.halves(gpu, &shape(groups))?;
        let biases = self.halves(gpu, &shape(groups))?;
        Quantized::from_parts(weight, scales, Some(biases), params)
    }
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
        let bind = |pipeline: &wgpu::ComputePipeline, entries: &[(u32, &wgpu::Buffer)]| {
            let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
                .iter()
                .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        };
        let (trivial, copy) = (pipeline("trivial"), pipeline("copy"));
        let trivial_group = bind(&trivial, &[(1, &small)]);
        let copy_group = bind(&copy, &[(0, &src), (1, &dst)]);
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

pub fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
