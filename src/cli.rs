//! The `wgquant` command line: `convert`, `inspect`, and the demo (the default).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use wgquant::demo::{self, parse_dtype, DemoArgs, QuantRecipe};
use wgquant::error::mlx_shape;
use wgquant::io::{self, ConvertOptions, ModelDir, Recipe, SafetensorsFile, TensorEntry, MAX_SHARD_BYTES};
use wgquant::{DType, Error, Gpu, GpuOptions, Mode, QuantParams, Result};

/// MLX group quantization on any GPU. Without a subcommand, runs the demo: quantizes a small
/// Llama-shaped model with mlx-lm's mixed recipes on the default adapter (lavapipe when there is
/// no GPU) and reports bits per weight, the logits' error and the time per forward pass.
#[derive(Parser, Debug)]
#[command(name = "wgquant", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoCli,
}

/// Quantize a small Llama-shaped model with MLX's group quantization (mlx-lm's mixed recipes)
/// on the default GPU adapter (lavapipe when there is no GPU), and report bits per weight, the
/// error of the logits and the time per forward pass.
#[derive(Args, Debug, Clone)]
pub struct DemoCli {
    /// How to choose bits per layer: mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (mlx-lm's
    /// --quant-predicate recipes), or uniform (--bits everywhere).
    #[arg(long, default_value = "mixed_4_6")]
    recipe: QuantRecipe,
    /// Bits per weight code with --recipe uniform: 1, 2, 3, 4, 5, 6 or 8.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Elements per quantization group: 32, 64 or 128.
    #[arg(long, default_value_t = 64)]
    group_size: u32,
    /// Consider only adapters whose name contains this (case-insensitive), e.g. llvmpipe or H100.
    #[arg(long)]
    adapter: Option<String>,
    /// Tie the output head to the embedding table (no lm_head; the quantized table serves both).
    #[arg(long)]
    tied: bool,
    /// Element type of the float weights: f32, f16 or bf16.
    #[arg(long, default_value = "f16", value_parser = parse_dtype)]
    dtype: DType,
    /// Transformer blocks (width 256, MLP 512, 4 heads, vocabulary 1024), 1 to 256.
    #[arg(long, default_value_t = 4, value_parser = one_to(demo::MAX_LAYERS))]
    layers: usize,
    /// Tokens in the input sequence, 1 to 4096.
    #[arg(long, default_value_t = 32, value_parser = one_to(demo::MAX_TOKENS))]
    tokens: usize,
    /// Timed forward passes per model (after one warm-up pass), 1 to 1000.
    #[arg(long, default_value_t = 5, value_parser = one_to(demo::MAX_ITERATIONS))]
    iterations: usize,
    /// Seed of the weights and tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl DemoCli {
    fn args(&self) -> DemoArgs {
        DemoArgs {
            recipe: self.recipe,
            bits: self.bits,
            group_size: self.group_size,
            adapter: self.adapter.clone(),
            tied: self.tied,
            dtype: self.dtype,
            layers: self.layers,
            tokens: self.tokens,
            iterations: self.iterations,
            seed: self.seed,
        }
    }
}

/// A count from one to `max`.
fn one_to(max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=max as u64)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize a model directory into MLX's format (or dequantize one), as `mlx_lm.convert`.
    Convert(ConvertArgs),
    /// List a model directory's (or one safetensors file's) tensors, layers and bits per weight.
    Inspect(InspectArgs),
    /// Quantize a small Llama-shaped model and report bits per weight, logit error and time (the default).
    Demo(DemoCli),
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// The model directory to read: config.json and model.safetensors or indexed shards.
    input: PathBuf,
    /// The directory to create (written beside it, then renamed into place when complete).
    output: PathBuf,
    /// Bits per weight code: 1, 2, 3, 4, 5, 6 or 8 [default: the mode's, 4 for affine]. A
    /// recipe sets each layer's bits itself.
    #[arg(long, conflicts_with = "recipe")]
    bits: Option<u32>,
    /// Elements per group: 32, 64 or 128 [default: the mode's, 64 for affine].
    #[arg(long)]
    group_size: Option<u32>,
    /// Quantization mode: affine, mxfp4, mxfp8 or nvfp4 (mlx-lm's --q-mode).
    #[arg(long, default_value = "affine", value_parser = parse_mode)]
    mode: Mode,
    /// Mixed-precision recipe (mlx-lm's --quant-predicate): mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6.
    #[arg(long, value_parser = parse_recipe)]
    recipe: Option<Recipe>,
    /// Float dtype of every float tensor written: f16, bf16 or f32 [default: config.json's torch_dtype].
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// Leave layers whose path matches this regular expression in floating point.
    #[arg(long, value_parser = parse_regex)]
    skip: Option<io::SkipPattern>,
    /// Turn an MLX-quantized checkpoint back into a float one.
    #[arg(long, conflicts_with_all = ["bits", "group_size", "recipe", "skip"])]
    dequantize: bool,
    /// Replace the output if it exists and is not empty.
    #[arg(long)]
    force: bool,
    /// Largest shard, in bytes of tensor data (at least 1).
    #[arg(long, default_value_t = MAX_SHARD_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    max_shard_bytes: u64,
    /// Refuse float tensors holding NaN or infinite values, read or made by the cast to --dtype.
    #[arg(long)]
    strict: bool,
    /// Consider only adapters whose name contains this (case-insensitive), e.g. llvmpipe or H100
    /// [default: WGQUANT_ADAPTER, else the best adapter].
    #[arg(long)]
    adapter: Option<String>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A model directory, or one .safetensors file.
    path: PathBuf,
}

