//! mlx-lm's mixture-of-experts layers: `SwitchLinear` quantized by `nn::quantize` (the predicate
//! deciding) into `QuantizedSwitchLinear`, and `SwitchGLU`'s forward (unsorted below 64 pairs,
//! sorted on the GPU from 64, outputs unsorted) against its float twin on the host.

mod common;

use common::Rng;
use wgquant::nn::{self, Decision, Module, QuantizedSwitchLinear, SwitchGLU, SwitchLinear, SORT_FROM_PAIRS};
use wgquant::reference::{self, HostQuantized};
use wgquant::{DType, Error, Gpu, QuantParams, Tensor};

/// How far the GPU block may be from its float twin (the same dequantized weights, every product
/// and sum in f32 on the host) relative to the largest output: the GPU's sums run in other
/// orders (about K ε of each sum at K <= 64) and its silu's exp is the driver's (a few ulps), so
/// outputs of order one agree to about 1e-5; an expert paired with the wrong token or an output
/// unsorted to the wrong place moves them by order one.
const TOL_FLOAT_TWIN: f32 = 1e-4;

const EXPERTS: usize = 4;
const DIMS: usize = 64;
const HIDDEN: usize = 32;
const TOP_K: usize = 2;

fn experts(gpu: &Gpu, rng: &mut Rng, out: usize, input: usize) -> SwitchLinear {
    let scale = 1.0 / (input as f32).sqrt();
    let w = Tensor::from_slice(gpu, &rng.normals(EXPERTS * out * input, scale), &[EXPERTS, out, input]).unwrap();
    SwitchLinear::new(w, None).unwrap()
}

/// A float block, then quantized by `nn::quantize` at 4 bits in groups of 32.
fn quantized_block(gpu: &Gpu, seed: u64) -> SwitchGLU {
    let mut rng = Rng::new(seed);
    let mut block = SwitchGLU {
        gate_proj: Box::new(experts(gpu, &mut rng, HIDDEN, DIMS)),
        up_proj: Box::new(experts(gpu, &mut rng, HIDDEN, DIMS)),
        down_proj: Box::new(experts(gpu, &mut rng, DIMS, HIDDEN)),
    };
    let done = nn::quantize(&mut block, QuantParams::affine(32, 4), None).unwrap();
    assert_eq!(done.iter().map(|q| q.path.as_str()).collect::<Vec<_>>(), ["gate_proj", "up_proj", "down_proj"]);
    block
}

/// Each expert of a quantized layer dequantized on the host: `(experts, out, in)` row-major.
fn dequantized(layer: &dyn Module) -> Vec<Vec<f32>> {
    let q = layer.downcast_ref::<QuantizedSwitchLinear>().expect("quantized experts").weight();
    let (words, scales, biases) =
        (q.weight.to_vec::<u32>().unwrap(), common::download(&q.scales), common::download(&q.biases.clone().unwrap()));
    let (wm, sm) = (words.len() / EXPERTS, scales.len() / EXPERTS);
    (0..EXPERTS)
        .map(|e| {
            let h = HostQuantized {
                weight: words[e * wm..][..wm].to_vec(),
                scales: scales[e * sm..][..sm].to_vec(),
                biases: biases[e * sm..][..sm].to_vec(),
            };
            reference::dequantize(&h.weight, &h.scales, &h.biases, q.params, DType::F32, DType::F32)
        })
        .collect()
}

/// `x @ w.T` for one row.
fn row_times(x: &[f32], w: &[f32], out: usize) -> Vec<f32> {
    (0..out).map(|o| x.iter().zip(&w[o * x.len()..][..x.len()]).map(|(a, b)| a * b).sum()).collect()
}

/// The block's float twin: per (token, expert) pair, `down(silu(gate x) * up x)`.
fn twin(block: &SwitchGLU, x: &[f32], indices: &[u32]) -> Vec<f32> {
    let (gate, up, down) =
        (dequantized(&*block.gate_proj), dequantized(&*block.up_proj), dequantized(&*block.down_proj));
    let mut y = Vec::new();
    for (pair, &e) in indices.iter().enumerate() {
        let (e, row) = (e as usize, &x[pair / TOP_K * DIMS..][..DIMS]);
        let g = row_times(row, &gate[e], HIDDEN);
        let u = row_times(row, &up[e], HIDDEN);
        let h: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        y.extend(row_times(&h, &down[e], DIMS));
    }
    y
}

/// The block's forward, submitted op by op and, the same again, recorded in one batch (where
/// the products share the scratch their batch tables are built in): both must agree bit for bit.
fn run(gpu: &Gpu, block: &SwitchGLU, x: &[f32], indices: &[u32], tokens: usize) -> Vec<f32> {
    let x_gpu = Tensor::from_slice(gpu, x, &[tokens, DIMS]).unwrap();
    let idx = Tensor::from_slice(gpu, indices, &[tokens, TOP_K]).unwrap();
    let y = block.forward_experts(&x_gpu, &idx).unwrap();
    assert_eq!(y.shape(), &[tokens, TOP_K, DIMS]);
    let batched = gpu.batch(|| block.forward_experts(&x_gpu, &idx)).unwrap();
    let (y, batched) = (common::download(&y), common::download(&batched));
    assert_eq!(common::first_bit_difference(&y, &batched), None, "one batch and op by op differ");
    y
}

