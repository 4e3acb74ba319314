//! The `wgquant` binary: `convert` and `inspect` reports, exit codes, and a clean failure (a
//! named error, a non-zero exit, no output directory) for every malformed input.

mod common;
mod io_common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use io_common::{fingerprint, host, listing, safetensors_bytes, temp_dir, TinyModel};
use wgquant::io::{write_safetensors, ModelDir};
use wgquant::DType;

/// Longer than any run here takes on lavapipe: a command still running then is hung (a FIFO
/// read, a wait without a deadline), and the test fails instead of hanging CI.
const HANG: Duration = Duration::from_secs(120);

fn wgquant(args: &[&str], cwd: &Path) -> Output {
    wgquant_env(args, cwd, &[])
}

/// Runs the binary with extra environment variables and waits at most [`HANG`].
fn wgquant_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_wgquant"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    wait_output(child, args)
}

/// Collects a child's output, killing it and failing if it runs past [`HANG`].
fn wait_output(mut child: Child, what: &[&str]) -> Output {
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("wgquant {what:?} hung for {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
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

/// The number after `label` in `text`, up to the next space, comma or parenthesis.
fn number_after(text: &str, label: &str) -> f64 {
    let rest = &text[text.find(label).unwrap_or_else(|| panic!("no {label:?} in {text}")) + label.len()..];
    let end = rest.find([' ', ',', '(', '\n']).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|e| panic!("{label:?} followed by {:?}: {e}", &rest[..end]))
}

#[test]
fn no_subcommand_runs_the_demo() {
    gpu_or_skip!();
    let dir = temp_dir();
    let small = ["--layers", "1", "--tokens", "4", "--iterations", "1"];
    let demo = |args: &[&'static str]| [&["demo"][..], args, &small].concat();
    // Bits per weight and sizes are a pure function of the shapes and recipe (mlx-lm's count:
    // g64 adds 32 bits of f16 scale and bias per 64 weights, g32 per 32); the logits' relative
    // error falls as bits rise, within ranges that a wrong recipe, scale or forward pass leaves.
    let runs: [(Vec<&str>, [&str; 3], std::ops::Range<f64>); 4] = [
        (
            small.to_vec(),
            [
                "untied head, float16 weights, seed 0",
                "quantized 9 layers (6 at 4 bits, 3 at 6 bits) in ",
                "bits per weight: 16.00 -> 5.28 (mlx-lm's count); parameters 2.36 MB -> 0.78 MB",
            ],
            0.05..0.25,
        ),
        (
            demo(&["--recipe", "uniform", "--bits", "3"]),
            [
                "quantizing: 3 bits everywhere, group size 64",
                "quantized 9 layers (9 at 3 bits) in ",
                "bits per weight: 16.00 -> 3.51 (mlx-lm's count); parameters 2.36 MB -> 0.52 MB",
            ],
            0.15..0.5,
        ),
        (
            demo(&["--recipe", "uniform", "--bits", "8", "--group-size", "32"]),
            [
                "quantizing: 8 bits everywhere, group size 32",
                "quantized 9 layers (9 at 8 bits) in ",
                "bits per weight: 16.00 -> 9.00 (mlx-lm's count); parameters 2.36 MB -> 1.33 MB",
            ],
            0.0..0.02,
        ),
        (
            demo(&["--tied", "--dtype", "f32", "--seed", "7", "--recipe", "mixed_2_6"]),
            [
                "tied head, float32 weights, seed 7",
                "quantized 8 layers (6 at 2 bits, 2 at 6 bits) in ",
                "bits per weight: 32.00 -> 3.88 (mlx-lm's count); parameters 3.67 MB -> 0.45 MB",
            ],
            0.4..1.0,
        ),
    ];
    for (args, lines, error_range) in runs {
        let out = wgquant(&args, dir.path());
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        for line in lines {
            assert!(stdout.contains(line), "{args:?}: missing {line:?} in\n{stdout}");
        }
        let error = number_after(&stdout, "relative error ");
        assert!(error_range.contains(&error) && error > 0.0, "{args:?}: relative error {error}");
    }
}

#[test]
fn backend_and_adapter_choices() {
    let dir = temp_dir();
    let small = ["--layers", "1", "--tokens", "2", "--iterations", "1"];
    let bogus = wgquant_env(&small, dir.path(), &[("WGQUANT_BACKEND", "cuda")]);
    assert_eq!(bogus.status.code(), Some(1));
    let said = text(&bogus.stderr);
    assert!(said.contains("WGQUANT_BACKEND=cuda is not allowed (expected vulkan, metal, dx12, gl)"), "{said}");
    gpu_or_skip!();
    let no_adapter = "no GPU adapter found";
    let nowhere = wgquant_env(&small, dir.path(), &[("WGQUANT_ADAPTER", "no-such-adapter")]);
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(text(&nowhere.stderr).contains(no_adapter), "{}", text(&nowhere.stderr));
    TinyModel::default().write(&dir.path().join("in"));
    let out = wgquant(&["convert", "in", "out", "--adapter", "no-such-adapter"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(no_adapter), "{}", text(&out.stderr));
    assert_eq!(listing(dir.path()), ["in"]);
    // The adapter the tests run on, named through each route.
    let adapter = common::gpu().unwrap().describe();
    let name = adapter.split([' ', '(']).next().unwrap();
    let named = wgquant_env(&[&["--adapter", name][..], &small].concat(), dir.path(), &[("WGQUANT_ADAPTER", name)]);
    assert!(named.status.success(), "{}", text(&named.stderr));
    assert!(text(&named.stdout).starts_with(&format!("adapter: {name}")), "{}", text(&named.stdout));
    let out = wgquant(&["convert", "in", "out", "--adapter", name], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("converting in -> out on {name}")), "{}", text(&out.stdout));
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
            message: "in: not found (the model directory)",
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
    let d = dir.path();
    TinyModel::default().write(&d.join("in"));
    std::fs::create_dir(d.join("out")).unwrap();
    write_file(&d.join("out/notes.txt"), b"keep");
    let out = wgquant(&["convert", "in", "out"], d);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("out: the output exists and is not an empty directory (pass --force to replace it)")
    );
    // --force replaces a checkpoint, never what else the directory holds.
    std::fs::create_dir(d.join("out/.ssh")).unwrap();
    write_file(&d.join("out/.ssh/id_ed25519"), b"secret");
    let out = wgquant(&["convert", "in", "out", "--force"], d);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("out: --force replaces only a checkpoint"), "{stderr}");
    assert!(stderr.contains("but the output also holds .ssh/, notes.txt; move them away"), "{stderr}");
    assert!(!stderr.contains("pass --force"), "{stderr}");
    assert_eq!(listing(&d.join("out")), [".ssh", "notes.txt"]);
    assert_eq!(std::fs::read(d.join("out/.ssh/id_ed25519")).unwrap(), b"secret");

    // A previous conversion, with a tokenizer file the new input lacks, is replaced.
    std::fs::remove_dir_all(d.join("out")).unwrap();
    assert!(wgquant(&["convert", "in", "out", "--bits", "8", "-q"], d).status.success());
    write_file(&d.join("out/special_tokens_map.json"), b"{}");
    let out = wgquant(&["convert", "in", "out", "--force", "-q"], d);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model = ModelDir::open(&d.join("out")).unwrap();
    assert_eq!(model.quantization().unwrap().defaults.bits, 4);
    assert_eq!(
        listing(&d.join("out")),
        ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    );
    assert_eq!(listing(d), ["in", "out"]);
}

