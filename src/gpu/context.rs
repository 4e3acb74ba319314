//! Opening a device: options (and the environment variables behind them), adapter choice,
//! features and limits, and what kernels need to know about the device ([`Caps`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Gpu, GpuInner};
use crate::error::{Error, Result};

/// Features wgquant uses when the adapter has them. None is required.
const WANTED_FEATURES: wgpu::Features =
    wgpu::Features::SHADER_F16.union(wgpu::Features::SUBGROUP).union(wgpu::Features::TIMESTAMP_QUERY);

/// The default deadline for one wait on the GPU. Long enough for the largest CI shapes on
/// lavapipe, short enough that a hung kernel surfaces as an error.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How to choose and open the device. `Default` takes the best adapter of the primary backends
/// (Vulkan, Metal, DX12): a discrete GPU first, a CPU adapter such as lavapipe last.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider; `None` means Vulkan, Metal and DX12.
    pub backends: Option<wgpu::Backends>,
    /// Keep only adapters whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Ask the device for at most this storage binding size (to test splitting large tensors).
    pub max_storage_buffer_binding_size: Option<u64>,
    /// Ask the device for at most this many workgroups per dispatch dimension (to test 2-D grids).
    pub max_compute_workgroups_per_dimension: Option<u32>,
    /// Deadline for each wait on the GPU.
    pub timeout: Duration,
    /// Features not to use even where the adapter has them (to exercise fallback kernels, e.g.
    /// the workgroup-memory reductions that replace subgroup operations).
    pub without_features: wgpu::Features,
    /// Open the device with WebGPU's default limits (`wgpu::Limits::default()`) rather than the
    /// adapter's, so that a machine with a large GPU runs what a browser would allow.
    pub webgpu_limits: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backends: None,
            adapter_name: None,
            max_storage_buffer_binding_size: None,
            max_compute_workgroups_per_dimension: None,
            timeout: DEFAULT_TIMEOUT,
            without_features: wgpu::Features::empty(),
            webgpu_limits: false,
        }
    }
}

/// The features `WGQUANT_DISABLE_FEATURES` may name, in its spelling (WebGPU's).
const NAMED_FEATURES: [(&str, wgpu::Features); 3] = [
    ("shader-f16", wgpu::Features::SHADER_F16),
    ("subgroup", wgpu::Features::SUBGROUP),
    ("timestamp-query", wgpu::Features::TIMESTAMP_QUERY),
];

impl GpuOptions {
    /// Defaults, overridden by the environment:
    /// - `WGQUANT_BACKEND=vulkan|metal|dx12|gl`;
    /// - `WGQUANT_ADAPTER=<name substring>`;
    /// - `WGQUANT_DISABLE_FEATURES=shader-f16,subgroup,timestamp-query` (any of them) adds to
    ///   [`GpuOptions::without_features`];
    /// - `WGQUANT_LIMITS=webgpu-default` sets [`GpuOptions::webgpu_limits`] (`adapter`, the
    ///   default, keeps the adapter's).
    ///
    /// # Errors
    /// [`Error::InvalidEnvironment`] naming the variable, its value and the allowed values.
    pub fn from_env() -> Result<Self> {
        let mut options = GpuOptions::default();
        if let Ok(name) = std::env::var("WGQUANT_BACKEND") {
            options.backends = Some(parse_backend(&name)?);
        }
        if let Ok(name) = std::env::var("WGQUANT_ADAPTER") {
            if !name.is_empty() {
                options.adapter_name = Some(name);
            }
        }
        if let Ok(list) = std::env::var("WGQUANT_DISABLE_FEATURES") {
            options.without_features |= parse_features(&list)?;
        }
        if let Ok(limits) = std::env::var("WGQUANT_LIMITS") {
            options.webgpu_limits = match limits.as_str() {
                "" | "adapter" => false,
                "webgpu-default" => true,
                _ => {
                    return Err(Error::InvalidEnvironment {
                        variable: "WGQUANT_LIMITS",
                        value: limits,
                        allowed: "adapter, webgpu-default",
                    })
                }
            };
        }
        Ok(options)
    }
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" => Ok(wgpu::Backends::VULKAN),
        "metal" => Ok(wgpu::Backends::METAL),
        "dx12" => Ok(wgpu::Backends::DX12),
        "gl" => Ok(wgpu::Backends::GL),
        _ => Err(Error::InvalidEnvironment {
            variable: "WGQUANT_BACKEND",
            value: name.to_string(),
            allowed: "vulkan, metal, dx12, gl",
        }),
    }
}

fn parse_features(list: &str) -> Result<wgpu::Features> {
    list.split(',').map(str::trim).filter(|name| !name.is_empty()).try_fold(wgpu::Features::empty(), |acc, name| {
        match NAMED_FEATURES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, feature)) => Ok(acc | *feature),
            None => Err(Error::InvalidEnvironment {
                variable: "WGQUANT_DISABLE_FEATURES",
                value: list.to_string(),
                allowed: "a comma-separated list of shader-f16, subgroup, timestamp-query",
            }),
        }
    })
}

