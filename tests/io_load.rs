//! Loading checkpoints into `nn` module trees (`io::load_weights`, mlx-lm's `load_model`):
//! round trips through `convert` (single file and sharded) that must reproduce `nn::quantize`
//! in memory, and the strict key and shape checks; saving trees (`io::save_model`, mlx-lm's
//! `save_model` and `save_config`) and loading them back.

mod common;
mod io_common;

use std::path::Path;

use io_common::{quantized_layer, temp_dir, write_model};
use wgquant::io::{
    convert, load_checkpoint, load_weights, save_model, Conversion, ConvertOptions, HostTensor, LayerQuantization,
    ModelDir, Recipe, SaveOptions,
};
use wgquant::nn::{self, Layer, LlamaConfig, Model, Module};
use wgquant::{DType, Error, Gpu, QuantParams, Result, Tensor};

/// Loaded and in-memory quantized models run the same kernels on the same packed words, scales
/// and biases, so their logits agree to float rounding noise only.
const SAME_KERNELS_TOL: f32 = 1e-5;

const GROUP_SIZE: u32 = 32;

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 128,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: false,
    }
}

/// config.json for [`config`]: what mlx-lm's `llama` model needs to load it.
fn config_json() -> serde_json::Map<String, serde_json::Value> {
    let c = config();
    let json = serde_json::json!({
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_attention_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "torch_dtype": "float32",
        "_name_or_path": "a local experiment",
    });
    json.as_object().unwrap().clone()
}

/// Writes `model`'s parameters as a float checkpoint: config.json and model.safetensors.
fn save(model: &dyn Module, dir: &Path) {
    save_model(dir, model, &[], &config_json(), &SaveOptions::default()).unwrap();
}