/// A FIFO (or any file but a regular one) where a checkpoint file belongs is refused at once:
/// reading one would block forever.
#[cfg(unix)]
#[test]
fn non_regular_files_are_refused_without_blocking() {
    let mkfifo = |path: &Path| {
        rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR).unwrap()
    };
    let gpu = common::gpu().is_some();
    for file in ["config.json", "model.safetensors", "model.safetensors.index.json"] {
        let dir = temp_dir();
        let input = dir.path().join("in");
        TinyModel::default().write(&input);
        if file == "model.safetensors.index.json" {
            std::fs::rename(input.join("model.safetensors"), input.join("model-00001-of-00001.safetensors")).unwrap();
        } else {
            std::fs::remove_file(input.join(file)).unwrap();
        }
        mkfifo(&input.join(file));
        let message = format!("{file}: is a named pipe (FIFO), not a regular file (wgquant reads only regular files)");
        let mut runs = vec![vec!["inspect", "in"]];
        if gpu {
            runs.push(vec!["convert", "in", "out"]);
        }
        for args in runs {
            let out = wgquant(&args, dir.path());
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert!(text(&out.stderr).contains(&message), "{args:?}: {}", text(&out.stderr));
            assert_eq!(listing(dir.path()), ["in"], "{args:?}");
        }
        let out = wgquant(&["inspect", &format!("in/{file}")], dir.path());
        assert_eq!(out.status.code(), Some(1), "inspect {file}");
        assert!(text(&out.stderr).contains(&message), "inspect {file}: {}", text(&out.stderr));
    }
}

