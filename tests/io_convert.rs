//! Conversion and loading on the GPU: round trips through `convert` and `load_checkpoint`
//! (single file and sharded, recipes, `--dtype`, `--skip`, `--dequantize`), checkpoints written
//! by real MLX, and the output's crash safety.

mod common;
mod io_common;

use std::path::Path;

use common::first_bit_difference;
use io_common::{fingerprint, listing, temp_dir, TinyModel};
use wgquant::io::{
    convert, load_checkpoint, Conversion, ConvertOptions, HostTensor, LayerQuantization, LayerWeight, ModelDir, Recipe,
    SafetensorsFile, SkipPattern,
};
use wgquant::{reference, DType, Error, Gpu, QuantParams};

fn quiet(_: u64, _: u64) {}

/// Converts `input` into `<parent>/out` and checks the input was not touched and nothing but
/// the output was left beside it.
fn convert_checked(gpu: &Gpu, input: &Path, options: &ConvertOptions) -> wgquant::Result<std::path::PathBuf> {
    let parent = input.parent().unwrap();
    let output = parent.join("out");
    let before = fingerprint(input);
    let result = convert(input, &output, gpu, options, &mut quiet);
    assert_eq!(fingerprint(input), before, "the input was modified");
    let expected: Vec<&str> = if result.is_ok() { vec!["in", "out"] } else { vec!["in"] };
    assert_eq!(listing(parent), expected, "left beside the output");
    result.map(|_| output)
}

/// Host copies of every tensor of a model directory, by name.
fn read_all(dir: &Path) -> std::collections::BTreeMap<String, HostTensor> {
    let model = ModelDir::open(dir).unwrap();
    model.weights().tensors().map(|t| (t.name.clone(), model.weights().read(&t.name).unwrap())).collect()
}

/// Checks every layer of `output` against the float model it came from: quantized layers bit
/// for bit against the CPU reference (MLX's semantics) and within one quantization step of the
/// original; float tensors equal to the originals cast to `dtype`.
fn check_against_original(
    gpu: &Gpu,
    model: &TinyModel,
    output: &Path,
    dtype: DType,
    params_of: &dyn Fn(&str) -> Option<QuantParams>,
) {
    let originals = model.tensors();
    let mut checkpoint = load_checkpoint(output, gpu).unwrap();
    let as_stored = |values: &[f32]| common::round_to(&common::round_to(values, model.dtype), dtype);
    for (name, shape, values) in &originals {
        let Some(path) = name.strip_suffix(".weight") else { continue };
        let values = as_stored(values);
        let layer = checkpoint.take_layer(path).unwrap();
        layer.expect_shape(path, shape).unwrap();
        let bias = originals.iter().find(|(n, _, _)| *n == format!("{path}.bias"));
        match (&layer.bias, bias) {
            (Some(got), Some((_, _, want))) => {
                assert_eq!(first_bit_difference(&common::download(got), &as_stored(want)), None, "{path}.bias");
            }
            (None, None) => {}
            _ => panic!("{path}: bias"),
        }
        let k = *shape.last().unwrap();
        match (&layer.weight, params_of(path)) {
            (LayerWeight::Quantized(q), Some(params)) => {
                assert_eq!(q.params, params, "{path}");
                let host = reference::quantize(&values, k, params, dtype).unwrap();
                assert_eq!(q.weight.to_vec::<u32>().unwrap(), host.weight, "{path}: packed words");
                assert_eq!(q.scales.dtype(), dtype, "{path}: scales dtype");
                let scales = common::download(&q.scales);
                assert_eq!(first_bit_difference(&scales, &host.scales), None, "{path}: scales");
                let biases = common::download(q.biases.as_ref().unwrap());
                assert_eq!(first_bit_difference(&biases, &host.biases), None, "{path}: biases");
                // MLX's test_quantize_dequantize bound: |w - w_hat| <= |scale|, plus the
                // rounding of w_hat to the scales' dtype.
                let w_hat = common::download(&wgquant::dequantize(q, Some(DType::F32)).unwrap());
                for (i, (w, w_hat)) in values.iter().zip(&w_hat).enumerate() {
                    let scale = scales[i / params.group_size as usize].abs();
                    assert!((w - w_hat).abs() <= scale + w.abs() / 128.0 + 1e-6, "{path}[{i}]: {w} vs {w_hat}");
                }
            }
            (LayerWeight::Float(w), None) => {
                assert_eq!(w.dtype(), dtype, "{path}");
                assert_eq!(first_bit_difference(&common::download(w), &values), None, "{path}");
            }
            (weight, params) => panic!("{path}: loaded {weight:?}, expected quantization {params:?}"),
        }
    }
    checkpoint.finish().unwrap();
}

