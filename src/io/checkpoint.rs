//! Model directories as mlx-lm writes them, opened with strict checks, and loaded per layer.
//!
//! A *layer* is every `<path>.weight`; its companions are `<path>.scales` and `<path>.biases`
//! (quantized layers) and `<path>.bias`. Whether a layer is quantized follows mlx-lm's loading
//! rule ([`QuantizationConfig::params_for`]), and a quantized layer must be complete and
//! consistent: a `uint32` weight, scales (and biases, affine) of matching dtype and shape,
//! and `weight.shape[-1] * 32 / bits == scales.shape[-1] * group_size`. Every tensor belongs
//! to a layer or is a plain tensor; stray scales or biases and per-layer entries for missing
//! layers are errors, where mlx-lm would ignore them or fail later in `load_weights`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::config::{ModelConfig, QuantizationConfig, CONFIG_FILE};
use crate::io::file_dtype::FileDType;
use crate::io::host::HostTensor;
use crate::io::safetensors::TensorEntry;
use crate::io::shards::WeightFiles;
use crate::params::{Mode, QuantParams};
use crate::tensor::{element_count, Quantized, Tensor};

/// One layer of a checkpoint, before loading: its tensors and how it is quantized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// The layer's path (`model.layers.0.mlp.down_proj`).
    pub path: String,
    /// The parameters when the layer is quantized.
    pub quantization: Option<QuantParams>,
    /// `<path>.weight`: packed `uint32` when quantized.
    pub weight: TensorEntry,
    /// `<path>.scales` (quantized layers).
    pub scales: Option<TensorEntry>,
    /// `<path>.biases` (affine-quantized layers).
    pub biases: Option<TensorEntry>,
    /// `<path>.bias`, the optional additive bias of a linear layer.
    pub bias: Option<TensorEntry>,
}

impl LayerInfo {
    /// The weight's shape before quantization: `(..., K)`.
    pub fn logical_shape(&self) -> Vec<usize> {
        let mut shape = self.weight.shape.clone();
        if let (Some(params), Some(last)) = (self.quantization, shape.last_mut()) {
            // Only a validated layer (whose width fits) has a meaningful K.
            *last = params.unpacked_width(*last).unwrap_or(usize::MAX);
        }
        shape
    }

    /// Parameters as mlx-lm's `get_total_parameters` counts them: a quantized weight counts
    /// its unpacked elements, scales and biases do not count; the bias does.
    pub fn parameter_count(&self) -> u64 {
        let weight = element_count(&self.logical_shape()).unwrap_or(0) as u64;
        weight + self.bias.as_ref().map_or(0, |b| element_count(&b.shape).unwrap_or(0) as u64)
    }

    /// The layer's tensors: weight, scales, biases, bias (those present).
    pub fn tensors(&self) -> impl Iterator<Item = &TensorEntry> {
        [Some(&self.weight), self.scales.as_ref(), self.biases.as_ref(), self.bias.as_ref()].into_iter().flatten()
    }
}

/// An opened model directory: `config.json`, validated weight files, and the layer plan. No
/// tensor data is read until asked for.
#[derive(Debug)]
pub struct ModelDir {
    dir: PathBuf,
    config: ModelConfig,
    quantization: Option<QuantizationConfig>,
    weights: WeightFiles,
    layers: BTreeMap<String, LayerInfo>,
    plain: Vec<String>,
}

