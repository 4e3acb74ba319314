//! Benchmark of `quantized_matmul` on Llama-8B layer shapes, with the device's copy bandwidth
//! and f32 FMA rate measured in the same run as ceilings.
//!
//! Kernels are timed with timestamp queries around their compute pass (`Gpu::time`): warm-up,
//! then the median of many runs, each on the next of enough weight copies that the GPU's cache
//! cannot hold them. GB/s counts packed weights + scales + biases; TFLOP/s counts 2·M·N·K.
//!
//! ```text
//! cargo bench --bench qmm -- [--quick] [--sweep | --sweep-only] [--runs N] [--repeat N]
//!                              [--dtype f16|bf16] [--rows M,M,..] [--json PATH] [--cooperative] [--fp]
//! ```
//! `--quick` uses small shapes (lavapipe runs it in seconds); `--sweep` also times the kernel
//! knobs on the large shapes (`--sweep-only`: only them; a knob the device refuses is skipped);
//! `--repeat N` times N products back to back per pass and divides (default 8: one product
//! per pass also measures the pass's fixed cost, several microseconds, and its medians drift
//! between runs; `--repeat 1` times one, like torch's event timing of one call); `--dtype` is
//! the dtype of x, scales and biases (default f16); `--rows` times these rows of x instead of
//! 1, 8, 32 and 512 (`--quick`: 1, 8, 32, 64); `--json` writes the table (default
//! `qmm_bench.json`); `--cooperative` opens the device with wgpu's experimental cooperative
//! matrices (`Gpu::with_cooperative_matrices`), so that `default` runs `qmv_coop` on tensor
//! cores where it chooses to, and times `qmv` (`vector`) and `qmv_coop` (`cooperative`) by name
//! for 2 to 8 rows of f16 x. `--fp` also times mxfp4, mxfp8 and nvfp4 weights on every shape
//! (GB/s counts their packed words and scale bytes), for the fp modes' GEMV against affine 4-bit.

mod common;

use std::time::Duration;

use wgquant::kernels::QmmShape;
use wgquant::params::FP_MODES;
use wgquant::random::SplitMix64;
use wgquant::{DType, Gpu, GpuOptions, QmmKernel, QmmOptions, QuantParams, Quantized, Result};

/// Weight bytes the rotation spans, so that no cache holds the weights between runs (the H100's
/// L2 is 50 MB).
const ROTATION_BYTES: u64 = 256 << 20;
const GROUP_SIZE: u32 = 64;

#[derive(clap::Parser, Debug)]
#[command(about = "quantized_matmul on Llama-8B layer shapes against the copy and FMA ceilings")]
struct Config {
    /// Small shapes (lavapipe runs them in seconds).
    #[arg(long)]
    quick: bool,
    /// Also time the kernel knobs on the large shapes.
    #[arg(long)]
    sweep: bool,
    /// Time only the kernel knobs.
    #[arg(long)]
    sweep_only: bool,
    /// Timed samples per case (medians are reported).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Products per timed pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// dtype of x, scales and biases: f16 or bf16.
    #[arg(long, default_value = "f16", value_parser = parse_dtype)]
    dtype: DType,
    /// Rows of x to time, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<usize>>,
    /// Where to write the JSON table.
    #[arg(long, default_value = "qmm_bench.json")]
    json: String,
    /// Open the device with cooperative matrices.
    #[arg(long)]
    cooperative: bool,
    /// Also time the fp modes (mxfp4, mxfp8, nvfp4) on every shape, beside affine 4 and 8 bits.
    #[arg(long)]
    fp: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Affine parameters at the bench's group size.
fn affine(bits: u32) -> QuantParams {
    QuantParams::affine(GROUP_SIZE, bits)
}

/// The format column: affine bits, or the fp mode's name.
fn format_label(params: QuantParams) -> String {
    if params.mode.is_fp() {
        params.mode.to_string()
    } else {
        params.bits.to_string()
    }
}

fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s {
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!("{other} is not f16 or bf16")),
    }
}

impl Config {
    fn from_args() -> Config {
        let mut config = <Config as clap::Parser>::parse();
        config.sweep |= config.sweep_only;
        if config.quick {
            config.runs = config.runs.min(5);
            config.repeat = config.repeat.min(2);
        }
        config
    }
}