/// What `convert` quantizes in a [`TinyModel`] with group size 64: every rank-2 weight but
/// `model.odd_proj` (last dimension 48).
fn default_rule(params: QuantParams) -> impl Fn(&str) -> Option<QuantParams> {
    move |path: &str| (!path.ends_with("norm") && path != "model.odd_proj").then_some(params)
}

#[test]
fn quantized_round_trip_single_file() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let model = TinyModel::default();
    model.write(&dir.path().join("in"));
    let params = QuantParams::affine(64, 4);
    let output = convert_checked(&gpu, &dir.path().join("in"), &ConvertOptions::quantize(params)).unwrap();

    let mut names = listing(&output);
    names.sort();
    assert_eq!(
        names,
        ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    );
    let file = SafetensorsFile::open(&output.join("model.safetensors")).unwrap();
    assert_eq!(file.metadata().get("format").map(String::as_str), Some("mlx"));

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("config.json")).unwrap()).unwrap();
    let section = serde_json::json!({"group_size": 64, "bits": 4, "mode": "affine"});
    assert_eq!(config["quantization"], section);
    assert_eq!(config["quantization_config"], section);
    assert_eq!(config["model_type"], "llama", "other keys are kept");
    assert_eq!(config["rms_norm_eps"], 1e-5);

    check_against_original(&gpu, &model, &output, DType::BF16, &default_rule(params));
    let opened = ModelDir::open(&output).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], opened.weights().data_bytes());
    assert_eq!(index["metadata"]["total_parameters"], opened.parameter_count());
    assert_eq!(gpu.take_uncaptured_errors(), Vec::<String>::new());
}

#[test]
fn quantized_round_trip_sharded_with_sorted_index() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let model = TinyModel { dtype: DType::F16, ..TinyModel::default() };
    model.write(&dir.path().join("in"));
    let params = QuantParams::affine(32, 3);
    let options = ConvertOptions { max_shard_bytes: 8_000, ..ConvertOptions::quantize(params) };
    let output = convert_checked(&gpu, &dir.path().join("in"), &options).unwrap();

    let shards: Vec<String> = listing(&output).into_iter().filter(|n| n.starts_with("model-")).collect();
    assert!(shards.len() > 3, "{shards:?}");
    assert_eq!(shards[0], format!("model-00001-of-{:05}.safetensors", shards.len()));
    for shard in &shards {
        let file = SafetensorsFile::open(&output.join(shard)).unwrap();
        let bytes: u64 = file.tensors().iter().map(|t| t.size_in_bytes).sum();
        assert!(bytes <= 8_000 || file.tensors().len() == 1, "{shard}: {bytes} bytes");
    }
    let index = std::fs::read_to_string(output.join("model.safetensors.index.json")).unwrap();
    let keys: Vec<&str> =
        index.lines().filter(|l| l.contains(".safetensors\"")).map(|l| l.trim().split('"').nth(1).unwrap()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "weight_map is sorted");
    assert_eq!(keys.len(), ModelDir::open(&output).unwrap().weights().tensors().count());
    check_against_original(&gpu, &model, &output, DType::F16, &default_rule(params));
}

