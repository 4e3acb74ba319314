//! mlx-lm's mixed-precision recipes (`mlx_lm/convert.py`, `mixed_quant_predicate_builder`;
//! spec §5.4): low bits for most layers, high bits for the value projections and MLP down
//! projections of the first and last eighth of the layers and of every third layer between,
//! and for the LM head. All affine, one group size.

use std::fmt;
use std::str::FromStr;

use super::module::Module;
use super::quantize::Decision;
use crate::error::{Error, Result};
use crate::params::QuantParams;

/// One of mlx-lm's `--quant-predicate` recipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// 2 bits, 6 for the sensitive layers.
    Mixed2_6,
    /// 3 bits, 4 for the sensitive layers.
    Mixed3_4,
    /// 3 bits, 6 for the sensitive layers.
    Mixed3_6,
    /// 4 bits, 6 for the sensitive layers.
    Mixed4_6,
}

impl Recipe {
    /// Every recipe, in mlx-lm's order.
    pub const ALL: [Recipe; 4] = [Recipe::Mixed2_6, Recipe::Mixed3_4, Recipe::Mixed3_6, Recipe::Mixed4_6];

    /// mlx-lm's name (`mixed_4_6`).
    pub const fn name(self) -> &'static str {
        match self {
            Recipe::Mixed2_6 => "mixed_2_6",
            Recipe::Mixed3_4 => "mixed_3_4",
            Recipe::Mixed3_6 => "mixed_3_6",
            Recipe::Mixed4_6 => "mixed_4_6",
        }
    }

    /// `(low, high)` bits.
    pub const fn bits(self) -> (u32, u32) {
        match self {
            Recipe::Mixed2_6 => (2, 6),
            Recipe::Mixed3_4 => (3, 4),
            Recipe::Mixed3_6 => (3, 6),
            Recipe::Mixed4_6 => (4, 6),
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Recipe {
    type Err = Error;

    /// mlx-lm's names; anything else is mlx-lm's `Invalid quant recipe ...`.
    fn from_str(s: &str) -> Result<Recipe> {
        Recipe::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| Error::InvalidRecipe(s.to_string()))
    }
}

/// A recipe bound to a model's layer count: mlx-lm's `mixed_quant_predicate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixedPredicate {
    recipe: Recipe,
    group_size: u32,
    /// Which path component holds the layer index.
    layer_location: usize,
    num_layers: usize,
}

impl MixedPredicate {
    /// Reads the layer layout of `model` as mlx-lm does: the layer index sits at the first
    /// all-digit component of the first `down_proj` path in [`Module::named_modules`] order, and
    /// the layer count is the length of the list holding it (mlx-lm reads `len(model.layers)`).
    ///
    /// # Errors
    /// mlx-lm's `Model does not have expected keys for mixed quant.` when no path contains
    /// `down_proj`.
    pub fn new(recipe: Recipe, model: &dyn Module, group_size: u32) -> Result<MixedPredicate> {
        let paths: Vec<String> = model.named_modules().into_iter().map(|(path, _)| path).collect();
        let first_down = paths.iter().find(|p| p.contains("down_proj")).ok_or(Error::MixedQuantKeys)?;
        let parts: Vec<&str> = first_down.split('.').collect();
        // Python's loop variable keeps the last index when no component is a number.
        let layer_location = parts.iter().position(|p| is_digits(p)).unwrap_or(parts.len() - 1);
        let list_prefix = &parts[..layer_location];
        let num_layers = paths
            .iter()
            .filter_map(|p| {
                let parts: Vec<&str> = p.split('.').collect();
                let index = parts.get(layer_location).filter(|c| is_digits(c))?;
                (parts[..layer_location] == *list_prefix).then(|| index.parse::<usize>().ok())?
            })
            .max()
            .map_or(0, |max| max + 1);
        Ok(MixedPredicate { recipe, group_size, layer_location, num_layers })
    }

    /// The recipe.
    pub fn recipe(&self) -> Recipe {
        self.recipe
    }

    /// The layer count the rule uses.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// The parameters the recipe gives the layer at `path`. A path too short to hold a layer
    /// index counts as layer 0, as in mlx-lm; so does one whose component there is not a
    /// number (where mlx-lm would raise).
    pub fn params_for(&self, path: &str) -> QuantParams {
        let index = path.split('.').nth(self.layer_location).and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
        let n = self.num_layers;
        let use_more_bits = index < n / 8 || index >= 7 * n / 8 || (index as i64 - (n / 8) as i64).rem_euclid(3) == 2;
        let is_value = ["v_proj", "v_a_proj", "v_b_proj"].iter().any(|k| path.contains(k));
        let high = ((is_value || path.contains("down_proj")) && use_more_bits) || path.contains("lm_head");
        let (low_bits, high_bits) = self.recipe.bits();
        QuantParams::affine(self.group_size, if high { high_bits } else { low_bits })
    }

    /// The predicate's answer: always explicit parameters, as mlx-lm returns a dict for every
    /// layer. Wrap it in [`mlx_lm_predicate`](super::mlx_lm_predicate) to skip layers that cannot
    /// be quantized, as mlx-lm's `quantize_model` does.
    pub fn decide(&self, path: &str, _module: &dyn Module) -> Decision {
        Decision::QuantizeWith(self.params_for(path))
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
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