/// Median GPU time of one call of `f`, over `runs` samples after a warm-up; each sample times
/// `repeat` calls `f(0), f(1), ..` recorded back to back into one pass (call numbers run on
/// across samples) and divides by `repeat`.
fn median_time(gpu: &Gpu, runs: usize, repeat: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Duration> {
    let mut calls = 0..;
    let mut sample = || -> Result<Duration> {
        let (_, t) = gpu.time(|| calls.by_ref().take(repeat).try_for_each(&mut f))?;
        Ok(t / repeat as u32)
    };
    for _ in 0..10 {
        sample()?;
    }
    let mut times = (0..runs).map(|_| sample()).collect::<Result<Vec<_>>>()?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// One timed configuration.
struct Row {
    n: usize,
    k: usize,
    m: usize,
    params: QuantParams,
    variant: String,
    time: Duration,
    bytes: u64,
}

impl Row {
    fn gbs(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64() / 1e9
    }

    fn tflops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64 / self.time.as_secs_f64() / 1e12
    }
}

/// Times each case (rows of x, variants) of `n` x `k` weights quantized with `params`, all on one set of
/// weight copies.
fn time_matmul(
    gpu: &Gpu,
    config: &Config,
    heater: &Heater,
    (n, k): (usize, usize),
    params: QuantParams,
    cases: &[(usize, Vec<(String, QmmOptions)>)],
) -> Result<Vec<Row>> {
    let mut rng = SplitMix64::new(n as u64 * 31 + k as u64 * 7 + u64::from(params.bits));
    let one = common::random_weight(gpu, &mut rng, (n, k), params, config.dtype)?;
    let bytes = one.size_in_bytes();
    let copies = if config.quick { 2 } else { ROTATION_BYTES.div_ceil(bytes).max(2) as usize };
    // One set of weights for every row count, so that the timings of one shape differ by the rows
    // of x alone: on an H100, the same product on sets allocated at different points of a run
    // took up to 1.6x as long (19.4 against 30.9 µs), and a row count's ratio to M = 1 with it.
    let weights: Vec<Quantized> = std::iter::once(Ok(one))
        .chain((1..copies).map(|_| common::random_weight(gpu, &mut rng, (n, k), params, config.dtype)))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for &(m, ref options) in cases {
        let x = common::tensor(gpu, &mut rng, &[m, k], config.dtype)?;
        for (variant, option) in options {
            if let Err(e) = wgquant::quantized_matmul_with(&x, &weights[0], true, option) {
                eprintln!("{variant}: {e}");
                continue;
            }
            // Creating the weights left the GPU idle: bring its clocks back up first.
            heater.heat(gpu)?;
            let time = median_time(gpu, config.runs, config.repeat as usize, |i| {
                wgquant::quantized_matmul_with(&x, &weights[i % copies], true, option).map(drop)
            })?;
            rows.push(Row { n, k, m, params, variant: variant.clone(), time, bytes });
        }
    }
    Ok(rows)
}

/// The copy kernel and the f32 FMA kernel of the ceilings.
const CEILINGS_WGSL: &str = r#"
// The FMA ceiling: 8 independent chains of vec4 FMAs per invocation, ITERATIONS long.
// Bindings: 1 dst. Overrides: ITERATIONS.
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

override ITERATIONS: u32 = 1024u;

@compute @workgroup_size(256)
fn fma_chains(@builtin(global_invocation_id) id: vec3<u32>) {
    let seed = vec4<f32>(f32(id.x) * 1e-9);
    var a0 = seed; var a1 = seed + 1.0; var a2 = seed + 2.0; var a3 = seed + 3.0;
    var a4 = seed + 4.0; var a5 = seed + 5.0; var a6 = seed + 6.0; var a7 = seed + 7.0;
    let mul = vec4<f32>(0.9999);
    let add = vec4<f32>(1e-4);
    for (var i = 0u; i < ITERATIONS; i++) {
        a0 = fma(a0, mul, add); a1 = fma(a1, mul, add); a2 = fma(a2, mul, add); a3 = fma(a3, mul, add);
        a4 = fma(a4, mul, add); a5 = fma(a5, mul, add); a6 = fma(a6, mul, add); a7 = fma(a7, mul, add);
    }
    dst[id.x] = bitcast<vec4<u32>>(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7);
}
"#;

/// Runs the FMA kernel for a while: GPUs lower their clocks when idle.
struct Heater {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: u32,
    dispatches: usize,
}

impl Heater {
    fn heat(&self, gpu: &Gpu) -> Result<()> {
        gpu.batch(|| {
            (0..self.dispatches)
                .try_for_each(|_| gpu.dispatch("heat", &self.pipeline, &self.bind_group, (self.groups, 1, 1)))
        })?;
        gpu.synchronize()
    }
}

/// Copy GB/s (counting bytes read and written), f32 FMA TFLOP/s, and the FMA kernel as a heater.
fn ceilings(gpu: &Gpu, config: &Config) -> Result<(f64, f64, Heater)> {
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("ceilings"),
        source: wgpu::ShaderSource::Wgsl(CEILINGS_WGSL.into()),
    });
    let iterations = if config.quick { 64.0 } else { 4096.0 };
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[("ITERATIONS", iterations)],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    let copy_bytes: u64 = if config.quick { 16 << 20 } else { 512 << 20 };
    let copy_gbs = common::Probes::new(gpu, copy_bytes).copy_gbs(gpu, config.runs)?;
    let fma = pipeline("fma_chains");
    let groups: u32 = if config.quick { 64 } else { 8192 };
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("ceilings"),
        size: u64::from(groups) * 256 * 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let fma_group = common::bind_whole(device, &fma, &[(1, &out)]);
    let fma_time = median_time(gpu, config.runs, 1, |_| gpu.dispatch("fma", &fma, &fma_group, (groups, 1, 1)))?;
    let flops = f64::from(groups) * 256.0 * iterations * 8.0 * 4.0 * 2.0;
    // About 20 ms of FMAs on a large GPU.
    let heater = Heater { pipeline: fma, bind_group: fma_group, groups, dispatches: if config.quick { 1 } else { 3 } };
    Ok((copy_gbs, flops / fma_time.as_secs_f64() / 1e12, heater))
}