#[test]
fn recipe_dtype_and_skip_follow_mlx_lm() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let model = TinyModel { layers: 4, ..TinyModel::default() };
    model.write(&dir.path().join("in"));
    let params = QuantParams::affine(64, 4);
    let options = ConvertOptions {
        conversion: Conversion::Quantize {
            params,
            recipe: Some(Recipe::Mixed3_6),
            skip: Some(SkipPattern::new(r"layers\.2\.mlp").unwrap()),
        },
        dtype: Some(DType::F16),
        ..ConvertOptions::quantize(params)
    };
    let output = convert_checked(&gpu, &dir.path().join("in"), &options).unwrap();
    let opened = ModelDir::open(&output).unwrap();
    let section = opened.quantization().unwrap();
    assert_eq!(section.defaults, params);

    let paths: Vec<String> =
        model.tensors().iter().filter_map(|(n, _, _)| n.strip_suffix(".weight").map(str::to_string)).collect();
    let rule = Recipe::Mixed3_6.for_layers(paths.iter().map(String::as_str)).unwrap();
    let expected = |path: &str| {
        let skipped = path.contains("layers.2.mlp") || path.ends_with("norm") || path == "model.odd_proj";
        (!skipped).then(|| params.with_bits(rule.bits_for(path)))
    };
    for path in &paths {
        let entry = section.layers.get(path).copied();
        assert_eq!(entry, expected(path).map(LayerQuantization::Quantized), "{path}");
    }
    // L = 4: 4/8 = 0 and 7*4/8 = 3, so layer 3 (and lm_head) use 6 bits.
    assert_eq!(section.layers["model.layers.3.mlp.down_proj"], LayerQuantization::Quantized(params.with_bits(6)));
    assert_eq!(section.layers["model.layers.1.self_attn.v_proj"], LayerQuantization::Quantized(params.with_bits(3)));
    check_against_original(&gpu, &model, &output, DType::F16, &expected);
}

#[test]
fn dequantize_turns_a_quantized_checkpoint_back_into_floats() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    TinyModel::default().write(&dir.path().join("in"));
    let quantized = dir.path().join("quantized");
    convert(
        &dir.path().join("in"),
        &quantized,
        &gpu,
        &ConvertOptions::quantize(QuantParams::affine(64, 2)),
        &mut quiet,
    )
    .unwrap();
    let q_tensors = read_all(&quantized);
    let q_model = ModelDir::open(&quantized).unwrap();

    for dtype in [None, Some(DType::F32)] {
        let output = dir.path().join(format!("float-{dtype:?}"));
        let options = ConvertOptions { dtype, ..ConvertOptions::dequantize() };
        let before = fingerprint(&quantized);
        convert(&quantized, &output, &gpu, &options, &mut quiet).unwrap();
        assert_eq!(fingerprint(&quantized), before);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(output.join("config.json")).unwrap()).unwrap();
        assert!(config.get("quantization").is_none() && config.get("quantization_config").is_none());
        let floats = read_all(&output);
        for (path, layer) in q_model.layers() {
            let out = &floats[&format!("{path}.weight")];
            assert_eq!(out.shape(), layer.logical_shape(), "{path}");
            let Some(params) = layer.quantization else { continue };
            // mlx-lm casts scales and biases to --dtype first, then dequantizes in that dtype.
            let out_dtype = dtype.unwrap_or(DType::BF16);
            let cast =
                |name: &str| common::round_to(&q_tensors[&format!("{path}.{name}")].to_f32().unwrap(), out_dtype);
            let words = q_tensors[&format!("{path}.weight")].values::<u32>();
            let expected = reference::dequantize(words, &cast("scales"), &cast("biases"), params, out_dtype, out_dtype);
            assert_eq!(out.dtype(), out_dtype);
            assert_eq!(first_bit_difference(&out.to_f32().unwrap(), &expected), None, "{path}");
        }
        assert!(!floats.keys().any(|n| n.ends_with(".scales") || n.ends_with(".biases")));
    }
}

