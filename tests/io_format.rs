//! Checkpoint formats without a GPU: the safetensors reader against a catalogue of bad inputs
//! and against the `safetensors` crate, the writer byte for byte
//! against the crate, and model directories against catalogue B (file set, index, config,
//! quantization rule).

mod common;
mod io_common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Rng;
use io_common::{host, quantized_layer, safetensors_bytes, safetensors_raw, temp_dir, write_model};
use serde_json::json;
use wgquant::io::{
    write_safetensors, FileDType, HostTensor, ModelDir, SafetensorsFile, SafetensorsWriter, TensorSpec,
    MAX_HEADER_BYTES,
};
use wgquant::{DType, Error, QuantParams};

/// Opens `bytes` with our reader and with the safetensors crate.
fn open_both(bytes: &[u8]) -> (wgquant::Result<SafetensorsFile>, bool, tempfile::TempDir) {
    let dir = temp_dir();
    let path = dir.path().join("t.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let crate_accepts = safetensors::SafeTensors::deserialize(bytes).is_ok();
    (SafetensorsFile::open(&path), crate_accepts, dir)
}

const ONE_F32: &str = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;

#[test]
fn catalogue_a_every_bad_container_is_a_named_error() {
    let header_len = |n: u64, rest: &[u8]| [n.to_le_bytes().as_slice(), rest].concat();
    let two = |a: &str, b: &str| format!(r#"{{"a":{a},"b":{b}}}"#);
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check, bool)> = vec![
        // (case, bytes, expected error, whether the safetensors crate also rejects it)
        ("A1 empty", vec![], |e| matches!(e, Error::HeaderTooSmall { len: 0, .. }), true),
        ("A1 7 bytes", vec![1; 7], |e| matches!(e, Error::HeaderTooSmall { len: 7, .. }), true),
        (
            "A1 truncated after header",
            safetensors_bytes(ONE_F32, &[]),
            |e| matches!(e, Error::Truncated { actual, expected, .. } if *expected == *actual + 16),
            true,
        ),
        (
            "A1 truncated mid-tensor",
            safetensors_bytes(ONE_F32, &[0; 9]),
            |e| matches!(e, Error::Truncated { .. }),
            true,
        ),
        (
            "A2 header past the end",
            header_len(100, b"{}"),
            |e| matches!(e, Error::HeaderLength { header_len: 100, .. }),
            true,
        ),
        ("A2 u64::MAX", header_len(u64::MAX, b"{}"), |e| matches!(e, Error::HeaderLength { .. }), true),
        ("A2 over the cap", header_len(MAX_HEADER_BYTES + 1, b"{}"), |e| matches!(e, Error::HeaderLength { .. }), true),
        (
            "A3 not UTF-8",
            safetensors_raw(b"{\"\xff\":1}", &[]),
            |e| matches!(e, Error::HeaderJson { message, .. } if message.contains("UTF-8")),
            true,
        ),
        ("A3 not JSON", safetensors_bytes("{\"a\":", &[]), |e| matches!(e, Error::HeaderJson { .. }), true),
        ("A3 not an object", safetensors_bytes("[1,2]", &[]), |e| matches!(e, Error::HeaderJson { .. }), true),
        (
            "A3 metadata not strings",
            safetensors_bytes(r#"{"__metadata__":{"a":1}}"#, &[]),
            |e| matches!(e, Error::HeaderJson { message, .. } if message.contains("__metadata__")),
            true,
        ),
        (
            "A4 overlap",
            safetensors_bytes(
                &two(
                    r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#,
                    r#"{"dtype":"F32","shape":[2],"data_offsets":[4,12]}"#,
                ),
                &[0; 12],
            ),
            |e| matches!(e, Error::InvalidOffsets { tensor, start: 4, expected_start: 8, .. } if tensor == "b"),
            true,
        ),
        (
            "A4 hole",
            safetensors_bytes(
                &two(
                    r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#,
                    r#"{"dtype":"F32","shape":[2],"data_offsets":[12,20]}"#,
                ),
                &[0; 20],
            ),
            |e| matches!(e, Error::InvalidOffsets { tensor, .. } if tensor == "b"),
            true,
        ),
        (
            "A4 hole before the first",
            safetensors_bytes(r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#, &[0; 6]),
            |e| matches!(e, Error::InvalidOffsets { expected_start: 0, .. }),
            true,
        ),
        (
            "A4 trailing bytes",
            safetensors_bytes(ONE_F32, &[0; 17]),
            |e| matches!(e, Error::TrailingBytes { expected, actual, .. } if *actual == *expected + 1),
            true,
        ),
        (
            "A4 end before start",
            safetensors_bytes(r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#, &[0; 4]),
            |e| matches!(e, Error::InvalidOffsets { .. }),
            true,
        ),
        (
            "A4 past EOF",
            safetensors_bytes(r#"{"a":{"dtype":"U8","shape":[64],"data_offsets":[0,64]}}"#, &[0; 8]),
            |e| matches!(e, Error::Truncated { .. }),
            true,
        ),
        (
            "A5 product overflow",
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[2,9223372036854775808],"data_offsets":[0,0]}}"#, &[]),
            |e| matches!(e, Error::TensorTooLarge { tensor, .. } if tensor == "a"),
            true,
        ),
        (
            "A5 65536^4 wraps to 0",
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[65536,65536,65536,65536],"data_offsets":[0,0]}}"#, &[]),
            |e| matches!(e, Error::TensorTooLarge { .. }),
            true,
        ),
        (
            "A5 negative dim",
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[-1,-4],"data_offsets":[0,16]}}"#, &[0; 16]),
            |e| matches!(e, Error::HeaderJson { message, .. } if message.contains("tensor \"a\"")),
            true,
        ),
        (
            "A5 size mismatch",
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, &[0; 16]),
            |e| matches!(e, Error::TensorSize { expected: 12, actual: 16, .. }),
            true,
        ),
        (
            "A6 unknown dtype",
            safetensors_bytes(r#"{"a":{"dtype":"X7","shape":[1],"data_offsets":[0,1]}}"#, &[0]),
            |e| matches!(e, Error::UnsupportedDtype { dtype, .. } if dtype == "X7"),
            true,
        ),
        (
            "A6 sub-byte dtype wgquant does not carry",
            safetensors_bytes(r#"{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}"#, &[0; 3]),
            |e| matches!(e, Error::UnsupportedDtype { dtype, .. } if dtype == "F6_E2M3"),
            false,
        ),
        (
            "A7 duplicate key",
            safetensors_bytes(
                &two(
                    r#"{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#,
                    r#"{"dtype":"U8","shape":[1],"data_offsets":[1,2]}"#,
                )
                .replace("\"b\"", "\"a\""),
                &[0; 2],
            ),
            |e| matches!(e, Error::DuplicateTensor { tensor, .. } if tensor == "a"),
            true,
        ),
        (
            "A7 NUL in a name",
            safetensors_bytes(r#"{"a\u0000hidden":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, &[0]),
            |e| matches!(e, Error::InvalidTensorName { reason: "contains a NUL byte", .. }),
            false,
        ),
        (
            "A7 empty name",
            safetensors_bytes(r#"{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, &[0]),
            |e| matches!(e, Error::InvalidTensorName { reason: "empty", .. }),
            false,
        ),
        (
            "A7 long name",
            safetensors_bytes(
                &format!(r#"{{"{}":{{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}}}"#, "n".repeat(5000)),
                &[0],
            ),
            |e| matches!(e, Error::InvalidTensorName { name, .. } if name.len() == 80),
            false,
        ),
    ];
    for (case, bytes, check, crate_rejects) in cases {
        let (ours, crate_accepts, _dir) = open_both(&bytes);
        let err = ours.expect_err(case);
        assert!(check(&err), "{case}: got {err:?}");
        assert!(err.to_string().contains("t.safetensors"), "{case}: message does not name the file: {err}");
        assert_eq!(!crate_accepts, crate_rejects, "{case}: the safetensors crate disagrees");
    }
}

#[test]
fn catalogue_a_legal_oddities_load() {
    // A3: whitespace around the JSON (safetensors PR #686 pads headers); `null` metadata.
    // A8: empty and rank-0 tensors.
    let header = r#"  {"__metadata__":null,"e":{"dtype":"F16","shape":[0,64],"data_offsets":[0,0]},
        "s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}  "#;
    let (ours, crate_accepts, _dir) = open_both(&safetensors_bytes(header, &1.5f32.to_le_bytes()));
    assert!(crate_accepts);
    let file = ours.unwrap();
    assert_eq!(file.get("e").unwrap().shape, [0, 64]);
    assert_eq!(file.read("s").unwrap().values::<f32>(), [1.5]);
    assert!(file.read("e").unwrap().bytes().is_empty());
    assert!(file.metadata().is_empty());
}

#[test]
fn catalogue_a9_a_file_truncated_under_the_reader_is_an_io_error() {
    let dir = temp_dir();
    let path = dir.path().join("t.safetensors");
    std::fs::write(&path, safetensors_bytes(ONE_F32, &[0; 16])).unwrap();
    let file = SafetensorsFile::open(&path).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(20).unwrap();
    let err = file.read("a").unwrap_err();
    assert!(matches!(&err, Error::Io { path: p, .. } if p == &path), "{err:?}");
    assert!(matches!(file.read("nope"), Err(Error::MissingTensor { .. })));
}

fn sample_tensors() -> Vec<(String, HostTensor)> {
    let mut rng = Rng::new(3);
    vec![
        ("b.scales".into(), host(&rng.normals(6, 1.0), &[3, 2], DType::F16)),
        ("a.weight".into(), HostTensor::from_values(&[7u32, 8, 9, 10], &[2, 2]).unwrap()),
        ("c.norm".into(), host(&rng.normals(5, 1.0), &[5], DType::BF16)),
        ("d.bias".into(), host(&rng.normals(3, 1.0), &[3], DType::F32)),
        ("e.bytes".into(), HostTensor::from_values(&[1u8, 2, 3], &[3]).unwrap()),
        ("f.empty".into(), host(&[], &[0, 4], DType::F32)),
        (
            "g.position_ids".into(),
            HostTensor::from_bytes(FileDType::I64, &(-3i64..5).flat_map(i64::to_le_bytes).collect::<Vec<_>>(), &[1, 8])
                .unwrap(),
        ),
        ("h.mask".into(), HostTensor::from_bytes(FileDType::Bool, &[1, 0, 1], &[3]).unwrap()),
        ("i.fp8".into(), HostTensor::from_bytes(FileDType::F8E4M3, &[0x38, 0x7f], &[2]).unwrap()),
        ("j.f64".into(), HostTensor::from_bytes(FileDType::F64, &1e300f64.to_le_bytes(), &[1]).unwrap()),
        ("k.i16".into(), HostTensor::from_bytes(FileDType::I16, &[0xff, 0xff, 1, 0], &[2]).unwrap()),
    ]
}

#[test]
fn writer_is_byte_identical_to_the_safetensors_crate() {
    let tensors = sample_tensors();
    let metadata = BTreeMap::from([("format".to_string(), "mlx".to_string())]);
    let dir = temp_dir();
    let path = dir.path().join("ours.safetensors");
    write_safetensors(&path, &tensors, &metadata).unwrap();

    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let dtype: safetensors::Dtype = serde_json::from_value(json!(t.dtype().safetensors_name())).unwrap();
            (name.clone(), safetensors::tensor::TensorView::new(dtype, t.shape().to_vec(), t.bytes()).unwrap())
        })
        .collect();
    let theirs = safetensors::serialize(views, Some(metadata.clone().into_iter().collect())).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), theirs);

    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.metadata(), &metadata);
    for (name, tensor) in &tensors {
        assert_eq!(&file.read(name).unwrap(), tensor, "{name}");
    }
}