fn logits(gpu: &Gpu, model: &dyn Module) -> Vec<f32> {
    let tokens = Tensor::from_slice(gpu, &[3u32, 17, 64, 127, 0, 99], &[6]).unwrap();
    model.forward(&tokens).unwrap().to_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Float model → checkpoint → `convert --recipe mixed_4_6` → `load_weights` into a fresh model
/// with other weights; the result must match `nn::quantize` with the same recipe in memory.
fn round_trip(max_shard_bytes: u64) {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let original = Model::random(&gpu, &config(), DType::F32, 1).unwrap();
    save(&original, &dir.path().join("in"));
    let output = dir.path().join("out");
    let params = QuantParams::affine(GROUP_SIZE, 4);
    let options = ConvertOptions {
        conversion: Conversion::Quantize { params, recipe: Some(Recipe::Mixed4_6), skip: None },
        max_shard_bytes,
        ..ConvertOptions::quantize(params)
    };
    convert(&dir.path().join("in"), &output, &gpu, &options, &mut |_, _| {}).unwrap();

    // `inspect`'s view of the directory.
    let opened = ModelDir::open(&output).unwrap();
    assert!(opened.is_quantized());
    assert_eq!(opened.weights().files().len() > 1, max_shard_bytes < 100_000, "sharding");
    assert!(opened.bits_per_weight() > 4.0 && opened.bits_per_weight() < 7.0, "{}", opened.bits_per_weight());

    // The same recipe in memory.
    let mut expected = Model::random(&gpu, &config(), DType::F32, 1).unwrap();
    let mixed = nn::mixed_4_6(&expected, GROUP_SIZE).unwrap();
    let mut predicate = nn::mlx_lm_predicate(GROUP_SIZE, |path, m| mixed.decide(path, m));
    let expected_paths = nn::quantize(&mut expected, params, Some(&mut predicate)).unwrap();

    let mut loaded = Model::random(&gpu, &config(), DType::F32, 2).unwrap();
    let loaded_paths = load_weights(&mut loaded, load_checkpoint(&output, &gpu).unwrap()).unwrap();
    assert_eq!(loaded_paths, expected_paths);
    assert_eq!(loaded.to_string(), expected.to_string(), "same layers, same parameters");
    let diff = max_abs_diff(&logits(&gpu, &loaded), &logits(&gpu, &expected));
    assert!(diff <= SAME_KERNELS_TOL, "quantized logits differ by {diff}");

    nn::dequantize_model(&mut loaded).unwrap();
    nn::dequantize_model(&mut expected).unwrap();
    let diff = max_abs_diff(&logits(&gpu, &loaded), &logits(&gpu, &expected));
    assert!(diff <= SAME_KERNELS_TOL, "dequantized logits differ by {diff}");
    assert_eq!(gpu.take_uncaptured_errors(), Vec::<String>::new());
}

#[test]
fn mixed_recipe_round_trip_single_file() {
    round_trip(wgquant::io::MAX_SHARD_BYTES);
}

#[test]
fn mixed_recipe_round_trip_sharded() {
    round_trip(20_000);
}

/// Loads the float parameters of a seed-1 model, edited by `edit`, into a seed-2 model; returns
/// the error and checks the model was left as it was.
fn load_edited(gpu: &Gpu, edit: impl FnOnce(&mut Vec<(String, HostTensor)>)) -> Error {
    let dir = temp_dir();
    let source = Model::random(gpu, &config(), DType::F32, 1).unwrap();
    let mut tensors: Vec<(String, HostTensor)> =
        source.parameters().into_iter().map(|(name, t)| (name, HostTensor::from_gpu(t).unwrap())).collect();
    edit(&mut tensors);
    write_model(dir.path(), &serde_json::json!({"model_type": "llama"}), &tensors);
    let mut model = Model::random(gpu, &config(), DType::F32, 2).unwrap();
    let before = logits(gpu, &model);
    let err = load_weights(&mut model, load_checkpoint(dir.path(), gpu).unwrap()).unwrap_err();
    assert_eq!(logits(gpu, &model), before, "a failed load changes nothing");
    err
}

#[test]
fn strict_keys_and_shapes() {
    let gpu = gpu_or_skip!();

    let err = load_edited(&gpu, |t| t.retain(|(name, _)| name != "model.layers.1.post_attention_layernorm.weight"));
    assert!(
        matches!(&err, Error::MissingTensor { tensor, .. } if tensor == "model.layers.1.post_attention_layernorm.weight")
    );
    assert!(err.to_string().contains("\"model.layers.1.post_attention_layernorm.weight\" is missing"), "{err}");

    let err = load_edited(&gpu, |t| t.retain(|(name, _)| name != "lm_head.weight"));
    assert!(matches!(&err, Error::MissingTensor { tensor, .. } if tensor == "lm_head.weight"), "{err}");

    let err = load_edited(&gpu, |t| {
        t.push(("model.extra.weight".into(), HostTensor::from_values(&[0f32; 4], &[2, 2]).unwrap()));
        t.push(("rope.freqs".into(), HostTensor::from_values(&[0f32; 2], &[2]).unwrap()));
    });
    assert!(matches!(&err, Error::UnusedTensors { tensors } if *tensors == ["model.extra.weight", "rope.freqs"]));
    assert_eq!(err.to_string(), "2 tensors were not used by the model: model.extra.weight, rope.freqs");

    let err = load_edited(&gpu, |t| {
        let norm = t.iter_mut().find(|(name, _)| name == "model.norm.weight").unwrap();
        norm.1 = HostTensor::from_values(&[1f32; 32], &[32]).unwrap();
    });
    assert_eq!(err.to_string(), "tensor \"model.norm.weight\" has shape (32) but shape (64) is expected");

    let err = load_edited(&gpu, |t| {
        let q = t.iter_mut().find(|(name, _)| name == "model.layers.0.self_attn.q_proj.weight").unwrap();
        q.1 = HostTensor::from_values(&[0f32; 64 * 32], &[32, 64]).unwrap();
    });
    assert!(matches!(&err, Error::TensorShape { tensor, .. } if tensor == "model.layers.0.self_attn.q_proj.weight"));

    let err = load_edited(&gpu, |t| {
        t.push(("model.layers.0.mlp.up_proj.bias".into(), HostTensor::from_values(&[0f32; 128], &[128]).unwrap()));
    });
    assert!(matches!(&err, Error::UnexpectedTensor { tensor, .. } if tensor == "model.layers.0.mlp.up_proj.bias"));
    assert_eq!(gpu.take_uncaptured_errors(), Vec::<String>::new());
}

/// A leaf with a matrix but no quantized form.
struct Table {
    weight: Tensor,
}

impl Module for Table {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        vec![("weight", &self.weight)]
    }

    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        assert_eq!(key, "weight");
        self.weight = value;
        Ok(())
    }
}

