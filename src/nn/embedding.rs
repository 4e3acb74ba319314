//! `Embedding` and `QuantizedEmbedding` (MLX's `nn.Embedding`, `python/mlx/nn/layers/embedding.py`,
//! and `nn.QuantizedEmbedding`, `quantized.py`).

use super::linear::{check_weight, quantized_parameters};
use super::module::{display_as_module, no_such_parameter, set_checked, Layer, Module, Quantizable};
use crate::error::{Error, Result};
use crate::ops;
use crate::params::QuantParams;
use crate::tensor::{Quantized, Tensor};

/// A table of `num_embeddings` rows of `dims` values, looked up by `uint32` ids: MLX's
/// `nn.Embedding`.
#[derive(Clone, Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// A layer with `weight` of shape `(num_embeddings, dims)`.
    ///
    /// # Errors
    /// A weight that is not a floating 2-D tensor.
    pub fn new(weight: Tensor) -> Result<Embedding> {
        check_weight("Embedding", &weight)?;
        Ok(Embedding { weight })
    }

    /// The table, `(num_embeddings, dims)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Rows in the table (the vocabulary size).
    pub fn num_embeddings(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Values per row.
    pub fn dims(&self) -> usize {
        self.weight.shape()[1]
    }

    /// `x @ weightᵀ`: the table used as an output projection, for tied heads (MLX's `as_linear`).
    ///
    /// # Errors
    /// Those of [`ops::matmul`].
    pub fn as_linear(&self, x: &Tensor) -> Result<Tensor> {
        ops::matmul(x, &self.weight, true)
    }
}

impl Module for Embedding {
    /// `weight[ids]`: `ids.shape + (dims,)`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        ops::take(&self.weight, ids)
    }

    fn extra_repr(&self) -> String {
        format!("{}, {}", self.num_embeddings(), self.dims())
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        vec![("weight", &self.weight)]
    }

    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        match key {
            "weight" => set_checked("Embedding", "the weight", &mut self.weight, value),
            _ => Err(no_such_parameter(self, key)),
        }
    }

    fn as_quantizable(&self) -> Option<&dyn Quantizable> {
        Some(self)
    }
}

impl Quantizable for Embedding {
    fn to_quantized(&self, params: QuantParams) -> Result<Layer> {
        Ok(Box::new(QuantizedEmbedding::from_embedding(self, params)?))
    }
}

/// An [`Embedding`] with a quantized table: rows of the packed weight, scales and biases are
/// gathered, then dequantized (MLX's `nn.QuantizedEmbedding`).
#[derive(Clone, Debug)]
pub struct QuantizedEmbedding {
    weight: Quantized,
}

impl QuantizedEmbedding {
    /// Quantizes `embedding`'s table with `params` (MLX's `from_embedding`).
    ///
    /// # Errors
    /// Those of [`crate::quantize`]: `dims` not divisible by the group size, unsupported
    /// parameters, device errors.
    pub fn from_embedding(embedding: &Embedding, params: QuantParams) -> Result<QuantizedEmbedding> {
        Ok(QuantizedEmbedding { weight: ops::quantize(&embedding.weight, params)? })
    }

    /// A layer from a quantized table `(num_embeddings, dims * bits / 32)` with its scales and
    /// biases (none in the fp modes), as a checkpoint stores them.
    ///
    /// # Errors
    /// The checks of [`Quantized::from_parts`], a table that is not 2-D.
    pub fn new(weight: Quantized) -> Result<QuantizedEmbedding> {
        let op = "QuantizedEmbedding";
        weight.validate(op)?;
        if weight.weight.ndim() != 2 {
            return Err(Error::NdimMismatch { op, what: "the weight", expected: "2", ndim: weight.weight.ndim() });
        }
        Ok(QuantizedEmbedding { weight })
    }

    /// The packed table with its scales, biases and parameters.
    pub fn weight(&self) -> &Quantized {
        &self.weight
    }

    /// The quantization parameters.
    pub fn params(&self) -> QuantParams {
        self.weight.params
    }

    /// Rows in the table.
    pub fn num_embeddings(&self) -> usize {
        self.weight.weight.shape()[0]
    }

    /// Values per row.
    pub fn dims(&self) -> usize {
        self.weight.logical_shape()[1]
    }

    /// `quantized_matmul(x, weight, transpose=true)`: the table as an output projection, for
    /// tied heads (MLX's `as_linear`).
    ///
    /// # Errors
    /// Those of [`ops::quantized_matmul`].
    pub fn as_linear(&self, x: &Tensor) -> Result<Tensor> {
        ops::quantized_matmul(x, &self.weight, true)
    }

    /// The float layer with the dequantized table (mlx-lm's `dequantize_model`).
    ///
    /// # Errors
    /// Device errors.
    pub fn dequantize(&self) -> Result<Embedding> {
        Embedding::new(ops::dequantize(&self.weight, None)?)
    }
}

impl Module for QuantizedEmbedding {
    /// `dequantize(weight[ids], scales[ids], biases[ids])`: `ids.shape + (dims,)` in the scales'
    /// dtype (affine) or bfloat16 (the fp modes, MLX's default). Scalar ids give one row, which
    /// `dequantize` rejects, as in MLX.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let q = &self.weight;
        let rows = Quantized {
            weight: ops::take(&q.weight, ids)?,
            scales: ops::take(&q.scales, ids)?,
            biases: q.biases.as_ref().map(|b| ops::take(b, ids)).transpose()?,
            params: q.params,
        };
        ops::dequantize(&rows, None)
    }

    fn extra_repr(&self) -> String {
        let params = self.params();
        format!(
            "{}, {}, group_size={}, bits={}, mode={}",
            self.num_embeddings(),
            self.dims(),
            params.group_size,
            params.bits,
            params.mode
        )
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        quantized_parameters(&self.weight)
    }

    fn quant_params(&self) -> Option<QuantParams> {
        Some(self.params())
    }
}

display_as_module!(Embedding, QuantizedEmbedding);
