//! `convert`: mlx-lm's `convert -q` (and `--dequantize`) as a streaming pipeline.
//!
//! Everything that can be checked is checked before a byte is written: the input directory
//! ([`ModelDir::open`]), the parameters, the recipe, and the whole output plan (every tensor's
//! name, dtype, shape and shard). Then tensors are read one at a time, quantized or
//! dequantized on the GPU, and written to their final offsets, into a temporary directory
//! beside the output that is renamed into place only when complete and synced. The input is
//! only ever read.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use regex::Regex;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::checkpoint::{bits_per_weight, LayerInfo, ModelDir};
use crate::io::config::{LayerQuantization, QuantizationConfig, CONFIG_FILE};
use crate::io::file_dtype::FileDType;
use crate::io::files::{available_bytes, check_dir, open_regular, process_exists};
use crate::io::host::HostTensor;
use crate::io::recipe::Recipe;
use crate::io::safetensors::{SafetensorsWriter, TensorSpec};
use crate::io::shards::{is_weight_file, plan_shards, shard_file_name, write_index, INDEX_FILE, MAX_SHARD_BYTES};
use crate::params::{Mode, QuantParams};
use crate::tensor::Quantized;

/// What a conversion does to the layers.
#[derive(Clone, Debug)]
pub enum Conversion {
    /// Quantize every floating `<path>.weight` of rank >= 2 whose last dimension divides by the
    /// group size (mlx-lm's rule for `Linear` and `Embedding` layers).
    Quantize {
        /// Defaults for every quantized layer (the recipe overrides `bits`).
        params: QuantParams,
        /// A mixed-precision recipe (affine only).
        recipe: Option<Recipe>,
        /// Layers whose path this matches stay in floating point.
        skip: Option<SkipPattern>,
    },
    /// Turn every quantized layer back into a float weight (`mlx_lm.convert --dequantize`).
    Dequantize,
}

/// A regular expression over layer paths (`model.layers.0.mlp`): matching layers stay in
/// floating point (the CLI's `--skip`). The syntax is the `regex` crate's, which is not part of
/// wgquant's API.
#[derive(Clone, Debug)]
pub struct SkipPattern(Regex);

