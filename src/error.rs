//! The crate's one error type.
//!
//! Where MLX raises an error for the same condition, the message is MLX's, character for
//! character (`mlx/ops.cpp`; checked against mlx 0.32.4 by `tests/fixtures/mlx_errors.txt`),
//! so a user moving between the two sees the same words. Everything else names the op, the
//! bad value and what was allowed.

use std::path::PathBuf;

use crate::dtype::DType;
use crate::io::FileDType;
use crate::params::Mode;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats a shape the way MLX prints it: `(4,100)`.
pub fn mlx_shape(shape: &[usize]) -> String {
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
    /// A kernel was asked for by name but cannot run this call (device or operands).
    #[error("{op}: the {kernel} kernel cannot run this product: {reason}")]
    KernelUnavailable { op: &'static str, kernel: &'static str, reason: String },
    /// Tensors from two different [`Gpu`](crate::Gpu)s were combined.
    #[error("{op}: the tensors live on different GPU devices")]
    DeviceMismatch { op: &'static str },

    // ---- kernel options (kernel layer) ---------------------------------------------------------
    /// An option outside the values it may take (a kernel tuning knob, a demo size), whatever
    /// the device.
    #[error("{op}: {option} = {value} is not supported (allowed: {allowed})")]
    InvalidOption { op: &'static str, option: &'static str, value: String, allowed: String },

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
    /// An fp mode with a group size other than its one (`[quantize] mxfp4 quantization requires
    /// group size 32 but got 64.`).
    #[error("[{op}] {mode} quantization requires group size {expected} but got {got}.")]
    FpGroupSize { op: &'static str, mode: Mode, expected: u32, got: u32 },
    /// An fp mode with a bit width other than its one.
    #[error("[{op}] {mode} quantization requires bits to be {expected} but got {got}.")]
    FpBits { op: &'static str, mode: Mode, expected: u32, got: u32 },
    /// A mode MLX has that wgquant does not implement yet (in this op).
    #[error("[{op}] quantization mode '{mode}' is not yet supported by wgquant (supported: affine)")]
    UnsupportedMode { op: &'static str, mode: Mode },
    /// wgquant's quantized matmul reads x in blocks of 32 along k: transposed nvfp4 weights (the
    /// one mode whose groups are shorter) need k a multiple of 32.
    #[error(
        "[{op}] {mode} weights with transpose=true need the inner dimension K to be a multiple of 32 in wgquant, but K is {k}."
    )]
    FpInnerLength { op: &'static str, mode: Mode, k: usize },
    /// A mode string that is not one of MLX's.
    #[error("Invalid quantization mode '{0}'.")]
    InvalidMode(String),

    // ---- quantized tensors (MLX's words) -----------------------------------------------------
    /// `[dequantize] The matrix should be given as a uint32`
    #[error("[{op}] The matrix should be given as a uint32")]
    WeightNotU32 { op: &'static str },
    /// `[quantized_matmul] The weight matrix should be uint32 but received float32`
    #[error("[{op}] The weight matrix should be uint32 but received {dtype}")]
    MatmulWeightNotU32 { op: &'static str, dtype: DType },
    /// `[dequantize] Biases must be provided for affine quantization.`
    #[error("[{op}] Biases must be provided for affine quantization.")]
    MissingBiases { op: &'static str },
    /// A bit width or group size of zero (`[dequantize] Invalid value for group_size: 0`).
    #[error("[{op}] Invalid value for {name}: {value}")]
    InvalidQuantValue { op: &'static str, name: &'static str, value: u32 },
    /// fp-mode scales that are not `uint8`.
    #[error("[{op}] Scale type must be uint8 but received type {dtype}.")]
    FpScalesNotU8 { op: &'static str, dtype: DType },
    /// Biases given with an fp mode.
    #[error("[{op}] Biases must be null for quantization mode '{mode}'.")]
    FpBiases { op: &'static str, mode: Mode },
    /// fp-mode scales whose batch dimensions differ from the weight's.
    #[error("[{op}] Shape of scales does not match the matrix")]
    FpScalesBatchShape { op: &'static str },
    /// fp-mode scales whose width does not match the packed weight's.
    #[error(
        "[{op}] Shape of scales does not match the matrix given the quantization parameters. Provided matrix of shape {} and scales of shape {}.",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    FpScalesShape { op: &'static str, weight: Vec<usize>, scales: Vec<usize> },
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
        "[{op}] Scales and biases should have the same shape. Received scales with shape {} and biases with {}",
        mlx_shape(.scales),
        mlx_shape(.biases)
    )]
    ScalesBiasesShape { op: &'static str, scales: Vec<usize>, biases: Vec<usize> },
    /// `[quantized_matmul] Weight and scales should have the same batch shape. ...`
    #[error(
        "[{op}] Weight and scales should have the same batch shape. Received weight with shape {}, scales with {}.",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    WeightScalesBatch { op: &'static str, weight: Vec<usize>, scales: Vec<usize> },
    /// `[quantized_matmul] The shapes of the weight and scales are incompatible based on bits and group_size. ...`
    #[error(
        "[{op}] The shapes of the weight and scales are incompatible based on bits and group_size. w.shape() == {} and scales.shape() == {} with group_size={group_size} and bits={bits}",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    WeightScalesIncompatible { op: &'static str, weight: Vec<usize>, scales: Vec<usize>, group_size: u32, bits: u32 },
    /// `[quantized_matmul] Last dimension of first input with shape (..., 128) does not match ...`
    #[error(
        "[{op}] Last dimension of first input with shape (..., {x_last}) does not match the expanded quantized matrix ({rows}, {cols}) computed from shape {} with group_size={group_size}, bits={bits} and transpose={transpose}",
        mlx_shape(.weight)
    )]
    InnerDimMismatch {
        op: &'static str,
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
    #[error("[{op}] Only real floating types are supported but x.dtype() == {dtype}.")]
    NotFloatingX { op: &'static str, dtype: DType },
    /// `[gather_qmm] Got indices with invalid dtype. Indices must be integral.`
    #[error("[{op}] Got indices with invalid dtype. Indices must be integral.")]
    IndicesNotIntegral { op: &'static str },
    /// Integer indices other than `uint32` (MLX casts them; wgquant's kernels read `uint32`).
    #[error("[{op}] Indices must be uint32 (wgquant reads them on the GPU as they are), but got {dtype}.")]
    IndicesNotU32 { op: &'static str, dtype: DType },
    /// Indices into an operand whose batch holds no matrix (MLX would read out of bounds).
    #[error("[{op}] {operand} has no matrices for the indices to name (batch shape {}).", mlx_shape(.batch))]
    EmptyGatherBatch { op: &'static str, operand: &'static str, batch: Vec<usize> },
    /// `[gather_qmm] Input must have at least two dimensions but got input with shape (64).`
    #[error("[{op}] Input must have at least two dimensions but got input with shape {}.", mlx_shape(.shape))]
    GatherNdim { op: &'static str, shape: Vec<usize> },

    // ---- safetensors files -------------------------------------------------------------------
    /// Reading or writing `path` failed.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file the checkpoint needs is absent.
    #[error("{}: not found ({what})", .path.display())]
    MissingFile { path: PathBuf, what: &'static str },
    /// A file shorter than the 8-byte header length.
    #[error("{}: {len} bytes is too short for a safetensors file (the header length alone takes 8)", .path.display())]
    HeaderTooSmall { path: PathBuf, len: u64 },
    /// A header length past the end of the file or over the 100 MB cap.
    #[error(
        "{}: header length {header_len} does not fit (the file has {file_len} bytes; headers are capped at {cap} bytes)",
        .path.display()
    )]
    HeaderLength { path: PathBuf, header_len: u64, file_len: u64, cap: u64 },
    /// A header that is not UTF-8 JSON of the safetensors shape.
    #[error("{}: invalid safetensors header: {message}", .path.display())]
    HeaderJson { path: PathBuf, message: String },
    /// A tensor name that appears twice in one header (other readers silently keep the last).
    #[error("{}: tensor \"{tensor}\" appears twice in the header", .path.display())]
    DuplicateTensor { path: PathBuf, tensor: String },
    /// An empty, over-long or NUL-carrying tensor name (`name` is shown escaped and shortened).
    #[error("{}: invalid tensor name {name:?}: {reason}", .path.display())]
    InvalidTensorName { path: PathBuf, name: String, reason: &'static str },
    /// A dtype string wgquant does not read.
    #[error(
        "{}: tensor \"{tensor}\" has dtype {dtype}, which wgquant does not read (it reads every whole-byte dtype: BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64)",
        .path.display()
    )]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },
    /// Data offsets that overlap the previous tensor, leave a hole, or end before they start.
    #[error(
        "{}: tensor \"{tensor}\" has data offsets [{start}, {end}], but it must start at {expected_start}, where the previous tensor ends, and must not end before it starts (no overlaps, no holes)",
        .path.display()
    )]
    InvalidOffsets { path: PathBuf, tensor: String, start: u64, end: u64, expected_start: u64 },
    /// A shape whose element or byte count overflows.
    #[error("{}: tensor \"{tensor}\" has shape {}, whose size overflows", .path.display(), mlx_shape(.shape))]
    TensorTooLarge { path: PathBuf, tensor: String, shape: Vec<usize> },
    /// Offsets that do not span the bytes the dtype and shape need.
    #[error(
        "{}: tensor \"{tensor}\" ({dtype} {}) needs {expected} bytes, but its data offsets span {actual}",
        .path.display(),
        mlx_shape(.shape)
    )]
    TensorSize { path: PathBuf, tensor: String, dtype: FileDType, shape: Vec<usize>, expected: u64, actual: u64 },
    /// A file shorter than its header says.
    #[error("{}: the header describes {expected} bytes but the file has {actual} (truncated)", .path.display())]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
    /// A file longer than its header says.
    #[error("{}: the header describes {expected} bytes but the file has {actual} (trailing bytes)", .path.display())]
    TrailingBytes { path: PathBuf, expected: u64, actual: u64 },

    // ---- checkpoints: the file set, config.json, the quantization rule ----------------------
    /// `config.json` is not JSON, or a field has the wrong type.
    #[error("{}: {message}", .path.display())]
    ConfigJson { path: PathBuf, message: String },
    /// `model.safetensors.index.json` is not JSON of the expected shape.
    #[error("{}: {message}", .path.display())]
    IndexJson { path: PathBuf, message: String },
    /// The index lists a shard that is not there.
    #[error("{}: lists shard \"{shard}\", which does not exist", .index.display())]
    MissingShard { index: PathBuf, shard: String },
    /// A weight file that the index does not list (a stale shard would otherwise load silently).
    #[error("{}: weight file \"{shard}\" is not listed in model.safetensors.index.json", .dir.display())]
    UnindexedShard { dir: PathBuf, shard: String },
    /// A tensor in two shards.
    #[error("tensor \"{tensor}\" is in both {} and {}", .first.display(), .second.display())]
    DuplicateWeight { tensor: String, first: PathBuf, second: PathBuf },
    /// The index maps a tensor to a shard that does not hold it.
    #[error("{}: maps \"{tensor}\" to {shard}, which does not hold it", .index.display())]
    IndexMismatch { index: PathBuf, tensor: String, shard: String },
    /// A shard holds a tensor that the index does not map to it.
    #[error("{}: holds \"{tensor}\", which model.safetensors.index.json does not map to this file", .path.display())]
    UnindexedTensor { path: PathBuf, tensor: String },
    /// A per-layer `"quantization"` entry for a layer with no `<layer>.weight`.
    #[error("config.json: \"quantization\" has an entry for \"{layer}\", but the checkpoint has no tensor \"{layer}.weight\"")]
    UnknownLayerEntry { layer: String },
    /// A tensor the checkpoint or the caller needs is not there.
    #[error("tensor \"{tensor}\" is missing ({reason})")]
    MissingTensor { tensor: String, reason: &'static str },
    /// A tensor that no layer claims.
    #[error("tensor \"{tensor}\" is unexpected ({reason})")]
    UnexpectedTensor { tensor: String, reason: &'static str },
    /// Tensors left over after a strict load.
    #[error("{} tensors were not used by the model: {}", .tensors.len(), .tensors.join(", "))]
    UnusedTensors { tensors: Vec<String> },
    /// A tensor whose dtype does not fit its role.
    #[error("tensor \"{tensor}\" is {got}, but {expected} is expected ({role})")]
    TensorDType { tensor: String, expected: &'static str, got: FileDType, role: &'static str },
    /// A tensor whose shape is not the one expected.
    #[error("tensor \"{tensor}\" has shape {} but shape {} is expected", mlx_shape(.got), mlx_shape(.expected))]
    TensorShape { tensor: String, expected: Vec<usize>, got: Vec<usize> },
    /// A packed weight with fewer than two dimensions.
    #[error("tensor \"{tensor}\" has shape {}, but a quantized weight has at least 2 dimensions", mlx_shape(.shape))]
    QuantizedRank { tensor: String, shape: Vec<usize> },
    /// A quantized layer whose weight and scales do not fit its parameters (MLX's arithmetic).
    #[error(
        "layer \"{layer}\": weight {} and scales {} do not fit group_size={group_size} and bits={bits}: weight.shape[-1] * 32 / bits = {weight_k} but scales.shape[-1] * group_size = {scales_k}",
        mlx_shape(.weight),
        mlx_shape(.scales)
    )]
    QuantizedShape {
        layer: String,
        weight: Vec<usize>,
        scales: Vec<usize>,
        group_size: u32,
        bits: u32,
        weight_k: usize,
        scales_k: usize,
    },

    // ---- conversion ------------------------------------------------------------------------
    /// The output directory exists and is not empty.
    #[error("{}: the output exists and is not an empty directory (pass --force to replace it)", .path.display())]
    OutputExists { path: PathBuf },
    /// Output and input are the same directory or one holds the other.
    #[error("{}: the output overlaps the input {} (wgquant never writes into its input)", .output.display(), .input.display())]
    OutputOverlapsInput { output: PathBuf, input: PathBuf },
    /// Quantizing a checkpoint that is already quantized.
    #[error("{}: the checkpoint is already quantized; convert it with --dequantize first", .path.display())]
    AlreadyQuantized { path: PathBuf },
    /// `Quant predicates only support 'affine' quantization.` (mlx-lm)
    #[error("Quant predicates only support 'affine' quantization.")]
    RecipeNeedsAffine,
    // ---- float ops (matmul, take, rms_norm, softmax, element-wise) --------------------------
    /// An operand that must be floating point is not.
    #[error("[{op}] {what} must be a real floating type but has type {dtype}.")]
    NotFloatOperand { op: &'static str, what: &'static str, dtype: DType },
    /// A dtype the op has no kernel for.
    #[error("[{op}] {what} of type {dtype} is not supported (supported: {supported}).")]
    UnsupportedDType { op: &'static str, what: &'static str, dtype: DType, supported: &'static str },
    /// An operand with the wrong number of dimensions.
    #[error("[{op}] {what} must have {expected} dimensions but has {ndim}.")]
    NdimMismatch { op: &'static str, what: &'static str, expected: &'static str, ndim: usize },
    /// An operand whose shape does not fit the others.
    #[error("[{op}] {what} must have shape {} but has shape {}.", mlx_shape(.expected), mlx_shape(.actual))]
    ShapeMismatch { op: &'static str, what: &'static str, expected: Vec<usize>, actual: Vec<usize> },
    /// The contraction dimensions of a matrix product differ (MLX's `[matmul]` wording).
    #[error(
        "[{op}] Last dimension of first input with shape {} must match the {} dimension of the weight with shape {} (transpose={transpose}).",
        mlx_shape(.x),
        if *.transpose { "last" } else { "first" },
        mlx_shape(.w)
    )]
    MatmulShapes { op: &'static str, x: Vec<usize>, w: Vec<usize>, transpose: bool },
    /// Operands with different dtypes where the op needs one.
    #[error("[{op}] {what} must share one dtype but have {dtypes:?}.")]
    DTypesDiffer { op: &'static str, what: &'static str, dtypes: Vec<DType> },
    /// A size that must split evenly does not.
    #[error("[{op}] {what} {value} is not divisible by {divisor}.")]
    NotDivisible { op: &'static str, what: &'static str, value: usize, divisor: usize },
    /// Causal attention with more queries than keys.
    #[error("[{op}] causal attention needs at least as many keys ({keys}) as queries ({queries}).")]
    CausalQueriesExceedKeys { op: &'static str, queries: usize, keys: usize },

    // ---- nn: module trees and nn::quantize (MLX's and mlx-lm's words) ------------------------
    /// The predicate asked to quantize a module that has no `to_quantized` (MLX's `ValueError`).
    #[error("Unable to quantize model of type {type_name} (at \"{path}\")")]
    NotQuantizable { path: String, type_name: String },
    /// A module to be replaced is held by its concrete type, not in a [`Layer`](crate::nn::Layer) slot.
    #[error("Unable to replace the {type_name} at \"{path}\": its parent holds it by type; hold it in a `Layer` (Box<dyn Module>) to let it be swapped")]
    NotReplaceable { path: String, type_name: String },
    /// A module asked to set an array it does not have (MLX's `load_weights`: `Module does not
    /// have parameter named ...`).
    #[error("Module {type_name} does not have parameter named \"{key}\"")]
    NoSuchParameter { key: String, type_name: String },
    /// [`Module::forward_experts`](crate::nn::Module::forward_experts) on a layer without experts.
    #[error("{layer} is not a layer of experts: it takes no indices")]
    TakesNoIndices { layer: &'static str },
    /// [`Module::forward`](crate::nn::Module::forward) on a layer of experts, which needs indices.
    #[error("{layer} is a layer of experts: call it with indices (Module::forward_experts)")]
    NeedsIndices { layer: &'static str },
    /// An error raised while converting the module at `path` (for instance MLX's `[quantize] ...
    /// divisible ...` message for a layer whose input size does not split into groups).
    #[error("{path}: {source}")]
    AtPath {
        path: String,
        #[source]
        source: Box<Error>,
    },
    /// A module of an unexpected type where a model needs a particular one (a tied head needs an
    /// embedding).
    #[error("\"{path}\" holds a {found}, but {expected} was expected")]
    UnexpectedModule { path: String, expected: &'static str, found: String },
    /// mlx-lm's error for a mixed recipe on a model without `down_proj` layers.
    #[error("Model does not have expected keys for mixed quant.")]
    MixedQuantKeys,
    /// mlx-lm's error for an unknown recipe name.
    #[error("Invalid quant recipe {0}")]
    InvalidRecipe(String),

    // ---- GPU runtime: environment and batches (runtime area) ---------------------------------
    /// An environment variable wgquant reads holds a value it does not know.
    #[error("{variable}={value} is not allowed (expected {allowed})")]
    InvalidEnvironment { variable: &'static str, value: String, allowed: &'static str },
    /// A caller's buffer is smaller than the tensor it should hold.
    #[error("{op}: the buffer holds {size} bytes but the tensor needs {needed}")]
    BufferTooSmall { op: &'static str, size: u64, needed: u64 },
    /// A caller's buffer lacks the usages tensors need.
    #[error("{op}: the buffer's usage is {usage}, but tensors need STORAGE | COPY_SRC | COPY_DST")]
    BufferUsage { op: &'static str, usage: String },

    // ---- io: checkpoint dtypes and values (branch ioa) ---------------------------------------
    /// A tensor of a type GPU tensors do not have, asked onto the GPU.
    #[error("{dtype} tensors cannot go to the GPU (GPU tensors are float32, float16, bfloat16, uint32 or uint8)")]
    NotOnGpu { dtype: FileDType },
    /// A conversion in strict mode met NaN or infinite values, in the input or made by the cast.
    #[error("tensor \"{tensor}\": {non_finite} values are NaN or infinite in the input and {overflowed} overflowed to infinity in the cast to {dtype} (strict mode refuses them)")]
    NonFiniteValues { tensor: String, dtype: FileDType, non_finite: u64, overflowed: u64 },

    // ---- hostile and careless input: files, outputs, conversion requests --------------------
    /// A path that must be a regular file is a FIFO, socket, device or directory (reading one
    /// could block forever).
    #[error("{}: is a {kind}, not a regular file (wgquant reads only regular files)", .path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },
    /// A path that must be a directory exists but is something else.
    #[error("{}: is a {kind}, not a directory ({what})", .path.display())]
    NotADirectory { path: PathBuf, what: &'static str, kind: &'static str },
    /// `--force` was given, but the existing output holds more than a checkpoint.
    #[error(
        "{}: --force replaces only a checkpoint (config.json, weights, their index, tokenizer and other files the input also has), but the output also holds {}; move them away or choose another output",
        .path.display(),
        .others.join(", ")
    )]
    OutputNotACheckpoint { path: PathBuf, others: Vec<String> },
    /// An output path that does not end in a name (`..`, `/`).
    #[error("{}: the output must end in a directory name", .path.display())]
    OutputName { path: PathBuf },
    /// The existing output is not a directory, so `--force` cannot treat it as a checkpoint.
    #[error("{}: the output exists and is a {kind}; --force replaces only a checkpoint directory", .path.display())]
    OutputNotADirectory { path: PathBuf, kind: &'static str },
    /// The conversion was cancelled ([`ConvertOptions::cancel`](crate::io::ConvertOptions)).
    #[error("{}: the conversion was interrupted; nothing was written", .output.display())]
    Interrupted { output: PathBuf },
    /// A checkpoint without a single tensor.
    #[error("{}: the checkpoint has no tensors, so there is nothing to convert", .path.display())]
    NoTensors { path: PathBuf },
    /// `--dequantize` on a checkpoint that is not quantized.
    #[error("{}: the checkpoint is not quantized, so --dequantize has nothing to do", .path.display())]
    NotQuantized { path: PathBuf },
    /// A shard size limit of zero bytes.
    #[error("convert: max_shard_bytes must be at least 1, but is {value}")]
    InvalidShardSize { value: u64 },
    /// The output's file system has less free space than the conversion writes.
    #[error(
        "{}: the conversion writes {needed} bytes ({:.1} MB), but only {available} bytes ({:.1} MB) are free there",
        .path.display(),
        *.needed as f64 / 1e6,
        *.available as f64 / 1e6
    )]
    InsufficientSpace { path: PathBuf, needed: u64, available: u64 },
    /// A module with no parameters and no declared children, in a tree given to
    /// `nn::quantize`: most likely a forgotten `module_children!`, which would hide its layers.
    #[error(
        "\"{path}\": {type_name} has no parameters and declares no children; list them with `wgquant::module_children!(...)` in its `impl Module` (`module_children!()` for a layer that has none)"
    )]
    UndeclaredChildren { path: String, type_name: String },
    /// An I/O error without a path (what `?` makes of a [`std::io::Error`] in caller code).
    #[error("I/O error: {0}")]
    OtherIo(#[from] std::io::Error),
}
