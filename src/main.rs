//! `wgquant`: `convert` and `inspect` MLX checkpoints, or (with no subcommand) the demo.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::escape_controls(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