impl ModelDir {
    /// Opens `dir`: reads `config.json`, validates every weight file's header and the index,
    /// and applies the quantization rule with strict checks.
    ///
    /// # Errors
    /// [`Error::MissingFile`] for a missing directory or `config.json`; the errors of
    /// [`ModelConfig::read`], [`ModelConfig::quantization`] and [`WeightFiles::open`]; and, per
    /// layer, [`Error::MissingTensor`], [`Error::UnexpectedTensor`], [`Error::TensorDType`],
    /// [`Error::TensorShape`], [`Error::QuantizedRank`], [`Error::QuantizedShape`],
    /// [`Error::UnknownLayerEntry`].
    pub fn open(dir: &Path) -> Result<ModelDir> {
        crate::io::files::check_dir(dir, "the model directory")?;
        let config = ModelConfig::read(&dir.join(CONFIG_FILE))?;
        let quantization = config.quantization()?;
        let weights = WeightFiles::open(dir)?;
        let (layers, plain) = plan_layers(&weights, quantization.as_ref())?;
        Ok(ModelDir { dir: dir.to_path_buf(), config, quantization, weights, layers, plain })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json`.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The `"quantization"` section, when there is one.
    pub fn quantization(&self) -> Option<&QuantizationConfig> {
        self.quantization.as_ref()
    }

    /// The weight files.
    pub fn weights(&self) -> &WeightFiles {
        &self.weights
    }

    /// The layers, by path.
    pub fn layers(&self) -> &BTreeMap<String, LayerInfo> {
        &self.layers
    }

    /// Names of the tensors that belong to no layer, in file order.
    pub fn plain_tensors(&self) -> &[String] {
        &self.plain
    }

    /// Whether any layer is quantized.
    pub fn is_quantized(&self) -> bool {
        self.layers.values().any(|l| l.quantization.is_some())
    }

    /// Parameters as mlx-lm counts them ([`LayerInfo::parameter_count`] plus plain tensors).
    pub fn parameter_count(&self) -> u64 {
        let plain: u64 = self
            .plain
            .iter()
            .filter_map(|name| self.weights.get(name))
            .map(|t| element_count(&t.shape).unwrap_or(0) as u64)
            .sum();
        self.layers.values().map(LayerInfo::parameter_count).sum::<u64>() + plain
    }

    /// mlx-lm's `compute_bits_per_weight`: bytes of all tensors × 8 / parameters.
    pub fn bits_per_weight(&self) -> f64 {
        bits_per_weight(self.weights.data_bytes(), self.parameter_count())
    }
}

/// Bytes × 8 / parameters (0 for an empty model).
pub(crate) fn bits_per_weight(bytes: u64, parameters: u64) -> f64 {
    if parameters == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / parameters as f64
    }
}

/// Splits the tensors into layers and plain tensors, with the quantization rule and checks.
fn plan_layers(
    weights: &WeightFiles,
    quantization: Option<&QuantizationConfig>,
) -> Result<(BTreeMap<String, LayerInfo>, Vec<String>)> {
    let companion = |path: &str, suffix: &str| weights.get(&format!("{path}.{suffix}")).cloned();
    let mut layers = BTreeMap::new();
    for entry in weights.tensors() {
        let Some(path) = entry.name.strip_suffix(".weight") else { continue };
        let (scales, biases) = (companion(path, "scales"), companion(path, "biases"));
        let params = quantization.and_then(|q| q.params_for(path, scales.is_some()));
        let layer = LayerInfo {
            path: path.to_string(),
            quantization: params,
            weight: entry.clone(),
            scales,
            biases,
            bias: companion(path, "bias"),
        };
        match params {
            Some(params) => check_quantized(&layer, params)?,
            None => {
                let reason = if quantization.is_some() {
                    "config.json's \"quantization\" leaves this layer in floating point"
                } else {
                    "config.json has no \"quantization\" section"
                };
                if let Some(stray) = layer.scales.as_ref().or(layer.biases.as_ref()) {
                    return Err(Error::UnexpectedTensor { tensor: stray.name.clone(), reason });
                }
            }
        }
        layers.insert(path.to_string(), layer);
    }
    if let Some(q) = quantization {
        if let Some(layer) = q.layers.keys().find(|path| !layers.contains_key(*path)) {
            return Err(Error::UnknownLayerEntry { layer: layer.clone() });
        }
    }

    let claimed: std::collections::HashSet<&str> =
        layers.values().flat_map(|l| l.tensors().map(|t| t.name.as_str())).collect();
    let mut plain = Vec::new();
    for entry in weights.tensors().filter(|t| !claimed.contains(t.name.as_str())) {
        if entry.name.ends_with(".scales") || entry.name.ends_with(".biases") {
            return Err(Error::UnexpectedTensor { tensor: entry.name.clone(), reason: "there is no matching .weight" });
        }
        plain.push(entry.name.clone());
    }
    Ok((layers, plain))
}

/// The checks `load_weights(strict=True)` and `mx.dequantize` would make on a quantized layer,
/// made up front and naming the tensor.
fn check_quantized(layer: &LayerInfo, params: QuantParams) -> Result<()> {
    let path = &layer.path;
    let weight = &layer.weight;
    if weight.dtype != DType::U32 {
        return Err(Error::TensorDType {
            tensor: weight.name.clone(),
            expected: "uint32",
            got: weight.dtype,
            role: "the packed weight of a quantized layer",
        });
    }
    if weight.shape.len() < 2 {
        return Err(Error::QuantizedRank { tensor: weight.name.clone(), shape: weight.shape.clone() });
    }
    let scales = layer
        .scales
        .as_ref()
        .ok_or_else(|| Error::MissingTensor { tensor: format!("{path}.scales"), reason: "the layer is quantized" })?;
    let affine = params.mode == Mode::Affine;
    let gpu_float = scales.dtype.to_dtype().is_some_and(DType::is_float);
    if (affine && !gpu_float) || (!affine && scales.dtype != FileDType::U8) {
        let (expected, role) = if affine {
            ("float32, float16 or bfloat16", "the scales of an affine-quantized layer")
        } else {
            ("uint8", "the scales of an fp-quantized layer")
        };
        return Err(Error::TensorDType { tensor: scales.name.clone(), expected, got: scales.dtype, role });
    }
    let (w_last, lead) = weight.shape.split_last().expect("rank >= 2");
    let k = *w_last as u128 * 32;
    let groups = k / (params.bits as u128 * params.group_size as u128);
    if scales.shape.len() != weight.shape.len() || scales.shape[..lead.len()] != *lead {
        let expected = lead.iter().copied().chain([groups as usize]).collect();
        return Err(Error::TensorShape { tensor: scales.name.clone(), expected, got: scales.shape.clone() });
    }
    let s_last = *scales.shape.last().expect("rank >= 2");
    if k != s_last as u128 * params.group_size as u128 * params.bits as u128 {
        return Err(Error::QuantizedShape {
            layer: path.clone(),
            weight: weight.shape.clone(),
            scales: scales.shape.clone(),
            group_size: params.group_size,
            bits: params.bits,
            weight_k: (k / params.bits as u128) as usize,
            scales_k: s_last.saturating_mul(params.group_size as usize),
        });
    }
    match (&layer.biases, affine) {
        (None, true) => {
            return Err(Error::MissingTensor {
                tensor: format!("{path}.biases"),
                reason: "affine quantization needs biases",
            })
        }
        (Some(biases), false) => {
            return Err(Error::UnexpectedTensor { tensor: biases.name.clone(), reason: "fp modes have no biases" })
        }
        (Some(biases), true) => {
            if biases.dtype != scales.dtype {
                return Err(Error::TensorDType {
                    tensor: biases.name.clone(),
                    expected: "the scales' dtype",
                    got: biases.dtype,
                    role: "the biases of an affine-quantized layer",
                });
            }
            if biases.shape != scales.shape {
                return Err(Error::TensorShape {
                    tensor: biases.name.clone(),
                    expected: scales.shape.clone(),
                    got: biases.shape.clone(),
                });
            }
        }
        (None, false) => {}
    }

    Ok(())
}

/// A loaded layer's weight: floating point, or quantized.
#[derive(Clone, Debug)]
pub enum LayerWeight {
    /// A float weight (`Linear`, `Embedding`, norms).
    Float(Tensor),
    /// A quantized weight (`QuantizedLinear`, `QuantizedEmbedding`).
    Quantized(Quantized),
}

/// A loaded layer: what a `Linear`/`Embedding` or their quantized forms are built from.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The weight.
    pub weight: LayerWeight,
    /// The optional bias (`<path>.bias`).
    pub bias: Option<Tensor>,
}

impl Layer {
    /// The weight's shape before quantization: `(..., K)`.
    pub fn logical_shape(&self) -> Vec<usize> {
        match &self.weight {
            LayerWeight::Float(w) => w.shape().to_vec(),
            LayerWeight::Quantized(q) => q.logical_shape(),
        }
    }

    /// Checks the weight's logical shape, as `load_weights(strict=True)` checks shapes.
    ///
    /// # Errors
    /// [`Error::TensorShape`] naming `<path>.weight`.
    pub fn expect_shape(&self, path: &str, expected: &[usize]) -> Result<()> {
        let got = self.logical_shape();
        if got != expected {
            return Err(Error::TensorShape { tensor: format!("{path}.weight"), expected: expected.to_vec(), got });
        }
        Ok(())
    }
}

/// A checkpoint loaded onto the GPU: its layers by path and its other tensors by name.
///
/// A module tree takes what it needs with [`Checkpoint::take_layer`] and
/// [`Checkpoint::take_tensor`] (each a strict "missing key" check) and then calls
/// [`Checkpoint::finish`] (the "unexpected keys" check).
#[derive(Debug)]
pub struct Checkpoint {
    /// `config.json`.
    pub config: ModelConfig,
    /// The `"quantization"` section, when there is one.
    pub quantization: Option<QuantizationConfig>,
    layers: BTreeMap<String, Layer>,
    tensors: BTreeMap<String, Tensor>,
    host_tensors: BTreeMap<String, HostTensor>,
}

impl Checkpoint {
    /// The layers not yet taken, by path.
    pub fn layers(&self) -> &BTreeMap<String, Layer> {
        &self.layers
    }

    /// The plain tensors (no `.weight` suffix) not yet taken, by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The tensors of types GPU tensors do not have (`int64` position ids, `bool` masks,
    /// `float64`, fp8), not yet taken, by name, byte for byte as stored.
    pub fn host_tensors(&self) -> &BTreeMap<String, HostTensor> {
        &self.host_tensors
    }

    /// Removes and returns the layer at `path`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] naming `<path>.weight`; [`Error::NotOnGpu`] when the layer's
    /// tensors are of a type the GPU does not hold.
    pub fn take_layer(&mut self, path: &str) -> Result<Layer> {
        let weight = format!("{path}.weight");
        self.not_on_gpu(&weight)?;
        self.layers.remove(path).ok_or(Error::MissingTensor { tensor: weight, reason: "the model has this layer" })
    }

    /// Removes and returns the plain tensor `name`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`]; [`Error::NotOnGpu`] for a tensor of a type the GPU does not hold
    /// (take it with [`Checkpoint::take_host_tensor`]).
    pub fn take_tensor(&mut self, name: &str) -> Result<Tensor> {
        self.not_on_gpu(name)?;
        self.tensors
            .remove(name)
            .ok_or_else(|| Error::MissingTensor { tensor: name.to_string(), reason: "the model has this parameter" })
    }