#[test]
fn writer_refuses_what_was_not_planned() {
    let dir = temp_dir();
    let path = dir.path().join("w.safetensors");
    let spec = |name: &str| TensorSpec { name: name.into(), dtype: FileDType::U32, shape: vec![2] };
    let duplicate = SafetensorsWriter::create(&path, vec![spec("a"), spec("a")], &BTreeMap::new());
    assert!(matches!(duplicate, Err(Error::DuplicateTensor { .. })));
    let nul = SafetensorsWriter::create(&path, vec![spec("a\0b")], &BTreeMap::new());
    assert!(matches!(nul, Err(Error::InvalidTensorName { .. })));

    let mut writer = SafetensorsWriter::create(&path, vec![spec("a"), spec("b")], &BTreeMap::new()).unwrap();
    let good = HostTensor::from_values(&[1u32, 2], &[2]).unwrap();
    assert!(matches!(writer.write("c", &good), Err(Error::UnexpectedTensor { .. })));
    assert!(matches!(
        writer.write("a", &HostTensor::from_values(&[1u8, 2], &[2]).unwrap()),
        Err(Error::TensorDType { expected: "U32", .. })
    ));
    assert!(matches!(
        writer.write("a", &HostTensor::from_values(&[1u32], &[1]).unwrap()),
        Err(Error::TensorShape { .. })
    ));
    writer.write("a", &good).unwrap();
    assert!(matches!(writer.write("a", &good), Err(Error::UnexpectedTensor { .. })));
    assert!(matches!(writer.finish(), Err(Error::MissingTensor { tensor, .. }) if tensor == "b"));
}

