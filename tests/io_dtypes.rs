//! Every safetensors dtype through `convert`, `inspect` and `load_checkpoint` (issue 18 item 1),
//! and the non-finite counts of a conversion (item 3), on `tests/fixtures/all_dtypes` (made by
//! `gen_dtype_fixture.py`: int64 position ids, bool, every integer width, fp8, float64, complex64).

mod common;
mod io_common;

use std::path::{Path, PathBuf};

use io_common::{temp_dir, write_model};
use wgquant::io::{
    convert, load_checkpoint, ConvertOptions, FileDType, HostTensor, ModelDir, NonFiniteTensor, SafetensorsFile,
};
use wgquant::{DType, Error, QuantParams};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/all_dtypes")
}

/// The tensors of the fixture that no conversion may change, with their dtypes.
const CARRIED: [(&str, FileDType); 13] = [
    ("embeddings.position_ids", FileDType::I64),
    ("attention.mask", FileDType::Bool),
    ("ints.i8", FileDType::I8),
    ("ints.i16", FileDType::I16),
    ("ints.i32", FileDType::I32),
    ("ints.u16", FileDType::U16),
    ("ints.u32", FileDType::U32),
    ("ints.u64", FileDType::U64),
    ("ints.u8", FileDType::U8),
    ("fp8.e4m3.weight", FileDType::F8E4M3),
    ("fp8.e5m2", FileDType::F8E5M2),
    ("mx.scales_e8m0", FileDType::F8E8M0),
    ("rotary.c64", FileDType::C64),
];

/// The bytes of tensor `name` straight from the file, found through the raw JSON header (not
/// through wgquant's reader).
fn raw_tensor(file: &Path, name: &str) -> (String, Vec<u8>) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header[name];
    let offsets = entry["data_offsets"].as_array().unwrap();
    let (start, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    (entry["dtype"].as_str().unwrap().to_string(), bytes[8 + n + start..8 + n + end].to_vec())
}

#[test]
fn every_dtype_is_read_byte_for_byte() {
    let path = fixture().join("model.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    assert_eq!(file.tensors().len(), 17);
    for entry in file.tensors() {
        let (dtype, bytes) = raw_tensor(&path, &entry.name);
        assert_eq!(entry.dtype.safetensors_name(), dtype, "{}", entry.name);
        let tensor = file.read(&entry.name).unwrap();
        assert_eq!(tensor.dtype(), entry.dtype);
        assert_eq!(tensor.bytes(), bytes, "{}", entry.name);
    }
    for (name, dtype) in CARRIED {
        assert_eq!(file.get(name).unwrap().dtype, dtype, "{name}");
    }
    // MLX's names where MLX has the type.
    assert_eq!(FileDType::I64.to_string(), "int64");
    assert_eq!(FileDType::Bool.to_string(), "bool");
    assert_eq!(FileDType::F64.to_string(), "float64");
    assert_eq!(FileDType::F8E4M3.to_string(), "F8_E4M3");
    for dtype in FileDType::ALL {
        assert_eq!(FileDType::from_safetensors_name(dtype.safetensors_name()), Some(dtype));
    }
}

#[test]
fn unsupported_sub_byte_dtypes_are_named() {
    let dir = temp_dir();
    let path = dir.path().join("f4.safetensors");
    std::fs::write(
        &path,
        io_common::safetensors_bytes(r#"{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#, &[0]),
    )
    .unwrap();
    let err = SafetensorsFile::open(&path).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedDtype { dtype, .. } if dtype == "F4"), "{err}");
}

#[test]
fn inspect_lists_every_dtype() {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_wgquant")).arg("inspect").arg(fixture()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    for name in ["int64", "bool", "int8", "int16", "int32", "uint16", "uint64", "F8_E4M3", "F8_E5M2", "float64"] {
        assert!(text.contains(name), "inspect does not show {name}:\n{text}");
    }
}

/// Reads every tensor of a converted directory.
fn read_all(dir: &Path) -> Vec<(String, HostTensor)> {
    let model = ModelDir::open(dir).unwrap();
    model.weights().tensors().map(|t| (t.name.clone(), model.weights().read(&t.name).unwrap())).collect()
}

fn find<'a>(tensors: &'a [(String, HostTensor)], name: &str) -> &'a HostTensor {
    &tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
}

