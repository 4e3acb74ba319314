//! Shaders without a GPU.
//!
//! Portability: every kernel specialisation wgquant can build is parsed and validated by naga,
//! then translated to MSL (Metal), SPIR-V (Vulkan) and HLSL (DX12), so Metal and DX12 users are
//! covered even though CI has no Mac or Windows machine.
//!
//! The Rust-WGSL contract: for every specialisation, naga's reflection of the WGSL must match
//! what the Rust side binds: the uniform `Params` struct (every field's name and offset, its
//! size), every storage binding (index, variable name, access, type), and the workgroup memory
//! and size the planner fits to a device.
//!
//! Snapshots of what wgquant owns (not naga's output): one canonical specialisation per family
//! with its generated prelude, overrides, parameters and bindings; and the workgroup memory of
//! every tuning variant.

use std::collections::BTreeMap;
use std::fmt::Write;

use naga::back::{hlsl, msl, spv};
use naga::valid::Capabilities;
use wgquant::kernels::{self, Access, KernelKey};

/// What the kernels may use: f16 and subgroups (the optional features wgquant requests).
const CAPABILITIES: Capabilities = Capabilities::SHADER_FLOAT16.union(Capabilities::SUBGROUP);
/// What `qmv_coop` uses besides: cooperative matrices, which a caller enables.
const EXTENSION_CAPABILITIES: Capabilities = CAPABILITIES
    .union(Capabilities::SUBGROUP_BARRIER)
    .union(Capabilities::COOPERATIVE_MATRIX)
    .union(Capabilities::SHADER_FLOAT16_IN_FLOAT32);

fn capabilities(key: &KernelKey) -> Capabilities {
    if key.needs_extensions() {
        EXTENSION_CAPABILITIES
    } else {
        CAPABILITIES
    }
}

fn module(key: &KernelKey) -> (naga::Module, naga::valid::ModuleInfo) {
    kernels::validated_module(&kernels::source(key), &key.constants(), capabilities(key))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// Every source wgquant builds (with default overrides), the extension kernels last.
fn every_source() -> Vec<KernelKey> {
    KernelKey::all().into_iter().chain(KernelKey::extension_kernels()).collect()
}

/// Every specialisation: each source's key and its override variants.
fn every_key() -> Vec<KernelKey> {
    every_source().into_iter().flat_map(|key| [key.clone()].into_iter().chain(key.override_variants())).collect()
}

/// Calls `check` with every specialisation's module, overrides resolved: each source is parsed
/// and validated once, then resolved for its key and each override variant.
fn for_every_resolved_module(mut check: impl FnMut(&KernelKey, &naga::Module)) {
    for source_key in every_source() {
        let source = kernels::source(&source_key);
        let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{source_key}: {e}"));
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities(&source_key));
        let info =
            validator.validate(&module).unwrap_or_else(|e| panic!("{source_key}: {}", e.emit_to_string(&source)));
        for key in [source_key.clone()].into_iter().chain(source_key.override_variants()) {
            let constants: naga::back::PipelineConstants = key.constants().into_iter().collect();
            let entry = Some((naga::ShaderStage::Compute, "main"));
            let (resolved, _) = naga::back::pipeline_constants::process_overrides(&module, &info, entry, &constants)
                .unwrap_or_else(|e| panic!("{key}: {e:?}"));
            check(&key, &resolved);
        }
    }
}

