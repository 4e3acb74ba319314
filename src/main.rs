//! `wgquant`: the demo (`cargo run --release`) and, later, the conversion tools.

use std::process::ExitCode;

use clap::Parser;
use wgquant::demo::{self, DemoArgs};

/// Quantize a generated matrix with MLX's affine group quantization on the default GPU adapter
/// (lavapipe when there is no GPU) and report bits per weight, error and time.
#[derive(Parser, Debug)]
#[command(name = "wgquant", version)]
struct Cli {
    #[command(flatten)]
    demo: DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match demo::run(&cli.demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
