//! The crate's one error type.
//!
//! Where MLX raises an error for the same condition, the message is MLX's, character for
//! character (`mlx/ops.cpp`; checked against mlx 0.32.4 by `tests/fixtures/mlx_errors.txt`),
//! so a user moving between the two sees the same words. Everything else names the op, the
//! bad value and what was allowed.

use crate::dtype::DType;
use crate::params::Mode;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats a shape the way MLX prints it: `(4,100)`.
pub(crate) fn mlx_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("({})", dims.join(","))
}

/// Everything that can go wrong in wgquant. Each variant's message says what its fields hold.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- GPU runtime -------------------------------------------------------------------------
    /// No adapter matched the request (no driver, or a filter excluded every adapter).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter \"{adapter}\": {message}")]
    RequestDevice { adapter: String, message: String },
    /// wgpu reported a validation error while `what` ran.
    #[error("wgpu validation error in {what}: {message}")]
    Validation { what: String, message: String },
    /// The device ran out of memory while `what` ran.
    #[error("GPU out of memory in {what}: {message}")]
    OutOfMemory { what: String, message: String },
    /// A wait on the GPU passed its deadline.
    #[error("{what}: the GPU did not finish within {seconds:.1} s")]
    Timeout { what: String, seconds: f64 },
    /// The device was lost (driver reset, `destroy`, or a panic inside wgpu while polling).
    #[error("the GPU device was lost in {what}: {message}")]
    DeviceLost { what: String, message: String },
    /// Work that a device limit does not allow, caught before wgpu sees it.
    #[error("{op}: {what} needs {value}, but the device allows at most {limit}")]
    ExceedsDeviceLimit { op: &'static str, what: &'static str, value: u64, limit: u64 },
    /// Mapping a buffer for reading failed.
    #[error("{what}: reading back from the GPU failed: {message}")]
    Readback { what: String, message: String },
    /// The device lacks a wgpu feature the call needs.
    #[error("{op}: the device lacks the wgpu feature {feature}")]
    MissingFeature { op: &'static str, feature: &'static str },
    /// Tensors from two different [`Gpu`](crate::Gpu)s were combined.
    #[error("{op}: the tensors live on different GPU devices")]
    DeviceMismatch { op: &'static str },

    // ---- tensors -----------------------------------------------------------------------------
    /// Host data does not have as many elements as the shape says.
    #[error("{op}: {len} elements do not fill shape {}", mlx_shape(.shape))]
    DataLength { op: &'static str, len: usize, shape: Vec<usize> },
    /// `to_vec::<T>()` was asked for a type other than the tensor's.
    #[error("{op}: the tensor holds {actual} but {requested} was requested")]
    DTypeMismatch { op: &'static str, actual: DType, requested: DType },
    /// A shape's element or byte count does not fit in memory arithmetic.
    #[error("{op}: shape {} is too large", mlx_shape(.shape))]
    ShapeOverflow { op: &'static str, shape: Vec<usize> },

    // ---- quantization parameters (MLX's words) -----------------------------------------------
    /// `[quantize] Only real floating types can be quantized but w has type int32.`
    #[error("[{op}] Only real floating types can be quantized but w has type {dtype}.")]
    NotFloatingInput { op: &'static str, dtype: DType },
    /// `[dequantize] Only real floating types are supported but output dtype == int32.`
    #[error("[{op}] Only real floating types are supported but output dtype == {dtype}.")]
    NotFloatingOutput { op: &'static str, dtype: DType },
    /// Scales or biases that are not floating point.
    #[error(
        "[{op}] Only real floating types are supported but scales.dtype() == {scales} and biases.dtype() == {biases}."
    )]
    NotFloatingScales { op: &'static str, scales: DType, biases: DType },
    /// `[quantize] The matrix to be quantized must have at least 2 dimension but it has only 1.`
    #[error("[{op}] The matrix to be {verb} must have at least 2 dimension but it has only {ndim}.")]
    NdimTooSmall { op: &'static str, verb: &'static str, ndim: usize },
    /// The last axis does not split into whole groups.
    #[error(
        "[{op}] The last dimension of the matrix needs to be divisible by the quantization group size {group_size}. However the provided  matrix has shape {}",
        mlx_shape(.shape)
    )]
    NotDivisibleByGroup { op: &'static str, group_size: u32, shape: Vec<usize> },
    /// A group size outside 32, 64, 128.
    #[error(
        "[{op}] The requested group size {group_size} is not supported. The supported group sizes are 32, 64, and 128."
    )]
    UnsupportedGroupSize { op: &'static str, group_size: u32 },
    /// A bit width outside 1, 2, 3, 4, 5, 6, 8.
    #[error(
        "[{op}] The requested number of bits {bits} is not supported. The supported bits are 1, 2, 3, 4, 5, 6 and 8."
    )]
    UnsupportedBits { op: &'static str, bits: u32 },
    /// A mode MLX has that wgquant does not implement yet.
    #[error("[{op}] quantization mode '{mode}' is not yet supported by wgquant (supported: affine)")]
    UnsupportedMode { op: &'static str, mode: Mode },
    /// A mode string that is not one of MLX's.
    #[error("Invalid quantization mode '{0}'.")]
    InvalidMode(String),

    // ---- quantized tensors (MLX's words) -----------------------------------------------------
    /// `[dequantize] The matrix should be given as a uint32`
    #[error("[{op}] The matrix should be given as a uint32")]
    WeightNotU32 { op: &'static str },
    /// `[quantized_matmul] The weight matrix should be uint32 but received float32`
    #[error("[quantized_matmul] The weight matrix should be uint32 but received {dtype}")]
    MatmulWeightNotU32 { dtype: DType },
    /// `[dequantize] Biases must be provided for affine quantization.`
    #[error("[{op}] Biases must be provided for affine quantization.")]
    MissingBiases { op: &'static str },
    /// Scales and biases with different dtypes (MLX would promote; wgquant keeps them equal).
    #[error("[{op}] Scales and biases must have the same dtype but scales are {scales} and biases are {biases}.")]
    ScalesBiasesDType { op: &'static str, scales: DType, biases: DType },
    /// `[dequantize] Shape of scales and biases does not match the matrix`
    #[error("[{op}] Shape of scales and biases does not match the matrix")]
    ScalesBatchShape { op: &'static str },
    /// The packed width and the scales width disagree for the parameters.
    #[error(
        "[{op}] Shape of scales and biases does not match the matrix given the quantization parameters. Provided matrix of shape {} and scales/biases of shape {} with group_size={group_size} and bits={bits}.",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    ScalesShape { op: &'static str, weight: Vec<usize>, scales: Vec<usize>, group_size: u32, bits: u32 },
    /// `[quantized_matmul] Scales and biases should have the same shape. ...`
    #[error(
        "[quantized_matmul] Scales and biases should have the same shape. Received scales with shape {} and biases with {}",
        mlx_shape(.scales),
        mlx_shape(.biases)
    )]
    ScalesBiasesShape { scales: Vec<usize>, biases: Vec<usize> },
    /// `[quantized_matmul] Weight and scales should have the same batch shape. ...`
    #[error(
        "[quantized_matmul] Weight and scales should have the same batch shape. Received weight with shape {}, scales with {}.",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    WeightScalesBatch { weight: Vec<usize>, scales: Vec<usize> },
    /// `[quantized_matmul] The shapes of the weight and scales are incompatible based on bits and group_size. ...`
    #[error(
        "[quantized_matmul] The shapes of the weight and scales are incompatible based on bits and group_size. w.shape() == {} and scales.shape() == {} with group_size={group_size} and bits={bits}",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    WeightScalesIncompatible { weight: Vec<usize>, scales: Vec<usize>, group_size: u32, bits: u32 },
    /// `[quantized_matmul] Last dimension of first input with shape (..., 128) does not match ...`
    #[error(
        "[quantized_matmul] Last dimension of first input with shape (..., {x_last}) does not match the expanded quantized matrix ({rows}, {cols}) computed from shape {} with group_size={group_size}, bits={bits} and transpose={transpose}",
        mlx_shape(.weight)
    )]
    InnerDimMismatch {
        x_last: usize,
        rows: usize,
        cols: usize,
        weight: Vec<usize>,
        group_size: u32,
        bits: u32,
        transpose: bool,
    },
    /// `quantized_matmul` with a rank-0 input (MLX needs `x.shape(-1)`).
    #[error("[quantized_matmul] The first input must have at least 1 dimension but it has 0.")]
    ScalarInput,
    /// Batch dimensions of x and w that do not broadcast (`[broadcast_shapes]` in MLX).
    #[error("[broadcast_shapes] Shapes {} and {} cannot be broadcast.", mlx_shape(.a), mlx_shape(.b))]
    BroadcastShapes { a: Vec<usize>, b: Vec<usize> },
    /// `quantized_matmul` with an input that is not floating point.
    #[error("[quantized_matmul] Only real floating types are supported but x.dtype() == {dtype}.")]
    NotFloatingX { dtype: DType },
}