#[test]
fn every_specialisation_translates_to_msl_spirv_and_hlsl() {
    let keys = KernelKey::all();
    assert!(keys.len() >= 2 * 63, "{} specialisations", keys.len());
    for key in &keys {
        let (module, info) = module(key);
        // MSL 2.4 (macOS 12): the oldest version with every simdgroup builtin naga emits.
        let options = msl::Options { lang_version: (2, 4), ..Default::default() };
        let pipeline = msl::PipelineOptions {
            entry_point: Some((naga::ShaderStage::Compute, "main".into())),
            ..Default::default()
        };
        let metal =
            msl::write_string(&module, &info, &options, &pipeline).unwrap_or_else(|e| panic!("{key}: MSL: {e:?}"));
        assert!(!metal.0.is_empty());
        let spv_pipeline =
            spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
        let words = spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_pipeline))
            .unwrap_or_else(|e| panic!("{key}: SPIR-V: {e:?}"));
        assert_eq!(words[0], 0x0723_0203, "{key}: SPIR-V magic");
        // Shader model 6.0: wave (subgroup) intrinsics.
        let options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
        let pipeline = hlsl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, "main".into())) };
        let mut hlsl_source = String::new();
        hlsl::Writer::new(&mut hlsl_source, &options, &pipeline)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{key}: HLSL: {e:?}"));
        assert!(hlsl_source.contains("[numthreads("), "{key}: HLSL entry point");
    }
}

#[test]
fn cooperative_kernel_validates_and_translates_to_spirv() {
    // qmv_coop runs only on Vulkan devices with wgpu's experimental cooperative matrices (CI's
    // lavapipe has none), so naga's check and SPIR-V translation are what CI can give it.
    let keys = KernelKey::extension_kernels();
    assert!(!keys.is_empty());
    for key in &keys {
        let (module, info) = module(key);
        let spv_pipeline =
            spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: "main".into() };
        let words = spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_pipeline))
            .unwrap_or_else(|e| panic!("{key}: SPIR-V: {e:?}"));
        assert_eq!(words[0], 0x0723_0203, "{key}: SPIR-V magic");
        // Two workgroups per NVIDIA multiprocessor (48 KiB of workgroup memory).
        assert!(key.workgroup().workgroup_memory <= 24 * 1024, "{key}: {:?}", key.workgroup());
    }
}

/// WGSL's spelling of a naga type (the types kernels bind).
fn wgsl_type(module: &naga::Module, ty: naga::Handle<naga::Type>) -> String {
    let scalar = |s: &naga::Scalar| match (s.kind, s.width) {
        (naga::ScalarKind::Uint, 4) => "u32".to_string(),
        (naga::ScalarKind::Sint, 4) => "i32".to_string(),
        (naga::ScalarKind::Float, 4) => "f32".to_string(),
        (naga::ScalarKind::Float, 2) => "f16".to_string(),
        other => format!("{other:?}"),
    };
    match &module.types[ty].inner {
        naga::TypeInner::Scalar(s) => scalar(s),
        naga::TypeInner::Vector { size, scalar: s } => format!("vec{}<{}>", *size as u8, scalar(s)),
        naga::TypeInner::Atomic(s) => format!("atomic<{}>", scalar(s)),
        naga::TypeInner::Array { base, size: naga::ArraySize::Dynamic, .. } => {
            format!("array<{}>", wgsl_type(module, *base))
        }
        other => format!("{other:?}"),
    }
}