struct Net {
    table: Layer,
    proj: Layer,
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.table.forward(x)?)
    }
    wgquant::module_children!(table, proj);
}

#[test]
fn quantized_layers_only_for_linear_and_embedding_leaves() {
    let gpu = gpu_or_skip!();
    let params = QuantParams::affine(32, 4);
    let zeros = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let net = || Net {
        table: Box::new(Table { weight: zeros(&[8, 64]) }),
        proj: Box::new(nn::Linear::new(zeros(&[8, 64]), None).unwrap()),
    };
    let quantization = serde_json::json!({"quantization": {"group_size": 32, "bits": 4, "mode": "affine"}});

    let dir = temp_dir();
    let mut tensors = quantized_layer("table", 8, 64, params);
    tensors.extend(quantized_layer("proj", 8, 64, params));
    write_model(dir.path(), &quantization, &tensors);
    let mut model = net();
    let err = load_weights(&mut model, load_checkpoint(dir.path(), &gpu).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "Unable to quantize model of type Table (at \"table\")");
    assert!(model.proj.is::<nn::Linear>(), "a failed load changes nothing");

    // The same checkpoint without the table loads, quantizing nothing itself.
    let dir = temp_dir();
    let mut tensors = quantized_layer("proj", 8, 64, params);
    tensors.push(("table.weight".into(), HostTensor::from_values(&[0.5f32; 8 * 64], &[8, 64]).unwrap()));
    write_model(dir.path(), &quantization, &tensors);
    let mut model = net();
    let done = load_weights(&mut model, load_checkpoint(dir.path(), &gpu).unwrap()).unwrap();
    assert_eq!(done, [nn::QuantizedPath { path: "proj".into(), params, explicit: false }]);
    assert!(model.proj.is::<nn::QuantizedLinear>());
    let table = model.table.downcast_ref::<Table>().unwrap();
    assert_eq!(table.weight.to_vec::<f32>().unwrap(), [0.5f32; 8 * 64]);

    // A checkpoint layer of the wrong width for the model's layer.
    let dir = temp_dir();
    let mut tensors = quantized_layer("proj", 8, 32, params);
    tensors.push(("table.weight".into(), HostTensor::from_values(&[0.5f32; 8 * 64], &[8, 64]).unwrap()));
    write_model(dir.path(), &quantization, &tensors);
    let err = load_weights(&mut net(), load_checkpoint(dir.path(), &gpu).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "tensor \"proj.weight\" has shape (8,32) but shape (8,64) is expected");
}