/// The knob variants `--sweep` times for `m` rows, each listed `rounds` times (timings drift
/// between runs, so rounds interleave the variants).
fn sweep_variants(m: usize) -> Vec<(String, QmmOptions)> {
    let mut variants = Vec::new();
    if m <= 32 {
        for wg in [32, 64, 128] {
            let options = QmmOptions { kernel: QmmKernel::Vector, qmv_wg_size: Some(wg), ..QmmOptions::default() };
            variants.push((format!("qmv wg {wg}"), options));
        }
    }
    // (rows, columns, columns per invocation, k slices; None: the dispatcher's)
    let large: &[(u32, u32, u32, Option<u32>)] = &[
        (128, 256, 16, None),
        (128, 256, 16, Some(2)),
        (128, 256, 16, Some(3)),
        (128, 256, 16, Some(4)),
        (128, 256, 16, Some(8)),
        (64, 256, 16, None),
        (128, 128, 16, None),
        (128, 128, 8, Some(2)),
    ];
    let small: &[(u32, u32, u32, Option<u32>)] =
        &[(32, 256, 8, None), (32, 256, 8, Some(3)), (32, 256, 8, Some(8)), (32, 128, 8, Some(4))];
    let (list, rounds) = if m >= 512 {
        (large, 2)
    } else if m > 1 {
        (small, 2)
    } else {
        (&[][..], 1)
    };
    for &(rows, bn, columns, split) in list {
        let options = QmmOptions {
            kernel: QmmKernel::Tiled,
            qmm_tile_rows: Some(rows),
            qmm_shape: Some(QmmShape { bn, columns }),
            split_k: split,
            ..QmmOptions::default()
        };
        let split = split.map_or("auto".to_string(), |s| s.to_string());
        variants.push((format!("qmm {rows}x{bn} c{columns} split {split}"), options));
    }
    let one = variants.clone();
    for _ in 1..rounds {
        variants.extend(one.iter().cloned());
    }
    variants
}

