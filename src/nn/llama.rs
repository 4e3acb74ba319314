//! A small Llama-shaped model for the demo and the tests: mlx-lm's `models/llama.py` with the
//! same module names and order (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`, ...,
//! `lm_head`), so paths, reprs and mixed recipes match what mlx-lm does on a real checkpoint.
//!
//! It leaves out rotary position embeddings: position enters only through the causal mask. The
//! model exists to measure what quantization costs, not to model language.

use super::embedding::{Embedding, QuantizedEmbedding};
use super::layers::RMSNorm;
use super::linear::Linear;
use super::module::{display_as_module, Layer, Module};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use crate::random::SplitMix64;
use crate::tensor::Tensor;

/// The sizes of a [`Model`] (mlx-lm's `ModelArgs` fields of the same names).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads (keys and values have as many).
    pub num_attention_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Whether the output head reuses the embedding table (no `lm_head`).
    pub tie_word_embeddings: bool,
}

impl Default for LlamaConfig {
    /// The demo's model: 4 blocks of width 256, a 1024-token vocabulary, about 2.4 M weights.
    fn default() -> Self {
        LlamaConfig {
            vocab_size: 1024,
            hidden_size: 256,
            intermediate_size: 512,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: false,
        }
    }
}

/// The whole model: mlx-lm's `Model` (`model` and an optional `lm_head`).
pub struct Model {
    /// The embedding, the blocks and the final norm.
    pub model: LlamaModel,
    /// The output projection; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Layer>,
}

/// mlx-lm's `LlamaModel`.
pub struct LlamaModel {
    /// Token embedding.
    pub embed_tokens: Layer,
    /// The blocks.
    pub layers: Vec<TransformerBlock>,
    /// Final norm.
    pub norm: RMSNorm,
}

/// mlx-lm's `TransformerBlock`: pre-norm attention and MLP, each added to the residual stream.
pub struct TransformerBlock {
    /// Causal self-attention.
    pub self_attn: Attention,
    /// SwiGLU MLP.
    pub mlp: Mlp,
    /// Norm before attention.
    pub input_layernorm: RMSNorm,
    /// Norm before the MLP.
    pub post_attention_layernorm: RMSNorm,
}

/// mlx-lm's `Attention` without rotary embeddings.
pub struct Attention {
    /// Query projection.
    pub q_proj: Layer,
    /// Key projection.
    pub k_proj: Layer,
    /// Value projection.
    pub v_proj: Layer,
    /// Output projection.
    pub o_proj: Layer,
    n_heads: usize,
}

/// mlx-lm's `MLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Layer,
    /// Down projection.
    pub down_proj: Layer,
    /// Up projection.
    pub up_proj: Layer,
}