/// A tree quantized in memory with a mixed recipe, saved sharded, loads back (load_checkpoint,
/// load_weights) into a fresh model with the same layers, parameters and logits; config.json
/// holds mlx-lm's section: defaults plus an entry for each path the recipe chose.
#[test]
fn saved_quantized_model_loads_back() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let params = QuantParams::affine(GROUP_SIZE, 4);
    let mut model = Model::random(&gpu, &config(), DType::F32, 1).unwrap();
    let mixed = nn::mixed_4_6(&model, GROUP_SIZE).unwrap();
    let mut predicate = nn::mlx_lm_predicate(GROUP_SIZE, |path, m| mixed.decide(path, m));
    let quantized = nn::quantize(&mut model, params, Some(&mut predicate)).unwrap();

    let output = dir.path().join("saved");
    let options = SaveOptions { max_shard_bytes: 20_000, ..SaveOptions::default() };
    let report = save_model(&output, &model, &quantized, &config_json(), &options).unwrap();
    assert!(report.shards > 1, "sharded");
    assert_eq!(report.tensors, model.parameters().len());

    let opened = ModelDir::open(&output).unwrap();
    assert_eq!(opened.weights().files().len(), report.shards);
    let section = opened.quantization().unwrap();
    assert_eq!(section.defaults, params);
    let explicit: Vec<&str> = quantized.iter().filter(|q| q.explicit).map(|q| q.path.as_str()).collect();
    assert_eq!(section.layers.keys().map(String::as_str).collect::<Vec<_>>(), {
        let mut sorted = explicit.clone();
        sorted.sort_unstable();
        sorted
    });
    for q in &quantized {
        assert_eq!(section.params_for(&q.path, true), Some(q.params), "{}", q.path);
        if q.explicit {
            assert_eq!(section.layers[&q.path], LayerQuantization::Quantized(q.params));
        }
    }
    let fields = opened.config().fields();
    assert_eq!(fields["quantization"], fields["quantization_config"]);
    assert!(!fields.contains_key("_name_or_path"), "dropped as mlx-lm's save_config drops it");
    assert_eq!(fields["model_type"], "llama");

    let mut loaded = Model::random(&gpu, &config(), DType::F32, 2).unwrap();
    let loaded_paths = load_weights(&mut loaded, load_checkpoint(&output, &gpu).unwrap()).unwrap();
    assert_eq!(loaded_paths, quantized);
    assert_eq!(loaded.to_string(), model.to_string());
    assert_eq!(logits(&gpu, &loaded), logits(&gpu, &model), "the same packed words, scales and biases");
    assert_eq!(gpu.take_uncaptured_errors(), Vec::<String>::new());
}

/// Saving is atomic: an existing output is refused (and kept) without `force`, replaced whole
/// with it when it holds only a checkpoint (anything else is listed and kept), and nothing is
/// left beside it.
#[test]
fn save_refuses_or_replaces_an_existing_output() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let model = Model::random(&gpu, &config(), DType::F32, 1).unwrap();
    let output = dir.path().join("saved");
    std::fs::create_dir(&output).unwrap();
    std::fs::write(output.join("notes.txt"), "mine").unwrap();
    let err = save_model(&output, &model, &[], &config_json(), &SaveOptions::default()).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(output.join("notes.txt")).unwrap(), "mine");

    // `force` replaces only a checkpoint: the user's file is listed, and kept.
    let force = SaveOptions { force: true, ..SaveOptions::default() };
    let err = save_model(&output, &model, &[], &config_json(), &force).unwrap_err();
    assert!(matches!(&err, Error::OutputNotACheckpoint { others, .. } if others == &["notes.txt"]), "{err}");
    assert_eq!(std::fs::read_to_string(output.join("notes.txt")).unwrap(), "mine");
    std::fs::remove_file(output.join("notes.txt")).unwrap();
    std::fs::write(output.join("config.json"), "{}").unwrap();
    let report = save_model(&output, &model, &[], &config_json(), &force).unwrap();
    assert_eq!((report.shards, report.quantization), (1, None));
    assert_eq!(io_common::listing(dir.path()), ["saved"]);
    assert_eq!(io_common::listing(&output), ["config.json", "model.safetensors", "model.safetensors.index.json"]);
    assert!(!ModelDir::open(&output).unwrap().config().fields().contains_key("quantization"));

    // A QuantizedPath that is not a quantized layer of the tree is refused before writing.
    let stray = nn::QuantizedPath { path: "model.norm".into(), params: QuantParams::affine(64, 4), explicit: true };
    let err = save_model(&dir.path().join("other"), &model, &[stray], &config_json(), &force).unwrap_err();
    assert!(matches!(&err, Error::UnknownLayerEntry { layer } if layer == "model.norm"), "{err}");
    assert_eq!(io_common::listing(dir.path()), ["saved"]);
}