/// What kernels need to know about the device, read once.
#[derive(Clone, Debug)]
pub struct Caps {
    /// The adapter's name and backend.
    pub info: wgpu::AdapterInfo,
    /// Features the device was opened with.
    pub features: wgpu::Features,
    /// Limits the device was opened with.
    pub limits: wgpu::Limits,
    /// Whether `quantized_matmul` may use cooperative matrices (tensor cores): the adapter
    /// multiplies 16 x 16 f16 matrices into f32, and the device was opened with wgpu's
    /// experimental cooperative matrices, f16 and subgroup barriers. wgquant never enables the
    /// experimental feature itself (that takes `unsafe`): a caller who does passes the device
    /// to [`Gpu::from_device`].
    pub cooperative_f16: bool,
}

impl Caps {
    /// Whether subgroup operations are available.
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Whether pass timestamps are available (benchmarks).
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The largest storage binding, rounded down to whole 16-byte vectors (so that a window
    /// that fits still fits once widened to whole vectors).
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size & !(super::VECTOR_BYTES - 1)
    }
}

/// The features `qmv_coop` needs beside an adapter's 16 x 16 f16 matrices.
const COOPERATIVE_FEATURES: wgpu::Features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::SUBGROUP_BARRIER);

/// Whether kernels may use `adapter`'s cooperative matrices on a device with `features` (see
/// [`Caps::cooperative_f16`]): the features, and 16 x 16 f16 matrices multiplied into f32 among
/// the shapes wgpu lists for the adapter.
fn cooperative_f16(adapter: &wgpu::Adapter, features: &wgpu::Features) -> bool {
    features.contains(COOPERATIVE_FEATURES)
        && adapter.cooperative_matrix_properties().iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
}

/// The best adapter `options` allow among those `usable` accepts (`what` describes them in
/// the error): a discrete GPU first, a CPU adapter last.
fn choose_adapter(options: &GpuOptions, what: &str, usable: impl Fn(&wgpu::Adapter) -> bool) -> Result<wgpu::Adapter> {
    let backends = options.backends.unwrap_or(wgpu::Backends::PRIMARY);
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let seen: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
    let wanted = options.adapter_name.as_deref().map(str::to_lowercase);
    adapters
        .into_iter()
        .filter(|a| wanted.as_ref().is_none_or(|w| a.get_info().name.to_lowercase().contains(w)) && usable(a))
        .min_by_key(|a| device_type_rank(a.get_info().device_type))
        .ok_or_else(|| {
            let filter = options.adapter_name.as_deref().map(|n| format!(" matching \"{n}\"")).unwrap_or_default();
            let found = if seen.is_empty() { "none".to_string() } else { seen.join("; ") };
            let hint = if what.is_empty() {
                "; on Linux without a GPU install Mesa's lavapipe (apt-get install mesa-vulkan-drivers)"
            } else {
                ""
            };
            Error::NoAdapter(format!(
                "no adapter{filter}{what} on backends {backends:?} (adapters found: {found}){hint}"
            ))
        })
}

impl Gpu {
    /// Opens the best adapter, honouring the environment variables of [`GpuOptions::from_env`].
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when no adapter matches (no driver installed, or a filter excluded
    /// all), [`Error::RequestDevice`] when the adapter refuses the device,
    /// [`Error::InvalidEnvironment`] for a misspelt variable.
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(GpuOptions::from_env()?)
    }

    /// Opens an adapter chosen by `options`.
    ///
    /// # Errors
    /// As [`Gpu::new`].
    pub fn with_options(options: GpuOptions) -> Result<Gpu> {
        let adapter = choose_adapter(&options, "", |_| true)?;
        let features = adapter.features() & WANTED_FEATURES & !options.without_features;
        Gpu::open(&adapter, &options, features, |_| {})
    }

