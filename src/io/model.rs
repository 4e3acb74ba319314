//! Loading a [`Checkpoint`] into an [`nn`](crate::nn) module tree: mlx-lm's `load_model`
//! (quantize the layers the checkpoint stores quantized, then `load_weights(strict=True)`).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::io::checkpoint::{Checkpoint, Layer as CheckpointLayer, LayerWeight};
use crate::nn::{
    join, replace_leaves, Embedding, Layer, Linear, Module, QuantizedEmbedding, QuantizedLinear, QuantizedPath,
};
use crate::params::QuantParams;
use crate::tensor::Tensor;

/// Loads `checkpoint` into `model` strictly, as mlx-lm's `load_model` does.
///
/// 1. Every leaf whose checkpoint layer is quantized (mlx-lm's rule, applied by
///    [`load_checkpoint`](crate::io::load_checkpoint)) becomes a [`QuantizedLinear`] (for a
///    [`Linear`] or [`QuantizedLinear`] leaf) or a [`QuantizedEmbedding`] (for an [`Embedding`]
///    or [`QuantizedEmbedding`]) built from the stored arrays, without quantizing anything; its
///    logical shape and bias presence must match the leaf's.
/// 2. Every other module's own arrays ([`Module::own_parameters`]) are replaced by the
///    checkpoint's ([`Module::set_parameter`]), with the same shapes.
/// 3. Nothing may be left over ([`Checkpoint::finish`]).
///
/// All checks on the checkpoint run before the model is touched, so on any of the errors below
/// but the last the model is unchanged; only a failing [`Module::set_parameter`] (a module type
/// that lists parameters without implementing it) leaves the model partly loaded. Returns the quantized layers, in leaf order, with `explicit` set where
/// config.json has a per-path entry.
///
/// # Errors
/// [`Error::MissingTensor`] (a key the model needs), [`Error::UnusedTensors`] (keys it does not
/// have), [`Error::TensorShape`] (a shape that differs), [`Error::UnexpectedTensor`] (a bias the
/// layer does not have), [`Error::NotQuantizable`] (a quantized layer at a leaf that is not a
/// linear or embedding layer), [`Error::UnexpectedModule`] (a float layer where the model holds
/// a quantized one), [`Error::NotReplaceable`] (a quantized layer held by type),
/// [`Error::AtPath`] around a layer's own checks; [`Module::set_parameter`]'s errors.
///
/// # Example
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::nn::{LlamaConfig, Model};
/// use wgquant::{io, DType, Gpu};
///
/// let gpu = Gpu::new()?;
/// let mut model = Model::random(&gpu, &LlamaConfig::default(), DType::F16, 0)?;
/// let quantized = io::load_weights(&mut model, io::load_checkpoint("model-4bit".as_ref(), &gpu)?)?;
/// println!("{} quantized layers", quantized.len());
/// # Ok(()) }
/// ```
pub fn load_weights(model: &mut dyn Module, mut checkpoint: Checkpoint) -> Result<Vec<QuantizedPath>> {
    let leaves: Vec<String> = model.leaf_modules().into_iter().map(|(path, _)| path).collect();
    let mut replacements: HashMap<String, Layer> = HashMap::new();
    let mut assignments: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    let mut done = Vec::new();
    for (path, module) in model.named_modules() {
        let quantized_here = leaves.contains(&path)
            && matches!(
                checkpoint.layers().get(&path),
                Some(CheckpointLayer { weight: LayerWeight::Quantized(_), .. })
            );
        if quantized_here {
            let layer = checkpoint.take_layer(&path)?;
            let (built, params) = quantized_layer(&path, module, layer)?;
            let explicit = checkpoint.quantization.as_ref().is_some_and(|q| q.layers.contains_key(&path));
            done.push(QuantizedPath { path: path.clone(), params, explicit });
            replacements.insert(path, built);
        } else {
            let values = own_values(&path, module, &mut checkpoint)?;
            if !values.is_empty() {
                assignments.insert(path, values);
            }
        }
    }
    checkpoint.finish()?;

    replace_leaves(model, |path, _| Ok(replacements.remove(path)))?;
    set_parameters(String::new(), model, &mut assignments)?;
    // Leaf order, as `nn::quantize` reports.
    done.sort_by_key(|q| leaves.iter().position(|p| *p == q.path));
    Ok(done)
}

