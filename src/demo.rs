//! The demo behind `cargo run --release`: builds a small Llama-shaped model with seeded random
//! weights, quantizes it with one of mlx-lm's mixed recipes through [`nn::quantize`], and reports
//! what that cost (bits per weight), what it lost (the logits' relative error against the float
//! model on the same tokens) and the time per forward pass, on the default adapter (lavapipe
//! when there is no GPU).

use std::str::FromStr;
use std::time::{Duration, Instant};

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions};
use crate::nn::{self, LlamaConfig, Model, Module, Recipe};
use crate::params::QuantParams;
use crate::random::SplitMix64;
use crate::tensor::Tensor;

/// The demo's settings (the binary's `wgquant demo` flags, with their defaults there).
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// How to choose bits per layer: mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (mlx-lm's
    /// --quant-predicate recipes), or uniform (--bits everywhere).
    pub recipe: QuantRecipe,
    /// Bits per weight code with --recipe uniform: 1, 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Elements per quantization group: 32, 64 or 128.
    pub group_size: u32,
    /// Consider only adapters whose name contains this (case-insensitive), e.g. llvmpipe or H100.
    pub adapter: Option<String>,
    /// Tie the output head to the embedding table (no lm_head; the quantized table serves both).
    pub tied: bool,
    /// Element type of the float weights: f32, f16 or bf16.
    pub dtype: DType,
    /// Transformer blocks (width 256, MLP 512, 4 heads, vocabulary 1024).
    pub layers: usize,
    /// Tokens in the input sequence.
    pub tokens: usize,
    /// Timed forward passes per model (after one warm-up pass).
    pub iterations: usize,
    /// Seed of the weights and tokens.
    pub seed: u64,
}

/// The demo's size caps: a demo stays a demo (256 blocks of this width are about 330 MB of f16
/// weights), and a typo in a count fails at once instead of growing until the system kills it.
pub const MAX_LAYERS: usize = 256;
/// See [`MAX_LAYERS`].
pub const MAX_TOKENS: usize = 4096;
/// See [`MAX_LAYERS`].
pub const MAX_ITERATIONS: usize = 1000;

/// How the demo picks each layer's bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantRecipe {
    /// The same bits for every layer.
    Uniform,
    /// One of mlx-lm's mixed recipes.
    Mixed(Recipe),
}

impl FromStr for QuantRecipe {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "uniform" {
            Ok(QuantRecipe::Uniform)
        } else {
            s.parse().map(QuantRecipe::Mixed)
        }
    }
}

/// Parses `f32`, `f16` or `bf16` (or MLX's long names).
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(format!("unknown dtype {other} (expected f32, f16 or bf16)")),
    }
}

