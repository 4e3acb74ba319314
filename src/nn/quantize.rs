//! `nn::quantize`: MLX's `nn.quantize(model, group_size, bits, class_predicate=...)`
//! (`python/mlx/nn/layers/quantized.py`), mlx-lm's predicate wrapper (`mlx_lm/utils.py`),
//! its bits-per-weight count and its `dequantize_model`.

use super::embedding::QuantizedEmbedding;
use super::linear::QuantizedLinear;
use super::module::{leaf_slots, Layer, Module, Slot};
use crate::error::{Error, Result};
use crate::params::QuantParams;

/// What a predicate answers for one leaf: MLX's `False` (or `{}`), `True`, or a dict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave the module as it is (MLX: a falsy answer, including an empty dict).
    Skip,
    /// Quantize with the parameters given to [`quantize`] (MLX: `True`).
    Quantize,
    /// Quantize with these parameters (MLX: a non-empty dict passed to `to_quantized`).
    QuantizeWith(QuantParams),
}

impl From<bool> for Decision {
    fn from(yes: bool) -> Decision {
        if yes {
            Decision::Quantize
        } else {
            Decision::Skip
        }
    }
}

impl From<QuantParams> for Decision {
    fn from(params: QuantParams) -> Decision {
        Decision::QuantizeWith(params)
    }
}

/// A predicate: called with each leaf's path and module, in leaf order.
pub type Predicate<'a> = &'a mut dyn FnMut(&str, &dyn Module) -> Decision;

/// Returns `f` unchanged, typed as a predicate: a closure kept in a variable gets the
/// signature [`quantize`] needs without annotating its arguments
/// (`|path: &str, m: &dyn Module|`), which Rust's inference cannot guess from later use.
///
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::nn::{self, LlamaConfig, Model};
/// use wgquant::{DType, Gpu, QuantParams};
///
/// let gpu = Gpu::new()?;
/// let mut model = Model::random(&gpu, &LlamaConfig::default(), DType::F16, 0)?;
/// let mut skip_head = nn::predicate(|path, m| if path == "lm_head" { nn::Decision::Skip } else { nn::quantizable(path, m) });
/// nn::quantize(&mut model, QuantParams::affine(64, 4), Some(&mut skip_head))?;
/// # Ok(()) }
/// ```
pub fn predicate<F>(f: F) -> F
where
    F: FnMut(&str, &dyn Module) -> Decision,
{
    f
}

/// One layer [`quantize`] replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantizedPath {
    /// Its path (`model.layers.0.self_attn.q_proj`).
    pub path: String,
    /// The parameters it was quantized with.
    pub params: QuantParams,
    /// Whether the predicate chose them ([`Decision::QuantizeWith`]): mlx-lm writes a per-path
    /// entry into `config.json`'s `"quantization"` for exactly these.
    pub explicit: bool,
}

/// Quantizes the layers of `model` in place, as MLX's `nn.quantize` does.
///
/// - Only leaf modules are visited, in insertion order; the root is never replaced. A module
///   that has children is not a leaf even if it could be quantized.
/// - `predicate(path, module)` answers per leaf ([`Decision`]); without one, every leaf that can
///   be quantized ([`quantizable`]) is quantized with `params`.
/// - All replacements are built first and swapped in only when every one succeeded, so on error
///   the model is unchanged (MLX maps the leaves, then calls `update_modules`).
///
/// Returns the replaced paths with their parameters, for mlx-lm's per-path config entries.
///
/// # Errors
/// [`Error::NotQuantizable`] (MLX's `Unable to quantize model of type ...`) when the predicate
/// says yes for a module that cannot be quantized; [`Error::AtPath`] around the layer's own
/// error, such as MLX's `[quantize] ... divisible ...` for an input size that does not split
/// into groups, or an unsupported bit width; [`Error::NotReplaceable`] for a layer held by type;
/// [`Error::UndeclaredChildren`] for a module (the root included) with no parameters, no
/// declared children and no quantized form, the sign of a forgotten
/// [`module_children!`](crate::module_children), before anything is replaced.
///
/// # Example
/// ```no_run
/// # fn main() -> wgquant::Result<()> {
/// use wgquant::nn::{self, Decision, LlamaConfig, Model};
/// use wgquant::{DType, Gpu, QuantParams};
///
/// let gpu = Gpu::new()?;
/// let mut model = Model::random(&gpu, &LlamaConfig::default(), DType::F16, 0)?;
/// // 4 bits, but 8 for the head (MLX: a dict for that path) and none for the embedding.
/// let done = nn::quantize(&mut model, QuantParams::affine(64, 4), Some(&mut |path, m| match path {
///     "lm_head" => QuantParams::affine(64, 8).into(),
///     "model.embed_tokens" => Decision::Skip,
///     _ => nn::quantizable(path, m),
/// }))?;
/// assert_eq!(done.len(), 4 * 7 + 1); // seven projections per block, and the head
/// # Ok(()) }
/// ```
pub fn quantize(
    model: &mut dyn Module,
    params: QuantParams,
    mut predicate: Option<Predicate<'_>>,
) -> Result<Vec<QuantizedPath>> {
    if let Some((path, module)) = undeclared_children(model) {
        return Err(Error::UndeclaredChildren { path, type_name: module.type_name().to_string() });
    }
    let mut done = Vec::new();
    replace_leaves(model, |path, module| {
        let decision = match predicate.as_mut() {
            Some(predicate) => predicate(path, module),
            None => quantizable(path, module),
        };
        let (params, explicit) = match decision {
            Decision::Skip => return Ok(None),
            Decision::Quantize => (params, false),
            Decision::QuantizeWith(own) => (own, true),
        };
        let quantizable = module.as_quantizable().ok_or_else(|| Error::NotQuantizable {
            path: path.to_string(),
            type_name: module.type_name().to_string(),
        })?;
        let layer = quantizable
            .to_quantized(params)
            .map_err(|e| Error::AtPath { path: path.to_string(), source: Box::new(e) })?;
        done.push(QuantizedPath { path: path.to_string(), params, explicit });
        Ok(Some(layer))
    })?;
    Ok(done)
}