#[test]
fn reads_files_written_by_mlx() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlx_quantize.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours = SafetensorsFile::open(&path).unwrap();
    assert_eq!(ours.tensors().len(), theirs.len());
    assert_eq!(ours.metadata().get("mlx_version").map(String::as_str), Some("0.32.4"));
    for (name, view) in theirs.tensors() {
        let tensor = ours.read(&name).unwrap();
        assert_eq!(tensor.shape(), view.shape(), "{name}");
        assert_eq!(tensor.bytes(), view.data(), "{name}");
    }
}

// ---- catalogue B: model directories -----------------------------------------------------------

/// A valid quantized model: two quantized layers (one with a bias), a float norm, a per-layer
/// entry, as mlx-lm writes them.
fn quantized_model() -> (serde_json::Value, Vec<(String, HostTensor)>) {
    let mut tensors = quantized_layer("layers.0.proj", 8, 128, QuantParams::affine(64, 4));
    tensors.extend(quantized_layer("layers.1.proj", 8, 128, QuantParams::affine(32, 8)));
    tensors.push(("layers.0.proj.bias".into(), host(&[0.5; 8], &[8], DType::F16)));
    tensors.push(("norm.weight".into(), host(&[1.0; 128], &[128], DType::F16)));
    let config = json!({
        "model_type": "tiny",
        "quantization": {"group_size": 64, "bits": 4, "mode": "affine",
                         "layers.1.proj": {"group_size": 32, "bits": 8, "mode": "affine"}},
    });
    (config, tensors)
}

