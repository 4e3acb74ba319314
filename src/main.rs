//! `wgquant`: `convert` and `inspect` MLX checkpoints, or (with no subcommand) the demo.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    quiet_headless_vulkan();
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::escape_controls(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Mesa's device-select layer (an implicit Vulkan layer) connects to Wayland to order the
/// devices; on a headless machine without `XDG_RUNTIME_DIR`, libwayland then prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." twice, which reads as if wgquant
/// had failed. wgquant ranks adapters itself, so where there is no runtime directory the layer
/// is switched off (its documented `NODEVICE_SELECT=1`) for this process alone, at the top of
/// `main` while no other thread can be reading the environment.
fn quiet_headless_vulkan() {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|dir| std::path::Path::new(&dir).is_dir());
    if !runtime_dir && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}