    /// Removes and returns the tensor `name` as stored, in host memory: any tensor of a type
    /// the GPU does not hold, whether plain or part of a layer.
    ///
    /// # Errors
    /// [`Error::MissingTensor`].
    pub fn take_host_tensor(&mut self, name: &str) -> Result<HostTensor> {
        self.host_tensors
            .remove(name)
            .ok_or_else(|| Error::MissingTensor { tensor: name.to_string(), reason: "not a host-only tensor" })
    }

    fn not_on_gpu(&self, name: &str) -> Result<()> {
        match self.host_tensors.get(name) {
            Some(tensor) => Err(Error::AtPath {
                path: name.to_string(),
                source: Box::new(Error::NotOnGpu { dtype: tensor.dtype() }),
            }),
            None => Ok(()),
        }
    }

    /// Succeeds when every layer and tensor was taken.
    ///
    /// # Errors
    /// [`Error::UnusedTensors`] listing the weights of untaken layers and the untaken tensors.
    pub fn finish(self) -> Result<()> {
        let mut unused: Vec<String> = self.layers.keys().map(|path| format!("{path}.weight")).collect();
        unused.extend(self.tensors.into_keys());
        unused.extend(self.host_tensors.into_keys());
        if unused.is_empty() {
            Ok(())
        } else {
            unused.sort();
            Err(Error::UnusedTensors { tensors: unused })
        }
    }
}