fn main() -> Result<()> {
    let config = Config::from_args();
    let gpu = if config.cooperative {
        // SAFETY: a benchmark of wgquant's own kernels, whose resources `Gpu::pipeline` checks;
        // wgpu validates experimental features less than stable ones.
        let enable = |d: &mut wgpu::DeviceDescriptor<'_>| {
            d.experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() }
        };
        Gpu::with_cooperative_matrices(GpuOptions::from_env()?, enable)?
    } else {
        Gpu::new()?
    };
    println!("adapter: {}", gpu.describe());
    if !gpu.caps().has_timestamps() {
        eprintln!("this adapter has no timestamp queries; nothing to time");
        return Ok(());
    }
    let (copy_gbs, fma_tflops, heater) = ceilings(&gpu, &config)?;
    println!("ceilings: copy {copy_gbs:.0} GB/s (read + written), f32 FMA {fma_tflops:.1} TFLOP/s");

    let (shapes, mut ms): (Vec<(usize, usize)>, Vec<usize>) = if config.quick {
        (vec![(256, 256), (512, 256), (256, 512)], vec![1, 8, 32, 64])
    } else {
        (vec![(4096, 4096), (14336, 4096), (4096, 14336)], vec![1, 8, 32, 512])
    };
    if let Some(rows) = &config.rows {
        ms.clone_from(rows);
    }
    let default = vec![("default".to_string(), QmmOptions::default())];
    // With tensor cores, each kernel for 2 to 8 rows is also timed by name.
    let variants = |m: usize| {
        let mut variants = default.clone();
        if gpu.caps().cooperative_f16 && config.dtype == DType::F16 && (2..=8).contains(&m) {
            for (name, kernel) in [("vector", QmmKernel::Vector), ("cooperative", QmmKernel::Cooperative)] {
                variants.push((name.to_string(), QmmOptions { kernel, ..QmmOptions::default() }));
            }
        }
        variants
    };
    let mut rows = Vec::new();
    for &(n, k) in if config.sweep_only { &[][..] } else { &shapes[..] } {
        let fp = if config.fp { FP_MODES.map(QuantParams::for_mode).to_vec() } else { Vec::new() };
        for params in [affine(4), affine(8)].into_iter().chain(fp) {
            let cases: Vec<_> = ms.iter().map(|&m| (m, variants(m))).collect();
            rows.extend(time_matmul(&gpu, &config, &heater, (n, k), params, &cases)?);
        }
    }
    if config.sweep {
        let cases: Vec<_> = ms.iter().map(|&m| (m, sweep_variants(m))).collect();
        rows.extend(time_matmul(&gpu, &config, &heater, shapes[1], affine(4), &cases)?);
        // The tiled kernel's knobs at the most rows, 8 bits and the other long shape; qmv's
        // workgroup sizes at a few rows on the other shapes.
        if let Some(&m) = ms.iter().max().filter(|&&m| m > 32) {
            rows.extend(time_matmul(&gpu, &config, &heater, shapes[1], affine(8), &[(m, sweep_variants(m))])?);
            rows.extend(time_matmul(&gpu, &config, &heater, shapes[2], affine(4), &[(m, sweep_variants(m))])?);
        }
        if let Some(&m) = ms.iter().find(|&&m| m > 1 && m <= 32) {
            for shape in [shapes[0], shapes[2]] {
                rows.extend(time_matmul(&gpu, &config, &heater, shape, affine(4), &[(m, sweep_variants(m))])?);
            }
        }
    }

    let dtype = config.dtype;
    println!(
        "\nquantized_matmul, x {dtype}, scales/biases {dtype}, group {GROUP_SIZE} (affine; the fp modes: their own \
         format), median of {} runs",
        config.runs
    );
    println!(
        "{:>6} {:>6} {:>4} {:>6} {:<22} {:>10} {:>8} {:>8}",
        "N", "K", "M", "format", "variant", "us", "GB/s", "TFLOP/s"
    );
    for r in &rows {
        println!(
            "{:>6} {:>6} {:>4} {:>6} {:<22} {:>10.1} {:>8.1} {:>8.3}",
            r.n,
            r.k,
            r.m,
            format_label(r.params),
            r.variant,
            r.time.as_secs_f64() * 1e6,
            r.gbs(),
            r.tflops()
        );
    }
    std::fs::write(&config.json, to_json(&gpu, copy_gbs, fma_tflops, &config, &rows)).expect("write the JSON table");
    println!("\nwrote {}", config.json);
    Ok(())
}

fn to_json(gpu: &Gpu, copy_gbs: f64, fma_tflops: f64, config: &Config, rows: &[Row]) -> String {
    let info = &gpu.caps().info;
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "n": r.n, "k": r.k, "m": r.m, "bits": r.params.bits, "mode": r.params.mode.as_str(),
                "variant": r.variant,
                "median_us": r.time.as_secs_f64() * 1e6, "gbs": r.gbs(), "tflops": r.tflops(),
            })
        })
        .collect();
    let json = serde_json::json!({
        "adapter": info.name,
        "driver": format!("{} {}", info.driver, info.driver_info),
        "runs": config.runs,
        "group_size": GROUP_SIZE,
        "x_dtype": config.dtype.to_string(),
        "scale_dtype": config.dtype.to_string(),
        "copy_gbs": copy_gbs,
        "fma_f32_tflops": fma_tflops,
        "cooperative_f16": gpu.caps().cooperative_f16,
        "rows": rows,
    });
    serde_json::to_string_pretty(&json).expect("JSON") + "\n"
}