/// Checks `key`'s Rust-side contract against naga's reflection of its WGSL (`module`, overrides
/// resolved); returns what went wrong.
fn contract_errors(key: &KernelKey, module: &naga::Module) -> Vec<String> {
    let mut errors = Vec::new();
    let table = key.bindings();
    for (i, binding) in table.iter().enumerate() {
        if binding.index != i as u32 + 1 {
            errors.push(format!("binding {} is listed at position {} (ops bind in table order)", binding.name, i + 1));
        }
    }
    let mut seen = Vec::new();
    for (_, var) in module.global_variables.iter() {
        let Some(res) = &var.binding else { continue };
        let name = var.name.clone().unwrap_or_default();
        if res.group != 0 {
            errors.push(format!("{name} is in group {}", res.group));
        }
        if res.binding == 0 {
            errors.extend(params_errors(key, module, var));
            continue;
        }
        seen.push(res.binding);
        let Some(binding) = table.iter().find(|b| b.index == res.binding) else {
            errors.push(format!("binding {} ({name}) is missing from the Rust table", res.binding));
            continue;
        };
        let access = match var.space {
            naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
                Some(Access::ReadWrite)
            }
            naga::AddressSpace::Storage { .. } => Some(Access::Read),
            _ => None,
        };
        let ty = wgsl_type(module, var.ty);
        if (binding.name, Some(binding.access), binding.ty) != (name.as_str(), access, ty.as_str()) {
            errors.push(format!(
                "binding {}: Rust says {} {:?} {}, WGSL has {name} {access:?} {ty}",
                res.binding, binding.name, binding.access, binding.ty
            ));
        }
    }
    for binding in table.iter().filter(|b| !seen.contains(&b.index)) {
        errors.push(format!("binding {} ({}) is not in the WGSL", binding.index, binding.name));
    }
    let usage = kernels::module_usage(module).unwrap_or_else(|e| panic!("{key}: {e}"));
    if usage != key.workgroup() {
        errors.push(format!("workgroup: Rust says {:?}, naga measures {usage:?}", key.workgroup()));
    }
    errors
}

/// The uniform `Params` struct against the Rust layout: the same fields (padding aside) at the
/// same offsets, and a Rust struct that covers the WGSL one in whole 16-byte rows.
fn params_errors(key: &KernelKey, module: &naga::Module, var: &naga::GlobalVariable) -> Vec<String> {
    let mut errors = Vec::new();
    if var.space != naga::AddressSpace::Uniform {
        errors.push("binding 0 is not the uniform parameters".to_string());
    }
    let naga::TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
        return vec!["binding 0 is not a struct".to_string()];
    };
    let not_pad = |name: &str| !name.starts_with("pad");
    let wgsl: Vec<(String, usize)> = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
        .filter(|(name, _)| not_pad(name))
        .collect();
    let layout = key.params();
    let rust: Vec<(String, usize)> = layout
        .fields
        .iter()
        .filter(|(name, _)| not_pad(name))
        .map(|&(name, offset)| (name.to_string(), offset))
        .collect();
    if wgsl != rust {
        errors.push(format!("params: Rust fields {rust:?}, WGSL members {wgsl:?}"));
    }
    if layout.size < *span as usize || layout.size % 16 != 0 {
        errors.push(format!("params: Rust size {} for a WGSL span of {span} (whole 16-byte rows)", layout.size));
    }
    errors
}

#[test]
fn rust_and_wgsl_agree_on_every_specialisation() {
    let mut failures = BTreeMap::new();
    let mut checked = 0;
    for_every_resolved_module(|key, module| {
        let errors = contract_errors(key, module);
        if !errors.is_empty() {
            failures.insert(key.to_string(), errors);
        }
        checked += 1;
    });
    assert!(failures.is_empty(), "{} specialisations break the contract: {failures:#?}", failures.len());
    assert_eq!(checked, every_key().len());
}

/// One canonical specialisation per family: f16, group 64 and 4 bits where the family has
/// them, the default knobs, else the first key `all()` lists for that family.
fn canonical_keys() -> Vec<KernelKey> {
    let mut canonical: Vec<KernelKey> = Vec::new();
    let family = |key: &KernelKey| std::mem::discriminant(key);
    let score = |key: &KernelKey| {
        let label = key.to_string();
        let f16 = label.contains("f16") && !label.contains("f32") && !label.contains("bf16");
        let format = !label.contains("_gs") || label.contains("gs64_b4");
        let knobs = !label.contains("_wg") || label.contains("_wg64");
        let subgroup = !label.contains("_sg") || label.contains("_sg32") || label.starts_with("qmv_coop");
        [f16, format, knobs, subgroup].iter().filter(|&&b| b).count()
    };
    for key in every_key() {
        match canonical.iter_mut().find(|k| family(k) == family(&key)) {
            Some(best) if score(&key) > score(best) => *best = key,
            Some(_) => {}
            None => canonical.push(key),
        }
    }
    canonical
}

