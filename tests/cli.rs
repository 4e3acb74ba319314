//! The `wgquant` binary: `convert` and `inspect` reports, exit codes, and a clean failure (a
//! named error, a non-zero exit, no output directory) for every malformed input.

mod common;
mod io_common;

use std::path::Path;
use std::process::{Command, Output};

use io_common::{fingerprint, host, listing, safetensors_bytes, temp_dir, TinyModel};
use wgquant::io::{write_safetensors, ModelDir};
use wgquant::DType;

fn wgquant(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgquant")).args(args).current_dir(cwd).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn convert_and_inspect_report_what_they_did() {
    gpu_or_skip!();
    let dir = temp_dir();
    TinyModel::default().write(&dir.path().join("in"));
    let out = wgquant(&["convert", "in", "out", "--bits", "4", "--max-shard-bytes", "20000"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("converting in -> out on "), "{stdout}");
    assert!(stdout.contains("quantized 16 layers; wrote 54 tensors in "), "{stdout}");
    assert!(stdout.contains("copied tokenizer.json, tokenizer_config.json\n"), "{stdout}");
    let bpw = ModelDir::open(&dir.path().join("out")).unwrap().bits_per_weight();
    assert!(stdout.ends_with(&format!("bits per weight: {bpw:.3}\n")), "{stdout}");

    let out = wgquant(&["inspect", "out"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Columns are padded to the longest entry; compare with single spaces.
    let lines: Vec<String> =
        text(&out.stdout).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert!(lines[0].starts_with("out: ") && lines[0].contains(" file(s), 54 tensors, "), "{}", lines[0]);
    for line in [
        "quantization: group_size=64, bits=4, mode=affine (0 per-layer entries)",
        "model.layers.0.self_attn.q_proj (64,64) affine g64 b4 + bias",
        "model.odd_proj (8,48) bfloat16 (float)",
        "layers: 16 quantized, 4 float",
        &format!("bits per weight: {bpw:.3}"),
    ] {
        assert!(lines.iter().any(|l| l == line), "missing {line:?} in\n{}", lines.join("\n"));
    }
    for row in [
        "model.layers.1.mlp.down_proj.weight uint32 (64,16) model-",
        "model.layers.1.mlp.down_proj.scales bfloat16 (64,2) model-",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(row)), "missing {row:?}");
    }

    // A reader that stops early (`| head`) ends the output without a panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgquant"))
        .args(["inspect", "out"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    assert!(closed.status.success(), "{}", text(&closed.stderr));

    let first_shard = listing(&dir.path().join("out")).into_iter().find(|n| n.starts_with("model-00001-of-")).unwrap();
    let out = wgquant(&["inspect", &format!("out/{first_shard}")], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("metadata {format=mlx}"), "{}", text(&out.stdout));

    let out = wgquant(&["convert", "out", "float", "--dequantize", "--dtype", "f32", "--quiet"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(!ModelDir::open(&dir.path().join("float")).unwrap().is_quantized());
}

#[test]
fn no_subcommand_runs_the_demo() {
    gpu_or_skip!();
    let dir = temp_dir();
    let small = ["--layers", "1", "--tokens", "4", "--iterations", "1"];
    let uniform = [&["demo", "--recipe", "uniform", "--bits", "3"][..], &small].concat();
    for args in [&small[..], &uniform] {
        let out = wgquant(args, dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("bits per weight: ") && stdout.contains("relative error"), "{stdout}");
    }
}

#[test]
fn usage_errors_exit_with_two() {
    let dir = temp_dir();
    for (args, message) in [
        (&["convert", "a", "b", "--bits", "four"][..], "invalid value 'four' for '--bits <BITS>'"),
        (&["convert", "a", "b", "--recipe", "mixed_5_6"], "Invalid quant recipe mixed_5_6"),
        (&["convert", "a", "b", "--skip", "("], "regex parse error"),
        (&["convert", "a", "b", "--mode", "Affine"], "Invalid quantization mode 'Affine'."),
        (&["convert", "a", "b", "--dtype", "f64"], "unknown dtype f64"),
        (&["convert", "a", "b", "--dequantize", "--bits", "4"], "cannot be used with"),
        (&["--layers", "4", "inspect", "x"], "the subcommand 'inspect' cannot be used with '--layers <LAYERS>'"),
    ] {
        let out = wgquant(args, dir.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(message), "{args:?}: {}", text(&out.stderr));
    }
    assert!(listing(dir.path()).is_empty());
}

/// A malformed input: how to break a good model directory, and what the error must say.
struct Case {
    name: &'static str,
    breaks: fn(&Path),
    args: &'static [&'static str],
    message: &'static str,
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn malformed_inputs_fail_with_a_named_error_and_no_output() {
    gpu_or_skip!();
    let cases = [
        Case {
            name: "missing input",
            breaks: |d| std::fs::remove_dir_all(d).unwrap(),
            args: &[],
            message: "in: not found (the input model directory)",
        },
        Case {
            name: "missing config.json",
            breaks: |d| std::fs::remove_file(d.join("config.json")).unwrap(),
            args: &[],
            message: "config.json: not found",
        },
        Case {
            name: "config.json not JSON",
            breaks: |d| write_file(&d.join("config.json"), b"{model"),
            args: &[],
            message: "config.json: not valid JSON",
        },
        Case {
            name: "no weights",
            breaks: |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
            args: &[],
            message: "model.safetensors: not found",
        },
        Case {
            name: "truncated safetensors",
            breaks: |d| {
                let f = std::fs::OpenOptions::new().write(true).open(d.join("model.safetensors")).unwrap();
                f.set_len(f.metadata().unwrap().len() - 10).unwrap();
            },
            args: &[],
            message: "(truncated)",
        },
        Case {
            name: "inconsistent offsets",
            breaks: |d| {
                write_file(
                    &d.join("model.safetensors"),
                    &safetensors_bytes(r#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, &[0; 12]),
                )
            },
            args: &[],
            message: "tensor \"a.weight\" has data offsets [4, 12], but it must start at 0",
        },
        Case {
            name: "unsupported dtype",
            breaks: |d| {
                write_file(
                    &d.join("model.safetensors"),
                    &safetensors_bytes(r#"{"ids":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#, &[0; 1]),
                )
            },
            args: &[],
            message: "tensor \"ids\" has dtype F4, which wgquant does not read",
        },
        Case {
            name: "index listing a missing shard",
            breaks: |d| {
                write_file(
                    &d.join("model.safetensors.index.json"),
                    br#"{"weight_map": {"x": "model-00002-of-00002.safetensors"}}"#,
                )
            },
            args: &[],
            message: "lists shard \"model-00002-of-00002.safetensors\", which does not exist",
        },
        Case {
            name: "shapes that do not fit the parameters",
            breaks: |d| {
                let config = r#"{"quantization": {"group_size": 64, "bits": 4}}"#;
                write_file(&d.join("config.json"), config.as_bytes());
                let tensors = vec![
                    ("p.weight".to_string(), wgquant::io::HostTensor::from_values(&[0u32; 16], &[2, 8]).unwrap()),
                    ("p.scales".to_string(), host(&[1.0; 4], &[2, 2], DType::F16)),
                    ("p.biases".to_string(), host(&[0.0; 4], &[2, 2], DType::F16)),
                ];
                write_safetensors(&d.join("model.safetensors"), &tensors, &Default::default()).unwrap();
            },
            args: &["--dequantize"],
            message: "weight.shape[-1] * 32 / bits = 64 but scales.shape[-1] * group_size = 128",
        },
        Case {
            name: "bits MLX does not support",
            breaks: |_| {},
            args: &["--bits", "7"],
            message: "The requested number of bits 7 is not supported",
        },
    ];
    for case in cases {
        let dir = temp_dir();
        let input = dir.path().join("in");
        TinyModel::default().write(&input);
        (case.breaks)(&input);
        let before = if input.exists() { fingerprint(&input) } else { Default::default() };
        let args = [&["convert", "in", "out"][..], case.args].concat();
        let out = wgquant(&args, dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.name);
        assert!(stderr.starts_with("error: ") && stderr.contains(case.message), "{}: {stderr}", case.name);
        assert!(!dir.path().join("out").exists(), "{}: an output was left", case.name);
        let expected: &[&str] = if input.exists() { &["in"] } else { &[] };
        assert_eq!(listing(dir.path()), expected, "{}: temporary files were left", case.name);
        if input.exists() {
            assert_eq!(fingerprint(&input), before, "{}: the input changed", case.name);
            // inspect reads the same input: it fails too, unless only the request was bad.
            let inspect = wgquant(&["inspect", "in"], dir.path());
            assert_eq!(inspect.status.success(), case.args.contains(&"--bits"), "{}: inspect", case.name);
        }
    }
}

#[test]
fn an_existing_output_needs_force() {
    gpu_or_skip!();
    let dir = temp_dir();
    TinyModel::default().write(&dir.path().join("in"));
    std::fs::create_dir(dir.path().join("out")).unwrap();
    write_file(&dir.path().join("out/notes.txt"), b"keep");
    let out = wgquant(&["convert", "in", "out"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("out: the output exists and is not an empty directory (pass --force to replace it)")
    );
    assert_eq!(listing(&dir.path().join("out")), ["notes.txt"]);
    let out = wgquant(&["convert", "in", "out", "--force", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(ModelDir::open(&dir.path().join("out")).unwrap().is_quantized());
    assert_eq!(listing(dir.path()), ["in", "out"]);
}

/// Reliability notes E3: a conversion killed at any point leaves the output absent or complete.
#[test]
fn a_killed_conversion_leaves_no_partial_output() {
    gpu_or_skip!();
    let dir = temp_dir();
    TinyModel { layers: 8, hidden: 128, vocab: 256, dtype: DType::F32 }.write(&dir.path().join("in"));
    for delay_ms in [5, 40, 80, 120, 160, 200, 300, 450] {
        let output = dir.path().join(format!("out-{delay_ms}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgquant"))
            .args(["convert", "in", output.file_name().unwrap().to_str().unwrap(), "-q"])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        if output.exists() {
            let model = ModelDir::open(&output).unwrap();
            assert!(model.is_quantized(), "{delay_ms} ms");
        }
    }
}