/// The fp modes in mlx-lm's layout (`mlx_lm.convert --q-mode`): `weight` (uint32) and `scales`
/// (uint8) per quantized layer, no `biases`, `"mode"` in the quantization section; packed words
/// and scale bytes bit for bit those of the CPU twin (itself MLX's, tests/mlx_parity.rs); and
/// back to floats, bfloat16 as `mx.dequantize` gives them, equal to the twin's dequantize.
#[test]
fn fp_modes_round_trip_in_mlx_lm_layout() {
    let gpu = gpu_or_skip!();
    let model = TinyModel::default();
    for mode in wgquant::params::FP_MODES {
        let dir = temp_dir();
        model.write(&dir.path().join("in"));
        let params = QuantParams::for_mode(mode);
        let output = convert_checked(&gpu, &dir.path().join("in"), &ConvertOptions::quantize(params)).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(output.join("config.json")).unwrap()).unwrap();
        let (group_size, bits) = mode.defaults();
        let section = serde_json::json!({"group_size": group_size, "bits": bits, "mode": mode.as_str()});
        assert_eq!(config["quantization"], section, "{mode}");
        let tensors = read_all(&output);
        assert!(!tensors.keys().any(|n| n.ends_with(".biases")), "{mode}: biases written");
        let mut quantized = 0;
        for (name, shape, values) in model.tensors() {
            let Some(path) = name.strip_suffix(".weight") else { continue };
            let Some(scales) = tensors.get(&format!("{path}.scales")) else { continue };
            let k = *shape.last().unwrap();
            let values = common::round_to(&values, model.dtype);
            let host = reference::fp_quantize(&values, k, params, model.dtype).unwrap();
            assert_eq!(tensors[&name].values::<u32>(), &host.weight[..], "{mode} {path}: packed words");
            assert_eq!(scales.values::<u8>(), &host.scales[..], "{mode} {path}: scale bytes");
            quantized += 1;
        }
        // Every rank-2 weight (odd_proj's 48 columns take nvfp4's groups of 16 only).
        assert_eq!(quantized, 2 * 7 + 2 + usize::from(mode == wgquant::Mode::Nvfp4), "{mode}");
        let mut checkpoint = load_checkpoint(&output, &gpu).unwrap();
        let layer = checkpoint.take_layer("model.layers.0.mlp.down_proj").unwrap();
        let LayerWeight::Quantized(q) = &layer.weight else { panic!("{mode}: down_proj not quantized") };
        assert_eq!((q.params, q.scales.dtype(), q.biases.is_none()), (params, DType::U8, true), "{mode}");

        let floats = dir.path().join("float");
        convert(&output, &floats, &gpu, &ConvertOptions::dequantize(), &mut quiet).unwrap();
        let floats = read_all(&floats);
        for (name, tensor) in &floats {
            let Some(scales) = tensors.get(&format!("{}.scales", name.trim_end_matches(".weight"))) else { continue };
            let want =
                reference::fp_dequantize(tensors[name].values::<u32>(), scales.values::<u8>(), params, DType::BF16);
            assert_eq!(tensor.dtype(), DType::BF16, "{mode} {name}");
            assert_eq!(first_bit_difference(&tensor.to_f32().unwrap(), &want), None, "{mode} {name}");
        }
    }
}

/// The MLX-written checkpoints to test: the committed one, and the one `.ci/run` has just made
/// with `tests/interop/mlx_interop.py make-quantized` when it could install MLX.
fn mlx_checkpoints() -> Vec<std::path::PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlx_checkpoint")];
    if let Some(dir) = std::env::var_os("WGQUANT_MLX_CHECKPOINT") {
        dirs.push(dir.into());
    }
    dirs
}