/// What wgquant owns of a specialisation: prelude, overrides, parameters, bindings, workgroup.
fn describe(key: &KernelKey) -> String {
    let mut text = format!("{key} (op {})\n", key.op());
    writeln!(text, "prelude:").unwrap();
    for (name, value) in key.prelude() {
        writeln!(text, "  const {name}: u32 = {value}u;").unwrap();
    }
    writeln!(text, "overrides:").unwrap();
    for (name, value) in key.constants() {
        writeln!(text, "  {name} = {value}").unwrap();
    }
    let params = key.params();
    writeln!(text, "params ({} bytes):", params.size).unwrap();
    for (name, offset) in params.fields {
        writeln!(text, "  {offset:>3} {name}").unwrap();
    }
    writeln!(text, "bindings:").unwrap();
    for b in key.bindings() {
        writeln!(text, "  {} {} {:?} {}", b.index, b.name, b.access, b.ty).unwrap();
    }
    let usage = key.workgroup();
    writeln!(
        text,
        "workgroup: {} invocations, {} bytes of workgroup memory",
        usage.invocations, usage.workgroup_memory
    )
    .unwrap();
    text
}

#[test]
fn family_snapshots() {
    let keys = canonical_keys();
    assert_eq!(keys.len(), 17, "{keys:?}");
    let text: String = keys.iter().map(|key| describe(key) + "\n").collect();
    insta::assert_snapshot!("families", text);
}

#[test]
fn workgroup_memory_of_every_variant() {
    // Every tuning variant of the kernels with workgroup memory, at f16, group 64, 4 bits:
    // what the planner fits to a device's limits.
    let mut text = String::new();
    for key in every_key() {
        let label = key.to_string();
        let usage = key.workgroup();
        // (fp-mode labels have no group size; the format does not change workgroup memory.)
        let fp_format = wgquant::params::FP_MODES.iter().any(|mode| label.contains(&format!("_{mode}")));
        let canonical_format = !fp_format
            && (!label.contains("_gs")
                || label.contains("f16_f16_to_f16_gs64_b4")
                || label.contains("f32_f16_to_f16_gs64_b4"));
        if usage.workgroup_memory > 0
            && canonical_format
            && !label.starts_with("matmul_")
            && !label.contains("rms_norm")
            && !label.contains("softmax")
        {
            writeln!(text, "{label}: {} bytes, {} invocations", usage.workgroup_memory, usage.invocations).unwrap();
        }
    }
    insta::assert_snapshot!("workgroup_memory", text);
}

// ---- Axes the quantized-matmul kernels' checks may be factored over ----------------------------

/// The prelude constants of the format, (bits, group size), and everything else a quantized-
/// matmul key varies: dtypes, tile and row constants, overrides.
const FORMAT_AXIS: [&str; 3] = ["MODE", "BITS", "GROUP_SIZE"];
const OTHER_AXES: [&str; 10] =
    ["X_DTYPE", "SCALE_DTYPE", "OUT_DTYPE", "VECS", "TRANSPOSE", "BM", "BN", "TN", "WG_SIZE", "MIN_SUBGROUP_SIZE"];

/// WGSL names that keep a constant expression constant: types, constructors and the built-in
/// functions the kernels use in constant expressions.
const CONST_BUILTINS: [&str; 22] = [
    "u32",
    "i32",
    "f32",
    "f16",
    "bool",
    "vec2",
    "vec3",
    "vec4",
    "mat2x4",
    "mat4x4",
    "array",
    "select",
    "min",
    "max",
    "clamp",
    "abs",
    "countOneBits",
    "firstLeadingBit",
    "true",
    "false",
    "bitcast",
    "exp2",
];

