//! The small layers a transformer needs: `ReLU`, `SiLU`, `RMSNorm` and `Sequential` (MLX's
//! `nn.ReLU`, `nn.SiLU` in `activations.py`, `nn.RMSNorm` in `normalization.py`, `nn.Sequential`
//! in `containers.py`).

use super::module::{display_as_module, no_such_parameter, python_float, set_checked, Layer, Module};
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// `max(x, 0)`: MLX's `nn.ReLU`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReLU;

impl Module for ReLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::relu(x)
    }
    crate::module_children!();
}

/// `x * sigmoid(x)`: MLX's `nn.SiLU`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SiLU;

impl Module for SiLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::silu(x)
    }
    crate::module_children!();
}

/// Root-mean-square normalisation of the last axis times a learned scale: MLX's `nn.RMSNorm`.
#[derive(Clone, Debug)]
pub struct RMSNorm {
    weight: Tensor,
    eps: f32,
}

impl RMSNorm {
    /// A norm over `weight.len()` values with scale `weight` (MLX initialises it to ones) and
    /// `eps` (MLX's default is `1e-5`).
    ///
    /// # Errors
    /// A weight that is not a floating 1-D tensor.
    pub fn new(weight: Tensor, eps: f32) -> Result<RMSNorm> {
        let op = "RMSNorm";
        if !weight.dtype().is_float() {
            return Err(Error::NotFloatOperand { op, what: "the weight", dtype: weight.dtype() });
        }
        if weight.ndim() != 1 {
            return Err(Error::NdimMismatch { op, what: "the weight", expected: "1", ndim: weight.ndim() });
        }
        Ok(RMSNorm { weight, eps })
    }

    /// The scale, `(dims,)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The epsilon added to the mean square.
    pub fn eps(&self) -> f32 {
        self.eps
    }
}

impl Module for RMSNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }

    fn extra_repr(&self) -> String {
        format!("{}, eps={}", self.weight.len(), python_float(self.eps))
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        vec![("weight", &self.weight)]
    }

    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        match key {
            "weight" => set_checked("RMSNorm", "the weight", &mut self.weight, value),
            _ => Err(no_such_parameter(self, key)),
        }
    }
}

/// Layers applied one after the other: MLX's `nn.Sequential`, whose children are `layers.0`,
/// `layers.1`, ...
#[derive(Default)]
pub struct Sequential {
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

impl Sequential {
    /// The layers in order.
    pub fn new(layers: Vec<Layer>) -> Sequential {
        Sequential { layers }
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut layers = self.layers.iter();
        let Some(first) = layers.next() else {
            return Ok(x.clone());
        };
        layers.try_fold(first.forward(x)?, |h, layer| layer.forward(&h))
    }

    crate::module_children!(layers);
}

display_as_module!(ReLU, SiLU, RMSNorm, Sequential);