#[test]
fn checkpoints_written_by_mlx_load_and_run() {
    let gpu = gpu_or_skip!();
    for dir in mlx_checkpoints() {
        eprintln!("MLX checkpoint: {}", dir.display());
        let expected = SafetensorsFile::open(&dir.join("mlx_expected.safetensors")).unwrap();
        let checkpoint = load_checkpoint(&dir, &gpu).unwrap();
        let section = checkpoint.quantization.clone().unwrap();
        assert_eq!(section.params_for("model.layers.0.mlp.down_proj", true), Some(QuantParams::affine(128, 8)));
        assert!(matches!(checkpoint.layers()["model.layers.1.self_attn.o_proj"].weight, LayerWeight::Float(_)));
        let mut quantized = 0;
        for (path, layer) in checkpoint.layers() {
            let LayerWeight::Quantized(q) = &layer.weight else { continue };
            quantized += 1;
            // mx.dequantize, bit for bit.
            let want = expected.read(&format!("{path}.dequantized")).unwrap().to_f32().unwrap();
            let ours = common::download(&wgquant::dequantize(q, None).unwrap());
            assert_eq!(first_bit_difference(&ours, &want), None, "{path}: dequantize");
            // The layer's forward through our quantized_matmul against mx.quantized_matmul: MLX's
            // CPU kernels accumulate f16 in f16, for every bits value (tests/fixtures/
            // gen_fixtures.py checks this on MLX), so each output is within about K f16 ulps.
            let x = expected.read(&format!("{path}.x")).unwrap();
            let dtype = q.scales.dtype();
            assert_eq!(x.dtype(), dtype, "{path}: x has the scales' dtype");
            let x = x.to_f32().unwrap();
            let y = expected.read(&format!("{path}.y")).unwrap().to_f32().unwrap();
            let [n, k] = q.logical_shape()[..] else { panic!("{path}: rank") };
            let x_gpu = common::upload(&gpu, &x, &[x.len() / k, k], dtype);
            let got = common::download(&wgquant::quantized_matmul(&x_gpu, q, true).unwrap());
            let host = reference::HostQuantized {
                weight: q.weight.to_vec::<u32>().unwrap(),
                scales: common::download(&q.scales),
                biases: common::download(q.biases.as_ref().unwrap()),
            };
            let terms = common::WeightTerms::new(&host, q.params, dtype);
            for (i, (&got, &y)) in got.iter().zip(&y).enumerate() {
                let (row, out) = (i / n, i % n);
                let w = out * k..(out + 1) * k;
                let (mlx, bound) = common::bound_against_mlx_half(
                    &x[row * k..(row + 1) * k],
                    &ours[w.clone()],
                    &terms.reach[w.clone()],
                    &terms.rounding[w],
                    dtype,
                    got,
                );
                assert_eq!(mlx.to_bits(), y.to_bits(), "{path}[{i}]: MLX's sum is not sequential in f16");
                assert!((got - y).abs() <= bound, "{path}[{i}]: {got} vs MLX {y} (bound {bound})");
            }
        }
        assert_eq!(quantized * 3, expected.tensors().len(), "every quantized layer was checked");

        // And back to floats: the dequantized checkpoint holds mx.dequantize's values.
        let out = temp_dir();
        let output = out.path().join("float");
        convert(&dir, &output, &gpu, &ConvertOptions::dequantize(), &mut quiet).unwrap();
        let floats = read_all(&output);
        for entry in expected.tensors().iter().filter(|t| t.name.ends_with(".dequantized")) {
            let path = entry.name.trim_end_matches(".dequantized");
            let want = expected.read(&entry.name).unwrap();
            assert_eq!(floats[&format!("{path}.weight")], want, "{path}");
        }
    }
}

