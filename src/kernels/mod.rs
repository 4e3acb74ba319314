//! WGSL kernels, one module per family: each owns its key (the specialisation: its `Display` is
//! both the pipeline-cache key and the wgpu label), its uniform parameters, its named bindings,
//! its source parts, its tuning constants and the workgroup resources it asks of a device.
//!
//! A kernel's source is a generated prelude of `const` declarations (the format: dtypes, bits,
//! group size), then the shared snippets of `wgsl/common/` (all kernels see most of them; a few
//! go only to the kernels that name them), then the kernel's own file. This is the only place
//! WGSL strings are joined. Tuning knobs are WGSL `override`s, passed as pipeline constants.
//! Adding a family is one module implementing [`Family`] and one line in [`KernelKey`]'s list.

use std::fmt;
use std::hash::Hash;

mod binary;
mod dequantize;
mod fp_quantize;
mod gather;
mod gather_sort;
mod gather_table;
mod matmul;
mod matmul_format;
mod qmm;
mod qmm_sum_partials;
mod qmv;
mod qmv_coop;
mod qmv_prepare;
mod quantize;
mod qvm;
mod rms_norm;
mod softmax;
mod unary;

pub(crate) use binary::{BinaryBindings, BinaryParams};
pub use binary::{BinaryKey, BinaryOp};
pub use dequantize::DequantizeKey;
pub(crate) use dequantize::{DequantizeBindings, DequantizeParams};
pub use fp_quantize::FpQuantizeKey;
pub(crate) use fp_quantize::{FpQuantizeBindings, FpQuantizeParams, FP_GROUPS_PER_INVOCATION};
pub use gather::GatherKey;
pub(crate) use gather::{GatherBindings, GatherParams};
pub use gather_sort::GatherSortKey;
pub(crate) use gather_sort::{GatherSortBindings, GatherSortParams};
pub use gather_table::GatherTableKey;
pub(crate) use gather_table::{GatherTableBindings, GatherTableParams, GIVEN_LHS, GIVEN_RHS};
pub use matmul::MatmulKey;
pub(crate) use matmul::{MatmulBindings, MatmulParams, MATMUL_TILE};
pub use matmul_format::MatmulFormat;
pub(crate) use matmul_format::{QuantizedMatmulBindings, QuantizedMatmulParams};
pub use qmm::{QmmKey, QmmShape, QMM_TILE_ROWS};
pub use qmm_sum_partials::SumPartialsKey;
pub(crate) use qmm_sum_partials::{SumPartialsBindings, SumPartialsParams, SUM_PARTIALS_WG_SIZE};
pub(crate) use qmv::QMV_WG_SIZE;
pub use qmv::{QmvKey, Reduction};
pub use qmv_coop::QmvCoopKey;
pub(crate) use qmv_coop::{CoopBindings, CoopParams, QMV_COOP_SLICE, QMV_COOP_SUBGROUPS, QMV_COOP_SUBGROUP_SIZE};
pub use qmv_prepare::QmvPrepareKey;
pub(crate) use qmv_prepare::{PrepareBindings, PrepareParams, PREPARED_CHUNK};
pub use quantize::QuantizeKey;
pub(crate) use quantize::{QuantizeBindings, QuantizeParams};
pub use qvm::QvmKey;
pub(crate) use qvm::QVM_WG_SIZE;
pub use rms_norm::RmsNormKey;
pub(crate) use rms_norm::{RmsNormBindings, RmsNormParams};
pub use softmax::SoftmaxKey;
pub(crate) use softmax::{SoftmaxBindings, SoftmaxParams};
pub(crate) use unary::{UnaryBindings, UnaryParams};
pub use unary::{UnaryKey, UnaryOp};

/// Invocations per workgroup of the element-wise kernels.
pub(crate) const ELEMENTWISE_WG_SIZE: u32 = 64;
/// Invocations per workgroup of the row kernels (RMSNorm, softmax): one workgroup per row.
pub(crate) const ROW_WG_SIZE: u32 = 64;

