//! mlx-lm's mixture-of-experts layers (`mlx_lm/models/switch_layers.py`): [`SwitchLinear`] and
//! [`QuantizedSwitchLinear`] (experts × out × in, one matrix per expert) and the
//! [`SwitchGLU`] block, as Qwen3-MoE, Mixtral and DeepSeek use them.

use super::linear::quantized_parameters;
use super::module::{display_as_module, no_such_parameter, set_checked, Layer, Module, Quantizable};
use crate::error::{Error, Result};
use crate::ops;
use crate::params::QuantParams;
use crate::tensor::{Quantized, Tensor};

/// mlx-lm sorts (token, expert) pairs by expert from this many pairs (`indices.size >= 64`).
pub const SORT_FROM_PAIRS: usize = 64;

/// Experts' float weights `(num_experts, output_dims, input_dims)` and optional biases
/// `(num_experts, output_dims)`: mlx-lm's `SwitchLinear`. Its quantized form,
/// [`QuantizedSwitchLinear`], is what runs: wgquant has no float `gather_mm` yet, so
/// [`Module::forward_experts`] on the float layer is refused.
#[derive(Clone, Debug)]
pub struct SwitchLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl SwitchLinear {
    /// A layer of experts from their stacked `weight` and optional `bias`.
    ///
    /// # Errors
    /// A weight that is not a floating 3-D tensor; a bias that is not floating or not of shape
    /// `(num_experts, output_dims)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<SwitchLinear> {
        let op = "SwitchLinear";
        if !weight.dtype().is_float() {
            return Err(Error::NotFloatOperand { op, what: "the weight", dtype: weight.dtype() });
        }
        if weight.ndim() != 3 {
            return Err(Error::NdimMismatch { op, what: "the weight", expected: "3", ndim: weight.ndim() });
        }
        if let Some(b) = &bias {
            check_bias(op, b, &weight.shape()[..2])?;
        }
        Ok(SwitchLinear { weight, bias })
    }

    /// The stacked weights, `(num_experts, output_dims, input_dims)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Number of experts.
    pub fn num_experts(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Module for SwitchLinear {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::NeedsIndices { layer: "SwitchLinear" })
    }

    fn forward_experts(&self, _x: &Tensor, _indices: &Tensor, _sorted_indices: bool) -> Result<Tensor> {
        Err(Error::KernelUnavailable {
            op: "SwitchLinear",
            kernel: "gather_mm",
            reason: "wgquant has no float gather_mm yet; quantize the experts (QuantizedSwitchLinear) to run them"
                .into(),
        })
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        let mut out = vec![("weight", &self.weight)];
        out.extend(self.bias.as_ref().map(|b| ("bias", b)));
        out
    }

    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        match (key, &mut self.bias) {
            ("weight", _) => set_checked("SwitchLinear", "the weight", &mut self.weight, value),
            ("bias", Some(bias)) => set_checked("SwitchLinear", "the bias", bias, value),
            _ => Err(no_such_parameter(self, key)),
        }
    }

    fn as_quantizable(&self) -> Option<&dyn Quantizable> {
        Some(self)
    }
}

impl Quantizable for SwitchLinear {
    fn to_quantized(&self, params: QuantParams) -> Result<Layer> {
        Ok(Box::new(QuantizedSwitchLinear::from_switch_linear(self, params)?))
    }
}

/// mlx-lm's `QuantizedSwitchLinear`: experts quantized together (each row of each expert in
/// groups along its input), run by [`crate::gather_qmm`] with the experts as `rhs_indices`.
#[derive(Clone, Debug)]
pub struct QuantizedSwitchLinear {
    weight: Quantized,
    bias: Option<Tensor>,
}

impl QuantizedSwitchLinear {
    /// Quantizes `layer`'s experts with `params` and keeps its bias (mlx-lm's `to_quantized`).
    ///
    /// # Errors
    /// An fp mode (layers are affine for now); those of [`crate::quantize`].
    pub fn from_switch_linear(layer: &SwitchLinear, params: QuantParams) -> Result<QuantizedSwitchLinear> {
        params.require_affine("QuantizedSwitchLinear")?;
        Ok(QuantizedSwitchLinear { weight: ops::quantize(&layer.weight, params)?, bias: layer.bias.clone() })
    }

    /// A layer from stacked quantized experts `(num_experts, output_dims, input_dims * bits /
    /// 32)` with their scales and biases (mlx-lm's checkpoint layout), plus an optional bias.
    ///
    /// # Errors
    /// An fp mode, the checks of [`Quantized::from_parts`], a weight that is not 3-D, a bad bias.
    pub fn new(weight: Quantized, bias: Option<Tensor>) -> Result<QuantizedSwitchLinear> {
        let op = "QuantizedSwitchLinear";
        weight.params.require_affine(op)?;
        weight.validate(op)?;
        if weight.weight.ndim() != 3 {
            return Err(Error::NdimMismatch { op, what: "the weight", expected: "3", ndim: weight.weight.ndim() });
        }
        if let Some(b) = &bias {
            check_bias(op, b, &weight.weight.shape()[..2])?;
        }
        Ok(QuantizedSwitchLinear { weight, bias })
    }

    /// The packed experts with their scales, biases and parameters.
    pub fn weight(&self) -> &Quantized {
        &self.weight
    }

    /// The quantization parameters.
    pub fn params(&self) -> QuantParams {
        self.weight.params
    }

    /// Number of experts.
    pub fn num_experts(&self) -> usize {
        self.weight.weight.shape()[0]
    }
}