    /// Opens the best adapter (as `options` choose among those) that multiplies 16 x 16 f16
    /// cooperative matrices into f32, with wgpu's experimental cooperative matrices on, so that
    /// `quantized_matmul` runs 2 to 8 rows of f16 x on tensor cores ([`Caps::cooperative_f16`]).
    ///
    /// wgpu keeps experimental features behind `unsafe` (`wgpu::ExperimentalFeatures::enabled`),
    /// and wgquant has none: `enable` receives the device descriptor and turns them on, taking
    /// on wgpu's terms for them:
    /// ```no_run
    /// # fn main() -> wgquant::Result<()> {
    /// use wgquant::{Gpu, GpuOptions};
    /// // SAFETY: wgquant's cooperative kernel is checked like every other; wgpu validates
    /// // experimental features less thoroughly than stable ones.
    /// let gpu = Gpu::with_cooperative_matrices(GpuOptions::default(), |descriptor| {
    ///     descriptor.experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() }
    /// })?;
    /// assert!(gpu.caps().cooperative_f16);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when no adapter offers such matrices (CPU adapters such as lavapipe
    /// 22 do not); [`Error::RequestDevice`] when the device is refused, as it is when `enable`
    /// leaves the experimental features off.
    pub fn with_cooperative_matrices(
        options: GpuOptions,
        enable: impl FnOnce(&mut wgpu::DeviceDescriptor<'_>),
    ) -> Result<Gpu> {
        let adapter =
            choose_adapter(&options, " with 16 x 16 f16 cooperative matrices", |a| cooperative_f16(a, &a.features()))?;
        let features = (adapter.features() & WANTED_FEATURES & !options.without_features) | COOPERATIVE_FEATURES;
        Gpu::open(&adapter, &options, features, enable)
    }

    /// Opens `adapter` with `features` and `options`' limits, the descriptor passing through
    /// `configure` last.
    fn open(
        adapter: &wgpu::Adapter,
        options: &GpuOptions,
        features: wgpu::Features,
        configure: impl FnOnce(&mut wgpu::DeviceDescriptor<'_>),
    ) -> Result<Gpu> {
        // WebGPU's defaults are what every conformant adapter offers at least.
        let mut limits = if options.webgpu_limits { wgpu::Limits::default() } else { adapter.limits() };
        if let Some(max) = options.max_storage_buffer_binding_size {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(max);
        }
        if let Some(max) = options.max_compute_workgroups_per_dimension {
            limits.max_compute_workgroups_per_dimension = limits.max_compute_workgroups_per_dimension.min(max);
        }
        let mut descriptor = wgpu::DeviceDescriptor {
            label: Some("wgquant"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        configure(&mut descriptor);
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| Error::RequestDevice { adapter: adapter.get_info().name, message: e.to_string() })?;

        let gpu = Gpu::build(adapter, device, queue, options.timeout);
        // wgpu's default handler panics; errors outside our scopes are recorded instead.
        let uncaptured = Arc::clone(&gpu.inner.uncaptured);
        gpu.inner.device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut errors) = uncaptured.lock() {
                errors.push(e.to_string());
            }
        }));
        Ok(gpu)
    }

    /// Wraps a device and queue the caller already owns, with the default deadline (their
    /// uncaptured-error handler stays theirs). `adapter` supplies the name, subgroup sizes and
    /// matrix shapes kernels are specialised for. A device opened with
    /// [`wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX`] (and `SHADER_F16`, `SUBGROUP_BARRIER`)
    /// on an adapter with 16 x 16 f16 matrices lets `quantized_matmul` use tensor cores for 2 to
    /// 8 rows of f16 x ([`Caps::cooperative_f16`]). Use the [`wgpu`](crate::wgpu) that wgquant
    /// re-exports, so that the types match:
    /// ```no_run
    /// # fn main() -> wgquant::Result<()> {
    /// use wgquant::{wgpu, Gpu, QuantParams, Tensor};
    ///
    /// let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    /// let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
    ///     .expect("an adapter");
    /// let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
    ///     required_features: adapter.features() & wgpu::Features::SUBGROUP,
    ///     ..Default::default()
    /// }))
    /// .expect("a device");
    /// let gpu = Gpu::from_device(&adapter, device, queue);
    /// let w = Tensor::from_slice(&gpu, &[0.25f32; 4 * 64], &[4, 64])?;
    /// let q = wgquant::quantize(&w, QuantParams::affine(64, 4))?;
    /// # let _ = q;
    /// # Ok(()) }
    /// ```
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        Gpu::build(adapter, device, queue, DEFAULT_TIMEOUT)
    }

    /// [`Gpu::from_device`] with `options`' deadline ([`GpuOptions::timeout`]); the options
    /// that choose and open a device do not apply to one the caller opened.
    pub fn from_device_with_options(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: &GpuOptions,
    ) -> Gpu {
        Gpu::build(adapter, device, queue, options.timeout)
    }

    fn build(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue, timeout: Duration) -> Gpu {
        let features = device.features();
        let caps = Caps {
            info: adapter.get_info(),
            cooperative_f16: cooperative_f16(adapter, &features),
            features,
            limits: device.limits(),
        };
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = lost_flag.lock() {
                *slot = Some(format!("{reason:?}: {message}"));
            }
        });
        Gpu { inner: Arc::new(GpuInner::new(device, queue, caps, timeout, lost)) }
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Adapter information, features and limits.
    pub fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub fn adapter_name(&self) -> &str {
        &self.inner.caps.info.name
    }

    /// One line describing the adapter: name, backend, type and driver.
    pub fn describe(&self) -> String {
        describe(&self.inner.caps.info)
    }

    /// Whether two handles share a device.
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

fn device_type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?}, driver {} {})", info.name, info.backend, info.device_type, info.driver, info.driver_info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_names_parse_and_misspellings_are_refused() {
        assert_eq!(
            parse_features("shader-f16, subgroup,timestamp-query").unwrap(),
            wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY
        );
        assert_eq!(parse_features("").unwrap(), wgpu::Features::empty());
        let err = parse_features("subgroups").unwrap_err().to_string();
        assert!(err.contains("WGQUANT_DISABLE_FEATURES") && err.contains("timestamp-query"), "{err}");
        assert!(parse_backend("GL").is_ok());
        assert!(parse_backend("opengl").unwrap_err().to_string().contains("WGQUANT_BACKEND"));
    }
}
