//! WGSL kernels: one key per specialisation, the source it compiles, and a naga check of the
//! resources it uses.
//!
//! A kernel's source is a generated prelude of `const` declarations (the format: dtypes, bits,
//! group size), then the shared snippets of `wgsl/common/`, then the kernel's own file. This is
//! the only place WGSL strings are joined. Tuning knobs are WGSL `override`s, passed as
//! pipeline constants. The key's `Display` is both the pipeline-cache key and the wgpu label.

use std::fmt;

use crate::dtype::DType;

/// The shared snippets every kernel sees, in this order.
const COMMON: [(&str, &str); 3] = [
    ("common/softfloat.wgsl", include_str!("../wgsl/common/softfloat.wgsl")),
    ("common/dtype.wgsl", include_str!("../wgsl/common/dtype.wgsl")),
    ("common/grid.wgsl", include_str!("../wgsl/common/grid.wgsl")),
];

const QUANTIZE: &str = include_str!("../wgsl/quantize.wgsl");
const DEQUANTIZE: &str = include_str!("../wgsl/dequantize.wgsl");

/// Invocations per workgroup of the element-wise kernels.
pub(crate) const ELEMENTWISE_WG_SIZE: u32 = 64;

/// One kernel specialisation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelKey {
    /// Affine quantize of a `dtype` matrix.
    Quantize {
        /// Input (and scales/biases) dtype.
        dtype: DType,
        /// Bits per code.
        bits: u32,
        /// Elements per group.
        group_size: u32,
    },
    /// Affine dequantize with `scale_dtype` scales into `out_dtype`.
    Dequantize {
        /// Scales and biases dtype (the compute type).
        scale_dtype: DType,
        /// Output dtype.
        out_dtype: DType,
        /// Bits per code.
        bits: u32,
        /// Elements per group.
        group_size: u32,
    },
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelKey::Quantize { dtype, bits, group_size } => {
                write!(f, "quantize_{}_gs{group_size}_b{bits}", dtype.short_name())
            }
            KernelKey::Dequantize { scale_dtype, out_dtype, bits, group_size } => write!(
                f,
                "dequantize_{}_to_{}_gs{group_size}_b{bits}",
                scale_dtype.short_name(),
                out_dtype.short_name()
            ),
        }
    }
}

impl KernelKey {
    /// The op this kernel serves, for error messages.
    pub fn op(&self) -> &'static str {
        match self {
            KernelKey::Quantize { .. } => "quantize",
            KernelKey::Dequantize { .. } => "dequantize",
        }
    }

    /// The kernel's own WGSL file and the prelude constants it needs.
    fn body_and_prelude(&self) -> (&'static str, Vec<(&'static str, u32)>) {
        match *self {
            KernelKey::Quantize { dtype, bits, group_size } => (
                QUANTIZE,
                vec![
                    ("BITS", bits),
                    ("GROUP_SIZE", group_size),
                    ("W_DTYPE", dtype.wgsl_id()),
                    ("GROUPS_PER_INVOCATION", 4 / dtype.size_in_bytes() as u32),
                ],
            ),
            KernelKey::Dequantize { scale_dtype, out_dtype, bits, group_size } => (
                DEQUANTIZE,
                vec![
                    ("BITS", bits),
                    ("GROUP_SIZE", group_size),
                    ("SCALE_DTYPE", scale_dtype.wgsl_id()),
                    ("OUT_DTYPE", out_dtype.wgsl_id()),
                ],
            ),
        }
    }

    /// Pipeline-overridable constants (tuning knobs) for this key.
    pub fn constants(&self) -> Vec<(String, f64)> {
        match self {
            KernelKey::Quantize { .. } | KernelKey::Dequantize { .. } => {
                vec![("WG_SIZE".to_string(), f64::from(ELEMENTWISE_WG_SIZE))]
            }
        }
    }

    /// Every specialisation wgquant can build for the ops in this file: used by the shader
    /// portability test.
    pub fn all() -> Vec<KernelKey> {
        let floats = [DType::F32, DType::F16, DType::BF16];
        let mut keys = Vec::new();
        for bits in crate::params::SUPPORTED_BITS {
            for group_size in crate::params::SUPPORTED_GROUP_SIZES {
                for dtype in floats {
                    keys.push(KernelKey::Quantize { dtype, bits, group_size });
                    for out_dtype in floats {
                        keys.push(KernelKey::Dequantize { scale_dtype: dtype, out_dtype, bits, group_size });
                    }
                }
            }
        }
        keys
    }
}

/// The complete WGSL source for `key`.
pub fn source(key: &KernelKey) -> String {
    let (body, prelude) = key.body_and_prelude();
    let mut src = format!("// {key}: generated prelude\n");
    for (name, value) in prelude {
        src.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    for (file, text) in COMMON {
        src.push_str(&format!("\n// ---- {file}\n{text}"));
    }
    src.push_str(&format!("\n// ---- {}\n{body}", key.op()));
    src
}

/// What a kernel asks of the device, read from its naga module after overrides are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceUsage {
    /// Bytes of `var<workgroup>` memory.
    pub workgroup_memory: u64,
    /// Invocations per workgroup.
    pub invocations: u64,
}

/// Parses and validates `source` with naga, applies `constants`, and measures the workgroup
/// memory and size of its `main` entry point.
pub fn resource_usage(
    source: &str,
    constants: &[(String, f64)],
    features: &wgpu::Features,
) -> Result<ResourceUsage, String> {
    let (module, _) = validated_module(source, constants, naga_capabilities(features))?;
    let layouter_ctx = module.to_ctx();
    let workgroup_memory = module
        .global_variables
        .iter()
        .filter(|(_, var)| var.space == naga::AddressSpace::WorkGroup)
        .map(|(_, var)| u64::from(module.types[var.ty].inner.size(layouter_ctx)))
        .sum();
    let entry = module.entry_points.iter().find(|e| e.name == "main").ok_or("no entry point `main`")?;
    let invocations = entry.workgroup_size.iter().map(|&d| u64::from(d)).product();
    Ok(ResourceUsage { workgroup_memory, invocations })
}

/// naga capabilities matching the device features wgquant requests.
pub fn naga_capabilities(features: &wgpu::Features) -> naga::valid::Capabilities {
    let mut caps = naga::valid::Capabilities::empty();
    if features.contains(wgpu::Features::SHADER_F16) {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    if features.contains(wgpu::Features::SUBGROUP) {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    caps
}

/// Parses, validates and resolves overrides: the module a backend would translate.
pub fn validated_module(
    source: &str,
    constants: &[(String, f64)],
    capabilities: naga::valid::Capabilities,
) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
    let info = validator.validate(&module).map_err(|e| e.emit_to_string(source))?;
    let overrides: naga::back::PipelineConstants = constants.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        &overrides,
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok((module.into_owned(), info.into_owned()))
}
