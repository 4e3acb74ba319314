//! `wgquant`: the demo (`cargo run --release`) and, later, the conversion tools.

use std::process::ExitCode;

use clap::Parser;
use wgquant::{demo, DType, Gpu, QuantParams};

/// Quantize a generated matrix with MLX's affine group quantization on the default GPU adapter
/// (lavapipe when there is no GPU) and report bits per weight, error and time.
#[derive(Parser, Debug)]
#[command(name = "wgquant", version)]
struct Args {
    /// Bits per weight code: 1, 2, 3, 4, 5, 6 or 8.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Elements per group: 32, 64 or 128.
    #[arg(long, default_value_t = 64)]
    group_size: u32,
    /// Rows of the generated matrix.
    #[arg(long, default_value_t = 512)]
    rows: usize,
    /// Columns of the generated matrix (the grouped axis).
    #[arg(long, default_value_t = 2048)]
    cols: usize,
    /// Element type of the matrix: f32, f16 or bf16.
    #[arg(long, default_value = "f16", value_parser = parse_dtype)]
    dtype: DType,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(format!("unknown dtype {other} (expected f32, f16 or bf16)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> wgquant::Result<()> {
    let gpu = Gpu::new()?;
    let params = QuantParams::affine(args.group_size, args.bits);
    println!("adapter:        {}", gpu.describe());
    println!("matrix:         {} x {} {}, {params}", args.rows, args.cols, args.dtype);
    let report = demo::quantize_demo(&gpu, args.rows, args.cols, args.dtype, params)?;
    println!("bits per weight: {:.3}", report.bits_per_weight);
    println!("max |w - w_hat|: {:.3e}", report.max_abs_error);
    println!("rms error:       {:.3e} ({:.2}% of rms(w))", report.rms_error, 100.0 * report.relative_rms_error);
    println!(
        "bit-exact with the CPU reference (MLX semantics): {}",
        if report.matches_reference { "yes" } else { "NO" }
    );
    println!(
        "quantize:        {:.2} ms, dequantize: {:.2} ms (wall, incl. submit)",
        report.quantize_ms, report.dequantize_ms
    );
    Ok(())
}
