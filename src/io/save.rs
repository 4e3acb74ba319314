//! Saving a module tree as an mlx-lm checkpoint: mlx-lm's `save_model` and `save_config`.
//!
//! The tree's arrays ([`Module::parameters`]) become the weight files, sharded as mlx-lm's
//! `make_shards` does, with the index; `config.json` is the caller's configuration with the
//! `"quantization"` section that mlx-lm's `quantize_model` would have written for the tree.
//! Everything goes to a temporary directory beside the output that is renamed into place only
//! when complete and synced, as [`convert`](crate::io::convert) does: an error or a crash
//! leaves the output as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::io::config::{LayerQuantization, ModelConfig, QuantizationConfig, CONFIG_FILE};
use crate::io::convert::{OutputTarget, TempDir};
use crate::io::host::HostTensor;
use crate::io::safetensors::{SafetensorsWriter, TensorSpec};
use crate::io::shards::{plan_shards, shard_file_name, write_index, MAX_SHARD_BYTES};
use crate::nn::{parameter_count, Module, QuantizedPath};
use crate::params::QuantParams;

/// How to save.
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// Replace an existing, non-empty output.
    pub force: bool,
    /// The largest shard, in bytes of tensor data (mlx-lm: 5 GiB).
    pub max_shard_bytes: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { force: false, max_shard_bytes: MAX_SHARD_BYTES }
    }
}

/// What was saved.
#[derive(Clone, Debug)]
pub struct SaveReport {
    /// The output directory.
    pub output: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Weight files written.
    pub shards: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Parameters, as mlx-lm counts them.
    pub parameters: u64,
    /// The `"quantization"` section written, when the tree has quantized layers.
    pub quantization: Option<QuantizationConfig>,
}

/// Saves `model` to the directory `output` as mlx-lm's `save_model` and `save_config` would:
/// its arrays by dotted path in `model.safetensors` or shards `model-0000i-of-0000n.safetensors`
/// (metadata `{"format": "mlx"}`) with `model.safetensors.index.json`, and `config.json`
/// holding `config` with the quantization section ([`quantization_section`]), its copy
/// `"quantization_config"`, and without `"_name_or_path"`, keys sorted.
///
/// `quantized` is what [`nn::quantize`](crate::nn::quantize) (or
/// [`load_weights`](crate::io::load_weights)) returned: it says which layers get a per-path
/// entry; the parameters themselves are read from the tree. The result loads with
/// [`load_checkpoint`](crate::io::load_checkpoint) and with mlx-lm's `load`.
///
/// # Errors
/// [`Error::OutputExists`] (unless `options.force`), [`Error::MissingFile`] for a missing
/// parent directory; [`Error::UnknownLayerEntry`] for a `quantized` path that is not a
/// quantized layer of the tree; [`Error::DuplicateTensor`]; I/O and device errors. On any error
/// the output is left as it was.
///
/// # Example
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::nn::{self, LlamaConfig, Model};
/// use wgquant::{io, DType, Gpu, QuantParams};
///
/// let gpu = Gpu::new()?;
/// let mut model = Model::random(&gpu, &LlamaConfig::default(), DType::F16, 0)?;
/// let quantized = nn::quantize(&mut model, QuantParams::affine(64, 4), None)?;
/// let config = serde_json::json!({"model_type": "llama", "hidden_size": 256});
/// let config = config.as_object().expect("an object");
/// io::save_model("model-4bit".as_ref(), &model, &quantized, config, &io::SaveOptions::default())?;
/// # Ok(()) }
/// ```
pub fn save_model(
    output: &Path,
    model: &dyn Module,
    quantized: &[QuantizedPath],
    config: &Map<String, Value>,
    options: &SaveOptions,
) -> Result<SaveReport> {
    if options.max_shard_bytes == 0 {
        return Err(Error::InvalidShardSize { value: 0 });
    }
    let target = OutputTarget::locate(output, options.force, Vec::new())?;
    target.check_existing(output)?;
    let quantization = quantization_section(model, quantized)?;

    let parameters = model.parameters();
    let specs: Vec<(TensorSpec, u64)> = parameters
        .iter()
        .map(|(name, t)| {
            let spec = TensorSpec { name: name.clone(), dtype: t.dtype().into(), shape: t.shape().to_vec() };
            (spec, t.size_in_bytes())
        })
        .collect();
    let bytes: u64 = specs.iter().map(|(_, b)| b).sum();
    let shards = plan_shards(specs, options.max_shard_bytes);
    let shard_count = shards.len();
    let temp = TempDir::create(&target)?;
    let metadata = BTreeMap::from([("format".to_string(), "mlx".to_string())]);
    let mut weight_map = BTreeMap::new();
    let mut writers = Vec::with_capacity(shard_count);
    for (i, specs) in shards.into_iter().enumerate() {
        let file_name = shard_file_name(i + 1, shard_count);
        weight_map.extend(specs.iter().map(|spec| (spec.name.clone(), (i, file_name.clone()))));
        writers.push(SafetensorsWriter::create(&temp.path.join(&file_name), specs, &metadata)?);
    }
    // One tensor in host memory at a time.
    for (name, tensor) in &parameters {
        writers[weight_map[name].0].write(name, &HostTensor::from_gpu(tensor)?)?;
    }
    for writer in writers {
        writer.finish()?;
    }
    let weight_map: BTreeMap<String, String> = weight_map.into_iter().map(|(name, (_, file))| (name, file)).collect();
    let total_parameters = parameter_count(model);
    write_index(&temp.path, &weight_map, bytes, total_parameters)?;

    let mut fields = config.clone();
    fields.remove("_name_or_path");
    let mut model_config = ModelConfig::from_fields(fields);
    model_config.set_quantization(quantization.as_ref());
    model_config.write(&temp.path.join(CONFIG_FILE))?;
    temp.commit(&target)?;

    Ok(SaveReport {
        output: output.to_path_buf(),
        tensors: weight_map.len(),
        shards: shard_count,
        bytes,
        parameters: total_parameters,
        quantization,
    })
}

/// The `"quantization"` section mlx-lm's `quantize_model` writes for the tree: defaults, and a
/// per-path entry for each layer the predicate gave its own parameters (`explicit` in
/// `quantized`) and for each layer whose parameters differ from the defaults (so that mlx-lm's
/// loading rule rebuilds every layer as it is). The defaults are the parameters of the first
/// quantized layer without an explicit entry (of the first quantized layer when all have one).
/// `None` when no leaf is quantized.
///
/// # Errors
/// [`Error::UnknownLayerEntry`] for a path of `quantized` that is not a quantized leaf of the tree.
pub fn quantization_section(model: &dyn Module, quantized: &[QuantizedPath]) -> Result<Option<QuantizationConfig>> {
    let layers: Vec<(String, QuantParams)> =
        model.leaf_modules().into_iter().filter_map(|(path, leaf)| Some((path, leaf.quant_params()?))).collect();
    if let Some(q) = quantized.iter().find(|q| !layers.iter().any(|(path, _)| *path == q.path)) {
        return Err(Error::UnknownLayerEntry { layer: q.path.clone() });
    }
    let explicit = |path: &str| quantized.iter().any(|q| q.explicit && q.path == path);
    let Some(defaults) = layers.iter().find(|(path, _)| !explicit(path)).or(layers.first()).map(|(_, p)| *p) else {
        return Ok(None);
    };
    let mut section = QuantizationConfig::new(defaults);
    for (path, params) in layers {
        if explicit(&path) || params != defaults {
            section.layers.insert(path, LayerQuantization::Quantized(params));
        }
    }
    Ok(Some(section))
}