#[test]
fn convert_carries_non_float_tensors_byte_for_byte() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let input = fixture().join("model.safetensors");
    let params = QuantParams::affine(64, 4);

    // No target dtype: float64 stays float64 (not quantized: no kernel reads it).
    let out = dir.path().join("q4");
    let report = convert(&fixture(), &out, &gpu, &ConvertOptions::quantize(params), &mut |_, _| {}).unwrap();
    assert_eq!(report.converted_layers, 1, "only dense.weight is quantized");
    let tensors = read_all(&out);
    for (name, dtype) in
        CARRIED.iter().copied().chain([("constants.f64", FileDType::F64), ("big.weight", FileDType::F64)])
    {
        let t = find(&tensors, name);
        assert_eq!(t.dtype(), dtype, "{name}");
        assert_eq!(t.bytes(), raw_tensor(&input, name).1, "{name} changed");
    }
    assert_eq!(find(&tensors, "dense.weight").dtype(), FileDType::U32);
    assert_eq!(find(&tensors, "dense.scales").dtype(), DType::F32);
    assert!(report.non_finite.is_empty(), "{:?}", report.non_finite);

    // With --dtype f16: float64 is cast (through float32, as MLX's astype rounds it), the
    // float64 weight then quantized; 1e300 overflows and is reported; integers stay.
    let options = ConvertOptions { dtype: Some(DType::F16), ..ConvertOptions::quantize(params) };
    let out = dir.path().join("q4-f16");
    let report = convert(&fixture(), &out, &gpu, &options, &mut |_, _| {}).unwrap();
    assert_eq!(report.converted_layers, 2, "dense.weight and big.weight");
    let tensors = read_all(&out);
    for (name, dtype) in CARRIED {
        assert_eq!(find(&tensors, name).dtype(), dtype, "{name}");
        assert_eq!(find(&tensors, name).bytes(), raw_tensor(&input, name).1, "{name} changed");
    }
    let constants = find(&tensors, "constants.f64");
    assert_eq!(constants.dtype(), DType::F16);
    assert_eq!(constants.to_f32().unwrap(), [half::f16::from_f32(0.1).to_f32(), -2.5, f32::INFINITY]);
    assert_eq!(find(&tensors, "big.scales").dtype(), DType::F16);
    assert_eq!(
        report.non_finite,
        [NonFiniteTensor { tensor: "constants.f64".into(), dtype: FileDType::F16, non_finite: 0, overflowed: 1 }]
    );
    assert_eq!(gpu.take_uncaptured_errors(), Vec::<String>::new());
}

#[test]
fn load_checkpoint_keeps_other_dtypes_on_the_host() {
    let gpu = gpu_or_skip!();
    let mut checkpoint = load_checkpoint(&fixture(), &gpu).unwrap();
    let input = fixture().join("model.safetensors");
    let on_host: Vec<&str> = checkpoint.host_tensors().keys().map(String::as_str).collect();
    assert_eq!(
        on_host,
        [
            "attention.mask",
            "big.weight",
            "constants.f64",
            "embeddings.position_ids",
            "fp8.e4m3.weight",
            "fp8.e5m2",
            "ints.i16",
            "ints.i32",
            "ints.i8",
            "ints.u16",
            "ints.u64",
            "mx.scales_e8m0",
            "rotary.c64"
        ]
    );
    for (name, tensor) in checkpoint.host_tensors() {
        assert_eq!(tensor.bytes(), raw_tensor(&input, name).1, "{name}");
    }
    // GPU types go to the GPU as before.
    assert_eq!(checkpoint.tensors()["ints.u32"].to_vec::<u32>().unwrap(), [0, 7, 3_000_000_000, u32::MAX]);
    let err = checkpoint.take_tensor("embeddings.position_ids").unwrap_err();
    assert!(err.to_string().contains("int64 tensors cannot go to the GPU"), "{err}");
    let ids = checkpoint.take_host_tensor("embeddings.position_ids").unwrap();
    assert_eq!(ids.shape(), [1, 8]);
    let err = checkpoint.finish().unwrap_err();
    assert!(matches!(&err, Error::UnusedTensors { tensors } if tensors.contains(&"ints.u64".to_string())), "{err}");
}

/// f32 values a float16 cast overflows (as `torch_dtype: float16` asks), NaN and infinity in
/// the input: counted per tensor, refused in strict mode with nothing written.
#[test]
fn non_finite_values_are_counted_and_refused_when_strict() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let input = dir.path().join("in");
    let mut weight: Vec<f32> = (0..128).map(|i| i as f32 / 128.0).collect();
    weight[..4].copy_from_slice(&[1e6, -7e4, f32::NAN, f32::INFINITY]);
    let tensors = vec![
        ("layer.weight".to_string(), HostTensor::from_values(&weight, &[2, 64]).unwrap()),
        ("norm.weight".to_string(), HostTensor::from_values(&[1.0f32, 65520.0], &[2]).unwrap()),
        ("finite.weight".to_string(), HostTensor::from_values(&[1.0f32, 65504.0], &[2]).unwrap()),
    ];
    write_model(&input, &serde_json::json!({"model_type": "llama", "torch_dtype": "float16"}), &tensors);
    let params = QuantParams::affine(64, 4);

    let report =
        convert(&input, &dir.path().join("out"), &gpu, &ConvertOptions::quantize(params), &mut |_, _| {}).unwrap();
    let counts: Vec<(&str, u64, u64)> =
        report.non_finite.iter().map(|t| (t.tensor.as_str(), t.non_finite, t.overflowed)).collect();
    assert_eq!(counts, [("layer.weight", 2, 2), ("norm.weight", 0, 1)]);
    assert_eq!(
        report.non_finite[1].to_string(),
        "tensor \"norm.weight\" (float16): 0 values NaN or infinite in the input, 1 overflowed to infinity in the cast"
    );

    let strict = ConvertOptions { strict: true, ..ConvertOptions::quantize(params) };
    let err = convert(&input, &dir.path().join("strict"), &gpu, &strict, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, Error::NonFiniteValues { tensor, non_finite: 2, overflowed: 2, .. } if tensor == "layer.weight"),
        "{err}"
    );
    assert_eq!(io_common::listing(dir.path()), ["in", "out"], "strict mode left nothing behind");
}