/// Runs the demo and prints its report.
///
/// # Errors
/// No adapter, invalid parameters, device errors.
pub fn run(args: &DemoArgs) -> Result<()> {
    for (option, value, max) in [
        ("layers", args.layers, MAX_LAYERS),
        ("tokens", args.tokens, MAX_TOKENS),
        ("iterations", args.iterations, MAX_ITERATIONS),
    ] {
        if !(1..=max).contains(&value) {
            return Err(Error::InvalidOption {
                op: "demo",
                option,
                value: value.to_string(),
                allowed: format!("1 to {max}"),
            });
        }
    }
    let params = QuantParams::affine(args.group_size, args.bits);
    // mlx-lm's predicate skips layers it cannot quantize, so check the parameters up front.
    params.validate("quantize")?;
    let mut options = GpuOptions::from_env()?;
    if let Some(name) = &args.adapter {
        options.adapter_name = Some(name.clone());
    }
    let gpu = Gpu::with_options(options)?;
    let config =
        LlamaConfig { num_hidden_layers: args.layers, tie_word_embeddings: args.tied, ..LlamaConfig::default() };
    println!("adapter: {}", gpu.describe());
    println!(
        "model:   Llama-shaped, {} blocks, width {}, MLP {}, {} heads, vocabulary {}, {} head, {} weights, seed {}",
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.vocab_size,
        if config.tie_word_embeddings { "tied" } else { "untied" },
        args.dtype,
        args.seed
    );
    let float = Model::random(&gpu, &config, args.dtype, args.seed)?;
    println!("\n{float}\n");

    // The quantized model starts as the same weights (same seed) and is quantized in place.
    let mut quantized = Model::random(&gpu, &config, args.dtype, args.seed)?;
    let start = Instant::now();
    let done = match args.recipe {
        QuantRecipe::Uniform => {
            println!("quantizing: {} bits everywhere, group size {} (mlx-lm's predicate)", args.bits, args.group_size);
            let mut predicate = nn::mlx_lm_predicate(args.group_size, nn::quantizable);
            nn::quantize(&mut quantized, params, Some(&mut predicate))?
        }
        QuantRecipe::Mixed(recipe) => {
            let (low, high) = recipe.bits();
            println!(
                "quantizing: {recipe} ({low} bits, {high} for v_proj/down_proj of some blocks and lm_head), group size {}",
                args.group_size
            );
            let mixed = nn::MixedPredicate::new(recipe, &quantized, args.group_size)?;
            let mut predicate = nn::mlx_lm_predicate(args.group_size, |path, m| mixed.decide(path, m));
            nn::quantize(&mut quantized, params, Some(&mut predicate))?
        }
    };
    gpu.synchronize()?;
    let quantize_time = start.elapsed();
    println!("\n{quantized}\n");

    let mut by_bits = std::collections::BTreeMap::new();
    for q in &done {
        *by_bits.entry(q.params.bits).or_insert(0) += 1;
    }
    let counts: Vec<String> = by_bits.iter().map(|(bits, n)| format!("{n} at {bits} bits")).collect();
    println!("quantized {} layers ({}) in {}", done.len(), counts.join(", "), millis(quantize_time));
    println!(
        "bits per weight: {:.2} -> {:.2} (mlx-lm's count); parameters {} -> {}",
        nn::bits_per_weight(&float),
        nn::bits_per_weight(&quantized),
        megabytes(&float),
        megabytes(&quantized)
    );

    let tokens = random_tokens(&gpu, args.tokens, config.vocab_size, args.seed)?;
    let (float_logits, float_time) = timed_forward(&gpu, &float, &tokens, args.iterations)?;
    let (quantized_logits, quantized_time) = timed_forward(&gpu, &quantized, &tokens, args.iterations)?;
    let (y, y_q) = (read_f32(&float_logits)?, read_f32(&quantized_logits)?);
    let vocab = config.vocab_size;
    let agree = y.chunks(vocab).zip(y_q.chunks(vocab)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    println!(
        "logits on {} tokens: relative error {:.3e} (|y_q - y| / |y|), same top-1 token for {agree}/{}",
        args.tokens,
        relative_error(&y_q, &y),
        args.tokens
    );
    println!(
        "time per forward ({} tokens, median of {}): float {}, quantized {}",
        args.tokens,
        args.iterations,
        millis(float_time),
        millis(quantized_time)
    );
    Ok(())
}

/// Seeded token ids below `vocab`.
fn random_tokens(gpu: &Gpu, n: usize, vocab: usize, seed: u64) -> Result<Tensor> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_5eed);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    Tensor::from_slice(gpu, &ids, &[n])
}

/// One warm-up pass (which builds the pipelines), then the median wall time of `iterations`
/// (at least one) passes, each waited for.
fn timed_forward(gpu: &Gpu, model: &dyn Module, tokens: &Tensor, iterations: usize) -> Result<(Tensor, Duration)> {
    let logits = model.forward(tokens)?;
    gpu.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..iterations {
        let start = Instant::now();
        model.forward(tokens)?;
        gpu.synchronize()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok((logits, times[times.len() / 2]))
}

fn read_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(match t.dtype() {
        DType::F16 => t.to_vec::<f16>()?.into_iter().map(f16::to_f32).collect(),
        DType::BF16 => t.to_vec::<bf16>()?.into_iter().map(bf16::to_f32).collect(),
        _ => t.to_vec::<f32>()?,
    })
}

fn relative_error(y_q: &[f32], y: &[f32]) -> f64 {
    let diff: f64 = y_q.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let norm: f64 = y.iter().map(|b| f64::from(*b).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn megabytes(model: &dyn Module) -> String {
    let bytes: u64 = model.parameters().iter().map(|(_, t)| t.size_in_bytes()).sum();
    // Decimal, as every size wgquant prints (1 MB = 10^6 bytes).
    format!("{:.2} MB", bytes as f64 / 1e6)
}
