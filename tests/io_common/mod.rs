//! Helpers for the checkpoint tests: tiny generated models, hand-made safetensors bytes, and a
//! fingerprint of a directory (to show the input is never touched).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use wgquant::io::{write_safetensors, HostTensor};
use wgquant::DType;

use crate::common::Rng;

/// A llama-like model small enough for lavapipe: `layers` blocks of width `hidden`.
pub struct TinyModel {
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub dtype: DType,
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel { layers: 2, hidden: 64, vocab: 96, dtype: DType::BF16 }
    }
}

impl TinyModel {
    /// Tensor names, shapes and f32 values (before rounding to `dtype`), in a fixed order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let (h, i, v) = (self.hidden, 2 * self.hidden, self.vocab);
        let mut rng = Rng::new(11);
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>| {
            let n = shape.iter().product();
            let scale = 1.0 / (*shape.last().unwrap() as f32).sqrt();
            out.push((name, shape, rng.normals(n, scale)));
        };
        push("model.embed_tokens.weight".into(), vec![v, h]);
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            push(format!("{p}.input_layernorm.weight"), vec![h]);
            for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                push(format!("{p}.self_attn.{name}.weight"), vec![h, h]);
            }
            push(format!("{p}.self_attn.q_proj.bias"), vec![h]);
            push(format!("{p}.mlp.gate_proj.weight"), vec![i, h]);
            push(format!("{p}.mlp.up_proj.weight"), vec![i, h]);
            push(format!("{p}.mlp.down_proj.weight"), vec![h, i]);
        }
        push("model.norm.weight".into(), vec![h]);
        // Rank 2, but 48 is not a multiple of any group size: stays float.
        push("model.odd_proj.weight".into(), vec![8, 48]);
        push("lm_head.weight".into(), vec![v, h]);
        out
    }

    /// Writes the model to `dir` (created): `config.json` with `torch_dtype`, the weights in
    /// `model.safetensors`, and two tokenizer files.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let tensors: Vec<(String, HostTensor)> =
            self.tensors().into_iter().map(|(name, shape, values)| (name, host(&values, &shape, self.dtype))).collect();
        write_safetensors(&dir.join("model.safetensors"), &tensors, &BTreeMap::new()).unwrap();
        let torch_dtype = match self.dtype {
            DType::F32 => "float32",
            DType::F16 => "float16",
            _ => "bfloat16",
        };
        let config = serde_json::json!({
            "model_type": "llama",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "vocab_size": self.vocab,
            "rms_norm_eps": 1e-5,
            "torch_dtype": torch_dtype,
        });
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), br#"{"version": "1.0"}"#).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), br#"{"model_max_length": 2048}"#).unwrap();
    }
}

/// A host tensor of `dtype` holding `values` (rounded to it).
pub fn host(values: &[f32], shape: &[usize], dtype: DType) -> HostTensor {
    match dtype {
        DType::F32 => HostTensor::from_values(values, shape),
        DType::F16 => HostTensor::from_values(&values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(), shape),
        DType::BF16 => HostTensor::from_values(&values.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), shape),
        other => panic!("host: {other} is not a float dtype"),
    }
    .unwrap()
}

/// The bytes of a safetensors file with this header (padded with spaces to 8) and data.
pub fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    safetensors_raw(header.as_bytes(), data)
}

/// As [`safetensors_bytes`], for a header that need not be UTF-8.
pub fn safetensors_raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut header = header.to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(data);
    bytes
}

/// Every file under `dir` with its bytes and modification time, to compare before and after.
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(fingerprint(&path));
        } else {
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            out.insert(path.clone(), (std::fs::read(&path).unwrap(), modified));
        }
    }
    out
}

/// Names in `dir`, sorted (to show no temporary directory was left behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `<path>.weight`, `.scales` and `.biases` of a `rows x k` matrix quantized on the CPU
/// (`wgquant::reference`, MLX's semantics), scales and biases in f16.
pub fn quantized_layer(path: &str, rows: usize, k: usize, params: wgquant::QuantParams) -> Vec<(String, HostTensor)> {
    let values = wgquant::reference::quantize(
        &Rng::new(rows as u64 * 31 + k as u64).normals(rows * k, 0.1),
        k,
        params,
        DType::F16,
    )
    .unwrap();
    let groups = k / params.group_size as usize;
    vec![
        (format!("{path}.weight"), HostTensor::from_values(&values.weight, &[rows, params.packed_width(k)]).unwrap()),
        (format!("{path}.scales"), host(&values.scales, &[rows, groups], DType::F16)),
        (format!("{path}.biases"), host(&values.biases, &[rows, groups], DType::F16)),
    ]
}

/// Writes a model directory: `config` as config.json and `tensors` as model.safetensors.
pub fn write_model(dir: &Path, config: &serde_json::Value, tensors: &[(String, HostTensor)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
    write_safetensors(&dir.join("model.safetensors"), tensors, &BTreeMap::new()).unwrap();
}