fn parse_mode(s: &str) -> std::result::Result<Mode, String> {
    s.parse().map_err(|e: wgquant::Error| e.to_string())
}

fn parse_recipe(s: &str) -> std::result::Result<Recipe, String> {
    s.parse().map_err(|e: wgquant::Error| e.to_string())
}

fn parse_regex(s: &str) -> std::result::Result<io::SkipPattern, String> {
    io::SkipPattern::new(s).map_err(|e| e.to_string())
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command fails with.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => demo::run(&cli.demo.args()),
        Some(Command::Demo(args)) => demo::run(&args.args()),
        Some(Command::Convert(args)) => convert(&args),
        Some(Command::Inspect(args)) => inspect(&args.path),
    }
}

fn convert(args: &ConvertArgs) -> Result<()> {
    // Everything that can be checked without a GPU is checked before one is opened.
    let conversion = if args.dequantize {
        io::Conversion::Dequantize
    } else {
        let mut params = QuantParams::for_mode(args.mode);
        params.group_size = args.group_size.unwrap_or(params.group_size);
        params.bits = args.bits.unwrap_or(params.bits);
        params.validate("convert")?;
        if args.recipe.is_some() && args.mode != Mode::Affine {
            return Err(Error::RecipeNeedsAffine);
        }
        io::Conversion::Quantize { params, recipe: args.recipe, skip: args.skip.clone() }
    };
    if !args.input.is_dir() {
        // Fails at once with the input's error (missing, or a file given as the directory);
        // a directory's contents are read once, by the conversion itself.
        ModelDir::open(&args.input)?;
    }
    let interrupt = Interrupt::install()?;
    let options = ConvertOptions {
        conversion,
        dtype: args.dtype,
        force: args.force,
        max_shard_bytes: args.max_shard_bytes,
        strict: args.strict,
        cancel: Some(interrupt.flag()),
    };
    let mut gpu_options = GpuOptions::from_env()?;
    if let Some(name) = &args.adapter {
        gpu_options.adapter_name = Some(name.clone());
    }
    let gpu = Gpu::with_options(gpu_options)?;
    let say = |line: String| if args.quiet { Ok(()) } else { emit(&(line + "\n")) };
    say(format!("converting {} -> {} on {}", args.input.display(), args.output.display(), gpu.describe()))?;

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        // Decimal units, as every other size wgquant prints (1 MB = 10^6 bytes).
        ProgressStyle::with_template(
            "{bar:40} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template"),
    );
    let report = io::convert(&args.input, &args.output, &gpu, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    if let Err(error @ Error::Interrupted { .. }) = report {
        eprintln!("error: {}", escape_controls(&error.to_string()));
        std::process::exit(interrupt.exit_code());
    }
    let report = report?;

    let what = if args.dequantize { "dequantized" } else { "quantized" };
    let mut lines = vec![
        format!(
            "{what} {} layers; wrote {} tensors in {} file(s)",
            report.converted_layers, report.tensors, report.shards
        ),
        format!(
            "{} of tensors in, {} out, in {:.2} s ({:.1} MB/s)",
            megabytes(report.input_bytes),
            megabytes(report.output_bytes),
            report.seconds,
            report.input_bytes as f64 / 1e6 / report.seconds.max(1e-9),
        ),
    ];
    if !report.copied_files.is_empty() {
        lines.push(format!("copied {}", report.copied_files.join(", ")));
    }
    lines.push(format!("bits per weight: {:.3}", report.bits_per_weight));
    lines.extend(report.non_finite.iter().map(|t| format!("warning: {t} (pass --strict to refuse)")));
    say(lines.join("\n"))
}

/// Writes to stdout; a closed pipe (`wgquant inspect model | head`) ends the output quietly
/// instead of panicking as `println!` would.
fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.map_err(|source| Error::Io { path: PathBuf::from("<stdout>"), source }),
    }
}