#[test]
fn bad_requests_are_refused_before_anything_is_written() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let input = dir.path().join("in");
    TinyModel::default().write(&input);
    let quantize = |params: QuantParams, recipe: Option<Recipe>| ConvertOptions {
        conversion: Conversion::Quantize { params, recipe, skip: None },
        ..ConvertOptions::quantize(params)
    };
    let err = convert_checked(&gpu, &input, &quantize(QuantParams::affine(64, 7), None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "[convert] The requested number of bits 7 is not supported. The supported bits are 1, 2, 3, 4, 5, 6 and 8."
    );
    let err = convert_checked(&gpu, &input, &quantize(QuantParams::affine(48, 4), None)).unwrap_err();
    assert!(matches!(err, Error::UnsupportedGroupSize { group_size: 48, .. }));
    let mxfp4 = QuantParams::for_mode(wgquant::Mode::Mxfp4);
    let err = convert_checked(&gpu, &input, &quantize(mxfp4, Some(Recipe::Mixed2_6))).unwrap_err();
    assert!(matches!(err, Error::RecipeNeedsAffine), "{err}");

    // A model without down_proj cannot take a recipe (mlx-lm's words).
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("config.json"), "{}").unwrap();
    let tensors = vec![("fc.weight".to_string(), io_common::host(&[0.5; 64 * 4], &[4, 64], DType::F32))];
    wgquant::io::write_safetensors(&plain.join("model.safetensors"), &tensors, &Default::default()).unwrap();
    let err = convert(
        &plain,
        &dir.path().join("o"),
        &gpu,
        &quantize(QuantParams::default(), Some(Recipe::Mixed3_4)),
        &mut quiet,
    );
    assert_eq!(err.unwrap_err().to_string(), "Model does not have expected keys for mixed quant.");

    // Quantizing a quantized checkpoint.
    let quantized = dir.path().join("q");
    convert(&input, &quantized, &gpu, &ConvertOptions::quantize(QuantParams::default()), &mut quiet).unwrap();
    let err = convert(
        &quantized,
        &dir.path().join("qq"),
        &gpu,
        &ConvertOptions::quantize(QuantParams::default()),
        &mut quiet,
    );
    assert!(matches!(err, Err(Error::AlreadyQuantized { .. })));
    assert!(!dir.path().join("qq").exists() && !dir.path().join("o").exists());
}

