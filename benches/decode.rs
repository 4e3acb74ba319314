//! One decode step of Llama-3-8B: 32 blocks of q, k, v, o, gate, up and down projections and
//! the 128256 x 4096 lm_head, 225 `quantized_matmul`s of M rows recorded in one `gpu.batch`.
//!
//! Prints, from one run: the step's GPU time (timestamps around its pass), the host time to
//! record and submit it (per op), the wall time from recording to finished, the weights' GB/s
//! against the device's copy ceiling, and the raw-dispatch floor: the host time of a plain
//! wgpu `dispatch_workgroups` of a trivial kernel with a prebuilt bind group, recorded and
//! submitted the same way, 225 to a pass.
//!
//! ```text
//! cargo bench --bench decode -- [--quick] [--bits B] [--group-size G] [--rows M] [--steps N] [--json PATH]
//! ```
//! `--quick` uses a small model (2 blocks of width 256) that lavapipe runs in seconds.

mod common;

use std::time::Instant;

use clap::Parser;
use common::{median, micros, Probes};
use wgquant::random::SplitMix64;
use wgquant::{DType, Gpu, QuantParams, Quantized, Result, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Llama-3-8B decode step: GPU, host and wall time of 225 quantized_matmuls")]
struct Args {
    /// Bits per weight code.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Elements per quantization group.
    #[arg(long, default_value_t = 64)]
    group_size: u32,
    /// Rows of x (tokens per step; more than 1 for speculative decoding).
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// A small model for software adapters.
    #[arg(long)]
    quick: bool,
    /// Timed steps (medians are reported).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The projections' widths.
struct Shape {
    hidden: usize,
    kv: usize,
    mlp: usize,
    vocab: usize,
    blocks: usize,
}

const LLAMA_3_8B: Shape = Shape { hidden: 4096, kv: 1024, mlp: 14336, vocab: 128256, blocks: 32 };
const QUICK: Shape = Shape { hidden: 256, kv: 64, mlp: 512, vocab: 1024, blocks: 2 };

impl Shape {
    /// `(n, k)` of every product of a step, in order.
    fn products(&self) -> Vec<(usize, usize)> {
        let (h, kv, mlp) = (self.hidden, self.kv, self.mlp);
        let block = [(h, h), (kv, h), (kv, h), (h, h), (mlp, h), (mlp, h), (h, mlp)];
        (0..self.blocks).flat_map(|_| block).chain(std::iter::once((self.vocab, h))).collect()
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let shape = if args.quick { QUICK } else { LLAMA_3_8B };
    let params = QuantParams::affine(args.group_size, args.bits);
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());

    let mut rng = SplitMix64::new(7);
    let products = shape.products();
    let weights = products
        .iter()
        .map(|&p| common::random_weight(&gpu, &mut rng, p, params, DType::F16))
        .collect::<Result<Vec<_>>>()?;
    let weight_bytes: u64 = weights.iter().map(Quantized::size_in_bytes).sum();
    let x_hidden = common::tensor(&gpu, &mut rng, &[args.rows, shape.hidden], DType::F16)?;
    let x_mlp = common::tensor(&gpu, &mut rng, &[args.rows, shape.mlp], DType::F16)?;
    let ops = weights.len();
    let step = || {
        weights
            .iter()
            .map(|q| {
                let x = if q.logical_shape()[1] == shape.hidden { &x_hidden } else { &x_mlp };
                wgquant::quantized_matmul(x, q, true)
            })
            .collect::<Result<Vec<Tensor>>>()
    };
    let probes = Probes::new(&gpu, if args.quick { 16 << 20 } else { 1 << 30 });

    // Warm-up: pipelines, pooled outputs, cached bind groups, clocks.
    for _ in 0..5 {
        drop(gpu.batch(step)?);
        probes.raw_dispatches(&gpu, ops)?;
        gpu.synchronize()?;
    }
    let (mut host, mut wall, mut raw, mut gpu_times) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (groups_before, submissions_before) = (gpu.bind_groups_created(), gpu.submission_count());
    for _ in 0..args.steps {
        let start = Instant::now();
        let outputs = gpu.batch(step)?;
        host.push(start.elapsed());
        gpu.synchronize()?;
        wall.push(start.elapsed());
        drop(outputs);
        raw.push(probes.raw_dispatches(&gpu, ops)?);
        if gpu.caps().has_timestamps() {
            gpu_times.push(gpu.time(step)?.1);
        }
    }
    // Per timed step (a batch and a timed run; the raw probe submits outside wgquant's count).
    let steps = 2.0 * args.steps as f64;
    let groups_per_step = (gpu.bind_groups_created() - groups_before) as f64 / steps;
    let submissions_per_step = (gpu.submission_count() - submissions_before) as f64 / steps;
    let (host, wall, raw) = (median(&mut host), median(&mut wall), median(&mut raw));
    let gpu_time = (!gpu_times.is_empty()).then(|| median(&mut gpu_times));
    let copy_gbs = if gpu.caps().has_timestamps() { Some(probes.copy_gbs(&gpu, args.steps)?) } else { None };
    let per_op = host / ops as u32;
    let raw_per_dispatch = raw / ops as u32;
    let gbs = gpu_time.map(|t| weight_bytes as f64 / t.as_secs_f64() / 1e9);

    println!(
        "step: {ops} quantized_matmul, M = {}, {}-bit g{}, {:.1} MB of weights{}",
        args.rows,
        args.bits,
        args.group_size,
        weight_bytes as f64 / 1e6,
        if args.quick { " (--quick shapes)" } else { "" }
    );
    if let (Some(t), Some(gbs), Some(copy)) = (gpu_time, gbs, copy_gbs) {
        println!(
            "GPU time {:.3} ms, {gbs:.1} GB/s ({:.0}% of the {copy:.1} GB/s copy ceiling)",
            micros(t) / 1e3,
            100.0 * gbs / copy
        );
    }
    println!(
        "host record+submit {:.3} ms = {:.2} us per op; raw wgpu dispatch {:.2} us; ratio {:.1}x",
        micros(host) / 1e3,
        micros(per_op),
        micros(raw_per_dispatch),
        per_op.as_secs_f64() / raw_per_dispatch.as_secs_f64()
    );
    println!("per step: {submissions_per_step:.1} submissions, {groups_per_step:.1} bind groups created");
    match gpu_time {
        Some(t) => {
            println!("wall {:.3} ms = {:.2}x the GPU time", micros(wall) / 1e3, wall.as_secs_f64() / t.as_secs_f64())
        }
        None => println!("wall {:.3} ms (no timestamps on this adapter)", micros(wall) / 1e3),
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "adapter": gpu.describe(),
            "quick": args.quick,
            "ops": ops,
            "rows": args.rows,
            "bits": args.bits,
            "group_size": args.group_size,
            "x_dtype": DType::F16.to_string(),
            "weight_bytes": weight_bytes,
            "gpu_us": gpu_time.map(micros),
            "gbs": gbs,
            "copy_gbs": copy_gbs,
            "host_us": micros(host),
            "host_us_per_op": micros(per_op),
            "raw_dispatch_us": micros(raw_per_dispatch),
            "wall_us": micros(wall),
            "submissions_per_step": submissions_per_step,
            "bind_groups_created_per_step": groups_per_step,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("JSON")).expect("write the JSON file");
    }
    Ok(())
}