/// The statements of `source` that combine `a` and `b`: each declared name carries the axes of
/// what declares it (a `const`, `override` or `let` its constant initializer's, where every name
/// in it is constant; a `var` or `struct` its type's array sizes), and a statement combines the
/// axes of every name it mentions. Conservative: a name declared twice carries both
/// declarations' axes, and a statement that only mixes run-time values counts too.
fn statements_combining(source: &str, a: &[&str], b: &[&str]) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    let code: String = source.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let statements: Vec<&str> = code.split([';', '{', '}']).map(str::trim).filter(|s| !s.is_empty()).collect();
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
            .map(str::to_string)
            .collect()
    };
    // Axis of every name: 0 for `a`, 1 for `b`.
    let mut axes: HashMap<String, HashSet<u8>> = HashMap::new();
    for (axis, names) in [(0u8, a), (1, b)] {
        for name in names {
            axes.entry(name.to_string()).or_default().insert(axis);
        }
    }
    let mut constant: HashSet<String> = axes.keys().cloned().collect();
    constant.extend(CONST_BUILTINS.iter().map(|s| s.to_string()));
    // (declared name, the words its axes come from, whether it is constant where they are).
    let mut declarations: Vec<(String, Vec<String>, bool)> = Vec::new();
    let mut struct_name: Option<String> = None;
    for s in &statements {
        if let Some(name) = struct_name.take() {
            declarations.push((name, words(s), false));
            continue;
        }
        let w = words(s);
        match w.first().map(String::as_str) {
            Some("const" | "override" | "let") if w.len() > 1 => {
                declarations.push((w[1].clone(), w[2..].to_vec(), true));
            }
            // `var<space> name: type = init`: the type's array sizes.
            Some("var") => {
                let decl = s.split('=').next().unwrap_or("");
                let after_space = decl.split_once('>').filter(|_| decl.starts_with("var<")).map_or(decl, |(_, r)| r);
                let dw = words(after_space.trim_start_matches("var"));
                if let Some((name, ty)) = dw.split_first() {
                    declarations.push((name.clone(), ty.to_vec(), false));
                }
            }
            Some("struct") if w.len() > 1 => struct_name = Some(w[1].clone()),
            _ => {}
        }
    }
    loop {
        let mut changed = false;
        for (name, from, may_be_constant) in &declarations {
            if *may_be_constant && from.iter().all(|w| constant.contains(w)) && constant.insert(name.clone()) {
                changed = true;
            }
            let is_constant = constant.contains(name);
            if *may_be_constant && !is_constant {
                continue;
            }
            let inherited: HashSet<u8> = from.iter().filter_map(|w| axes.get(w)).flatten().copied().collect();
            let entry = axes.entry(name.clone()).or_default();
            let before = entry.len();
            entry.extend(inherited);
            changed |= entry.len() != before;
        }
        if !changed {
            break;
        }
    }
    // A call of a WGSL function of the source is a run-time value (naga evaluates none), so each
    // of its arguments is an expression of its own.
    let functions: HashSet<String> =
        statements.iter().filter_map(|s| s.strip_prefix("fn ")).map(|s| words(s)[0].clone()).collect();
    let mut expressions = Vec::new();
    for s in &statements {
        split_calls(s, &functions, &mut expressions);
    }
    expressions
        .into_iter()
        .filter(|e| {
            let found: HashSet<u8> = words(e).iter().filter_map(|w| axes.get(w)).flatten().copied().collect();
            found.len() == 2
        })
        .collect()
}