#[cfg(unix)]
fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// A conversion killed while it writes leaves no output: SIGINT and SIGTERM remove the
/// temporary directory at once, and after SIGKILL the next conversion to the same output
/// removes it. The conversion that finally completes is byte for byte the library's.
#[cfg(unix)]
#[test]
fn a_killed_conversion_leaves_no_partial_output() {
    let gpu = gpu_or_skip!();
    let dir = temp_dir();
    let d = dir.path();
    TinyModel { layers: 8, hidden: 128, vocab: 256, dtype: DType::F32 }.write(&d.join("in"));
    let reference = d.join("reference");
    let options = wgquant::io::ConvertOptions::quantize(wgquant::QuantParams::affine(64, 4));
    wgquant::io::convert(&d.join("in"), &reference, &gpu, &options, &mut |_, _| {}).unwrap();

    let mut landed = [0; 3];
    for attempt in 0..30 {
        let kind = attempt % 3;
        use rustix::process::Signal;
        let (number, code) = [(Signal::INT, 130), (Signal::TERM, 143), (Signal::KILL, -1)][kind];
        let child = Command::new(env!("CARGO_BIN_EXE_wgquant"))
            .args(["convert", "in", "out", "-q"])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The known point: the temporary directory holds the first shard, being written. The
        // child is stopped there, so the signal lands mid-write for certain.
        let temp = d.join(format!(".out.wgquant-tmp-{}", child.id()));
        let start = Instant::now();
        let mut caught = false;
        while start.elapsed() < HANG && !d.join("out").exists() {
            if temp.join("model.safetensors").exists() {
                signal(&child, Signal::STOP);
                caught = temp.exists() && !d.join("out").exists();
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        signal(&child, number);
        signal(&child, Signal::CONT);
        let out = wait_output(child, &["convert", "in", "out"]);
        if out.status.success() {
            // Finished before the signal arrived: the output is complete.
            assert!(ModelDir::open(&d.join("out")).unwrap().is_quantized());
        } else if caught {
            landed[kind] += 1;
            assert!(!d.join("out").exists(), "signal {number:?}: an output was left");
            if code > 0 {
                assert_eq!(out.status.code(), Some(code), "signal {number:?}: {}", text(&out.stderr));
                assert!(text(&out.stderr).contains("out: the conversion was interrupted; nothing was written"));
                assert!(!temp.exists(), "signal {number:?}: the temporary directory was left");
            } else {
                assert!(temp.exists(), "SIGKILL cannot be caught: its temporary directory stays");
            }
        }
        if d.join("out").exists() {
            std::fs::remove_dir_all(d.join("out")).unwrap();
        }
        if landed.iter().all(|&n| n > 0) {
            break;
        }
    }
    assert!(landed.iter().all(|&n| n > 0), "kills that landed mid-write (SIGINT, SIGTERM, SIGKILL): {landed:?}");

    // The next conversion removes what the SIGKILLed one left, and writes the reference bytes.
    let out = wgquant(&["convert", "in", "out", "-q"], d);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(listing(d), ["in", "out", "reference"]);
    let names = listing(&reference);
    assert_eq!(listing(&d.join("out")), names);
    for name in names {
        let same = std::fs::read(reference.join(&name)).unwrap() == std::fs::read(d.join("out").join(&name)).unwrap();
        assert!(same, "{name} differs from the library's conversion");
    }
}

/// The quantization of every layer of the model directory `dir`: (path, bits, group size), or
/// `None` for a float layer.
fn layer_bits(dir: &Path) -> Vec<(String, Option<(u32, u32)>)> {
    let model = ModelDir::open(dir).unwrap();
    model.layers().values().map(|l| (l.path.clone(), l.quantization.map(|p| (p.bits, p.group_size)))).collect()
}

#[test]
fn convert_flags_reach_the_checkpoint() {
    gpu_or_skip!();
    let dir = temp_dir();
    TinyModel::default().write(&dir.path().join("in"));
    let quantizable = |path: &str| path != "model.odd_proj" && !path.ends_with("layernorm") && path != "model.norm";

    let out =
        wgquant(&["convert", "in", "g32", "--bits", "8", "--group-size", "32", "--mode", "affine", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (path, q) in layer_bits(&dir.path().join("g32")) {
        assert_eq!(q, quantizable(&path).then_some((8, 32)), "{path}");
    }

    let out = wgquant(&["convert", "in", "skip", "--skip", r"mlp\.(gate|up)_proj$", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (path, q) in layer_bits(&dir.path().join("skip")) {
        let skipped = path.ends_with("gate_proj") || path.ends_with("up_proj");
        assert_eq!(q, (quantizable(&path) && !skipped).then_some((4, 64)), "{path}");
    }

    // mixed_3_6 on two blocks: L/8 = 0, so block 0 "uses more bits" only as (0 - 0) % 3 == 2
    // fails and 0 >= 7*2/8 = 1 fails; block 1 does (1 >= 1). v_proj and down_proj of block 1 and
    // lm_head get 6 bits, everything else 3.
    let out = wgquant(&["convert", "in", "mixed", "--recipe", "mixed_3_6", "--group-size", "32", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let high = ["model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj", "lm_head"];
    for (path, q) in layer_bits(&dir.path().join("mixed")) {
        let bits = if high.contains(&path.as_str()) { 6 } else { 3 };
        assert_eq!(q, quantizable(&path).then_some((bits, 32)), "{path}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("mixed/config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization"]["group_size"], 32);
    assert_eq!(config["quantization"]["lm_head"]["bits"], 6);
    assert_eq!(config["quantization"]["model.layers.0.mlp.down_proj"]["bits"], 3);

    // A recipe in an fp mode is refused before a GPU is opened (mlx-lm's recipes are affine).
    let out = wgquant(&["convert", "in", "mx", "--mode", "mxfp4", "--recipe", "mixed_3_6"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(listing(dir.path()), ["g32", "in", "mixed", "skip"]);
    // An fp mode: mlx-lm's layout, and inspect shows the mode and the bits per weight.
    let out = wgquant(&["convert", "in", "nv", "--mode", "nvfp4"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = wgquant(&["inspect", "nv"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("nvfp4 g16 b4"), "{shown}");
    assert!(shown.contains("bits per weight:"), "{shown}");
}

/// A model directory holding one tensor described by `header`, backed by a sparse file of
/// `data_len` bytes (a huge tensor costs no disk).
fn write_one_tensor_model(dir: &Path, header: &str, data_len: u64) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let bytes = safetensors_bytes(header, &[]);
    let file = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    file.set_len(bytes.len() as u64 + data_len).unwrap();
}

#[test]
fn careless_requests_fail_early_and_clearly() {
    gpu_or_skip!();
    let dir = temp_dir();
    let d = dir.path();
    TinyModel::default().write(&d.join("in"));
    std::fs::write(d.join("file"), b"not a directory").unwrap();
    // A checkpoint with no tensors.
    write_one_tensor_model(&d.join("empty"), "{}", 0);
    // A zero-element tensor whose packed width would overflow when unpacked.
    write_one_tensor_model(
        &d.join("huge-empty"),
        &format!(r#"{{"w.weight":{{"dtype":"F32","shape":[0,{}],"data_offsets":[0,0]}}}}"#, 1u64 << 62),
        0,
    );
    // 8 TiB of float data to copy: more than any test machine's free space.
    let tib8 = 1u64 << 43;
    write_one_tensor_model(
        &d.join("too-big"),
        &format!(r#"{{"norm":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{tib8}]}}}}"#, tib8 / 4),
        tib8,
    );
    let cases: [(&[&str], i32, &str); 10] = [
        (&["convert", "file", "out"], 1, "file: is a regular file, not a directory (the model directory)"),
        (&["convert", "in", "out", "--max-shard-bytes", "0"], 2, "0 is not in 1.."),
        (&["convert", "in", "out", "--recipe", "mixed_3_6", "--bits", "8"], 2, "cannot be used with"),
        (
            &["convert", "in", "out", "--dequantize"],
            1,
            "the checkpoint is not quantized, so --dequantize has nothing to do",
        ),
        (&["convert", "empty", "out"], 1, "empty: the checkpoint has no tensors, so there is nothing to convert"),
        (
            &["convert", "huge-empty", "out"],
            1,
            "tensor \"w.weight\" has shape (0,4611686018427387904), whose size overflows",
        ),
        (&["convert", "too-big", "out"], 1, "the conversion writes 8796093022208 bytes (8796093.0 MB), but only "),
        (&["convert", "in", ".."], 1, "..: the output must end in a directory name"),
        (&["convert", "in", "file", "--force"], 1, "file: the output exists and is a file, not a directory"),
        (&["inspect", "empty"], 0, "empty: 1 file(s), 0 tensors"),
    ];
    for (args, code, message) in cases {
        let out = wgquant(args, d);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out.stderr));
        let said = if code == 0 { text(&out.stdout) } else { text(&out.stderr) };
        assert!(said.contains(message), "{args:?}: {said}");
        assert!(!said.contains("pass --force"), "{args:?}: {said}");
    }
    assert_eq!(listing(d), ["empty", "file", "huge-empty", "in", "too-big"]);
}

/// Names with terminal escapes are printed escaped by `inspect` and in error messages.
#[test]
fn control_characters_in_names_are_escaped() {
    let dir = temp_dir();
    let name = "evil\u{1b}[2J\u{7}\r.weight";
    let header =
        format!(r#"{{{}:{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#, serde_json::to_string(name).unwrap());
    write_file(&dir.path().join("evil.safetensors"), &safetensors_bytes(&header, &[0; 4]));
    let out = wgquant(&["inspect", "evil.safetensors"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(r"evil\u{1b}[2J\u{7}\r.weight  float32  (1)"), "{stdout}");
    assert!(!stdout.contains(['\u{1b}', '\u{7}', '\r']), "{stdout:?}");
    let duplicated = format!(
        r#"{{{0}:{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},{0}:{{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}}}"#,
        serde_json::to_string(name).unwrap()
    );
    write_file(&dir.path().join("evil.safetensors"), &safetensors_bytes(&duplicated, &[0; 8]));
    let out = wgquant(&["inspect", "evil.safetensors"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(r#"tensor "evil\u{1b}[2J\u{7}\r.weight" appears twice"#), "{stderr}");
    assert!(!stderr.contains(['\u{1b}', '\u{7}', '\r']), "{stderr:?}");
}