/// A WGSL snippet: its path under `wgsl/` (for the source's section headers) and its text.
pub type Snippet = (&'static str, &'static str);

/// The shared snippets every kernel sees, in this order.
const COMMON: [Snippet; 4] = [
    ("common/softfloat.wgsl", include_str!("../../wgsl/common/softfloat.wgsl")),
    ("common/dtype.wgsl", include_str!("../../wgsl/common/dtype.wgsl")),
    ("common/element.wgsl", include_str!("../../wgsl/common/element.wgsl")),
    ("common/grid.wgsl", include_str!("../../wgsl/common/grid.wgsl")),
];

/// How a kernel accesses one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// One storage binding of a kernel: its index, the name of its WGSL variable, how the kernel
/// accesses it and its WGSL type (`array<u32>`, `array<atomic<u32>>`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The binding index (0 is the uniform parameters).
    pub index: u32,
    /// The WGSL variable.
    pub name: &'static str,
    /// Read or read-write.
    pub access: Access,
    /// The WGSL type, as WGSL spells it.
    pub ty: &'static str,
}

/// The layout of a kernel's uniform parameters as Rust lays them out: every field's name and
/// byte offset (fields named `pad*` fill the struct to whole 16 bytes), and the size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamsLayout {
    /// `(name, offset)` of every field, in order.
    pub fields: &'static [(&'static str, usize)],
    /// `size_of` the struct.
    pub size: usize,
}

/// Declares a kernel's uniform parameters: a `Pod` struct and its [`ParamsLayout`], which the
/// contract test checks against the WGSL struct `Params`.
macro_rules! params {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        #[allow(missing_docs)]
        pub(crate) struct $name {
            $(pub $field: $ty),*
        }

        impl $name {
            /// The layout the contract test checks against the WGSL.
            pub const LAYOUT: $crate::kernels::ParamsLayout = $crate::kernels::ParamsLayout {
                fields: &[$((stringify!($field), std::mem::offset_of!($name, $field))),*],
                size: std::mem::size_of::<$name>(),
            };
        }
    };
}
pub(crate) use params;

/// Declares a kernel's storage bindings by name: a struct with one field per binding (ops fill
/// it, so they never bind by position) and its table of [`Binding`]s, in index order from 1.
macro_rules! bindings {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $index:literal $access:ident $ty:literal),* $(,)? }) => {
        $(#[$doc])*
        #[allow(missing_docs)]
        pub(crate) struct $name<T> {
            $(pub $field: T),*
        }

        impl<T> $name<T> {
            /// Every binding, in index order.
            pub const TABLE: &'static [$crate::kernels::Binding] = &[$($crate::kernels::Binding {
                index: $index,
                name: stringify!($field),
                access: $crate::kernels::Access::$access,
                ty: $ty,
            }),*];

            /// The bound values in index order (bindings 1, 2, ...).
            pub fn into_vec(self) -> Vec<T> {
                vec![$(self.$field),*]
            }
        }
    };
}
pub(crate) use bindings;