/// The quantized layer that replaces `module` at `path`, built from the checkpoint's arrays.
fn quantized_layer(path: &str, module: &dyn Module, layer: CheckpointLayer) -> Result<(Layer, QuantParams)> {
    let at_path = |e| Error::AtPath { path: path.to_string(), source: Box::new(e) };
    let (shape, has_bias, linear) = if let Some(m) = module.downcast_ref::<Linear>() {
        (m.weight().shape().to_vec(), m.bias().is_some(), true)
    } else if let Some(m) = module.downcast_ref::<QuantizedLinear>() {
        (m.weight().logical_shape(), m.bias().is_some(), true)
    } else if let Some(m) = module.downcast_ref::<Embedding>() {
        (m.weight().shape().to_vec(), false, false)
    } else if let Some(m) = module.downcast_ref::<QuantizedEmbedding>() {
        (m.weight().logical_shape(), false, false)
    } else {
        return Err(Error::NotQuantizable { path: path.to_string(), type_name: module.type_name().to_string() });
    };
    layer.expect_shape(path, &shape)?;
    check_bias(path, has_bias, layer.bias.is_some())?;
    let (LayerWeight::Quantized(q), bias) = (layer.weight, layer.bias) else { unreachable!("checked by the caller") };
    let params = q.params;
    let built: Layer = if linear {
        Box::new(QuantizedLinear::new(q, bias).map_err(at_path)?)
    } else {
        Box::new(QuantizedEmbedding::new(q).map_err(at_path)?)
    };
    Ok((built, params))
}

/// The checkpoint's arrays for `module`'s own parameters, checked against their shapes. A
/// module with a `weight` takes the layer at its path (weight and bias); other keys are plain
/// tensors `<path>.<key>`.
fn own_values(path: &str, module: &dyn Module, checkpoint: &mut Checkpoint) -> Result<Vec<(String, Tensor)>> {
    let parameters = module.own_parameters();
    let mut layer = None;
    if parameters.iter().any(|(key, _)| *key == "weight") {
        let taken = checkpoint.take_layer(path)?;
        let weight = match taken.weight {
            // Only a module with children gets here: quantized leaves are replaced.
            LayerWeight::Quantized(_) => {
                return Err(Error::NotQuantizable { path: path.to_string(), type_name: module.type_name().to_string() })
            }
            LayerWeight::Float(_) if module.quant_params().is_some() => {
                return Err(Error::UnexpectedModule {
                    path: path.to_string(),
                    expected: "a float layer (the checkpoint stores this layer unquantized)",
                    found: module.type_name().to_string(),
                })
            }
            LayerWeight::Float(weight) => weight,
        };
        let has_bias = parameters.iter().any(|(key, _)| *key == "bias");
        check_bias(path, has_bias, taken.bias.is_some())?;
        layer = Some((weight, taken.bias));
    }
    let mut out = Vec::new();
    for (key, current) in parameters {
        let name = join(path, key);
        let value = match (key, &mut layer) {
            ("weight", Some((weight, _))) => weight.clone(),
            ("bias", Some((_, bias))) => bias.take().expect("checked by check_bias"),
            _ => checkpoint.take_tensor(&name)?,
        };
        if value.shape() != current.shape() {
            return Err(Error::TensorShape {
                tensor: name,
                expected: current.shape().to_vec(),
                got: value.shape().to_vec(),
            });
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// A bias in the checkpoint exactly where the model's layer has one.
fn check_bias(path: &str, model_has: bool, checkpoint_has: bool) -> Result<()> {
    match (model_has, checkpoint_has) {
        (true, false) => {
            Err(Error::MissingTensor { tensor: format!("{path}.bias"), reason: "the model's layer has a bias" })
        }
        (false, true) => {
            Err(Error::UnexpectedTensor { tensor: format!("{path}.bias"), reason: "the model's layer has no bias" })
        }
        _ => Ok(()),
    }
}

/// Sets the planned arrays of `module` and its descendants.
fn set_parameters(
    path: String,
    module: &mut dyn Module,
    plan: &mut BTreeMap<String, Vec<(String, Tensor)>>,
) -> Result<()> {
    for (key, value) in plan.remove(&path).unwrap_or_default() {
        module.set_parameter(&key, value).map_err(|e| Error::AtPath { path: path.clone(), source: Box::new(e) })?;
    }
    for (key, slot) in module.children_mut() {
        set_parameters(join(&path, &key), slot.into_module(), plan)?;
    }
    Ok(())
}
