//! Operands shared by the benchmarks: seeded random weights and activations (timing does not
//! depend on the values, only on their shapes and dtypes).

use wgquant::random::SplitMix64;
use wgquant::{bf16, f16, DType, Gpu, QuantParams, Quantized, Result, Tensor};

/// Values in (-0.05, 0.05).
pub fn smalls(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.uniform() - 0.5) * 0.1).collect()
}

/// A tensor of small values in `dtype` (f32, f16 or bf16).
pub fn tensor(gpu: &Gpu, rng: &mut SplitMix64, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let values = smalls(rng, shape.iter().product());
    match dtype {
        DType::BF16 => Tensor::from_slice(gpu, &values.into_iter().map(bf16::from_f32).collect::<Vec<_>>(), shape),
        DType::F16 => Tensor::from_slice(gpu, &values.into_iter().map(f16::from_f32).collect::<Vec<_>>(), shape),
        _ => Tensor::from_slice(gpu, &values, shape),
    }
}

/// A quantized `n` x `k` weight of random codes with `dtype` scales and biases.
pub fn random_weight(
    gpu: &Gpu,
    rng: &mut SplitMix64,
    (n, k): (usize, usize),
    params: QuantParams,
    dtype: DType,
) -> Result<Quantized> {
    let width = params.packed_width(k);
    let packed: Vec<u32> = (0..n * width).map(|_| rng.next_u64() as u32).collect();
    let weight = Tensor::from_slice(gpu, &packed, &[n, width])?;
    let groups = k / params.group_size as usize;
    let scales = tensor(gpu, rng, &[n, groups], dtype)?;
    let biases = tensor(gpu, rng, &[n, groups], dtype)?;
    Quantized::from_parts(weight, scales, Some(biases), params)
}