/// What a kernel family says about one of its specialisations.
pub(crate) trait Family: Copy + Eq + Hash + fmt::Display {
    /// The op it serves, for error messages.
    fn op(&self) -> &'static str;
    /// The kernel's own WGSL file.
    fn body(&self) -> &'static str;
    /// Prelude constants.
    fn prelude(&self) -> Vec<(&'static str, u32)>;
    /// Snippets beyond [`COMMON`] it includes, in order.
    fn snippets(&self) -> Vec<Snippet> {
        Vec::new()
    }
    /// WGSL `enable` directives (they must open the source).
    fn enables(&self) -> &'static [&'static str] {
        &[]
    }
    /// Pipeline-overridable constants (tuning knobs).
    fn constants(&self) -> Vec<(&'static str, u32)>;
    /// Bytes of workgroup memory and invocations per workgroup (checked against naga by the
    /// contract test; the planner reads them to fit a device).
    fn workgroup(&self) -> ResourceUsage;
    /// Its uniform parameters.
    fn params(&self) -> ParamsLayout;
    /// Its storage bindings.
    fn bindings(&self) -> &'static [Binding];
    /// Every specialisation the ops can build whose source differs, with its default
    /// overrides.
    fn keys() -> Vec<Self>;
    /// The other specialisations of the same source: every override value the planner may
    /// pick ([`KernelKey::override_variants`]).
    fn override_variants(&self) -> Vec<Self> {
        Vec::new()
    }
}

/// Lists the families: the [`KernelKey`] enum, one variant per family, delegating to it.
macro_rules! families {
    ($($variant:ident($key:ty)),* $(,)?) => {
        /// One kernel specialisation: a thin enum over the families' keys.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum KernelKey {
            $(
                #[allow(missing_docs)]
                $variant($key)
            ),*
        }

        $(impl From<$key> for KernelKey {
            fn from(key: $key) -> KernelKey {
                KernelKey::$variant(key)
            }
        })*

        impl KernelKey {
            fn family(&self) -> &dyn DynFamily {
                match self {
                    $(KernelKey::$variant(key) => key),*
                }
            }

            /// The specialisations that share this one's source and differ only in overrides
            /// (pipeline constants) the planner may pick: the shader tests resolve each, the
            /// planner's tests check that it emits no other (see [`KernelKey::all`]).
            pub fn override_variants(&self) -> Vec<KernelKey> {
                match self {
                    $(KernelKey::$variant(key) => {
                        key.override_variants().into_iter().map(KernelKey::$variant).collect()
                    }),*
                }
            }

            /// Every source the ops can build on a device with the features wgquant requests
            /// itself, family by family, each with its default overrides (the shader tests
            /// validate and translate each; with their [`KernelKey::override_variants`], the
            /// planner's tests check that it emits no other, up to the bits and group size of
            /// the quantized-matmul kernels: every tuning variant is listed at 4 bits and group
            /// 64 only, the shader tests showing that bits and group size combine with no other
            /// axis). [`KernelKey::extension_kernels`] lists the rest.
            pub fn all() -> Vec<KernelKey> {
                let mut keys = Vec::new();
                $(keys.extend(<$key as Family>::keys().into_iter().map(KernelKey::$variant));)*
                keys.retain(|key| !key.needs_extensions());
                keys
            }

            /// Every specialisation that needs an extension a caller enables
            /// ([`KernelKey::needs_extensions`]).
            pub fn extension_kernels() -> Vec<KernelKey> {
                let mut keys = Vec::new();
                $(keys.extend(<$key as Family>::keys().into_iter().map(KernelKey::$variant));)*
                keys.retain(KernelKey::needs_extensions);
                keys
            }
        }
    };
}

families! {
    Quantize(QuantizeKey),
    Dequantize(DequantizeKey),
    FpQuantize(FpQuantizeKey),
    Matmul(MatmulKey),
    Gather(GatherKey),
    GatherTable(GatherTableKey),
    GatherSort(GatherSortKey),
    RmsNorm(RmsNormKey),
    Softmax(SoftmaxKey),
    Unary(UnaryKey),
    Binary(BinaryKey),
    Qmv(QmvKey),
    QmvPrepare(QmvPrepareKey),
    Qvm(QvmKey),
    Qmm(QmmKey),
    QmvCoop(QmvCoopKey),
    QmmSumPartials(SumPartialsKey),
}