impl Model {
    /// A model with weights drawn from a generator seeded with `seed`, initialised as MLX
    /// initialises its layers: Linear weights uniform in ±1/√input_dims, embeddings normal with
    /// standard deviation 1/√dims, norm scales one. Weights are stored in `dtype`.
    ///
    /// # Errors
    /// A width not divisible by the head count, a non-floating `dtype`, device errors.
    pub fn random(gpu: &Gpu, config: &LlamaConfig, dtype: DType, seed: u64) -> Result<Model> {
        let heads = config.num_attention_heads;
        if heads == 0 || config.hidden_size % heads != 0 {
            return Err(Error::NotDivisible {
                op: "Model::random",
                what: "hidden_size",
                value: config.hidden_size,
                divisor: heads,
            });
        }
        let mut init = Init { gpu, dtype, rng: SplitMix64::new(seed) };
        let (d, h) = (config.hidden_size, config.intermediate_size);
        let embed_tokens: Layer = Box::new(init.embedding(config.vocab_size, d)?);
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                Ok(TransformerBlock {
                    self_attn: Attention {
                        q_proj: init.linear(d, d)?,
                        k_proj: init.linear(d, d)?,
                        v_proj: init.linear(d, d)?,
                        o_proj: init.linear(d, d)?,
                        n_heads: heads,
                    },
                    mlp: Mlp {
                        gate_proj: init.linear(d, h)?,
                        down_proj: init.linear(h, d)?,
                        up_proj: init.linear(d, h)?,
                    },
                    input_layernorm: init.norm(d, config.rms_norm_eps)?,
                    post_attention_layernorm: init.norm(d, config.rms_norm_eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = init.norm(d, config.rms_norm_eps)?;
        let lm_head = if config.tie_word_embeddings { None } else { Some(init.linear(d, config.vocab_size)?) };
        Ok(Model { model: LlamaModel { embed_tokens, layers, norm }, lm_head })
    }
}

impl Module for Model {
    /// Logits `(..., tokens, vocab_size)` for `uint32` token ids `(..., tokens)`.
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let h = self.model.forward(tokens)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => tied_head(self.model.embed_tokens.as_ref(), &h),
        }
    }

    crate::module_children!(model, lm_head);
}

/// The embedding used as the output projection (mlx-lm: `embed_tokens.as_linear(out)`).
fn tied_head(embed_tokens: &dyn Module, h: &Tensor) -> Result<Tensor> {
    if let Some(embedding) = embed_tokens.downcast_ref::<Embedding>() {
        embedding.as_linear(h)
    } else if let Some(embedding) = embed_tokens.downcast_ref::<QuantizedEmbedding>() {
        embedding.as_linear(h)
    } else {
        Err(Error::UnexpectedModule {
            path: "model.embed_tokens".into(),
            expected: "an Embedding or a QuantizedEmbedding (the head is tied to it)",
            found: embed_tokens.type_name().into(),
        })
    }
}

impl Module for LlamaModel {
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut h = self.embed_tokens.forward(tokens)?;
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        self.norm.forward(&h)
    }

    crate::module_children!(embed_tokens, layers, norm);
}

impl Module for TransformerBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::add(x, &self.self_attn.forward(&self.input_layernorm.forward(x)?)?)?;
        ops::add(&h, &self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?)
    }

    crate::module_children!(self_attn, mlp, input_layernorm, post_attention_layernorm);
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (self.q_proj.forward(x)?, self.k_proj.forward(x)?, self.v_proj.forward(x)?);
        let head_dim = q.shape().last().copied().unwrap_or(0) / self.n_heads.max(1);
        let scale = (head_dim as f32).powf(-0.5);
        let out = ops::scaled_dot_product_attention(&q, &k, &v, self.n_heads, scale, true)?;
        self.o_proj.forward(&out)
    }

    crate::module_children!(q_proj, k_proj, v_proj, o_proj);
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&ops::multiply(&gate, &self.up_proj.forward(x)?)?)
    }

    fn type_name(&self) -> &'static str {
        "MLP"
    }

    crate::module_children!(gate_proj, down_proj, up_proj);
}

display_as_module!(Model, LlamaModel, TransformerBlock, Attention, Mlp);

/// Seeded weights, uploaded in one dtype.
struct Init<'a> {
    gpu: &'a Gpu,
    dtype: DType,
    rng: SplitMix64,
}

impl Init<'_> {
    fn upload(&self, values: &[f32], shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::from_slice(self.gpu, values, shape)?;
        if self.dtype == DType::F32 {
            Ok(t)
        } else {
            ops::astype(&t, self.dtype)
        }
    }

    fn linear(&mut self, input_dims: usize, output_dims: usize) -> Result<Layer> {
        let scale = (input_dims as f32).sqrt().recip();
        let values: Vec<f32> =
            (0..input_dims * output_dims).map(|_| scale * (2.0 * self.rng.uniform() - 1.0)).collect();
        Ok(Box::new(Linear::new(self.upload(&values, &[output_dims, input_dims])?, None)?))
    }

    fn embedding(&mut self, num_embeddings: usize, dims: usize) -> Result<Embedding> {
        let scale = (dims as f32).sqrt().recip();
        let values: Vec<f32> = (0..num_embeddings * dims).map(|_| scale * self.rng.normal()).collect();
        Embedding::new(self.upload(&values, &[num_embeddings, dims])?)
    }

    fn norm(&self, dims: usize, eps: f32) -> Result<RMSNorm> {
        RMSNorm::new(self.upload(&vec![1.0; dims], &[dims])?, eps)
    }
}