fn assert_near_twin(name: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    assert!(worst <= TOL_FLOAT_TWIN * scale, "{name}: max |Δ| = {worst:e} against the twin (largest output {scale})");
}

/// Decode (3 tokens, 6 pairs: unsorted) and prefill (32 tokens, 64 pairs: sorted on the GPU and
/// unsorted after) against the float twin; the sorted forward equals, bit for bit, the same
/// tokens run unsorted in two halves of 32 pairs.
#[test]
fn switch_glu_matches_its_float_twin() {
    let gpu = gpu_or_skip!();
    let block = quantized_block(&gpu, 1);
    let mut rng = Rng::new(2);
    for (name, tokens) in [("decode", 3), ("prefill", SORT_FROM_PAIRS / TOP_K)] {
        let x = rng.normals(tokens * DIMS, 1.0);
        let indices: Vec<u32> = (0..tokens * TOP_K).map(|_| rng.below(EXPERTS) as u32).collect();
        let got = run(&gpu, &block, &x, &indices, tokens);
        assert_near_twin(name, &got, &twin(&block, &x, &indices));
        if tokens * TOP_K >= SORT_FROM_PAIRS {
            let half = tokens / 2;
            let mut halves = run(&gpu, &block, &x[..half * DIMS], &indices[..half * TOP_K], half);
            halves.extend(run(&gpu, &block, &x[half * DIMS..], &indices[half * TOP_K..], tokens - half));
            assert_eq!(common::first_bit_difference(&got, &halves), None, "sorted and unsorted differ");
        }
    }
    assert!(gpu.take_uncaptured_errors().is_empty());
}

/// mlx-lm's `_gather_sort`: a stable argsort by expert, the token of each sorted pair, and the
/// inverse permutation.
#[test]
fn gather_sort_is_a_stable_argsort() {
    let gpu = gpu_or_skip!();
    let indices = [3u32, 1, 0, 3, 1, 1, 2, 0];
    let t = Tensor::from_slice(&gpu, &indices, &[4, 2]).unwrap();
    let sorted = wgquant::ops::gather_sort(&t).unwrap();
    let mut order: Vec<usize> = (0..indices.len()).collect();
    order.sort_by_key(|&i| indices[i]);
    let mut inv = vec![0u32; order.len()];
    for (r, &i) in order.iter().enumerate() {
        inv[i] = r as u32;
    }
    assert_eq!(sorted.x_rows.to_vec::<u32>().unwrap(), order.iter().map(|&i| (i / 2) as u32).collect::<Vec<_>>());
    assert_eq!(sorted.indices.to_vec::<u32>().unwrap(), order.iter().map(|&i| indices[i]).collect::<Vec<_>>());
    assert_eq!(sorted.inv_order.to_vec::<u32>().unwrap(), inv);
}

/// `nn::quantize` treats `SwitchLinear` as any quantizable leaf: the predicate decides per
/// path, and MLX's repr names the classes.
#[test]
fn quantize_asks_the_predicate() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(3);
    let mut block = SwitchGLU {
        gate_proj: Box::new(experts(&gpu, &mut rng, HIDDEN, DIMS)),
        up_proj: Box::new(experts(&gpu, &mut rng, HIDDEN, DIMS)),
        down_proj: Box::new(experts(&gpu, &mut rng, DIMS, HIDDEN)),
    };
    let mut keep_down = nn::predicate(|path: &str, _: &dyn Module| match path {
        "down_proj" => Decision::Skip,
        "up_proj" => Decision::QuantizeWith(QuantParams::affine(64, 8)),
        _ => Decision::Quantize,
    });
    let done = nn::quantize(&mut block, QuantParams::affine(32, 4), Some(&mut keep_down)).unwrap();
    assert_eq!(
        done.iter().map(|q| (q.path.as_str(), q.params.bits)).collect::<Vec<_>>(),
        [("gate_proj", 4), ("up_proj", 8)]
    );
    assert!(block.down_proj.downcast_ref::<SwitchLinear>().is_some());
    assert_eq!(block.up_proj.quant_params(), Some(QuantParams::affine(64, 8)));
    assert_eq!(
        block.to_string(),
        "SwitchGLU(\n  (gate_proj): QuantizedSwitchLinear()\n  (up_proj): QuantizedSwitchLinear()\n  (down_proj): SwitchLinear()\n)"
    );
    // The float experts do not run (no float gather_mm); layers of experts need indices.
    let x = Tensor::zeros(&gpu, &[1, DIMS], DType::F32).unwrap();
    let idx = Tensor::from_slice(&gpu, &[0u32, 1], &[1, 2]).unwrap();
    assert!(matches!(block.forward_experts(&x, &idx), Err(Error::KernelUnavailable { kernel: "gather_mm", .. })));
    assert!(matches!(block.forward(&x), Err(Error::NeedsIndices { layer: "SwitchGLU" })));
}
