//! `config.json` and its `"quantization"` section (mlx-lm's `save_config` and `load_model`).
//!
//! The section holds the defaults (`group_size`, `bits`, `mode`) and, keyed by full layer path,
//! per-layer entries: the keyword arguments mlx-lm passes to `to_quantized`. Loading follows
//! mlx-lm's `class_predicate`: a layer is quantized with its own entry when it has one, else with
//! the defaults when `<path>.scales` exists. mlx-lm writes the same section twice, as
//! `"quantization"` and as `"quantization_config"` (for Hugging Face tools); so does wgquant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::json::write_json;
use crate::params::{Mode, QuantParams};

/// The file name of a model's configuration.
pub const CONFIG_FILE: &str = "config.json";
const QUANTIZATION: &str = "quantization";
const QUANTIZATION_CONFIG: &str = "quantization_config";

/// A model's `config.json`: every key is kept as read and written back (sorted, as mlx-lm's
/// `save_config` sorts), with typed access to what wgquant uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    path: PathBuf,
    fields: Map<String, Value>,
}

impl ModelConfig {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`Error::MissingFile`] when it does not exist; [`Error::Io`]; [`Error::ConfigJson`] when
    /// it is not a JSON object.
    pub fn read(path: &Path) -> Result<ModelConfig> {
        if !path.exists() {
            return Err(Error::MissingFile { path: path.to_path_buf(), what: "the model's config.json" });
        }
        let bytes = crate::io::files::read_regular(path)?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::ConfigJson { path: path.to_path_buf(), message: format!("not valid JSON: {e}") })?;
        let Value::Object(fields) = value else {
            return Err(Error::ConfigJson { path: path.to_path_buf(), message: "not a JSON object".into() });
        };
        Ok(ModelConfig { path: path.to_path_buf(), fields })
    }

    /// A configuration made in memory (mlx-lm's `save_config` of a dict), to be written to
    /// `config.json`.
    pub fn from_fields(fields: Map<String, Value>) -> ModelConfig {
        ModelConfig { path: PathBuf::from(CONFIG_FILE), fields }
    }

    /// The file this configuration was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All keys and values.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The `"quantization"` section, or `None` when the model is not quantized.
    ///
    /// # Errors
    /// [`Error::ConfigJson`] for a section that is not an object, a field of the wrong type, an
    /// unknown mode, or a per-layer entry with unknown keys.
    pub fn quantization(&self) -> Result<Option<QuantizationConfig>> {
        match self.fields.get(QUANTIZATION) {
            None => Ok(None),
            Some(section) => QuantizationConfig::from_json(section)
                .map(Some)
                .map_err(|message| Error::ConfigJson { path: self.path.clone(), message }),
        }
    }

    /// Sets `"quantization"` and its copy `"quantization_config"`, or removes both.
    pub fn set_quantization(&mut self, quantization: Option<&QuantizationConfig>) {
        match quantization {
            Some(q) => {
                self.fields.insert(QUANTIZATION.into(), q.to_json());
                self.fields.insert(QUANTIZATION_CONFIG.into(), q.to_json());
            }
            None => {
                self.fields.remove(QUANTIZATION);
                self.fields.remove(QUANTIZATION_CONFIG);
            }
        }
    }

    /// The dtype mlx-lm's `convert` casts float tensors to when `--dtype` is not given:
    /// `torch_dtype`, else `text_config.dtype`, when it is float16, bfloat16 or float32.
    pub fn conversion_dtype(&self) -> Option<DType> {
        let text_config_dtype = || self.fields.get("text_config")?.get("dtype");
        let name = self.fields.get("torch_dtype").or_else(text_config_dtype)?.as_str()?;
        match name {
            "float16" => Some(DType::F16),
            "bfloat16" => Some(DType::BF16),
            "float32" => Some(DType::F32),
            _ => None,
        }
    }

    /// Writes the configuration to `path` as mlx-lm's `save_config` does: keys sorted, indented
    /// by four spaces.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, &Value::Object(self.fields.clone()))
    }
}

/// How a layer's `"quantization"` entry says to treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerQuantization {
    /// Quantized with these parameters.
    Quantized(QuantParams),
    /// Left in floating point (`false` or `{}`).
    Float,
}

/// The `"quantization"` section: defaults plus per-layer entries keyed by full layer path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantizationConfig {
    /// `group_size`, `bits` and `mode` for layers without an entry of their own.
    pub defaults: QuantParams,
    /// Per-layer entries, by full layer path (`model.layers.0.self_attn.v_proj`).
    pub layers: BTreeMap<String, LayerQuantization>,
}

impl QuantizationConfig {
    /// A section with `defaults` and no per-layer entries.
    pub fn new(defaults: QuantParams) -> Self {
        QuantizationConfig { defaults, layers: BTreeMap::new() }
    }

    /// mlx-lm's loading rule (`load_model`'s `class_predicate`): the layer's own entry when it
    /// has one; else the defaults when the checkpoint holds `<layer>.scales`; else not quantized.
    pub fn params_for(&self, layer: &str, has_scales: bool) -> Option<QuantParams> {
        match self.layers.get(layer) {
            Some(LayerQuantization::Quantized(params)) => Some(*params),
            Some(LayerQuantization::Float) => None,
            None => has_scales.then_some(self.defaults),
        }
    }

