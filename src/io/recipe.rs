//! mlx-lm's mixed-precision recipes (`mixed_quant_predicate_builder` in `mlx_lm/convert.py`),
//! as a pure function of layer paths.
//!
//! The rule: the layer index sits at the first all-digit component of the first path that
//! contains `down_proj` (the last component when none is all digits, as Python's loop variable
//! keeps its last value), and the model has `L` layers, the largest index under the same prefix
//! plus one (`len(model.layers)`). A layer at index `i` "uses more bits" when `i < L/8`,
//! `i >= 7L/8`, or `(i - L/8) mod 3 == 2`. Then `v_proj`, `v_a_proj`, `v_b_proj` and `down_proj`
//! get the high bits when they use more bits, `lm_head` always does, and everything else gets
//! the low bits. A path too short to reach the index position counts as layer 0, and so does
//! one whose component there is not a number (where mlx-lm's `int()` would raise). `nn`'s
//! `MixedPredicate` applies the same rule to a module tree.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A mixed-precision recipe: low bits for most layers, high bits for sensitive ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// 2 and 6 bits.
    Mixed2_6,
    /// 3 and 4 bits.
    Mixed3_4,
    /// 3 and 6 bits.
    Mixed3_6,
    /// 4 and 6 bits.
    Mixed4_6,
}

impl Recipe {
    /// `(low, high)` bits.
    pub const fn bits(self) -> (u32, u32) {
        match self {
            Recipe::Mixed2_6 => (2, 6),
            Recipe::Mixed3_4 => (3, 4),
            Recipe::Mixed3_6 => (3, 6),
            Recipe::Mixed4_6 => (4, 6),
        }
    }

    /// Binds the recipe to a model given the paths of all its layers (quantizable or not), as
    /// mlx-lm does from `model.named_modules()` and `len(model.layers)`.
    ///
    /// # Errors
    /// [`Error::MixedQuantKeys`] when no path contains `down_proj`.
    pub fn for_layers<'a>(self, layer_paths: impl IntoIterator<Item = &'a str>) -> Result<MixedBits> {
        let paths: Vec<&str> = layer_paths.into_iter().collect();
        let down = paths.iter().find(|p| p.contains("down_proj")).ok_or(Error::MixedQuantKeys)?;
        let components: Vec<&str> = down.split('.').collect();
        let position = components.iter().position(|c| is_index(c)).unwrap_or(components.len() - 1);
        let prefix = &components[..position];
        let num_layers = paths
            .iter()
            .filter_map(|p| {
                let c: Vec<&str> = p.split('.').collect();
                let index = c.get(position).filter(|i| is_index(i))?;
                (c[..position] == *prefix).then(|| index.parse::<i64>().ok())?
            })
            .max()
            .map_or(0, |max| max + 1);
        Ok(MixedBits { recipe: self, position, num_layers })
    }
}

/// A recipe bound to a model: gives each layer path its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixedBits {
    recipe: Recipe,
    position: usize,
    num_layers: i64,
}

impl MixedBits {
    /// The bits of the layer at `path`.
    pub fn bits_for(&self, path: &str) -> u32 {
        let index = path.split('.').nth(self.position).and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
        let n = self.num_layers;
        let use_more_bits = index < n / 8 || index >= 7 * n / 8 || (index - n / 8).rem_euclid(3) == 2;
        let (low, high) = self.recipe.bits();
        let sensitive = ["v_proj", "v_a_proj", "v_b_proj", "down_proj"].iter().any(|name| path.contains(name));
        if (sensitive && use_more_bits) || path.contains("lm_head") {
            high
        } else {
            low
        }
    }
}

/// Python's `str.isdigit` for ASCII: non-empty, digits only.
fn is_index(component: &str) -> bool {
    !component.is_empty() && component.bytes().all(|b| b.is_ascii_digit())
}

impl FromStr for Recipe {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mixed_2_6" => Ok(Recipe::Mixed2_6),
            "mixed_3_4" => Ok(Recipe::Mixed3_4),
            "mixed_3_6" => Ok(Recipe::Mixed3_6),
            "mixed_4_6" => Ok(Recipe::Mixed4_6),
            other => Err(Error::InvalidRecipe(other.to_string())),
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (low, high) = self.bits();
        write!(f, "mixed_{low}_{high}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(layers: usize) -> Vec<String> {
        let mut paths = vec!["model.embed_tokens".to_string(), "model.norm".into(), "lm_head".into()];
        for i in 0..layers {
            for name in ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj", "mlp.up_proj", "input_layernorm"] {
                paths.push(format!("model.layers.{i}.{name}"));
            }
        }
        paths
    }

    #[test]
    fn sixteen_layers_follow_mlx_lm() {
        let paths = llama(16);
        let rule = Recipe::Mixed3_6.for_layers(paths.iter().map(String::as_str)).unwrap();
        // L = 16: L/8 = 2, 7L/8 = 14; more bits for i < 2, i >= 14, and (i - 2) % 3 == 2.
        let more: Vec<usize> =
            (0..16).filter(|i| rule.bits_for(&format!("model.layers.{i}.mlp.down_proj")) == 6).collect();
        assert_eq!(more, [0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(rule.bits_for("model.layers.4.self_attn.v_proj"), 6);
        assert_eq!(rule.bits_for("model.layers.4.self_attn.q_proj"), 3);
        assert_eq!(rule.bits_for("model.layers.3.self_attn.v_proj"), 3);
        assert_eq!(rule.bits_for("lm_head"), 6);
        // "model.embed_tokens" is too short to reach the index: layer 0, not sensitive.
        assert_eq!(rule.bits_for("model.embed_tokens"), 3);
    }

    #[test]
    fn models_without_down_proj_are_refused() {
        let err = Recipe::Mixed4_6.for_layers(["model.layers.0.fc1", "lm_head"]).unwrap_err();
        assert_eq!(err.to_string(), "Model does not have expected keys for mixed quant.");
        assert_eq!("mixed_5_6".parse::<Recipe>().unwrap_err().to_string(), "Invalid quant recipe mixed_5_6");
        assert_eq!(Recipe::Mixed2_6.to_string(), "mixed_2_6");
    }

    #[test]
    fn odd_paths_count_as_layer_zero() {
        // L = 1: 1/8 = 0, 7/8 = 0, so every index uses more bits.
        let rule = Recipe::Mixed2_6.for_layers(["model.layers.0.mlp.down_proj"]).unwrap();
        assert_eq!(rule.bits_for("vision.blocks.x.attn.v_proj"), 6);
        assert_eq!(rule.bits_for("model.layers.0.mlp.up_proj"), 2);
    }
}
