//! The `wgquant` command line: `convert`, `inspect`, and the demo (the default).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use regex::Regex;
use wgquant::demo::{self, parse_dtype, DemoArgs};
use wgquant::error::mlx_shape;
use wgquant::io::{self, ConvertOptions, ModelDir, Recipe, SafetensorsFile, TensorEntry, MAX_SHARD_BYTES};
use wgquant::{DType, Gpu, Mode, QuantParams, Result};

/// MLX group quantization on any GPU. Without a subcommand, runs the demo: quantizes a
/// generated matrix on the default adapter (lavapipe when there is no GPU) and reports bits per
/// weight, error and time.
#[derive(Parser, Debug)]
#[command(name = "wgquant", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize a model directory into MLX's format (or dequantize one), as `mlx_lm.convert`.
    Convert(ConvertArgs),
    /// List a model directory's (or one safetensors file's) tensors, layers and bits per weight.
    Inspect(InspectArgs),
    /// Quantize a generated matrix and report bits per weight, error and time (the default).
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// The model directory to read: config.json and model.safetensors or indexed shards.
    input: PathBuf,
    /// The directory to create (written beside it, then renamed into place when complete).
    output: PathBuf,
    /// Bits per weight code: 1, 2, 3, 4, 5, 6 or 8 [default: the mode's, 4 for affine].
    #[arg(long)]
    bits: Option<u32>,
    /// Elements per group: 32, 64 or 128 [default: the mode's, 64 for affine].
    #[arg(long)]
    group_size: Option<u32>,
    /// Quantization mode (only affine is implemented).
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
    skip: Option<Regex>,
    /// Turn an MLX-quantized checkpoint back into a float one.
    #[arg(long, conflicts_with_all = ["bits", "group_size", "recipe", "skip"])]
    dequantize: bool,
    /// Replace the output if it exists and is not empty.
    #[arg(long)]
    force: bool,
    /// Largest shard, in bytes of tensor data.
    #[arg(long, default_value_t = MAX_SHARD_BYTES)]
    max_shard_bytes: u64,
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

fn parse_regex(s: &str) -> std::result::Result<Regex, String> {
    Regex::new(s).map_err(|e| e.to_string())
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command fails with.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => demo::run(&cli.demo),
        Some(Command::Demo(args)) => demo::run(&args),
        Some(Command::Convert(args)) => convert(&args),
        Some(Command::Inspect(args)) => inspect(&args.path),
    }
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let conversion = if args.dequantize {
        io::Conversion::Dequantize
    } else {
        let mut params = QuantParams::for_mode(args.mode);
        params.group_size = args.group_size.unwrap_or(params.group_size);
        params.bits = args.bits.unwrap_or(params.bits);
        io::Conversion::Quantize { params, recipe: args.recipe, skip: args.skip.clone() }
    };
    let options =
        ConvertOptions { conversion, dtype: args.dtype, force: args.force, max_shard_bytes: args.max_shard_bytes };
    let gpu = Gpu::new()?;
    let say = |line: String| {
        if !args.quiet {
            println!("{line}");
        }
    };
    say(format!("converting {} -> {} on {}", args.input.display(), args.output.display(), gpu.describe()));

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let report = io::convert(&args.input, &args.output, &gpu, &options, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report?;

    let what = if args.dequantize { "dequantized" } else { "quantized" };
    say(format!(
        "{what} {} layers; wrote {} tensors in {} file(s)",
        report.converted_layers, report.tensors, report.shards
    ));
    say(format!(
        "{} of tensors in, {} out, in {:.2} s ({:.1} MB/s)",
        megabytes(report.input_bytes),
        megabytes(report.output_bytes),
        report.seconds,
        report.input_bytes as f64 / 1e6 / report.seconds.max(1e-9),
    ));
    if !report.copied_files.is_empty() {
        say(format!("copied {}", report.copied_files.join(", ")));
    }
    say(format!("bits per weight: {:.3}", report.bits_per_weight));
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

fn inspect(path: &Path) -> Result<()> {
    if path.is_dir() {
        inspect_model(&ModelDir::open(path)?);
    } else {
        let file = SafetensorsFile::open(path)?;
        println!("{}: {} tensors, {}", path.display(), file.tensors().len(), metadata_line(file.metadata()));
        print_tensors(file.tensors().iter());
        println!("(a single file: quantization parameters live in the model directory's config.json)");
    }
    Ok(())
}

fn metadata_line(metadata: &std::collections::BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("metadata {{{}}}", pairs.join(", "))
}

fn inspect_model(model: &ModelDir) {
    let weights = model.weights();
    let files = weights.files();
    println!(
        "{}: {} file(s), {} tensors, {} of tensor data, {}",
        model.dir().display(),
        files.len(),
        weights.tensors().count(),
        megabytes(weights.data_bytes()),
        files.first().map_or_else(String::new, |f| metadata_line(f.metadata())),
    );
    match model.quantization() {
        Some(q) => println!("quantization: {} ({} per-layer entries)", q.defaults, q.layers.len()),
        None => println!("quantization: none"),
    }
    println!();
    print_tensors(weights.tensors());
    println!();

    let rows: Vec<[String; 3]> = model
        .layers()
        .values()
        .map(|layer| {
            let kind = match layer.quantization {
                Some(p) => format!("{} g{} b{}", p.mode, p.group_size, p.bits),
                None => format!("{} (float)", layer.weight.dtype),
            };
            let bias = if layer.bias.is_some() { " + bias" } else { "" };
            [layer.path.clone(), mlx_shape(&layer.logical_shape()), format!("{kind}{bias}")]
        })
        .collect();
    print_table(["layer", "shape", "quantization"], &rows);
    let quantized = model.layers().values().filter(|l| l.quantization.is_some()).count();
    println!();
    println!("layers: {quantized} quantized, {} float", model.layers().len() - quantized);
    println!("parameters: {}", model.parameter_count());
    println!("bits per weight: {:.3}", model.bits_per_weight());
}

fn print_tensors<'a>(tensors: impl Iterator<Item = &'a TensorEntry>) {
    let rows: Vec<[String; 3]> = tensors.map(|t| [t.name.clone(), t.dtype.to_string(), mlx_shape(&t.shape)]).collect();
    print_table(["tensor", "dtype", "shape"], &rows);
}

fn print_table(header: [&str; 3], rows: &[[String; 3]]) {
    let width = |i: usize| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    println!("{:w0$}  {:w1$}  {}", header[0], header[1], header[2]);
    for [a, b, c] in rows {
        println!("{a:w0$}  {b:w1$}  {c}");
    }
}