impl SkipPattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] with the parser's message when `pattern` is not a valid regular
    /// expression.
    pub fn new(pattern: &str) -> Result<SkipPattern> {
        Regex::new(pattern).map(SkipPattern).map_err(|e| Error::InvalidOption {
            op: "convert",
            option: "skip",
            value: pattern.to_string(),
            allowed: format!("a regular expression ({e})"),
        })
    }

    /// Whether the layer at `path` is skipped: the pattern matches somewhere in it.
    pub fn is_match(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

impl std::fmt::Display for SkipPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Quantize or dequantize.
    pub conversion: Conversion,
    /// The float dtype of every float tensor written (and so of the scales and biases). `None`
    /// means config.json's `torch_dtype` when it names one, else each tensor's own dtype.
    pub dtype: Option<DType>,
    /// Replace an existing, non-empty output, when it holds nothing but a checkpoint.
    pub force: bool,
    /// The largest shard, in bytes of tensor data (mlx-lm: 5 GiB); at least 1.
    pub max_shard_bytes: u64,
    /// Refuse ([`Error::NonFiniteValues`]) a float tensor holding NaN or infinite values,
    /// read or made by the cast to `dtype` (MLX quantizes them silently into NaN scales).
    pub strict: bool,
    /// Set to stop the conversion at the next tensor (a signal handler's flag): it then fails
    /// with [`Error::Interrupted`] and removes what it wrote.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl ConvertOptions {
    /// Quantize with `params`, no recipe, nothing skipped, 5 GiB shards.
    pub fn quantize(params: QuantParams) -> Self {
        ConvertOptions {
            conversion: Conversion::Quantize { params, recipe: None, skip: None },
            dtype: None,
            force: false,
            max_shard_bytes: MAX_SHARD_BYTES,
            strict: false,
            cancel: None,
        }
    }

    /// Dequantize, 5 GiB shards.
    pub fn dequantize() -> Self {
        ConvertOptions {
            conversion: Conversion::Dequantize,
            dtype: None,
            force: false,
            max_shard_bytes: MAX_SHARD_BYTES,
            strict: false,
            cancel: None,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// The output directory.
    pub output: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Layers quantized (or dequantized).
    pub converted_layers: usize,
    /// Weight files written.
    pub shards: usize,
    /// Bytes of tensor data read.
    pub input_bytes: u64,
    /// Bytes of tensor data written.
    pub output_bytes: u64,
    /// Parameters, as mlx-lm counts them.
    pub parameters: u64,
    /// mlx-lm's bits per weight of the output.
    pub bits_per_weight: f64,
    /// Other files copied from the input (tokenizer, generation config, ...).
    pub copied_files: Vec<String>,
    /// The float tensors that hold NaN or infinite values, in input order.
    pub non_finite: Vec<NonFiniteTensor>,
    /// Wall time.
    pub seconds: f64,
}

/// How one step turns input tensors into output tensors.
enum Action {
    /// Read, cast to the target dtype, write.
    Copy(String),
    /// Quantize the layer's weight.
    Quantize { layer: String, params: QuantParams },
    /// Dequantize the layer's weight.
    Dequantize { layer: String, params: QuantParams },
}

struct Step {
    action: Action,
    outputs: Vec<TensorSpec>,
    input_bytes: u64,
}

/// Converts the model directory `input` into `output`.
///
/// `progress(done, total)` is called after each tensor with bytes of input data.
///
/// Before anything is written: [`Error::InvalidShardSize`]; [`Error::MissingFile`] or
/// [`Error::NotADirectory`] for the input; [`Error::OutputName`], [`Error::OutputOverlapsInput`],
/// [`Error::OutputExists`] (unless `force`), [`Error::OutputNotADirectory`] and
/// [`Error::OutputNotACheckpoint`] (`force` replaces only a checkpoint's files); the errors of
/// [`ModelDir::open`] (which reads only regular files); [`Error::NoTensors`];
/// [`Error::AlreadyQuantized`] when quantizing a quantized model, [`Error::NotQuantized`] when
/// dequantizing a float one; parameter errors ([`QuantParams::validate`]), recipe errors;
/// [`Error::TensorTooLarge`] for an output whose size would overflow;
/// [`Error::InsufficientSpace`]. Then [`Error::Interrupted`] when `cancel` is set, and I/O and
/// device errors. On any error the output is left as it was and the temporary directory is
/// removed; temporary directories that killed runs left beside the output are removed too.
pub fn convert(
    input: &Path,
    output: &Path,
    gpu: &Gpu,
    options: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertReport> {
    let start = Instant::now();
    if options.max_shard_bytes == 0 {
        return Err(Error::InvalidShardSize { value: options.max_shard_bytes });
    }
    let cancelled = || options.cancel.as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed));
    let interrupted = || Error::Interrupted { output: output.to_path_buf() };
    check_dir(input, "the input model directory")?;
    let others = other_files(input)?;
    let target = OutputTarget::check(input, output, options.force, &others)?;
    let model = ModelDir::open(input)?;
    let dtype = options.dtype.or_else(|| model.config().conversion_dtype());
    let (steps, quantization) = plan(&model, &options.conversion, dtype)?;
    let converted_layers = steps.iter().filter(|s| !matches!(s.action, Action::Copy(_))).count();

    let specs: Vec<(TensorSpec, u64)> = steps
        .iter()
        .flat_map(|s| &s.outputs)
        .map(|spec| (spec.clone(), spec.size_in_bytes().expect("sizes are checked by plan")))
        .collect();
    // Saturating: a sum past u64 cannot fit on any disk, and the space check says so.
    let output_bytes = specs.iter().fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes));
    let needed = others.iter().fold(output_bytes, |sum, file| sum.saturating_add(file.bytes));
    if let Some(available) = available_bytes(&target.parent).filter(|&free| free < needed) {
        return Err(Error::InsufficientSpace { path: target.parent.clone(), needed, available });
    }
    let shards = plan_shards(specs, options.max_shard_bytes);
    let shard_count = shards.len();
    if cancelled() {
        return Err(interrupted());
    }
    let temp = TempDir::create(&target)?;
    let mut writers = Vec::with_capacity(shard_count);
    let mut shard_of = BTreeMap::new();
    let metadata = BTreeMap::from([("format".to_string(), "mlx".to_string())]);
    for (i, specs) in shards.into_iter().enumerate() {
        let file_name = shard_file_name(i + 1, shard_count);
        for spec in &specs {
            shard_of.insert(spec.name.clone(), (i, file_name.clone()));
        }
        writers.push(SafetensorsWriter::create(&temp.path.join(&file_name), specs, &metadata)?);
    }

    let total = steps.iter().fold(0u64, |sum, s| sum.saturating_add(s.input_bytes));
    progress(0, total);
    let mut non_finite = Vec::new();
    // A reader thread reads (and casts) the next step's tensors while this one runs on the GPU
    // and is written: at most two steps' inputs are in memory.
    std::thread::scope(|scope| -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(0);
        let (model, steps) = (&model, &steps);
        scope.spawn(move || {
            for step in steps {
                let inputs = read_inputs(model, &step.action, dtype);
                let failed = inputs.is_err();
                // A closed channel means the writer stopped on an error of its own.
                if sender.send(inputs).is_err() || failed {
                    break;
                }
            }
        });
        let mut done = 0;
        for (step, inputs) in steps.iter().zip(receiver) {
            let (inputs, counts) = inputs?;
            if let (true, Some(count)) = (options.strict, counts.first()) {
                return Err(count.to_error());
            }
            non_finite.extend(counts);
            for (name, tensor) in compute(gpu, &step.action, inputs, dtype)? {
                writers[shard_of[&name].0].write(&name, &tensor)?;
            }
            done += step.input_bytes;
            progress(done, total);
            if cancelled() {
                return Err(interrupted());
            }
        }
        Ok(())
    })?;
    for writer in writers {
        writer.finish()?;
    }

    let weight_map: BTreeMap<String, String> = shard_of.into_iter().map(|(name, (_, file))| (name, file)).collect();
    let parameters = model.parameter_count();
    write_index(&temp.path, &weight_map, output_bytes, parameters)?;
    let mut config = model.config().clone();
    config.set_quantization(quantization.as_ref());
    config.write(&temp.path.join(CONFIG_FILE))?;
    let copied_files = copy_other_files(&others, &temp.path)?;
    if cancelled() {
        return Err(interrupted());
    }
    temp.commit(&target)?;

    Ok(ConvertReport {
        output: output.to_path_buf(),
        tensors: weight_map.len(),
        converted_layers,
        shards: shard_count,
        input_bytes: total,
        output_bytes,
        parameters,
        bits_per_weight: bits_per_weight(output_bytes, parameters),
        copied_files,
        non_finite,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The output tensors of every step, in input order, and the output's quantization section.
///
/// Every output's byte count is known to fit (`TensorSpec::size_in_bytes` is `Some`), and so is
/// every quantized layer's unpacked width (`weight.shape[-1] * 32`, which readers compute, is
/// checked by `plan_steps`), so nothing is written that wgquant itself would refuse to read.
fn plan(
    model: &ModelDir,
    conversion: &Conversion,
    dtype: Option<DType>,
) -> Result<(Vec<Step>, Option<QuantizationConfig>)> {
    let weights = model.weights();
    if weights.tensors().next().is_none() {
        return Err(Error::NoTensors { path: model.dir().to_path_buf() });
    }
    let (steps, quantization) = plan_steps(model, conversion, dtype)?;
    for spec in steps.iter().flat_map(|s| &s.outputs) {
        if spec.size_in_bytes().is_none() {
            return Err(Error::TensorTooLarge {
                path: model.dir().to_path_buf(),
                tensor: spec.name.clone(),
                shape: spec.shape.clone(),
            });
        }
    }
    Ok((steps, quantization))
}

fn plan_steps(
    model: &ModelDir,
    conversion: &Conversion,
    dtype: Option<DType>,
) -> Result<(Vec<Step>, Option<QuantizationConfig>)> {
    let weights = model.weights();
    let float_dtype = |d: FileDType| if d.is_float() { dtype.map_or(d, FileDType::from) } else { d };
    let copy = |name: &str| {
        let entry = weights.get(name).expect("planned from the model's own tensors");
        Step {
            action: Action::Copy(name.to_string()),
            outputs: vec![TensorSpec {
                name: name.to_string(),
                dtype: float_dtype(entry.dtype),
                shape: entry.shape.clone(),
            }],
            input_bytes: entry.size_in_bytes,
        }
    };
    let layer_of_weight = |name: &str| {
        name.strip_suffix(".weight").and_then(|path| model.layers().get(path)).filter(|l| l.weight.name == name)
    };

    match conversion {
        Conversion::Quantize { params, recipe, skip } => {
            if model.is_quantized() {
                return Err(Error::AlreadyQuantized { path: model.dir().to_path_buf() });
            }
            params.validate("convert")?;
            let mixed = match recipe {
                Some(_) if params.mode != Mode::Affine => return Err(Error::RecipeNeedsAffine),
                Some(recipe) => Some(recipe.for_layers(model.layers().keys().map(String::as_str))?),
                None => None,
            };
            let mut quantization = QuantizationConfig::new(*params);
            let mut steps = Vec::new();
            for entry in weights.tensors() {
                let layer = layer_of_weight(&entry.name)
                    .filter(|l| is_quantizable(l, float_dtype(l.weight.dtype), params.group_size, skip.as_ref()));
                let Some(layer) = layer else {
                    steps.push(copy(&entry.name));
                    continue;
                };
                let layer_params = match &mixed {
                    Some(mixed) => {
                        let layer_params = params.with_bits(mixed.bits_for(&layer.path));
                        quantization.layers.insert(layer.path.clone(), LayerQuantization::Quantized(layer_params));
                        layer_params
                    }
                    None => *params,
                };
                layer_params.validate("convert")?;
                // Affine scales and biases in the weight's dtype; the fp modes' scales are bytes
                // and they have no biases (mlx-lm's layout).
                let fp = layer_params.mode.is_fp();
                let scale_dtype = if fp { FileDType::U8 } else { float_dtype(entry.dtype) };
                let (k, lead) = entry.shape.split_last().expect("quantizable weights have rank >= 2");
                // The packed width is `k * bits / 32`, and readers unpack `width * 32`.
                if k.checked_mul(32).is_none() {
                    return Err(Error::TensorTooLarge {
                        path: model.dir().to_path_buf(),
                        tensor: entry.name.clone(),
                        shape: entry.shape.clone(),
                    });
                }
                let with_last = |last: usize| lead.iter().copied().chain([last]).collect::<Vec<_>>();
                let path = &layer.path;
                let groups = with_last(k / layer_params.group_size as usize);
                let mut outputs = vec![
                    TensorSpec {
                        name: entry.name.clone(),
                        dtype: FileDType::U32,
                        shape: with_last(layer_params.packed_width(*k)),
                    },
                    TensorSpec { name: format!("{path}.scales"), dtype: scale_dtype, shape: groups.clone() },
                ];
                if !fp {
                    outputs.push(TensorSpec { name: format!("{path}.biases"), dtype: scale_dtype, shape: groups });
                }
                steps.push(Step {
                    action: Action::Quantize { layer: path.clone(), params: layer_params },
                    outputs,
                    input_bytes: entry.size_in_bytes,
                });
            }
            Ok((steps, Some(quantization)))
        }
        Conversion::Dequantize => {
            if !model.is_quantized() {
                return Err(Error::NotQuantized { path: model.dir().to_path_buf() });
            }
            let mut steps = Vec::new();
            for entry in weights.tensors() {
                let quantized = |l: &&LayerInfo| l.quantization.is_some();
                if let Some(layer) = layer_of_weight(&entry.name).filter(quantized) {
                    let params = layer.quantization.expect("filtered on quantized layers");
                    params.validate("convert")?;
                    let scales = layer.scales.as_ref().expect("checked when the model was opened");
                    let companions = layer.scales.iter().chain(&layer.biases);
                    // mx.dequantize's dtype: the scales' (affine), bfloat16 (the fp modes).
                    let out =
                        if params.mode.is_fp() { float_dtype(FileDType::BF16) } else { float_dtype(scales.dtype) };
                    steps.push(Step {
                        action: Action::Dequantize { layer: layer.path.clone(), params },
                        outputs: vec![TensorSpec {
                            name: entry.name.clone(),
                            dtype: out,
                            shape: layer.logical_shape(),
                        }],
                        input_bytes: entry.size_in_bytes + companions.map(|t| t.size_in_bytes).sum::<u64>(),
                    });
                } else if !is_companion_of_quantized(model, &entry.name) {
                    steps.push(copy(&entry.name));
                }
            }
            Ok((steps, None))
        }
    }
}

/// mlx-lm's choice for standard transformers (`Linear`/`Embedding` with `to_quantized`, and
/// `weight.shape[-1] % group_size == 0`), on tensor names: a float weight of rank >= 2, whose
/// dtype after the cast (`dtype`) the GPU quantizes (an uncast `float64` weight stays as it is).
fn is_quantizable(layer: &LayerInfo, dtype: FileDType, group_size: u32, skip: Option<&SkipPattern>) -> bool {
    let weight = &layer.weight;
    dtype.to_dtype().is_some_and(DType::is_float)
        && weight.shape.len() >= 2
        && weight.shape.last().is_some_and(|k| k % group_size as usize == 0)
        && !skip.is_some_and(|re| re.is_match(&layer.path))
}

/// Whether `name` is the scales or biases of a quantized layer (consumed by its dequantize).
fn is_companion_of_quantized(model: &ModelDir, name: &str) -> bool {
    let path = name.strip_suffix(".scales").or_else(|| name.strip_suffix(".biases"));
    path.and_then(|p| model.layers().get(p)).is_some_and(|l| l.quantization.is_some())
}

/// Reads a step's inputs, cast to the target dtype: the tensor to copy, the weight to quantize,
/// or the packed weight (uint32, which the cast leaves alone), scales and biases to dequantize.
/// mlx-lm casts scales and biases before dequantizing, so the result is computed in that dtype.
/// Also returns the non-finite counts of the inputs that have any.
fn read_inputs(
    model: &ModelDir,
    action: &Action,
    dtype: Option<DType>,
) -> Result<(Vec<HostTensor>, Vec<NonFiniteTensor>)> {
    let names = match action {
        Action::Copy(name) => vec![name.clone()],
        Action::Quantize { layer, .. } => vec![format!("{layer}.weight")],
        Action::Dequantize { layer, params } => {
            let parts: &[&str] =
                if params.mode.is_fp() { &["weight", "scales"] } else { &["weight", "scales", "biases"] };
            parts.iter().map(|part| format!("{layer}.{part}")).collect()
        }
    };
    let mut inputs = Vec::with_capacity(names.len());
    let mut counts = Vec::new();
    for name in names {
        let tensor = model.weights().read(&name)?;
        let (tensor, count) = cast_counted(name, tensor, dtype)?;
        inputs.push(tensor);
        counts.extend(count);
    }
    Ok((inputs, counts))
}

// ---- Non-finite values (issue 18 item 3) ----------------------------------------------------

/// A float tensor of the conversion that holds NaN or infinite values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonFiniteTensor {
    /// The tensor's name.
    pub tensor: String,
    /// Its dtype as converted.
    pub dtype: FileDType,
    /// Values NaN or infinite in the input.
    pub non_finite: u64,
    /// Finite input values that the cast to `dtype` made infinite (f32 1e6 to float16).
    pub overflowed: u64,
}

impl std::fmt::Display for NonFiniteTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tensor, dtype) = (&self.tensor, self.dtype);
        write!(f, "tensor \"{tensor}\" ({dtype}): {} values NaN or infinite in the input", self.non_finite)?;
        write!(f, ", {} overflowed to infinity in the cast", self.overflowed)
    }
}

