//! The demo behind `cargo run --release`: quantizes a generated matrix on the default adapter
//! and reports what it cost and what it lost.

use std::time::Instant;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::params::QuantParams;
use crate::reference;
use crate::tensor::Tensor;

/// Quantize a generated matrix with MLX's affine group quantization on the default GPU adapter
/// (lavapipe when there is no GPU) and report bits per weight, error and time.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Bits per weight code: 1, 2, 3, 4, 5, 6 or 8.
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Elements per group: 32, 64 or 128.
    #[arg(long, default_value_t = 64)]
    pub group_size: u32,
    /// Rows of the generated matrix.
    #[arg(long, default_value_t = 512)]
    pub rows: usize,
    /// Columns of the generated matrix (the grouped axis).
    #[arg(long, default_value_t = 2048)]
    pub cols: usize,
    /// Element type of the matrix: f32, f16 or bf16.
    #[arg(long, default_value = "f16", value_parser = parse_dtype)]
    pub dtype: DType,
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
    let gpu = Gpu::new()?;
    let params = QuantParams::affine(args.group_size, args.bits);
    println!("adapter:        {}", gpu.describe());
    println!("matrix:         {} x {} {}, {params}", args.rows, args.cols, args.dtype);
    let report = quantize_demo(&gpu, args.rows, args.cols, args.dtype, params)?;
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

/// What the quantize demo measured.
#[derive(Clone, Debug)]
pub struct QuantizeReport {
    /// Bits stored per weight: packed codes plus scales and biases.
    pub bits_per_weight: f64,
    /// Largest |w - dequantize(quantize(w))|.
    pub max_abs_error: f32,
    /// Root mean square of the error.
    pub rms_error: f32,
    /// RMS error over RMS of w.
    pub relative_rms_error: f32,
    /// Whether the GPU's packed words, scales and biases equal the CPU reference's bit for bit.
    pub matches_reference: bool,
    /// Wall time of quantize on the GPU, submit to finish, in milliseconds.
    pub quantize_ms: f64,
    /// Wall time of dequantize on the GPU, in milliseconds.
    pub dequantize_ms: f64,
}

/// A deterministic matrix with a heavy tail: mostly normal values plus a few outliers per row,
/// the shape of real transformer weights.
pub fn generated_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..rows * cols)
        .map(|_| {
            let (u1, u2) = (next().max(1e-7), next());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            let outlier = if next() < 0.001 { 8.0 } else { 1.0 };
            normal * outlier / (cols as f32).sqrt()
        })
        .collect()
}

/// Quantizes a generated `rows x cols` matrix of `dtype`, dequantizes it, and compares with the
/// original and with the CPU reference.
///
/// # Errors
/// Invalid parameters or device errors.
pub fn quantize_demo(gpu: &Gpu, rows: usize, cols: usize, dtype: DType, params: QuantParams) -> Result<QuantizeReport> {
    let values = generated_matrix(rows, cols, 7);
    let w = match dtype {
        DType::F16 => {
            Tensor::from_slice(gpu, &values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(), &[rows, cols])?
        }
        DType::BF16 => {
            Tensor::from_slice(gpu, &values.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), &[rows, cols])?
        }
        _ => Tensor::from_slice(gpu, &values, &[rows, cols])?,
    };
    let values: Vec<f32> = values.iter().map(|&v| dtype.round_f32(v)).collect();
    // Warm the pipelines so the timings show the kernels, not shader compilation.
    crate::dequantize(&crate::quantize(&w, params)?, Some(DType::F32))?;
    gpu.synchronize()?;

    let start = Instant::now();
    let q = crate::quantize(&w, params)?;
    gpu.synchronize()?;
    let quantize_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let w_hat = crate::dequantize(&q, Some(DType::F32))?;
    gpu.synchronize()?;
    let dequantize_ms = start.elapsed().as_secs_f64() * 1e3;

    let host = reference::quantize(&values, cols, params, dtype)?;
    let scales: Vec<f32> = read_float(&q.scales)?;
    let biases: Vec<f32> = match &q.biases {
        Some(b) => read_float(b)?,
        None => Vec::new(),
    };
    let matches_reference = q.weight.to_vec::<u32>()? == host.weight
        && bits_equal(&scales, &host.scales)
        && bits_equal(&biases, &host.biases);

    let w_hat = w_hat.to_vec::<f32>()?;
    let (mut max_abs, mut err_sq, mut w_sq) = (0f32, 0f64, 0f64);
    for (&a, &b) in values.iter().zip(&w_hat) {
        let e = (a - b).abs();
        max_abs = max_abs.max(e);
        err_sq += f64::from(e) * f64::from(e);
        w_sq += f64::from(a) * f64::from(a);
    }
    let n = values.len().max(1) as f64;
    Ok(QuantizeReport {
        bits_per_weight: q.size_in_bytes() as f64 * 8.0 / n,
        max_abs_error: max_abs,
        rms_error: (err_sq / n).sqrt() as f32,
        relative_rms_error: (err_sq / w_sq.max(f64::MIN_POSITIVE)).sqrt() as f32,
        matches_reference,
        quantize_ms,
        dequantize_ms,
    })
}

fn read_float(t: &Tensor) -> Result<Vec<f32>> {
    Ok(match t.dtype() {
        DType::F16 => t.to_vec::<f16>()?.into_iter().map(f16::to_f32).collect(),
        DType::BF16 => t.to_vec::<bf16>()?.into_iter().map(bf16::to_f32).collect(),
        _ => t.to_vec::<f32>()?,
    })
}

fn bits_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