/// The first module of the tree, the root included, of unknown kind: no parameters, no
/// children, not declared to have none ([`Module::declares_children`]), and neither
/// quantizable nor quantized.
fn undeclared_children(model: &dyn Module) -> Option<(String, &dyn Module)> {
    model.named_modules().into_iter().find(|(_, m)| {
        !m.declares_children()
            && m.children().is_empty()
            && m.own_parameters().is_empty()
            && m.as_quantizable().is_none()
            && m.quant_params().is_none()
    })
}

/// MLX's default predicate: quantize every module that can be (`hasattr(m, "to_quantized")`).
pub fn quantizable(_path: &str, module: &dyn Module) -> Decision {
    module.as_quantizable().is_some().into()
}

/// mlx-lm's wrapper around a predicate (`quantize_model`'s `wrapped_predicate`):
/// modules that cannot be quantized and modules whose `weight.shape[-1]` is not divisible by
/// `group_size` (the call's group size, whatever `inner` answers) are skipped instead of raising;
/// the rest get `inner`'s answer (pass [`quantizable`] for mlx-lm's default of `True`).
pub fn mlx_lm_predicate<P>(group_size: u32, mut inner: P) -> impl FnMut(&str, &dyn Module) -> Decision
where
    P: FnMut(&str, &dyn Module) -> Decision,
{
    move |path: &str, module: &dyn Module| {
        if module.as_quantizable().is_none() {
            return Decision::Skip;
        }
        let width = module.own_parameters().into_iter().find(|(key, _)| *key == "weight").map(|(_, w)| w.shape());
        if group_size == 0 || width.and_then(<[usize]>::last).is_some_and(|&k| k % group_size as usize != 0) {
            return Decision::Skip;
        }
        inner(path, module)
    }
}

/// Bits stored per weight, as mlx-lm's `compute_bits_per_weight` counts them: all the bytes of
/// all parameters times 8, over the number of weights, where a quantized layer counts
/// `weight.size * 32 / bits` weights (plus its bias) and any other leaf all its elements.
pub fn bits_per_weight(model: &dyn Module) -> f64 {
    let bytes: u64 = model.parameters().iter().map(|(_, t)| t.size_in_bytes()).sum();
    bytes as f64 * 8.0 / parameter_count(model).max(1) as f64
}

/// mlx-lm's `get_total_parameters`: a quantized layer counts `weight.size * 32 / bits` weights
/// (plus its bias), any other leaf all its elements.
pub(crate) fn parameter_count(model: &dyn Module) -> u64 {
    let weights: usize = model
        .leaf_modules()
        .iter()
        .map(|(_, leaf)| {
            let parameters = leaf.own_parameters();
            match leaf.quant_params() {
                Some(params) => parameters
                    .iter()
                    .map(|&(key, t)| match key {
                        "weight" => t.len().saturating_mul(32) / params.bits as usize,
                        "bias" => t.len(),
                        _ => 0,
                    })
                    .sum::<usize>(),
                None => parameters.iter().map(|(_, t)| t.len()).sum(),
            }
        })
        .sum();
    weights as u64
}

/// Replaces every [`QuantizedLinear`] with a [`Linear`](super::Linear) and every
/// [`QuantizedEmbedding`] with an [`Embedding`](super::Embedding) holding the dequantized
/// weights (mlx-lm's `dequantize_model`); returns the replaced paths. Other quantized types are
/// left alone.
///
/// # Errors
/// Device errors; [`Error::NotReplaceable`] for a layer held by type.
pub fn dequantize_model(model: &mut dyn Module) -> Result<Vec<String>> {
    let mut done = Vec::new();
    replace_leaves(model, |path, module| {
        let layer: Layer = if let Some(linear) = module.downcast_ref::<QuantizedLinear>() {
            Box::new(linear.dequantize()?)
        } else if let Some(embedding) = module.downcast_ref::<QuantizedEmbedding>() {
            Box::new(embedding.dequantize()?)
        } else {
            return Ok(None);
        };
        done.push(path.to_string());
        Ok(Some(layer))
    })?;
    Ok(done)
}

/// Asks `replacement` for every leaf in order and swaps in what it returns, all or nothing.
pub(crate) fn replace_leaves(
    model: &mut dyn Module,
    mut replacement: impl FnMut(&str, &dyn Module) -> Result<Option<Layer>>,
) -> Result<()> {
    let mut leaves = leaf_slots(model);
    let mut planned = Vec::new();
    for (index, (path, slot)) in leaves.iter().enumerate() {
        if let Some(layer) = replacement(path, slot.module())? {
            if let Slot::Fixed(module) = slot {
                return Err(Error::NotReplaceable { path: path.clone(), type_name: module.type_name().to_string() });
            }
            planned.push((index, layer));
        }
    }
    for (index, layer) in planned {
        if let (_, Slot::Layer(slot)) = &mut leaves[index] {
            **slot = layer;
        }
    }
    Ok(())
}