impl NonFiniteTensor {
    /// The strict mode's refusal.
    pub fn to_error(&self) -> Error {
        Error::NonFiniteValues {
            tensor: self.tensor.clone(),
            dtype: self.dtype,
            non_finite: self.non_finite,
            overflowed: self.overflowed,
        }
    }
}

/// `tensor` cast to `dtype` (when given), with its counts when it holds non-finite values. A
/// cast rounds to nearest, so it never makes NaN or infinity finite: every non-finite value
/// after it that was not one before overflowed.
fn cast_counted(
    name: String,
    tensor: HostTensor,
    dtype: Option<DType>,
) -> Result<(HostTensor, Option<NonFiniteTensor>)> {
    let non_finite = tensor.non_finite_count();
    let cast = match dtype {
        Some(dtype) => tensor.cast(dtype)?,
        None => tensor,
    };
    let after = cast.non_finite_count();
    let count = (after > 0).then(|| NonFiniteTensor {
        tensor: name,
        dtype: cast.dtype(),
        non_finite,
        overflowed: after - non_finite,
    });
    Ok((cast, count))
}

/// Runs a step on its inputs: the named output tensors; `dtype` is the conversion's target
/// dtype of float tensors, if any.
fn compute(
    gpu: &Gpu,
    action: &Action,
    inputs: Vec<HostTensor>,
    dtype: Option<DType>,
) -> Result<Vec<(String, HostTensor)>> {
    if let Action::Copy(name) = action {
        return Ok(inputs.into_iter().map(|tensor| (name.clone(), tensor)).collect());
    }
    match (action, inputs.as_slice()) {
        (Action::Quantize { layer, params }, [weight]) => {
            let q = crate::quantize(&weight.to_gpu(gpu)?, *params)?;
            let mut out = vec![
                (format!("{layer}.weight"), HostTensor::from_gpu(&q.weight)?),
                (format!("{layer}.scales"), HostTensor::from_gpu(&q.scales)?),
            ];
            if let Some(biases) = &q.biases {
                out.push((format!("{layer}.biases"), HostTensor::from_gpu(biases)?));
            }
            Ok(out)
        }
        (Action::Dequantize { layer, params }, [weight, scales, rest @ ..]) => {
            let biases = rest.first().map(|b| b.to_gpu(gpu)).transpose()?;
            let q = Quantized::from_parts(weight.to_gpu(gpu)?, scales.to_gpu(gpu)?, biases, *params)?;
            // The scales' dtype (affine: read_inputs cast them to the target dtype); the fp modes'
            // byte scales take the target dtype, or MLX's default, bfloat16.
            let out = if params.mode.is_fp() { dtype } else { None };
            Ok(vec![(format!("{layer}.weight"), HostTensor::from_gpu(&crate::dequantize(&q, out)?)?)])
        }
        _ => unreachable!("read_inputs gives one input per copy or quantize step, two or three per dequantize"),
    }
}