/// Writes a float model and the same model quantized with a mixed recipe, both with
/// `save_model`, under `$WGQUANT_SAVE_DIR` (`float/`, `quantized/`), for `.ci/run`'s interop
/// step: real MLX then loads `quantized/` with mlx-lm's `load_model` and checks it bit for bit
/// against `mx.quantize` of `float/` (tests/interop/mlx_interop.py check-saved).
#[test]
#[ignore = "run by .ci/run's interop step, which checks the output with MLX"]
fn save_model_for_mlx() {
    let dir =
        std::path::PathBuf::from(std::env::var_os("WGQUANT_SAVE_DIR").expect("WGQUANT_SAVE_DIR names the output"));
    std::fs::create_dir_all(&dir).unwrap();
    let gpu = common::gpu().expect("a GPU");
    let mut model = Model::random(&gpu, &config(), DType::F16, 5).unwrap();
    save_model(&dir.join("float"), &model, &[], &config_json(), &SaveOptions::default()).unwrap();
    let mixed = nn::mixed_3_6(&model, GROUP_SIZE).unwrap();
    let mut predicate = nn::mlx_lm_predicate(GROUP_SIZE, |path, m| mixed.decide(path, m));
    let quantized = nn::quantize(&mut model, QuantParams::affine(GROUP_SIZE, 4), Some(&mut predicate)).unwrap();
    let options = SaveOptions { max_shard_bytes: 30_000, ..SaveOptions::default() };
    save_model(&dir.join("quantized"), &model, &quantized, &config_json(), &options).unwrap();
}

/// The fp modes end to end: float model → `convert --mode` → `load_weights` into a fresh model
/// equals `nn::quantize` in the mode in memory (same layers and repr, logits within
/// `SAME_KERNELS_TOL`); and `save_model` of that quantized model loads back bit for bit.
#[test]
fn fp_mode_checkpoints_load_into_models() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let original = Model::random(&gpu, &config(), DType::F32, 1).unwrap();
    save(&original, &dir.path().join("in"));
    for mode in wgquant::params::FP_MODES {
        let params = QuantParams::for_mode(mode);
        let output = dir.path().join(mode.as_str());
        convert(&dir.path().join("in"), &output, &gpu, &ConvertOptions::quantize(params), &mut |_, _| {}).unwrap();

        let mut expected = Model::random(&gpu, &config(), DType::F32, 1).unwrap();
        let mut predicate = nn::mlx_lm_predicate(params.group_size, nn::quantizable);
        let expected_paths = nn::quantize(&mut expected, params, Some(&mut predicate)).unwrap();
        let mut loaded = Model::random(&gpu, &config(), DType::F32, 2).unwrap();
        let loaded_paths = load_weights(&mut loaded, load_checkpoint(&output, &gpu).unwrap()).unwrap();
        assert_eq!(loaded_paths, expected_paths, "{mode}");
        assert_eq!(loaded.to_string(), expected.to_string(), "{mode}");
        assert!(loaded.to_string().contains(&format!("mode={mode}")), "{mode}");
        let diff = max_abs_diff(&logits(&gpu, &loaded), &logits(&gpu, &expected));
        assert!(diff <= SAME_KERNELS_TOL, "{mode}: quantized logits differ by {diff}");

        let saved = dir.path().join(format!("{mode}-saved"));
        save_model(&saved, &expected, &expected_paths, &config_json(), &SaveOptions::default()).unwrap();
        let mut reloaded = Model::random(&gpu, &config(), DType::F32, 3).unwrap();
        assert_eq!(load_weights(&mut reloaded, load_checkpoint(&saved, &gpu).unwrap()).unwrap(), expected_paths);
        assert_eq!(logits(&gpu, &reloaded), logits(&gpu, &expected), "{mode}: the same packed words and scales");
    }
    assert_eq!(gpu.take_uncaptured_errors(), Vec::<String>::new());
}