impl Module for QuantizedSwitchLinear {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::NeedsIndices { layer: "QuantizedSwitchLinear" })
    }

    /// `gather_qmm(x, w, rhs_indices=indices, transpose=True, sorted_indices)`, plus
    /// `bias[indices]` as a row per product.
    fn forward_experts(&self, x: &Tensor, indices: &Tensor, sorted_indices: bool) -> Result<Tensor> {
        let y = ops::gather_qmm(x, &self.weight, None, Some(indices), true, sorted_indices)?;
        match &self.bias {
            // mlx-lm: `x + expand_dims(bias[indices], -2)`; y is `indices.shape + (M, out)`,
            // and M is 1 in every block mlx-lm builds, so the rows have y's shape.
            Some(bias) => ops::add(&y, &ops::take(bias, indices)?.reshape(y.shape())?),
            None => Ok(y),
        }
    }

    fn own_parameters(&self) -> Vec<(&str, &Tensor)> {
        let mut out = quantized_parameters(&self.weight);
        out.extend(self.bias.as_ref().map(|b| ("bias", b)));
        out
    }

    fn set_parameter(&mut self, key: &str, value: Tensor) -> Result<()> {
        match (key, &mut self.bias) {
            ("bias", Some(bias)) => set_checked("QuantizedSwitchLinear", "the bias", bias, value),
            _ => Err(no_such_parameter(self, key)),
        }
    }

    fn quant_params(&self) -> Option<QuantParams> {
        Some(self.params())
    }
}

/// mlx-lm's `SwitchGLU`: `down(silu(gate(x)) * up(x))` through each token's experts, its
/// (token, expert) pairs sorted by expert from [`SORT_FROM_PAIRS`] pairs (on the GPU,
/// [`ops::gather_sort`]) and the outputs unsorted. The projections are [`Layer`]s, so that
/// [`super::quantize`] swaps [`SwitchLinear`]s for [`QuantizedSwitchLinear`]s.
pub struct SwitchGLU {
    /// Gate projection, `(experts, hidden, dims)`.
    pub gate_proj: Layer,
    /// Up projection, `(experts, hidden, dims)`.
    pub up_proj: Layer,
    /// Down projection, `(experts, dims, hidden)`.
    pub down_proj: Layer,
}

impl SwitchGLU {
    /// mlx-lm's `SwitchGLU.__call__(x, indices)`: `x` `(..., dims)` and `indices` `(...,
    /// top_k)` of `uint32` experts with the same leading axes; the result is `(..., top_k,
    /// dims)`, one output per (token, expert) pair (the caller weighs and sums them).
    ///
    /// # Errors
    /// Mismatched leading axes of x and indices; those of the projections' `forward_experts`
    /// (float experts are refused: see [`SwitchLinear`]).
    pub fn forward_experts(&self, x: &Tensor, indices: &Tensor) -> Result<Tensor> {
        let op = "SwitchGLU";
        let (xs, is) = (x.shape(), indices.shape());
        if xs.is_empty() || is.is_empty() || xs[..xs.len() - 1] != is[..is.len() - 1] {
            return Err(Error::ShapeMismatch {
                op,
                what: "the leading axes of the indices (x's)",
                expected: xs[..xs.len().saturating_sub(1)].to_vec(),
                actual: is[..is.len().saturating_sub(1)].to_vec(),
            });
        }
        let dims = xs[xs.len() - 1];
        let tokens = x.len() / dims.max(1);
        // mlx-lm: x = expand_dims(x, (-2, -3)).
        let x = x.reshape(&[&xs[..xs.len() - 1], &[1, 1, dims]].concat())?;
        let (x, idx, sorted) = if indices.len() >= SORT_FROM_PAIRS {
            let sorted = ops::gather_sort(indices)?;
            // x.flatten(0, -3)[order // M]: one row of x per sorted pair, (pairs, 1, dims).
            let rows = ops::take(&x.reshape(&[tokens, dims])?, &sorted.x_rows)?;
            let rows = rows.reshape(&[indices.len(), 1, dims])?;
            (rows, sorted.indices.clone(), Some(sorted))
        } else {
            (x, indices.clone(), None)
        };
        let do_sort = sorted.is_some();
        let up = self.up_proj.forward_experts(&x, &idx, do_sort)?;
        let gate = self.gate_proj.forward_experts(&x, &idx, do_sort)?;
        let y = self.down_proj.forward_experts(&ops::multiply(&ops::silu(&gate)?, &up)?, &idx, do_sort)?;
        let out_dims = y.shape()[y.ndim() - 1];
        let y = match sorted {
            // _scatter_unsort: x[inv_order], unflattened to indices.shape.
            Some(sorted) => ops::take(&y.reshape(&[indices.len(), out_dims])?, &sorted.inv_order)?,
            None => y,
        };
        // squeeze(-2)
        y.reshape(&[is, &[out_dims]].concat())
    }
}

impl Module for SwitchGLU {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(Error::NeedsIndices { layer: "SwitchGLU" })
    }

    fn forward_experts(&self, x: &Tensor, indices: &Tensor, _sorted_indices: bool) -> Result<Tensor> {
        SwitchGLU::forward_experts(self, x, indices)
    }

    crate::module_children!(gate_proj, up_proj, down_proj);
}

display_as_module!(SwitchLinear, QuantizedSwitchLinear, SwitchGLU);

/// A bias `(num_experts, output_dims)` for a weight whose first axes are `experts_out`.
fn check_bias(op: &'static str, bias: &Tensor, experts_out: &[usize]) -> Result<()> {
    if !bias.dtype().is_float() {
        return Err(Error::NotFloatOperand { op, what: "the bias", dtype: bias.dtype() });
    }
    if bias.shape() != experts_out {
        return Err(Error::ShapeMismatch {
            op,
            what: "the bias",
            expected: experts_out.to_vec(),
            actual: bias.shape().to_vec(),
        });
    }
    Ok(())
}