/// The checked output location.
pub(crate) struct OutputTarget {
    /// The output as given.
    path: PathBuf,
    /// Its existing parent directory.
    parent: PathBuf,
    /// Its file name.
    name: String,
    /// Whether an existing checkpoint may be replaced.
    force: bool,
    /// Files an existing output may hold and still be replaced: the input's other files.
    replaceable: Vec<String>,
}

/// Files of the tokenizer and generation settings that Hugging Face and mlx-lm checkpoints
/// carry beside the weights: `--force` may replace them even when the new input lacks them.
const CHECKPOINT_COMPANIONS: [&str; 10] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.json",
    "chat_template.jinja",
];

impl OutputTarget {
    /// Refuses an output that overlaps the input, or that exists and is not an empty
    /// directory; with `force`, one that holds anything but a checkpoint.
    fn check(input: &Path, output: &Path, force: bool, others: &[OtherFile]) -> Result<OutputTarget> {
        let input = input
            .canonicalize()
            .map_err(|_| Error::MissingFile { path: input.to_path_buf(), what: "the input model directory" })?;
        let replaceable = others.iter().map(|f| f.name.clone()).collect();
        let target = OutputTarget::locate(output, force, replaceable)?;
        if target.path.starts_with(&input) || input.starts_with(&target.path) {
            return Err(Error::OutputOverlapsInput { output: output.to_path_buf(), input });
        }
        target.check_existing(output)?;
        Ok(target)
    }

