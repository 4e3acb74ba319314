//! A Qwen3-30B-A3B-shaped mixture-of-experts layer (128 experts, top 8, hidden 2048, expert
//! width 768, 4-bit g64): the gate, up and down `gather_qmm`s of mlx-lm's `SwitchGLU`.
//!
//! Prints, from one run:
//! - decode (one token, its 8 experts): GPU time of the three products and GB/s over the bytes
//!   of the experts it touches (weights, scales and biases), against the device's copy ceiling;
//! - sorted prefill (`--tokens` tokens, their pairs sorted by expert as `SwitchGLU` sorts them):
//!   TFLOP/s of the three products, against dense `quantized_matmul`s doing the same work
//!   (every pair's rows through one expert-sized matrix per projection).
//!
//! The activation between the projections is left out of both (it is the same element-wise
//! work for either). Timings need timestamp queries; without them the bench says so.
//!
//! ```text
//! cargo bench --bench moe -- [--quick] [--tokens T] [--steps N] [--json PATH]
//! ```
//! `--quick` uses a small layer (8 experts, top 2, hidden 256, width 128, 32 tokens) that
//! lavapipe runs in seconds.

mod common;

use clap::Parser;
use common::{median, random_stacked, random_weight, tensor, Probes};
use wgquant::random::SplitMix64;
use wgquant::{gather_qmm, quantized_matmul, DType, Gpu, QuantParams, Quantized, Result, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Qwen3-30B-A3B MoE layer: decode GB/s over touched experts, sorted prefill TFLOP/s against dense")]
struct Args {
    /// A small layer for software adapters.
    #[arg(long)]
    quick: bool,
    /// Prefill tokens (default 512; 32 with --quick).
    #[arg(long)]
    tokens: Option<usize>,
    /// Timed runs (medians are reported).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The layer's sizes.
struct Shape {
    experts: usize,
    top_k: usize,
    hidden: usize,
    width: usize,
    tokens: usize,
}

const QWEN3_30B_A3B: Shape = Shape { experts: 128, top_k: 8, hidden: 2048, width: 768, tokens: 512 };
const QUICK: Shape = Shape { experts: 8, top_k: 2, hidden: 256, width: 128, tokens: 32 };

/// The three projections of a layer of experts.
struct Layer {
    gate: Quantized,
    up: Quantized,
    down: Quantized,
}

impl Layer {
    /// `gate`, `up` (on x, `(.., hidden)`) and `down` (on h, `(.., width)`) through `idx`.
    fn products(&self, x: &Tensor, h: &Tensor, idx: &Tensor, sorted: bool) -> Result<Vec<Tensor>> {
        Ok(vec![
            gather_qmm(x, &self.gate, None, Some(idx), true, sorted)?,
            gather_qmm(x, &self.up, None, Some(idx), true, sorted)?,
            gather_qmm(h, &self.down, None, Some(idx), true, sorted)?,
        ])
    }
}

fn timed(gpu: &Gpu, steps: usize, run: impl Fn() -> Result<Vec<Tensor>>) -> Result<f64> {
    for _ in 0..3 {
        drop(gpu.batch(&run)?);
    }
    let mut times = (0..steps).map(|_| gpu.time(&run).map(|t| t.1)).collect::<Result<Vec<_>>>()?;
    Ok(median(&mut times).as_secs_f64())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let shape = if args.quick { QUICK } else { QWEN3_30B_A3B };
    let tokens = args.tokens.unwrap_or(shape.tokens);
    let (e, k, d, w) = (shape.experts, shape.top_k, shape.hidden, shape.width);
    let params = QuantParams::affine(64, 4);
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    if !gpu.caps().has_timestamps() {
        println!("no timestamp queries on this adapter: nothing to time");
        return Ok(());
    }
    let mut rng = SplitMix64::new(11);
    let f16 = DType::F16;
    let layer = Layer {
        gate: random_stacked(&gpu, &mut rng, &[e], (w, d), params, f16)?,
        up: random_stacked(&gpu, &mut rng, &[e], (w, d), params, f16)?,
        down: random_stacked(&gpu, &mut rng, &[e], (d, w), params, f16)?,
    };
    let per_expert = (layer.gate.size_in_bytes() + layer.up.size_in_bytes() + layer.down.size_in_bytes()) / e as u64;

    // Decode: one token, x (1, 1, 1, d), its top_k distinct experts.
    let experts: Vec<u32> = (0..k).map(|i| ((i * 37 + 5) % e) as u32).collect();
    let idx = Tensor::from_slice(&gpu, &experts, &[1, k])?;
    let x = tensor(&gpu, &mut rng, &[1, 1, 1, d], f16)?;
    let h = tensor(&gpu, &mut rng, &[1, k, 1, w], f16)?;
    let decode = timed(&gpu, args.steps, || layer.products(&x, &h, &idx, false))?;
    let touched = k as u64 * per_expert;
    let probes = Probes::new(&gpu, if args.quick { 16 << 20 } else { 1 << 30 });
    let copy = probes.copy_gbs(&gpu, args.steps)?;
    let decode_gbs = touched as f64 / decode / 1e9;

    // Sorted prefill: tokens · top_k pairs grouped by expert (as SwitchGLU sorts them).
    let pairs = tokens * k;
    let mut sorted: Vec<u32> = (0..pairs).map(|_| rng.below(e) as u32).collect();
    sorted.sort_unstable();
    let idx = Tensor::from_slice(&gpu, &sorted, &[pairs])?;
    let xs = tensor(&gpu, &mut rng, &[pairs, 1, d], f16)?;
    let hs = tensor(&gpu, &mut rng, &[pairs, 1, w], f16)?;
    let prefill = timed(&gpu, args.steps, || layer.products(&xs, &hs, &idx, true))?;
    let flops = 2.0 * pairs as f64 * 3.0 * (d * w) as f64;
    let prefill_tflops = flops / prefill / 1e12;
    // Dense: the same rows through one expert-sized matrix per projection.
    let dense_layer = Layer {
        gate: random_weight(&gpu, &mut rng, (w, d), params, f16)?,
        up: random_weight(&gpu, &mut rng, (w, d), params, f16)?,
        down: random_weight(&gpu, &mut rng, (d, w), params, f16)?,
    };
    let (xd, hd) = (tensor(&gpu, &mut rng, &[pairs, d], f16)?, tensor(&gpu, &mut rng, &[pairs, w], f16)?);
    let dense = timed(&gpu, args.steps, || {
        Ok(vec![
            quantized_matmul(&xd, &dense_layer.gate, true)?,
            quantized_matmul(&xd, &dense_layer.up, true)?,
            quantized_matmul(&hd, &dense_layer.down, true)?,
        ])
    })?;
    let dense_tflops = flops / dense / 1e12;

    println!(
        "layer: {e} experts, top {k}, hidden {d}, width {w}, 4-bit g64, f16 x{}",
        if args.quick { " (--quick shapes)" } else { "" }
    );
    println!(
        "decode: {:.1} us for gate+up+down over {k} experts ({:.2} MB touched): {decode_gbs:.1} GB/s, {:.0}% of the {copy:.1} GB/s copy ceiling",
        decode * 1e6,
        touched as f64 / 1e6,
        100.0 * decode_gbs / copy
    );
    println!(
        "sorted prefill, {tokens} tokens ({pairs} pairs): {:.3} ms, {prefill_tflops:.2} TFLOP/s; dense quantized_matmul on the same work {:.3} ms, {dense_tflops:.2} TFLOP/s: {:.0}%",
        prefill * 1e3,
        dense * 1e3,
        100.0 * prefill_tflops / dense_tflops
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "adapter": gpu.describe(),
            "quick": args.quick,
            "experts": e, "top_k": k, "hidden": d, "width": w, "tokens": tokens,
            "decode_us": decode * 1e6,
            "touched_bytes": touched,
            "decode_gbs": decode_gbs,
            "copy_gbs": copy,
            "prefill_us": prefill * 1e6,
            "prefill_tflops": prefill_tflops,
            "dense_us": dense * 1e6,
            "dense_tflops": dense_tflops,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("JSON")).expect("write the JSON file");
    }
    Ok(())
}
