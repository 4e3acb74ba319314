//! MLX checkpoints: read and write what `mlx_lm.convert` produces, and convert on any GPU.
//!
//! A model directory holds `config.json` (with a `"quantization"` section when quantized),
//! `model.safetensors` or shards `model-0000i-of-0000n.safetensors` with
//! `model.safetensors.index.json`, and the tokenizer's files. A quantized layer `<path>` is
//! stored as `<path>.weight` (packed `uint32`), `<path>.scales`, `<path>.biases` and the optional
//! `<path>.bias` (mlx-lm's `save_model`).
//!
//! - [`SafetensorsFile`] / [`SafetensorsWriter`]: one file, validated, one tensor at a time;
//!   [`FileDType`]: every whole-byte safetensors dtype, carried byte for byte.
//! - [`WeightFiles`]: the file set and its index, checked against each other.
//! - [`ModelConfig`] / [`QuantizationConfig`]: `config.json` and mlx-lm's loading rule.
//! - [`ModelDir`]: an opened directory with its layer plan; [`load_checkpoint`] loads it onto the
//!   GPU as a [`Checkpoint`] of float or [`Quantized`](crate::Quantized) layers.
//! - [`load_weights`]: load a [`Checkpoint`] into an [`nn`](crate::nn) module tree, strictly.
//! - [`convert`]: quantize or dequantize a whole directory, streaming, crash-safe.
//! - [`save_model`]: write an in-memory [`nn`](crate::nn) module tree as an mlx-lm checkpoint.
//! - [`Recipe`]: mlx-lm's mixed-precision recipes on layer paths.

mod checkpoint;
mod config;
mod convert;
mod file_dtype;
mod files;
mod host;
mod json;
mod model;
mod recipe;
mod safetensors;
mod save;
mod shards;

pub use checkpoint::{load_checkpoint, Checkpoint, Layer, LayerInfo, LayerWeight, ModelDir};
pub use config::{LayerQuantization, ModelConfig, QuantizationConfig, CONFIG_FILE};
pub use convert::{convert, Conversion, ConvertOptions, ConvertReport, NonFiniteTensor, SkipPattern};
pub use file_dtype::FileDType;
pub use host::HostTensor;
pub use model::load_weights;
pub use recipe::{MixedBits, Recipe};
pub use safetensors::{
    write_safetensors, SafetensorsFile, SafetensorsWriter, TensorEntry, TensorSpec, MAX_HEADER_BYTES, MAX_NAME_BYTES,
};
pub use save::{quantization_section, save_model, SaveOptions, SaveReport};
pub use shards::{plan_shards, shard_file_name, write_index, WeightFiles, INDEX_FILE, MAX_SHARD_BYTES, SINGLE_FILE};