    /// Where `output` goes: its existing parent directory and its name. `replaceable` names
    /// the files besides a checkpoint's own that `force` may replace there.
    pub(crate) fn locate(output: &Path, force: bool, replaceable: Vec<String>) -> Result<OutputTarget> {
        let parent = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent = parent
            .canonicalize()
            .map_err(|_| Error::MissingFile { path: parent.clone(), what: "the output's parent directory" })?;
        let name = output
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::OutputName { path: output.to_path_buf() })?
            .to_string();
        Ok(OutputTarget { path: parent.join(&name), parent, name, force, replaceable })
    }

    /// Whether an output exists to be replaced. It may be an empty directory, or, with `force`,
    /// a directory holding nothing but a checkpoint's files; anything else is refused.
    pub(crate) fn check_existing(&self, shown: &Path) -> Result<bool> {
        let io_error = |source| Error::Io { path: self.path.clone(), source };
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(io_error(source)),
        };
        if !meta.is_dir() {
            let kind = if meta.is_symlink() { "symbolic link" } else { "file, not a directory" };
            return Err(Error::OutputNotADirectory { path: shown.to_path_buf(), kind });
        }
        let mut others = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            if !self.force {
                return Err(Error::OutputExists { path: shown.to_path_buf() });
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map_err(io_error)?.is_file();
            let belongs = name == CONFIG_FILE
                || name == INDEX_FILE
                || is_weight_file(&name)
                || CHECKPOINT_COMPANIONS.contains(&name.as_str())
                || self.replaceable.contains(&name);
            if !is_file || !belongs {
                others.push(if is_file { name } else { format!("{name}/") });
            }
        }
        if !others.is_empty() {
            others.sort();
            return Err(Error::OutputNotACheckpoint { path: shown.to_path_buf(), others });
        }
        Ok(true)
    }
}

