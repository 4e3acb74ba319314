//! `Linear` and `QuantizedLinear` (MLX's `nn.Linear`, `python/mlx/nn/layers/linear.py`, and
//! `nn.QuantizedLinear`, `quantized.py`).

use super::module::{display_as_module, no_such_parameter, python_bool, set_checked, Layer, Module, Quantizable};
use crate::error::{Error, Result};
use crate::ops;
use crate::params::QuantParams;
use crate::tensor::{Quantized, Tensor};

/// `y = x @ weightᵀ + bias`: MLX's `nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer with `weight` of shape `(output_dims, input_dims)` and an optional `bias` of
    /// shape `(output_dims,)`.
    ///
    /// # Errors
    /// A weight that is not a floating 2-D tensor; a bias that is not floating or not of shape
    /// `(output_dims,)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        check_weight("Linear", &weight)?;
        if let Some(b) = &bias {
            check_bias("Linear", b, weight.shape()[0])?;
        }
        Ok(Linear { weight, bias })
    }

    /// The weight, `(output_dims, input_dims)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(output_dims,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Size of the inputs.
    pub fn input_dims(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Size of the outputs.
    pub fn output_dims(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }

    fn extra_repr(&self) -> String {
        format!(
            "input_dims={}, output_dims={}, bias={}",
            self.input_dims(),
            self.output_dims(),
            python_bool(self.bias.is_some())
        )
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        let mut out = vec![("weight", &self.weight)];
        out.extend(self.bias.as_ref().map(|b| ("bias", b)));
        out
    }

    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        match (key, &mut self.bias) {
            ("weight", _) => set_checked("Linear", "the weight", &mut self.weight, value),
            ("bias", Some(bias)) => set_checked("Linear", "the bias", bias, value),
            _ => Err(no_such_parameter(self, key)),
        }
    }

    fn as_quantizable(&self) -> Option<&dyn Quantizable> {
        Some(self)
    }
}

impl Quantizable for Linear {
    fn to_quantized(&self, params: QuantParams) -> Result<Layer> {
        Ok(Box::new(QuantizedLinear::from_linear(self, params)?))
    }
}

/// A [`Linear`] with a quantized weight: `y = quantized_matmul(x, weight) + bias`, MLX's
/// `nn.QuantizedLinear`.
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    weight: Quantized,
    bias: Option<Tensor>,
}

impl QuantizedLinear {
    /// Quantizes `linear`'s weight with `params` and keeps its bias (MLX's `from_linear`).
    ///
    /// # Errors
    /// Those of [`crate::quantize`]: an input size not divisible by the group size (MLX's
    /// `[quantize] ... divisible ...` message), unsupported parameters, device errors.
    pub fn from_linear(linear: &Linear, params: QuantParams) -> Result<QuantizedLinear> {
        Ok(QuantizedLinear { weight: ops::quantize(&linear.weight, params)?, bias: linear.bias.clone() })
    }

    /// A layer from a quantized weight `(output_dims, input_dims * bits / 32)` and its scales and
    /// biases (none in the fp modes; as a checkpoint stores them), plus an optional bias.
    ///
    /// # Errors
    /// The checks of [`Quantized::from_parts`] (repeated: the fields are public), a weight that
    /// is not 2-D, a bad bias.
    pub fn new(weight: Quantized, bias: Option<Tensor>) -> Result<QuantizedLinear> {
        let op = "QuantizedLinear";
        weight.validate(op)?;
        if weight.weight.ndim() != 2 {
            return Err(Error::NdimMismatch { op, what: "the weight", expected: "2", ndim: weight.weight.ndim() });
        }
        if let Some(b) = &bias {
            check_bias(op, b, weight.weight.shape()[0])?;
        }
        Ok(QuantizedLinear { weight, bias })
    }

    /// The packed weight with its scales, biases and parameters.
    pub fn weight(&self) -> &Quantized {
        &self.weight
    }

    /// The bias, `(output_dims,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The quantization parameters.
    pub fn params(&self) -> QuantParams {
        self.weight.params
    }

    /// Size of the inputs (`weight.shape[1] * 32 / bits`).
    pub fn input_dims(&self) -> usize {
        self.weight.logical_shape()[1]
    }

    /// Size of the outputs.
    pub fn output_dims(&self) -> usize {
        self.weight.weight.shape()[0]
    }

    /// The float layer with the dequantized weight (mlx-lm's `dequantize_model`): in the
    /// scales' dtype (affine), or bfloat16 (the fp modes), as MLX's `dequantize` defaults.
    ///
    /// # Errors
    /// Device errors.
    pub fn dequantize(&self) -> Result<Linear> {
        Linear::new(ops::dequantize(&self.weight, None)?, self.bias.clone())
    }
}

impl Module for QuantizedLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::quantized_matmul(x, &self.weight, true)?;
        match &self.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }

    fn extra_repr(&self) -> String {
        let params = self.params();
        format!(
            "input_dims={}, output_dims={}, bias={}, group_size={}, bits={}, mode={}",
            self.input_dims(),
            self.output_dims(),
            python_bool(self.bias.is_some()),
            params.group_size,
            params.bits,
            params.mode
        )
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        let mut out = quantized_parameters(&self.weight);
        out.extend(self.bias.as_ref().map(|b| ("bias", b)));
        out
    }

    /// Only the bias: the packed weight, scales and biases are set together by building a new
    /// layer ([`QuantizedLinear::new`]).
    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        match (key, &mut self.bias) {
            ("bias", Some(bias)) => set_checked("QuantizedLinear", "the bias", bias, value),
            _ => Err(no_such_parameter(self, key)),
        }
    }

    fn quant_params(&self) -> Option<QuantParams> {
        Some(self.params())
    }
}

display_as_module!(Linear, QuantizedLinear);

/// `weight`, `scales` and, in affine mode, `biases`: the keys MLX stores for a quantized matrix.
pub(crate) fn quantized_parameters(q: &Quantized) -> Vec<(&str, &Tensor)> {
    let mut out = vec![("weight", &q.weight), ("scales", &q.scales)];
    out.extend(q.biases.as_ref().map(|b| ("biases", b)));
    out
}

/// A float matrix: the weight of a `Linear` or an `Embedding`.
pub(crate) fn check_weight(op: &'static str, weight: &Tensor) -> Result<()> {
    if !weight.dtype().is_float() {
        return Err(Error::NotFloatOperand { op, what: "the weight", dtype: weight.dtype() });
    }
    if weight.ndim() != 2 {
        return Err(Error::NdimMismatch { op, what: "the weight", expected: "2", ndim: weight.ndim() });
    }
    Ok(())
}

fn check_bias(op: &'static str, bias: &Tensor, output_dims: usize) -> Result<()> {
    if !bias.dtype().is_float() {
        return Err(Error::NotFloatOperand { op, what: "the bias", dtype: bias.dtype() });
    }
    if bias.shape() != [output_dims] {
        return Err(Error::ShapeMismatch {
            op,
            what: "the bias",
            expected: vec![output_dims],
            actual: bias.shape().to_vec(),
        });
    }
    Ok(())
}
