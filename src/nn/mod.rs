//! Layers, module trees and [`quantize`]: MLX's `mlx.nn` quantization workflow on the GPU.
//!
//! - [`Module`] is MLX's `nn.Module`: a trait for layers and models, with children at dotted
//!   paths (`model.layers.0.self_attn.q_proj`), MLX's walks ([`Module::named_modules`],
//!   [`Module::leaf_modules`], [`Module::parameters`]) and MLX's repr as `Display`. Implement it
//!   for your own types; [`module_children!`](crate::module_children) lists the children.
//! - Layers with GPU forward passes: [`Linear`], [`Embedding`], their quantized forms
//!   [`QuantizedLinear`] and [`QuantizedEmbedding`], [`RMSNorm`], [`ReLU`], [`SiLU`],
//!   [`Sequential`]; mlx-lm's mixture-of-experts layers [`SwitchLinear`],
//!   [`QuantizedSwitchLinear`] and [`SwitchGLU`] (called with indices:
//!   [`Module::forward_experts`]).
//! - [`quantize`] is MLX's `nn.quantize`: it swaps quantizable leaves for their quantized forms
//!   in place, asking an optional predicate per leaf ([`Decision`]: skip, quantize, or quantize
//!   with its own [`QuantParams`](crate::QuantParams)).
//! - mlx-lm's pieces: [`mlx_lm_predicate`] (skip what cannot be quantized), the mixed recipes
//!   ([`mixed_4_6`] and friends), [`bits_per_weight`], [`dequantize_model`], and a small
//!   Llama-shaped [`Model`] with mlx-lm's module names.
//!
//! ```no_run
//! # fn main() -> wgquant::Result<()> {
//! use wgquant::nn::{self, LlamaConfig, Model, Module};
//! use wgquant::{DType, Gpu, QuantParams, Tensor};
//!
//! let gpu = Gpu::new()?;
//! let mut model = Model::random(&gpu, &LlamaConfig::default(), DType::F16, 0)?;
//! println!("{model}"); // MLX's repr
//!
//! // mlx-lm's `--quant-predicate mixed_4_6` with group size 64.
//! let mixed = nn::mixed_4_6(&model, 64)?;
//! let mut predicate = nn::mlx_lm_predicate(64, |path, m| mixed.decide(path, m));
//! let quantized = nn::quantize(&mut model, QuantParams::affine(64, 4), Some(&mut predicate))?;
//! for q in &quantized {
//!     println!("{}: {} bits", q.path, q.params.bits);
//! }
//! println!("{:.3} bits per weight", nn::bits_per_weight(&model));
//!
//! let tokens = Tensor::from_slice(&gpu, &[1u32, 2, 3], &[3])?;
//! let logits = model.forward(&tokens)?; // (3, vocab_size)
//! # Ok(()) }
//! ```

mod embedding;
mod layers;
mod linear;
mod llama;
mod module;
mod quantize;
mod recipes;
mod switch;

pub use embedding::{Embedding, QuantizedEmbedding};
pub use layers::{RMSNorm, ReLU, Sequential, SiLU};
pub use linear::{Linear, QuantizedLinear};
pub use llama::{Attention, LlamaConfig, LlamaModel, Mlp, Model, TransformerBlock};
pub(crate) use module::join;
pub use module::{AsModule, Container, Dict, Layer, Module, ModuleDisplay, Node, Quantizable, Slot};
pub use quantize::{
    bits_per_weight, dequantize_model, mlx_lm_predicate, predicate, quantizable, quantize, Decision, Predicate,
    QuantizedPath,
};
pub(crate) use quantize::{parameter_count, replace_leaves};
pub use recipes::{mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6, MixedPredicate, Recipe};
pub use switch::{QuantizedSwitchLinear, SwitchGLU, SwitchLinear, SORT_FROM_PAIRS};