fn open_model(
    config: &serde_json::Value,
    tensors: &[(String, HostTensor)],
) -> (wgquant::Result<ModelDir>, tempfile::TempDir) {
    let dir = temp_dir();
    write_model(dir.path(), config, tensors);
    (ModelDir::open(dir.path()), dir)
}

#[test]
fn a_valid_quantized_model_opens_with_the_loading_rule() {
    let (config, tensors) = quantized_model();
    let (model, _dir) = open_model(&config, &tensors);
    let model = model.unwrap();
    let layers = model.layers();
    assert_eq!(layers["layers.0.proj"].quantization, Some(QuantParams::affine(64, 4)));
    assert_eq!(layers["layers.1.proj"].quantization, Some(QuantParams::affine(32, 8)));
    assert_eq!(layers["layers.0.proj"].logical_shape(), [8, 128]);
    assert!(layers["layers.0.proj"].bias.is_some());
    assert_eq!(layers["norm"].quantization, None);
    assert_eq!(model.parameter_count(), 2 * 8 * 128 + 8 + 128);
    assert!(model.plain_tensors().is_empty());
}

#[test]
fn catalogue_b2_quantization_inconsistent_with_the_tensors() {
    let (config, tensors) = quantized_model();
    let without = |name: &str| tensors.iter().filter(|(n, _)| n != name).cloned().collect::<Vec<_>>();
    let replaced = |name: &str, t: HostTensor| {
        tensors.iter().map(|(n, old)| (n.clone(), if n == name { t.clone() } else { old.clone() })).collect::<Vec<_>>()
    };
    let with_config = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = config.clone();
        f(&mut c);
        c
    };
    type Check = fn(&Error) -> bool;
    type Tensors = Vec<(String, HostTensor)>;
    let cases: Vec<(&str, serde_json::Value, Tensors, Check, &str)> = vec![
        ("bits do not fit the shapes", with_config(&|c| c["quantization"]["bits"] = json!(3)), tensors.clone(),
            |e| matches!(e, Error::QuantizedShape { layer, .. } if layer == "layers.0.proj"),
            "layer \"layers.0.proj\": weight (8,16) and scales (8,2) do not fit group_size=64 and bits=3: weight.shape[-1] * 32 / bits = 170 but scales.shape[-1] * group_size = 128"),
        ("scales without biases", config.clone(), without("layers.0.proj.biases"),
            |e| matches!(e, Error::MissingTensor { tensor, .. } if tensor == "layers.0.proj.biases"),
            "tensor \"layers.0.proj.biases\" is missing (affine quantization needs biases)"),
        ("entry for an unknown layer", with_config(&|c| c["quantization"]["layers.9.proj"] = json!({"bits": 4})), tensors.clone(),
            |e| matches!(e, Error::UnknownLayerEntry { .. }),
            "config.json: \"quantization\" has an entry for \"layers.9.proj\", but the checkpoint has no tensor \"layers.9.proj.weight\""),
        ("mode typo", with_config(&|c| c["quantization"]["mode"] = json!("afine")), tensors.clone(),
            |e| matches!(e, Error::ConfigJson { message, .. } if message.contains("'afine'")), "\"quantization.mode\": Invalid quantization mode 'afine'."),
        ("scales stored as uint32", config.clone(), replaced("layers.0.proj.scales", HostTensor::from_values(&[0u32; 16], &[8, 2]).unwrap()),
            |e| matches!(e, Error::TensorDType { tensor, .. } if tensor == "layers.0.proj.scales"),
            "tensor \"layers.0.proj.scales\" is uint32, but float32, float16 or bfloat16 is expected (the scales of an affine-quantized layer)"),
        ("float weight where packed uint32 is expected", config.clone(), replaced("layers.0.proj.weight", host(&[0.0; 128], &[8, 16], DType::F16)),
            |e| matches!(e, Error::TensorDType { expected: "uint32", .. }),
            "tensor \"layers.0.proj.weight\" is float16, but uint32 is expected (the packed weight of a quantized layer)"),
        ("biases of another shape", config.clone(), replaced("layers.0.proj.biases", host(&[0.0; 8], &[8, 1], DType::F16)),
            |e| matches!(e, Error::TensorShape { .. }), "tensor \"layers.0.proj.biases\" has shape (8,1) but shape (8,2) is expected"),
        ("scales with another row count", config.clone(), replaced("layers.0.proj.scales", host(&[0.0; 4], &[2, 2], DType::F16)),
            |e| matches!(e, Error::TensorShape { .. }), "tensor \"layers.0.proj.scales\" has shape (2,2) but shape (8,2) is expected"),
        ("per-layer entry says quantized, no scales", config.clone(), without("layers.1.proj.scales"),
            |e| matches!(e, Error::MissingTensor { tensor, .. } if tensor == "layers.1.proj.scales"), "tensor \"layers.1.proj.scales\" is missing (the layer is quantized)"),
        ("per-layer false but scales exist", with_config(&|c| c["quantization"]["layers.1.proj"] = json!(false)), tensors.clone(),
            |e| matches!(e, Error::UnexpectedTensor { .. }),
            "tensor \"layers.1.proj.scales\" is unexpected (config.json's \"quantization\" leaves this layer in floating point)"),
        ("scales but no quantization section", json!({"model_type": "tiny"}), tensors.clone(),
            |e| matches!(e, Error::UnexpectedTensor { .. }), "tensor \"layers.0.proj.scales\" is unexpected (config.json has no \"quantization\" section)"),
        ("scales with no weight", config.clone(),
            [tensors.clone(), vec![("stray.scales".to_string(), host(&[0.0; 2], &[1, 2], DType::F16))]].concat(),
            |e| matches!(e, Error::UnexpectedTensor { .. }), "tensor \"stray.scales\" is unexpected (there is no matching .weight)"),
        ("quantized rank-1 weight", with_config(&|c| c["quantization"]["norm"] = json!({"bits": 4})), tensors.clone(),
            |e| matches!(e, Error::TensorDType { .. }), "tensor \"norm.weight\" is float16, but uint32 is expected (the packed weight of a quantized layer)"),
    ];
    for (case, config, tensors, check, message) in cases {
        let (model, _dir) = open_model(&config, &tensors);
        let err = model.expect_err(case);
        assert!(check(&err), "{case}: got {err:?}");
        assert!(err.to_string().ends_with(message), "{case}: {err}");
    }
}