/// Cancels a conversion on SIGINT or SIGTERM: the first signal sets the flag that
/// [`ConvertOptions::cancel`] watches (the conversion stops at the next tensor and removes its
/// temporary output); a second one ends the process at once, and the next conversion to the
/// same output removes what it left.
struct Interrupt {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    #[cfg(unix)]
    signal: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Interrupt {
    fn install() -> Result<Interrupt> {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGINT, SIGTERM};
            let signal = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for number in [SIGINT, SIGTERM] {
                // Registered first, so it sees the flag as it was before this signal.
                signal_hook::flag::register_conditional_shutdown(number, 128 + number, flag.clone())?;
                signal_hook::flag::register(number, flag.clone())?;
                signal_hook::flag::register_usize(number, signal.clone(), number as usize)?;
            }
            Ok(Interrupt { flag, signal })
        }
        #[cfg(not(unix))]
        Ok(Interrupt { flag })
    }

    fn flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.flag.clone()
    }

    /// The shell's code for death by the signal received: 128 + its number.
    fn exit_code(&self) -> i32 {
        #[cfg(unix)]
        let number = self.signal.load(std::sync::atomic::Ordering::Relaxed) as i32;
        #[cfg(not(unix))]
        let number = 2;
        128 + number
    }
}

/// `text` with every control character but the line feed escaped (`\u{1b}`), so names read
/// from a crafted file cannot move the cursor or rewrite the terminal.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn inspect(path: &Path) -> Result<()> {
    let mut out = Vec::new();
    if path.is_dir() {
        inspect_model(&ModelDir::open(path)?, &mut out);
    } else {
        let file = SafetensorsFile::open(path)?;
        out.push(format!("{}: {} tensors, {}", path.display(), file.tensors().len(), metadata_line(file.metadata())));
        out.extend(tensor_table(file.tensors().iter().map(|t| (t, None))));
        out.push("(one file: the quantization parameters are in the model directory's config.json)".into());
    }
    out.push(String::new());
    let lines: Vec<String> = out.iter().map(|line| escape_controls(line)).collect();
    emit(&lines.join("\n"))
}

fn metadata_line(metadata: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("metadata {{{}}}", pairs.join(", "))
}

fn inspect_model(model: &ModelDir, out: &mut Vec<String>) {
    let weights = model.weights();
    let files = weights.files();
    out.push(format!(
        "{}: {} file(s), {} tensors, {} of tensor data, {}",
        model.dir().display(),
        files.len(),
        weights.tensors().count(),
        megabytes(weights.data_bytes()),
        files.first().map_or_else(String::new, |f| metadata_line(f.metadata())),
    ));
    out.push(match model.quantization() {
        Some(q) => format!("quantization: {} ({} per-layer entries)", q.defaults, q.layers.len()),
        None => "quantization: none".into(),
    });
    out.push(String::new());
    let file_of = |t: &TensorEntry| {
        let file = files.iter().find(|f| f.get(&t.name).is_some())?;
        Some(file.path().file_name()?.to_string_lossy().into_owned())
    };
    out.extend(tensor_table(weights.tensors().map(|t| (t, file_of(t)))));
    out.push(String::new());

    let rows: Vec<Vec<String>> = model
        .layers()
        .values()
        .map(|layer| {
            let kind = match layer.quantization {
                Some(p) => format!("{} g{} b{}", p.mode, p.group_size, p.bits),
                None => format!("{} (float)", layer.weight.dtype),
            };
            let bias = if layer.bias.is_some() { " + bias" } else { "" };
            vec![layer.path.clone(), mlx_shape(&layer.logical_shape()), format!("{kind}{bias}")]
        })
        .collect();
    out.extend(table(&["layer", "shape", "quantization"], rows));
    let quantized = model.layers().values().filter(|l| l.quantization.is_some()).count();
    out.push(String::new());
    out.push(format!("layers: {quantized} quantized, {} float", model.layers().len() - quantized));
    out.push(format!("parameters: {}", model.parameter_count()));
    out.push(format!("bits per weight: {:.3}", model.bits_per_weight()));
}

/// Tensors sorted by name, with the file each is in when there are several.
fn tensor_table<'a>(tensors: impl Iterator<Item = (&'a TensorEntry, Option<String>)>) -> Vec<String> {
    let mut rows: Vec<Vec<String>> = tensors
        .map(|(t, file)| {
            [vec![t.name.clone(), t.dtype.to_string(), mlx_shape(&t.shape)], Vec::from_iter(file)].concat()
        })
        .collect();
    rows.sort();
    let header: &[&str] = if rows.first().is_some_and(|r| r.len() == 4) {
        &["tensor", "dtype", "shape", "file"]
    } else {
        &["tensor", "dtype", "shape"]
    };
    table(header, rows)
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    // Escaped before measuring, so the columns line up as printed.
    let rows: Vec<Vec<String>> =
        rows.iter().map(|row| row.iter().map(|cell| escape_controls(cell)).collect()).collect();
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    [header]
        .iter()
        .chain(&rows)
        .map(|row| {
            let (last, cells) = row.split_last().expect("tables have columns");
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:w$}  ")).collect();
            format!("{}{last}", padded.concat())
        })
        .collect()
}