/// Loads the checkpoint in `dir` onto `gpu`, one tensor at a time: quantized layers become
/// [`Quantized`] (checked like `mx.dequantize`'s inputs), the rest stay as read. Tensors of
/// types GPU tensors do not have ([`FileDType::to_dtype`] is `None`), and the float layers
/// holding one, stay in host memory byte for byte ([`Checkpoint::host_tensors`]).
///
/// # Errors
/// The errors of [`ModelDir::open`]; the checks of [`Quantized::from_parts`]; [`Error::Io`];
/// device errors.
pub fn load_checkpoint(dir: &Path, gpu: &Gpu) -> Result<Checkpoint> {
    let model = ModelDir::open(dir)?;
    let weights = model.weights();
    let upload = |entry: &TensorEntry| weights.read(&entry.name)?.to_gpu(gpu);
    let on_gpu = |entry: &TensorEntry| entry.dtype.to_dtype().is_some();
    let mut layers = BTreeMap::new();
    let mut host_tensors = BTreeMap::new();
    for (path, info) in model.layers() {
        // Quantized layers were checked to hold GPU types only (check_quantized).
        if info.quantization.is_none() && !info.tensors().all(on_gpu) {
            for entry in info.tensors() {
                host_tensors.insert(entry.name.clone(), weights.read(&entry.name)?);
            }
            continue;
        }
        let weight = upload(&info.weight)?;
        let weight = match (info.quantization, &info.scales) {
            (Some(params), Some(scales)) => {
                let biases = info.biases.as_ref().map(upload).transpose()?;
                LayerWeight::Quantized(Quantized::from_parts(weight, upload(scales)?, biases, params)?)
            }
            _ => LayerWeight::Float(weight),
        };
        let bias = info.bias.as_ref().map(upload).transpose()?;
        layers.insert(path.clone(), Layer { weight, bias });
    }
    let mut tensors = BTreeMap::new();
    for name in model.plain_tensors() {
        let tensor = weights.read(name)?;
        if tensor.dtype().to_dtype().is_some() {
            tensors.insert(name.clone(), tensor.to_gpu(gpu)?);
        } else {
            host_tensors.insert(name.clone(), tensor);
        }
    }
    Ok(Checkpoint {
        config: model.config.clone(),
        quantization: model.quantization.clone(),
        layers,
        tensors,
        host_tensors,
    })
}