    /// Parses the section. Missing or `null` sizes take the mode's defaults, as `nn.quantize`'s
    /// layers do; a missing mode is affine (older checkpoints have none).
    fn from_json(section: &Value) -> std::result::Result<QuantizationConfig, String> {
        let Value::Object(fields) = section else {
            return Err(format!("\"{QUANTIZATION}\" must be an object, not {section}"));
        };
        let defaults = params_from_fields(fields, QUANTIZATION)?;
        let mut layers = BTreeMap::new();
        for (key, value) in fields {
            if matches!(key.as_str(), "group_size" | "bits" | "mode") {
                continue;
            }
            let entry = match value {
                Value::Bool(true) => LayerQuantization::Quantized(defaults),
                Value::Bool(false) => LayerQuantization::Float,
                Value::Object(entry) if entry.is_empty() => LayerQuantization::Float,
                Value::Object(entry) => {
                    let context = format!("{QUANTIZATION}.{key}");
                    if let Some(unknown) =
                        entry.keys().find(|k| !matches!(k.as_str(), "group_size" | "bits" | "mode" | "quantize_input"))
                    {
                        return Err(format!("\"{context}\" has an unknown key \"{unknown}\""));
                    }
                    if entry.get("quantize_input").is_some_and(|v| v != &Value::Bool(false)) {
                        return Err(format!("\"{context}\": quantized inputs are not supported"));
                    }
                    LayerQuantization::Quantized(params_from_fields(entry, &context)?)
                }
                other => {
                    return Err(format!("\"{QUANTIZATION}.{key}\" must be a per-layer object or a bool, not {other}"))
                }
            };
            layers.insert(key.clone(), entry);
        }
        Ok(QuantizationConfig { defaults, layers })
    }

    /// The section as mlx-lm writes it: defaults, then one object per per-layer entry.
    pub fn to_json(&self) -> Value {
        let params_json = |p: &QuantParams| serde_json::json!({ "group_size": p.group_size, "bits": p.bits, "mode": p.mode.as_str() });
        let mut section = match params_json(&self.defaults) {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal is an object"),
        };
        for (layer, entry) in &self.layers {
            let value = match entry {
                LayerQuantization::Quantized(params) => params_json(params),
                LayerQuantization::Float => Value::Bool(false),
            };
            section.insert(layer.clone(), value);
        }
        Value::Object(section)
    }
}

/// `group_size`, `bits` and `mode` from an object; `context` names it in errors.
fn params_from_fields(fields: &Map<String, Value>, context: &str) -> std::result::Result<QuantParams, String> {
    let mode = match fields.get("mode") {
        None | Some(Value::Null) => Mode::Affine,
        Some(Value::String(name)) => name.parse().map_err(|e| format!("\"{context}.mode\": {e}"))?,
        Some(other) => return Err(format!("\"{context}.mode\" must be a string, not {other}")),
    };
    let (default_group_size, default_bits) = mode.defaults();
    let size = |key: &str, default: u32, max: u64| match fields.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|v| (1..=max).contains(v))
            .map(|v| v as u32)
            .ok_or_else(|| format!("\"{context}.{key}\" must be an integer from 1 to {max}, not {value}")),
    };
    Ok(QuantParams {
        group_size: size("group_size", default_group_size, 1 << 20)?,
        bits: size("bits", default_bits, 8)?,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<QuantizationConfig, String> {
        QuantizationConfig::from_json(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn loading_rule_is_mlx_lms() {
        let q = parse(
            r#"{"group_size": 64, "bits": 4, "mode": "affine",
                "a.v_proj": {"group_size": 32, "bits": 6, "mode": "affine"},
                "a.gate": {"group_size": 64, "bits": 8},
                "a.off": false, "a.empty": {}, "a.null": {"group_size": null, "bits": 3}}"#,
        )
        .unwrap();
        assert_eq!(q.params_for("a.v_proj", false), Some(QuantParams::affine(32, 6)));
        assert_eq!(q.params_for("a.gate", true), Some(QuantParams::affine(64, 8)));
        assert_eq!(q.params_for("a.off", true), None);
        assert_eq!(q.params_for("a.empty", true), None);
        assert_eq!(q.params_for("a.null", true), Some(QuantParams::affine(64, 3)));
        assert_eq!(q.params_for("a.q_proj", true), Some(QuantParams::affine(64, 4)));
        assert_eq!(q.params_for("a.q_proj", false), None);
    }

    #[test]
    fn missing_mode_is_affine_and_round_trips() {
        let q = parse(r#"{"group_size": 32, "bits": 8, "x": {"bits": 2}}"#).unwrap();
        assert_eq!(q.defaults, QuantParams::affine(32, 8));
        // A per-layer entry without a size takes the mode's default, not the section's.
        assert_eq!(q.layers["x"], LayerQuantization::Quantized(QuantParams::affine(64, 2)));
        assert_eq!(QuantizationConfig::from_json(&q.to_json()).unwrap(), q);
    }

    #[test]
    fn malformed_sections_are_named() {
        assert_eq!(parse("[]").unwrap_err(), "\"quantization\" must be an object, not []");
        assert_eq!(
            parse(r#"{"bits": "4"}"#).unwrap_err(),
            "\"quantization.bits\" must be an integer from 1 to 8, not \"4\""
        );
        assert_eq!(
            parse(r#"{"mode": "afine"}"#).unwrap_err(),
            "\"quantization.mode\": Invalid quantization mode 'afine'."
        );
        assert_eq!(parse(r#"{"l": {"bitz": 4}}"#).unwrap_err(), "\"quantization.l\" has an unknown key \"bitz\"");
        assert_eq!(parse(r#"{"l": 3}"#).unwrap_err(), "\"quantization.l\" must be a per-layer object or a bool, not 3");
    }
}