#[test]
fn the_output_is_all_or_nothing() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let input = dir.path().join("in");
    TinyModel::default().write(&input);
    let options = ConvertOptions::quantize(QuantParams::default());
    let output = dir.path().join("out");

    // An existing, non-empty output is refused; force replaces only a checkpoint's files.
    let forced = ConvertOptions { force: true, ..options.clone() };
    std::fs::create_dir(&output).unwrap();
    std::fs::write(output.join("keep.txt"), "mine").unwrap();
    let err = convert(&input, &output, &gpu, &options, &mut quiet).unwrap_err();
    assert!(matches!(&err, Error::OutputExists { path } if path == &output), "{err}");
    let err = convert(&input, &output, &gpu, &forced, &mut quiet).unwrap_err();
    assert!(matches!(&err, Error::OutputNotACheckpoint { others, .. } if others == &["keep.txt"]), "{err}");
    assert_eq!(listing(&output), ["keep.txt"]);
    std::fs::remove_file(output.join("keep.txt")).unwrap();
    for name in ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::write(output.join(name), "old").unwrap();
    }
    convert(&input, &output, &gpu, &forced, &mut quiet).unwrap();
    assert_eq!(
        listing(&output),
        ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    );
    ModelDir::open(&output).unwrap();
    assert_eq!(listing(dir.path()), ["in", "out"]);

    // An empty directory is fine.
    std::fs::remove_dir_all(&output).unwrap();
    std::fs::create_dir(&output).unwrap();
    convert(&input, &output, &gpu, &options, &mut quiet).unwrap();

    // The output may not be, hold, or sit inside the input, even with force.
    for bad in [input.clone(), input.join("sub"), dir.path().to_path_buf()] {
        let err = convert(&input, &bad, &gpu, &ConvertOptions { force: true, ..options.clone() }, &mut quiet);
        assert!(matches!(err, Err(Error::OutputOverlapsInput { .. })), "{}: {err:?}", bad.display());
    }

    // A conversion cancelled after its first tensor is written (what the CLI does on SIGINT
    // and SIGTERM) leaves no output and no temporary directory.
    std::fs::remove_dir_all(&output).unwrap();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cancellable = ConvertOptions { cancel: Some(cancel.clone()), ..options.clone() };
    let mut tensors_written = 0;
    let err = convert(&input, &output, &gpu, &cancellable, &mut |done, _| {
        if done > 0 {
            tensors_written += 1;
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap_err();
    assert!(matches!(&err, Error::Interrupted { output: o } if o == &output), "{err}");
    assert_eq!(tensors_written, 1);
    assert_eq!(listing(dir.path()), ["in"]);

    // A temporary directory that a killed run left (its process is gone) is removed by the
    // next conversion to the same output; one of a live process is not.
    let stale = dir.path().join(".out.wgquant-tmp-2147483646");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), "partial").unwrap();
    #[cfg(unix)]
    std::fs::create_dir(dir.path().join(".out.wgquant-tmp-1")).unwrap(); // init: always running
    convert(&input, &output, &gpu, &options, &mut quiet).unwrap();
    #[cfg(unix)]
    {
        assert_eq!(listing(dir.path()), [".out.wgquant-tmp-1", "in", "out"]);
        std::fs::remove_dir(dir.path().join(".out.wgquant-tmp-1")).unwrap();
    }
    assert_eq!(listing(dir.path()), ["in", "out"]);

    // An unreadable extra file (a dangling symlink) is found before anything is written.
    #[cfg(unix)]
    {
        std::fs::remove_dir_all(&output).unwrap();
        let dangling = input.join("tokenizer.model");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let err = convert(&input, &output, &gpu, &options, &mut quiet).unwrap_err();
        assert!(matches!(&err, Error::Io { path, .. } if path == &dangling), "{err}");
        assert_eq!(listing(dir.path()), ["in"]);
        std::fs::remove_file(&dangling).unwrap();
    }
}

#[test]
fn checkpoints_wgquant_could_not_read_back_are_refused() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let write = |name: &str, tensors: &[(String, HostTensor)]| {
        let input = dir.path().join(name);
        io_common::write_model(&input, &serde_json::json!({}), tensors);
        input
    };
    // No tensors at all: there is nothing to convert (and an output without tensors is not a
    // checkpoint).
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("config.json"), "{}").unwrap();
    std::fs::write(empty.join("model.safetensors"), io_common::safetensors_bytes("{}", &[])).unwrap();
    let err =
        convert(&empty, &dir.path().join("out"), &gpu, &ConvertOptions::quantize(QuantParams::default()), &mut quiet);
    assert!(matches!(err, Err(Error::NoTensors { .. })), "{err:?}");
    // Dequantizing a float checkpoint would copy it under a misleading name.
    let float = write("float", &[("fc.weight".to_string(), io_common::host(&[0.5; 128], &[2, 64], DType::F32))]);
    let err = convert(&float, &dir.path().join("out"), &gpu, &ConvertOptions::dequantize(), &mut quiet);
    assert!(matches!(err, Err(Error::NotQuantized { .. })), "{err:?}");
    // A shard limit of zero bytes.
    let zero = ConvertOptions { max_shard_bytes: 0, ..ConvertOptions::quantize(QuantParams::default()) };
    let err = convert(&float, &dir.path().join("out"), &gpu, &zero, &mut quiet);
    assert!(matches!(err, Err(Error::InvalidShardSize { value: 0 })), "{err:?}");
    assert_eq!(listing(dir.path()), ["empty", "float"]);
}