#[test]
fn catalogue_b3_config_json() {
    let (_, tensors) = quantized_model();
    let dir = temp_dir();
    write_model(dir.path(), &json!({}), &tensors);
    let config = dir.path().join("config.json");
    let cases: [(&[u8], &str); 3] = [
        (b"{\"a\": ", "config.json: not valid JSON: EOF while parsing a value at line 1 column 6"),
        (b"[1]", "config.json: not a JSON object"),
        (b"{\"quantization\": 4}", "config.json: \"quantization\" must be an object, not 4"),
    ];
    for (text, message) in cases {
        std::fs::write(&config, text).unwrap();
        let err = ModelDir::open(dir.path()).unwrap_err();
        assert!(err.to_string().ends_with(message), "{err}");
    }
    std::fs::remove_file(&config).unwrap();
    assert!(matches!(ModelDir::open(dir.path()), Err(Error::MissingFile { path, .. }) if path == config));
    assert!(matches!(ModelDir::open(&dir.path().join("nope")), Err(Error::MissingFile { .. })));
}

/// Writes `tensors` as shards (name -> file) with an index whose weight_map is `index`.
fn sharded(
    shards: &[(&str, &[&str])],
    index: Option<serde_json::Value>,
) -> (wgquant::Result<ModelDir>, tempfile::TempDir) {
    let dir = temp_dir();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    for (file, names) in shards {
        let tensors: Vec<(String, HostTensor)> =
            names.iter().map(|n| (n.to_string(), host(&[1.0, 2.0], &[2], DType::F32))).collect();
        write_safetensors(&dir.path().join(file), &tensors, &BTreeMap::new()).unwrap();
    }
    if let Some(index) = index {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": index});
        std::fs::write(dir.path().join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
    (ModelDir::open(dir.path()), dir)
}

#[test]
fn catalogue_b1_the_index_and_the_files_must_agree() {
    const S1: &str = "model-00001-of-00002.safetensors";
    const S2: &str = "model-00002-of-00002.safetensors";
    let good = sharded(&[(S1, &["a", "b"]), (S2, &["c"])], Some(json!({"a": S1, "b": S1, "c": S2}))).0.unwrap();
    let names: Vec<&str> = good.weights().tensors().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(good.plain_tensors(), ["a", "b", "c"]);

    type Check = fn(&Error) -> bool;
    type Shards<'a> = &'a [(&'a str, &'a [&'a str])];
    let cases: Vec<(&str, Shards<'_>, Option<serde_json::Value>, Check)> = vec![
        (
            "index lists a missing shard",
            &[(S1, &["a"])],
            Some(json!({"a": S1, "c": S2})),
            |e| matches!(e, Error::MissingShard { shard, .. } if shard == S2),
        ),
        (
            "a shard the index does not list",
            &[(S1, &["a"]), (S2, &["c"])],
            Some(json!({"a": S1})),
            |e| matches!(e, Error::UnindexedShard { shard, .. } if shard == S2),
        ),
        (
            "a weight in two shards",
            &[(S1, &["a"]), (S2, &["a"])],
            Some(json!({"a": S1, "b": S2})),
            |e| matches!(e, Error::DuplicateWeight { tensor, .. } if tensor == "a"),
        ),
        (
            "an index entry absent from its shard",
            &[(S1, &["a"]), (S2, &["c"])],
            Some(json!({"a": S1, "b": S1, "c": S2})),
            |e| matches!(e, Error::IndexMismatch { tensor, .. } if tensor == "b"),
        ),
        (
            "a tensor the index maps elsewhere",
            &[(S1, &["a", "c"]), (S2, &["d"])],
            Some(json!({"a": S1, "c": S2, "d": S2})),
            |e| matches!(e, Error::UnindexedTensor { tensor, .. } if tensor == "c"),
        ),
        (
            "shards without an index",
            &[(S1, &["a"]), (S2, &["c"])],
            None,
            |e| matches!(e, Error::MissingFile { path, .. } if path.ends_with("model.safetensors.index.json")),
        ),
        (
            "no weights",
            &[],
            None,
            |e| matches!(e, Error::MissingFile { path, .. } if path.ends_with("model.safetensors")),
        ),
        ("a stale shard beside model.safetensors", &[("model.safetensors", &["a"]), (S2, &["c"])], None, |e| {
            matches!(e, Error::UnindexedShard { .. })
        }),
        (
            "an index pointing outside the directory",
            &[(S1, &["a"])],
            Some(json!({"a": "../model.safetensors"})),
            |e| matches!(e, Error::IndexJson { message, .. } if message.contains("../model.safetensors")),
        ),
        ("an index that is not an index", &[(S1, &["a"])], Some(json!([1])), |e| matches!(e, Error::IndexJson { .. })),
    ];
    for (case, shards, index, check) in cases {
        let err = sharded(shards, index).0.expect_err(case);
        assert!(check(&err), "{case}: got {err:?}");
    }

    // Duplicate keys in the raw JSON of the index.
    let dir = temp_dir();
    std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
    write_safetensors(&dir.path().join(S1), &[("a".into(), host(&[1.0], &[1], DType::F32))], &BTreeMap::new()).unwrap();
    let index = format!(r#"{{"weight_map": {{"a": "{S1}", "a": "{S1}"}}}}"#);
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    let err = ModelDir::open(dir.path()).unwrap_err();
    assert!(err.to_string().ends_with("weight_map lists \"a\" twice"), "{err}");
}

/// Thousands of mutations of valid headers (bytes flipped, inserted, deleted, truncated, JSON
/// tokens spliced in): every one opens or fails with a typed error; nothing panics, and every
/// accepted file reads back within its own size (so memory stays bounded by the file).
#[test]
fn mutated_headers_never_panic() {
    const CASES: usize = 4000;
    const TOKENS: [&str; 14] = [
        "\"dtype\"",
        "\"shape\"",
        "\"data_offsets\"",
        "\"__metadata__\"",
        "-1",
        "1e400",
        "18446744073709551615",
        "[",
        "]",
        "{",
        "}",
        ",",
        "null",
        "\"I64\"",
    ];
    let dir = temp_dir();
    let seeds: Vec<Vec<u8>> = {
        let path = dir.path().join("seed.safetensors");
        write_safetensors(&path, &sample_tensors(), &BTreeMap::from([("format".into(), "mlx".into())])).unwrap();
        vec![std::fs::read(&path).unwrap(), safetensors_bytes(ONE_F32, &[0; 16])]
    };
    let mut rng = Rng::new(0x5eed);
    let path = dir.path().join("mutant.safetensors");
    let (mut accepted, mut refused) = (0, 0);
    let start = std::time::Instant::now();
    for _ in 0..CASES {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            // Most mutations land in the header (after the 8-byte length), where the parser is.
            let header_len = bytes.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
            let header_end = header_len.saturating_add(8).min(bytes.len());
            let at = if header_end > 8 && rng.below(8) != 0 {
                8 + rng.below(header_end - 8)
            } else {
                rng.below(bytes.len())
            };
            match rng.below(6) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.below(256) as u8,
                2 => bytes.insert(at, rng.below(256) as u8),
                3 if bytes.len() > 9 => {
                    bytes.remove(at);
                }
                4 => bytes.truncate(at.max(1)),
                _ => {
                    let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                    bytes.splice(at..at, token.iter().copied());
                }
            }
            if bytes.is_empty() {
                bytes.push(0);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        match SafetensorsFile::open(&path) {
            Ok(file) => {
                accepted += 1;
                let total: u64 = file.tensors().iter().map(|t| t.size_in_bytes).sum();
                assert!(total <= bytes.len() as u64);
                for entry in file.tensors() {
                    assert_eq!(file.read(&entry.name).unwrap().bytes().len() as u64, entry.size_in_bytes);
                }
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("{CASES} mutants: {accepted} accepted, {refused} refused in {:?}", start.elapsed());
    assert!(accepted > 0 && refused > CASES / 2, "the mutations exercise both outcomes");
}

/// A file of no tensors (with or without metadata) is legal safetensors: the writer writes what
/// the safetensors crate writes, and the reader opens it.
#[test]
fn a_file_of_no_tensors_round_trips() {
    for metadata in [BTreeMap::new(), BTreeMap::from([("format".to_string(), "mlx".to_string())])] {
        let dir = temp_dir();
        let path = dir.path().join("empty.safetensors");
        write_safetensors(&path, &[], &metadata).unwrap();
        let none: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
        let theirs =
            safetensors::serialize(none, (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect()))
                .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), theirs, "metadata {metadata:?}");
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.metadata(), &metadata);
        assert!(file.tensors().is_empty());
    }
}