/// A temporary directory beside the output, removed on drop unless committed.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    committed: bool,
}

impl TempDir {
    /// Creates `.<output>.wgquant-tmp-<pid>` beside the output, first removing the ones that
    /// processes which no longer run left behind (killed with SIGKILL, or by a power cut).
    pub(crate) fn create(target: &OutputTarget) -> Result<TempDir> {
        let prefix = format!(".{}.wgquant-tmp-", target.name);
        let listing =
            std::fs::read_dir(&target.parent).map_err(|source| Error::Io { path: target.parent.clone(), source })?;
        for entry in listing.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| pid == std::process::id() || !process_exists(pid)) {
                let stale = entry.path();
                std::fs::remove_dir_all(&stale).map_err(|source| Error::Io { path: stale, source })?;
            }
        }
        let path = target.parent.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        Ok(TempDir { path, committed: false })
    }

    /// Syncs the directory and renames it to the output, moving an existing output aside first
    /// and removing it after (only reached with `force` or an empty directory, and checked
    /// again here: the output may have changed while the conversion ran).
    pub(crate) fn commit(mut self, target: &OutputTarget) -> Result<()> {
        sync_dir(&self.path)?;
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let replaced = target.check_existing(&target.path)?;
        let old = target.parent.join(format!(".{}.wgquant-old-{}", target.name, std::process::id()));
        if replaced {
            std::fs::rename(&target.path, &old).map_err(io_error(&target.path))?;
        }
        if let Err(source) = std::fs::rename(&self.path, &target.path) {
            if replaced {
                // Put the old output back; the new one is removed on drop.
                let _ = std::fs::rename(&old, &target.path);
            }
            return Err(Error::Io { path: target.path.clone(), source });
        }
        self.committed = true;
        if replaced {
            std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        sync_dir(&target.parent)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: an error is already on its way to the caller.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Makes a directory's entries durable (the renames inside it), where the platform allows.
fn sync_dir(dir: &Path) -> Result<()> {
    if cfg!(unix) {
        let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
        synced.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    }
    Ok(())
}

/// Weight formats and indexes that are not copied: the output has its own weights.
const NOT_COPIED: [&str; 11] =
    [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".npz", ".h5", ".msgpack", ".onnx", ".index.json"];

/// One of the input's other files, copied into the output.
struct OtherFile {
    name: String,
    source: PathBuf,
    bytes: u64,
}

/// The input's other top-level regular files (tokenizer, generation config, chat template, ...).
/// Subdirectories, hidden files and anything but regular files (a FIFO would block the copy)
/// are not copied.
fn other_files(input: &Path) -> Result<Vec<OtherFile>> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut others = Vec::new();
    for entry in std::fs::read_dir(input).map_err(io_error(input))? {
        let entry = entry.map_err(io_error(input))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let source = entry.path();
        let meta = std::fs::metadata(&source).map_err(io_error(&source))?;
        if !meta.is_file()
            || name.starts_with('.')
            || name == CONFIG_FILE
            || NOT_COPIED.iter().any(|s| name.ends_with(s))
        {
            continue;
        }
        others.push(OtherFile { name, source, bytes: meta.len() });
    }
    others.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(others)
}

/// Copies `others` into `output` and returns their names. A failed read names the input file,
/// a failed write (a full disk) the output file.
fn copy_other_files(others: &[OtherFile], output: &Path) -> Result<Vec<String>> {
    let mut buffer = vec![0u8; 1 << 20];
    for file in others {
        let read_error = |source| Error::Io { path: file.source.clone(), source };
        let destination = output.join(&file.name);
        let write_error = |source| Error::Io { path: destination.clone(), source };
        let mut source = open_regular(&file.source)?;
        let mut copy = std::fs::File::create(&destination).map_err(write_error)?;
        loop {
            let n = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            copy.write_all(&buffer[..n]).map_err(write_error)?;
        }
        copy.sync_all().map_err(write_error)?;
    }
    Ok(others.iter().map(|f| f.name.clone()).collect())
}