/// `expression` with every call of a function in `functions` replaced by `_`, then each
/// argument of those calls (the same way), into `out`.
fn split_calls(expression: &str, functions: &std::collections::HashSet<String>, out: &mut Vec<String>) {
    let bytes = expression.as_bytes();
    let mut outer = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let word = &expression[start..i];
        if !word.is_empty() && functions.contains(word) && bytes.get(i) == Some(&b'(') {
            // The balanced argument list, split at its top-level commas.
            let (mut depth, mut arg_start, mut j) = (0, i + 1, i);
            while j < bytes.len() {
                match bytes[j] {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => {
                        split_calls(&expression[arg_start..j], functions, out);
                        arg_start = j + 1;
                    }
                    _ => {}
                }
                j += 1;
            }
            split_calls(&expression[arg_start..j.min(bytes.len())], functions, out);
            outer.push('_');
            i = j + 1;
        } else if word.is_empty() {
            outer.push(bytes[i] as char);
            i += 1;
        } else {
            outer.push_str(word);
        }
    }
    out.push(outer);
}

/// Prelude constants that are the same in every key of a family (no axis).
const FIXED: [&str; 1] = ["PREPARED_CHUNK"];

/// The planner's tests count a quantized-matmul key as validated where the same key at 4 bits
/// and group 64 is, and its bits and group size are in some validated key of its family (the
/// product of every format with every dtype, tile and override is too large to validate:
/// src/ops/quantized_matmul/plan.rs, `every_key_the_planner_emits_is_validated`). That holds
/// where naga's checks of a source split into checks of bits and group size alone and checks
/// of the other axes alone: no statement of the WGSL combines the two, through constants it
/// declares or otherwise. Every prelude constant and override of these families must be on one
/// side or the other.
#[test]
fn bits_and_group_size_combine_with_no_other_axis() {
    let mut bodies = std::collections::HashSet::new();
    for key in every_source() {
        if !matches!(key, KernelKey::Qmv(_) | KernelKey::Qvm(_) | KernelKey::Qmm(_)) {
            continue;
        }
        let constants = key.constants();
        let overrides = constants.iter().map(|(name, _)| name.as_str());
        for name in key.prelude().into_iter().map(|(name, _)| name).chain(overrides) {
            assert!(
                FORMAT_AXIS.contains(&name) || OTHER_AXES.contains(&name) || FIXED.contains(&name),
                "{key}: {name} is on no axis"
            );
        }
        // The sources of a family differ only in the prelude's values: analyse each body once.
        let source = kernels::source(&key);
        let body = source.split_once("\n// ---- ").map_or(source.as_str(), |(_, body)| body).to_string();
        if bodies.insert(body.clone()) {
            let mixed = statements_combining(&body, &FORMAT_AXIS, &OTHER_AXES);
            assert!(mixed.is_empty(), "{key}: statements combining bits or group size with another axis: {mixed:#?}");
        }
    }
    assert!(bodies.len() >= 4, "{} bodies", bodies.len());
}

/// The analysis finds a combination through constants, array sizes, lets and indices, and not
/// through a call's separate arguments.
#[test]
fn axis_analysis_finds_planted_combinations() {
    let prelude = "const BITS: u32 = 4u;\nconst BM: u32 = 64u;\n";
    let combining = |body: &str| statements_combining(&format!("{prelude}{body}"), &FORMAT_AXIS, &OTHER_AXES);
    for planted in [
        "const A: u32 = BITS * 2u;\nvar<workgroup> t: array<f32, BM * A>;",
        "var<private> acc: array<f32, BM>;\nfn f() { acc[BITS] = 1.0; }",
        "fn f() { let a = BITS + 1u; let b = a * BM; }",
        "fn g(v: u32) -> u32 { return v; }\nfn f() { let b = g(BITS * BM); }",
        "struct S { a: array<u32, BM> }\nvar<private> s: S;\nfn f() { s.a[BITS] = 0u; }",
    ] {
        assert!(!combining(planted).is_empty(), "not found: {planted}");
    }
    for apart in [
        "fn g(a: u32, b: u32) -> u32 { return a + b; }\nfn f() { let c = g(BITS, BM); }",
        "fn f(i: u32) { let a = i * BITS; let b = i * BM; }",
    ] {
        assert!(combining(apart).is_empty(), "found: {apart}: {:?}", combining(apart));
    }
}
