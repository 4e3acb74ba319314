//! mlx-lm's mixed-precision recipes on a module tree (`mlx_lm/convert.py`,
//! `mixed_quant_predicate_builder`): [`MixedPredicate`] reads the layer layout from
//! [`Module::named_modules`] and applies [`Recipe`]'s rule, the one `wgquant convert --recipe`
//! applies to checkpoint paths.

use crate::io::MixedBits;
pub use crate::io::Recipe;

use super::module::Module;
use super::quantize::Decision;
use crate::error::Result;
use crate::params::QuantParams;

/// A recipe bound to a model's layer layout: mlx-lm's `mixed_quant_predicate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixedPredicate {
    bits: MixedBits,
    group_size: u32,
}

impl MixedPredicate {
    /// Reads the layer layout of `model` from its module paths, as mlx-lm does from
    /// `model.named_modules()` and `len(model.layers)` ([`Recipe::for_layers`]).
    ///
    /// # Errors
    /// mlx-lm's `Model does not have expected keys for mixed quant.` when no path contains
    /// `down_proj`.
    pub fn new(recipe: Recipe, model: &dyn Module, group_size: u32) -> Result<MixedPredicate> {
        let paths: Vec<String> = model.named_modules().into_iter().map(|(path, _)| path).collect();
        Ok(MixedPredicate { bits: recipe.for_layers(paths.iter().map(String::as_str))?, group_size })
    }

    /// The parameters the recipe gives the layer at `path`.
    pub fn params_for(&self, path: &str) -> QuantParams {
        QuantParams::affine(self.group_size, self.bits.bits_for(path))
    }

    /// The predicate's answer: always explicit parameters, as mlx-lm returns a dict for every
    /// layer. Wrap it in [`mlx_lm_predicate`](super::mlx_lm_predicate) to skip layers that cannot
    /// be quantized, as mlx-lm's `quantize_model` does.
    pub fn decide(&self, path: &str, _module: &dyn Module) -> Decision {
        Decision::QuantizeWith(self.params_for(path))
    }
}

/// mlx-lm's `mixed_2_6` for `model`.
///
/// # Errors
/// As [`MixedPredicate::new`].
pub fn mixed_2_6(model: &dyn Module, group_size: u32) -> Result<MixedPredicate> {
    MixedPredicate::new(Recipe::Mixed2_6, model, group_size)
}

/// mlx-lm's `mixed_3_4` for `model`.
///
/// # Errors
/// As [`MixedPredicate::new`].
pub fn mixed_3_4(model: &dyn Module, group_size: u32) -> Result<MixedPredicate> {
    MixedPredicate::new(Recipe::Mixed3_4, model, group_size)
}

/// mlx-lm's `mixed_3_6` for `model`.
///
/// # Errors
/// As [`MixedPredicate::new`].
pub fn mixed_3_6(model: &dyn Module, group_size: u32) -> Result<MixedPredicate> {
    MixedPredicate::new(Recipe::Mixed3_6, model, group_size)
}

/// mlx-lm's `mixed_4_6` for `model`.
///
/// # Errors
/// As [`MixedPredicate::new`].
pub fn mixed_4_6(model: &dyn Module, group_size: u32) -> Result<MixedPredicate> {
    MixedPredicate::new(Recipe::Mixed4_6, model, group_size)
}