/// [`Family`] without its `Sized` parts, for [`KernelKey`] to delegate to.
trait DynFamily: fmt::Display {
    fn op(&self) -> &'static str;
    fn body(&self) -> &'static str;
    fn prelude(&self) -> Vec<(&'static str, u32)>;
    fn snippets(&self) -> Vec<Snippet>;
    fn enables(&self) -> &'static [&'static str];
    fn constants(&self) -> Vec<(&'static str, u32)>;
    fn workgroup(&self) -> ResourceUsage;
    fn params(&self) -> ParamsLayout;
    fn bindings(&self) -> &'static [Binding];
}

impl<F: Family> DynFamily for F {
    fn op(&self) -> &'static str {
        Family::op(self)
    }
    fn body(&self) -> &'static str {
        Family::body(self)
    }
    fn prelude(&self) -> Vec<(&'static str, u32)> {
        Family::prelude(self)
    }
    fn snippets(&self) -> Vec<Snippet> {
        Family::snippets(self)
    }
    fn enables(&self) -> &'static [&'static str] {
        Family::enables(self)
    }
    fn constants(&self) -> Vec<(&'static str, u32)> {
        Family::constants(self)
    }
    fn workgroup(&self) -> ResourceUsage {
        Family::workgroup(self)
    }
    fn params(&self) -> ParamsLayout {
        Family::params(self)
    }
    fn bindings(&self) -> &'static [Binding] {
        Family::bindings(self)
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.family().fmt(f)
    }
}

impl KernelKey {
    /// The op this kernel serves, for error messages.
    pub fn op(&self) -> &'static str {
        self.family().op()
    }

    /// Pipeline-overridable constants (tuning knobs) for this key.
    pub fn constants(&self) -> Vec<(String, f64)> {
        self.family().constants().into_iter().map(|(name, value)| (name.to_string(), f64::from(value))).collect()
    }

    /// The prelude constants of its source.
    pub fn prelude(&self) -> Vec<(&'static str, u32)> {
        self.family().prelude()
    }

    /// Bytes of workgroup memory and invocations per workgroup it asks of a device.
    pub fn workgroup(&self) -> ResourceUsage {
        self.family().workgroup()
    }

    /// The layout of its uniform parameters on the Rust side.
    pub fn params(&self) -> ParamsLayout {
        self.family().params()
    }

    /// Its storage bindings (1, 2, ... in order).
    pub fn bindings(&self) -> &'static [Binding] {
        self.family().bindings()
    }

    /// Whether it needs a WGSL extension beyond the features wgquant requests itself (f16 and
    /// subgroups): `qmv_coop`'s cooperative matrices, which a caller enables.
    pub fn needs_extensions(&self) -> bool {
        !self.family().enables().is_empty()
    }
}

/// The complete WGSL source for `key`.
pub fn source(key: &KernelKey) -> String {
    let family = key.family();
    let mut src = format!("// {key}: generated prelude\n");
    for extension in family.enables() {
        src.push_str(&format!("enable {extension};\n"));
    }
    for (name, value) in family.prelude() {
        src.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    for (file, text) in COMMON.into_iter().chain(family.snippets()) {
        src.push_str(&format!("\n// ---- {file}\n{text}"));
    }
    src.push_str(&format!("\n// ---- {}\n{}", family.op(), family.body()));
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
    module_usage(&module)
}

/// The workgroup memory and size of `module`'s `main` entry point.
pub fn module_usage(module: &naga::Module) -> Result<ResourceUsage, String> {
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
    if features.contains(wgpu::Features::SUBGROUP_BARRIER) {
        caps |= naga::valid::Capabilities::SUBGROUP_BARRIER;
    }
    if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        // (Devices with cooperative matrices are full Vulkan ones, whose downlevel flags give
        // `unpack2x16float`, which `qmv_coop` uses.)
        caps |= naga::valid::Capabilities::COOPERATIVE_MATRIX | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
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
    .map_err(|e| e.to_string())?;
    Ok((module.into_owned(), info.into_owned()))
}

/// The element dtypes every float kernel is built for.
const FLOATS: [crate::dtype::DType; 3] =
    [crate::dtype::DType::F32, crate::dtype::DType::F16, crate::dtype::DType::BF16];
