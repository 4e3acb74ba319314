//! The GPU context: adapter choice, device, error capture, deadlines and the pipeline cache.
//!
//! [`Gpu`] is a cheap-to-clone handle (an `Arc`) that is `Send + Sync`. It either opens its own
//! device ([`Gpu::new`], [`Gpu::with_options`]) or borrows a caller's ([`Gpu::from_device`]).
//! Every call that can fail inside wgpu runs in error scopes and comes back as an
//! [`Error`]; every wait on the GPU has a deadline.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::kernels::{self, KernelKey};

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
        }
    }
}

impl GpuOptions {
    /// Defaults, overridden by `WGQUANT_BACKEND=vulkan|metal|dx12|gl` and
    /// `WGQUANT_ADAPTER=<name substring>`.
    ///
    /// # Errors
    /// An unknown backend name.
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
        Ok(options)
    }
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" => Ok(wgpu::Backends::VULKAN),
        "metal" => Ok(wgpu::Backends::METAL),
        "dx12" => Ok(wgpu::Backends::DX12),
        "gl" => Ok(wgpu::Backends::GL),
        other => Err(Error::NoAdapter(format!(
            "WGQUANT_BACKEND={other} is not a backend (expected vulkan, metal, dx12 or gl)"
        ))),
    }
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
        self.limits.max_storage_buffer_binding_size & !(VECTOR_BYTES - 1)
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

struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: Caps,
    timeout: Duration,
    pipelines: Mutex<HashMap<KernelKey, Arc<wgpu::ComputePipeline>>>,
    /// Scratch storage for f32 partial sums, kept between calls (see [`Gpu::scratch`]).
    scratch: Mutex<Option<Arc<wgpu::Buffer>>>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    submissions: AtomicU64,
}

/// A GPU device and queue with wgquant's pipeline cache. Clones share everything.
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = &self.inner.caps.info;
        f.debug_struct("Gpu").field("adapter", &info.name).field("backend", &info.backend).finish()
    }
}

impl Gpu {
    /// Opens the best adapter, honouring `WGQUANT_BACKEND` and `WGQUANT_ADAPTER`.
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when no adapter matches (no driver installed, or a filter excluded
    /// all), [`Error::RequestDevice`] when the adapter refuses the device.
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
        let mut limits = adapter.limits();
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

    /// Wraps a device and queue the caller already owns (their error handler stays theirs).
    /// `adapter` supplies the name, subgroup sizes and matrix shapes kernels are specialised for.
    /// A device opened with [`wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX`] (and
    /// `SHADER_F16`, `SUBGROUP_BARRIER`) on an adapter with 16 x 16 f16 matrices lets
    /// `quantized_matmul` use tensor cores for 2 to 8 rows of f16 x ([`Caps::cooperative_f16`]).
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        Gpu::build(adapter, device, queue, DEFAULT_TIMEOUT)
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
        Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                caps,
                timeout,
                pipelines: Mutex::new(HashMap::new()),
                scratch: Mutex::new(None),
                uncaptured: Arc::new(Mutex::new(Vec::new())),
                lost,
                submissions: AtomicU64::new(0),
            }),
        }
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

    /// wgpu errors that escaped every scope since the last call (should stay empty).
    pub fn take_uncaptured_errors(&self) -> Vec<String> {
        self.inner.uncaptured.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }

    /// Whether two handles share a device.
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns whatever
    /// they caught into an [`Error`] naming `what`.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost(what)?;
        let device = &self.inner.device;
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        let internal = pollster::block_on(internal.pop());
        if let Some(e) = oom {
            return Err(Error::OutOfMemory { what: what.to_string(), message: e.to_string() });
        }
        if let Some(e) = validation.or(internal) {
            return Err(Error::Validation { what: what.to_string(), message: e.to_string() });
        }
        Ok(out)
    }

    fn check_lost(&self, what: &str) -> Result<()> {
        match self.inner.lost.lock().ok().and_then(|l| l.clone()) {
            Some(message) => Err(Error::DeviceLost { what: what.to_string(), message }),
            None => Ok(()),
        }
    }

    /// Waits for `submission` (or all work) with the context's deadline.
    pub(crate) fn wait(&self, what: &str, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let timeout = self.inner.timeout;
        // wgpu panics inside `poll` when the device is lost mid-wait; that must not escape.
        let polled = catch_unwind(AssertUnwindSafe(|| {
            self.inner.device.poll(wgpu::PollType::Wait { submission_index: submission, timeout: Some(timeout) })
        }));
        match polled {
            Ok(Ok(_)) => self.check_lost(what),
            Ok(Err(wgpu::PollError::Timeout)) => {
                Err(Error::Timeout { what: what.to_string(), seconds: timeout.as_secs_f64() })
            }
            Ok(Err(e)) => Err(Error::DeviceLost { what: what.to_string(), message: e.to_string() }),
            Err(_) => Err(Error::DeviceLost { what: what.to_string(), message: "wgpu panicked while polling".into() }),
        }
    }

    /// Blocks until all submitted work has finished (with the deadline).
    ///
    /// # Errors
    /// [`Error::Timeout`] or [`Error::DeviceLost`].
    pub fn synchronize(&self) -> Result<()> {
        self.wait("synchronize", None)
    }

    /// A storage buffer of `size` bytes (rounded up to whole [`VECTOR_BYTES`]), zeroed by wgpu.
    pub(crate) fn create_buffer(&self, what: &'static str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(1).next_multiple_of(VECTOR_BYTES);
        self.check_buffer_size(what, size)?;
        self.scoped(what, || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// A storage buffer holding `bytes`, padded with zeros to whole [`VECTOR_BYTES`].
    pub(crate) fn create_buffer_init(&self, what: &'static str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let padded_len = bytes.len().max(1).next_multiple_of(VECTOR_BYTES as usize);
        self.check_buffer_size(what, padded_len as u64)?;
        let mut padded;
        let contents = if padded_len == bytes.len() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(padded_len, 0);
            &padded
        };
        self.scoped(what, || {
            self.inner.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            })
        })
    }

    fn check_buffer_size(&self, op: &'static str, size: u64) -> Result<()> {
        let limit = self.inner.caps.limits.max_buffer_size;
        if size > limit {
            return Err(Error::ExceedsDeviceLimit { op, what: "a buffer", value: size, limit });
        }
        Ok(())
    }

    /// Copies the first `size` bytes of `buffer` to the host and waits for them.
    pub(crate) fn read_buffer(&self, what: &str, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        // Work recorded by an enclosing batch must run before its results are read.
        self.flush()?;
        let padded = size.max(4).next_multiple_of(4);
        let staging = self.scoped(what, || {
            let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgquant readback"),
                size: padded,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = self
                .inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgquant readback") });
            encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, padded);
            self.inner.queue.submit([encoder.finish()]);
            self.inner.submissions.fetch_add(1, Ordering::Relaxed);
            staging
        })?;
        self.map_for_reading(what, &staging, None)?;
        let bytes = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Readback { what: what.to_string(), message: e.to_string() })?;
            view[..size as usize].to_vec()
        };
        staging.unmap();
        Ok(bytes)
    }

    /// Maps `buffer` for reading once `submission` (or all work) is done, with the deadline.
    fn map_for_reading(
        &self,
        what: &str,
        buffer: &wgpu::Buffer,
        submission: Option<wgpu::SubmissionIndex>,
    ) -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send(result);
        });
        self.wait(what, submission)?;
        // The callback runs inside some thread's poll: when another thread polls the same device
        // at the same time, it may still be on its way after our poll returned.
        let deadline = std::time::Instant::now() + self.inner.timeout;
        loop {
            match receiver.recv_timeout(Duration::from_millis(1)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(Error::Readback { what: what.to_string(), message: e.to_string() }),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Readback {
                        what: what.to_string(),
                        message: "the buffer was never mapped".into(),
                    })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() > deadline => {
                    return Err(Error::Timeout { what: what.to_string(), seconds: self.inner.timeout.as_secs_f64() })
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // wgpu panics inside `poll` when the device is lost; the next wait reports it.
                    let _ = catch_unwind(AssertUnwindSafe(|| self.inner.device.poll(wgpu::PollType::Poll)));
                }
            }
        }
    }

    /// A storage buffer of at least `bytes` for a call's scratch (partial sums), reused by later
    /// calls rather than allocated per call (7 MB for `qmv_coop` at 14336 x 4096; wgpu would
    /// also zero-fill each fresh one, not knowing that the shader writes every byte). Calls share
    /// it safely: wgpu orders the dispatches of one queue that write and read the same buffer.
    pub(crate) fn scratch(&self, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
        // The slot holds a whole buffer or none, whatever a panicking thread was doing.
        let mut slot = self.inner.scratch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(buffer) = slot.as_ref().filter(|b| b.size() >= bytes) {
            return Ok(Arc::clone(buffer));
        }
        let size = bytes.max(VECTOR_BYTES).next_multiple_of(VECTOR_BYTES);
        self.check_buffer_size("scratch buffer", size)?;
        let buffer = Arc::new(self.scoped("scratch buffer", || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgquant scratch"),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })?);
        *slot = Some(Arc::clone(&buffer));
        Ok(buffer)
    }

    /// The compute pipeline for `key`, built on first use. Before wgpu sees the shader, its
    /// workgroup memory and size are checked against the device limits: wgpu 30 does not check
    /// workgroup memory, and a kernel over the limit hangs some drivers (the H100) silently.
    pub(crate) fn pipeline(&self, key: &KernelKey) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.inner.pipelines.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(p);
        }
        let label = key.to_string();
        let source = kernels::source(key);
        let constants = key.constants();
        let usage = kernels::resource_usage(&source, &constants, &self.inner.caps.features)
            .map_err(|message| Error::Validation { what: label.clone(), message })?;
        let limits = &self.inner.caps.limits;
        if usage.workgroup_memory > u64::from(limits.max_compute_workgroup_storage_size) {
            return Err(Error::ExceedsDeviceLimit {
                op: key.op(),
                what: "workgroup memory (bytes)",
                value: usage.workgroup_memory,
                limit: limits.max_compute_workgroup_storage_size.into(),
            });
        }
        if usage.invocations > u64::from(limits.max_compute_invocations_per_workgroup) {
            return Err(Error::ExceedsDeviceLimit {
                op: key.op(),
                what: "invocations per workgroup",
                value: usage.invocations,
                limit: limits.max_compute_invocations_per_workgroup.into(),
            });
        }
        let pipeline = self.scoped(&label, || {
            let module = self.inner.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let constants: Vec<(&str, f64)> = constants.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            self.inner.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })?;
        let pipeline = Arc::new(pipeline);
        if let Ok(mut map) = self.inner.pipelines.lock() {
            map.insert(key.clone(), Arc::clone(&pipeline));
        }
        Ok(pipeline)
    }

    /// Records `dispatches` (in order) and submits them in one compute pass without waiting,
    /// or, inside [`Gpu::batch`] or [`Gpu::time`], adds them to the batch's pass. Each dispatch
    /// binds its uniform parameters at binding 0 and its buffer windows at 1, 2, ...
    pub(crate) fn submit(&self, what: &str, dispatches: &[Dispatch<'_>]) -> Result<()> {
        let max_groups = self.inner.caps.limits.max_compute_workgroups_per_dimension.max(1);
        let grids = dispatches
            .iter()
            .map(|d| {
                grid(d.workgroups, max_groups).ok_or(Error::ExceedsDeviceLimit {
                    op: "dispatch",
                    what: "workgroups in one dispatch",
                    value: d.workgroups.into(),
                    limit: u64::from(max_groups) * u64::from(max_groups),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let commands = self.scoped(what, || {
            dispatches
                .iter()
                .zip(&grids)
                .map(|(d, &(x, y))| Command {
                    pipeline: d.pipeline.clone(),
                    bind_group: self.bind_group(d),
                    workgroups: (x, y, 1),
                })
                .collect::<Vec<_>>()
        })?;
        self.enqueue(what, commands)
    }

    /// Records a dispatch of the caller's own pipeline, like wgquant's ops: into the current
    /// [`Gpu::batch`] or [`Gpu::time`], or submitted at once. `workgroups` is checked against the
    /// device's per-dimension limit by wgpu (use several dispatches or a 2-D grid beyond it).
    ///
    /// # Errors
    /// [`Error::Validation`] when wgpu rejects the dispatch (reported at submission).
    pub fn dispatch(
        &self,
        what: &str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        workgroups: (u32, u32, u32),
    ) -> Result<()> {
        let command = Command { pipeline: pipeline.clone(), bind_group: bind_group.clone(), workgroups };
        self.enqueue(what, vec![command])
    }

    /// Runs `f` and submits all the GPU work that wgquant ops (and [`Gpu::dispatch`]) record
    /// inside it as one command buffer with one compute pass, instead of one submission per op:
    /// many matmuls, one submit. Returns `f`'s result without waiting for the GPU. Inside `f`,
    /// reading a tensor back (or [`Gpu::time`]) first submits what was recorded so far, since
    /// the read needs it; a batch inside a batch joins the outer one. Batches are per thread:
    /// work another thread issues meanwhile is not captured. If `f` fails, nothing it recorded
    /// is submitted.
    ///
    /// # Errors
    /// `f`'s error, or device errors from submitting the batch.
    ///
    /// # Example
    /// ```no_run
    /// # fn main() -> wgquant::Result<()> {
    /// # let gpu = wgquant::Gpu::new()?;
    /// # let x = wgquant::Tensor::from_slice(&gpu, &[0.5f32; 64], &[1, 64])?;
    /// # let layers: Vec<wgquant::Quantized> = Vec::new();
    /// let outputs = gpu.batch(|| layers.iter().map(|q| wgquant::quantized_matmul(&x, q, true)).collect::<Result<Vec<_>, _>>())?;
    /// # Ok(()) }
    /// ```
    pub fn batch<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.recording() {
            return f();
        }
        let frame = Frame::open(self);
        let out = f();
        let commands = frame.close();
        let out = out?;
        if !commands.is_empty() {
            self.encode_and_submit("batch", &commands, None)?;
        }
        Ok(out)
    }

    /// Runs `f` as a [`Gpu::batch`] whose compute pass is timed with timestamp queries, waits
    /// for it, and returns `f`'s result with the GPU time between the start and the end of the
    /// pass. Work recorded before (by an enclosing batch) is submitted first and not counted.
    ///
    /// # Errors
    /// [`Error::MissingFeature`] without `TIMESTAMP_QUERY`; `f`'s error; device errors.
    pub fn time<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, Duration)> {
        if !self.inner.caps.has_timestamps() {
            return Err(Error::MissingFeature { op: "Gpu::time", feature: "TIMESTAMP_QUERY" });
        }
        self.flush()?;
        let frame = Frame::open(self);
        let out = f();
        let commands = frame.close();
        let out = out?;
        let device = &self.inner.device;
        let (query_set, resolved, readback) = self.scoped("Gpu::time", || {
            let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgquant timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let buffer = |usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgquant timestamps"),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            (query_set, resolved, readback)
        })?;
        let submission = self.encode_and_submit("Gpu::time", &commands, Some((&query_set, &resolved, &readback)))?;
        self.map_for_reading("Gpu::time", &readback, Some(submission))?;
        let ticks = {
            let view = readback
                .get_mapped_range(..)
                .map_err(|e| Error::Readback { what: "Gpu::time".into(), message: e.to_string() })?;
            let t: Vec<u64> = bytemuck::pod_collect_to_vec(&view[..16]);
            t[1].saturating_sub(t[0])
        };
        readback.unmap();
        let nanos = ticks as f64 * f64::from(self.inner.queue.get_timestamp_period());
        Ok((out, Duration::from_secs_f64(nanos * 1e-9)))
    }

    /// Queue submissions wgquant has made on this device (a diagnostic: a [`Gpu::batch`] of
    /// many ops counts one).
    pub fn submission_count(&self) -> u64 {
        self.inner.submissions.load(Ordering::Relaxed)
    }

    /// Whether this thread is recording a batch for this device.
    fn recording(&self) -> bool {
        let id = self.id();
        FRAMES.with(|frames| frames.borrow().iter().any(|f| f.gpu == id))
    }

    /// Submits what the current batch on this thread has recorded so far (nothing otherwise).
    fn flush(&self) -> Result<()> {
        let id = self.id();
        let commands = FRAMES.with(|frames| {
            frames.borrow_mut().iter_mut().rev().find(|f| f.gpu == id).map(|f| std::mem::take(&mut f.commands))
        });
        match commands {
            Some(commands) if !commands.is_empty() => self.encode_and_submit("batch", &commands, None).map(drop),
            _ => Ok(()),
        }
    }

    /// Adds `commands` to this thread's batch for this device, or submits them now.
    fn enqueue(&self, what: &str, commands: Vec<Command>) -> Result<()> {
        let id = self.id();
        let leftover = FRAMES.with(|frames| match frames.borrow_mut().iter_mut().rev().find(|f| f.gpu == id) {
            Some(frame) => {
                frame.commands.extend(commands);
                None
            }
            None => Some(commands),
        });
        match leftover {
            Some(commands) => self.encode_and_submit(what, &commands, None).map(drop),
            None => Ok(()),
        }
    }

    /// Encodes `commands` into one compute pass (timed when `timestamps` holds a query set, a
    /// resolve buffer and a readback buffer) and submits it.
    fn encode_and_submit(
        &self,
        what: &str,
        commands: &[Command],
        timestamps: Option<(&wgpu::QuerySet, &wgpu::Buffer, &wgpu::Buffer)>,
    ) -> Result<wgpu::SubmissionIndex> {
        let device = &self.inner.device;
        let submission = self.scoped(what, || {
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
            {
                let timestamp_writes = timestamps.map(|(query_set, _, _)| wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                });
                let mut pass =
                    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(what), timestamp_writes });
                for c in commands {
                    pass.set_pipeline(&c.pipeline);
                    pass.set_bind_group(0, &c.bind_group, &[]);
                    pass.dispatch_workgroups(c.workgroups.0, c.workgroups.1, c.workgroups.2);
                }
            }
            if let Some((query_set, resolved, readback)) = timestamps {
                encoder.resolve_query_set(query_set, 0..2, resolved, 0);
                encoder.copy_buffer_to_buffer(resolved, 0, readback, 0, 16);
            }
            self.inner.queue.submit([encoder.finish()])
        })?;
        self.inner.submissions.fetch_add(1, Ordering::Relaxed);
        Ok(submission)
    }

    /// Identifies the device for this thread's batch frames.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    pub(crate) fn bind_group(&self, d: &Dispatch<'_>) -> wgpu::BindGroup {
        let device = &self.inner.device;
        let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("wgquant params"),
            contents: &d.params,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() }];
        for (i, w) in d.buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: w.buffer,
                    offset: w.offset,
                    size: wgpu::BufferSize::new(w.size),
                }),
            });
        }
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &d.pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Splits `rows` rows into chunks whose bindings each fit the device's storage binding
    /// limit and start at an aligned offset. `row_bytes` holds, per bound buffer, the bytes one
    /// row occupies.
    pub(crate) fn row_chunks(&self, op: &'static str, rows: usize, row_bytes: &[u64]) -> Result<Vec<Range<usize>>> {
        let limits = &self.inner.caps.limits;
        row_chunks(
            op,
            rows,
            row_bytes,
            self.inner.caps.max_binding(),
            limits.min_storage_buffer_offset_alignment.into(),
        )
    }
}

/// A recorded dispatch, waiting for its batch's compute pass.
struct Command {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: (u32, u32, u32),
}

/// The dispatches a batch on this thread has recorded for one device.
struct Frame {
    gpu: usize,
    commands: Vec<Command>,
}

thread_local! {
    /// Open batches of this thread, innermost last.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// Closes its frame when dropped, so that a panic inside a batch does not leave it open.
struct FrameGuard {
    gpu: usize,
}

impl Frame {
    fn open(gpu: &Gpu) -> FrameGuard {
        let id = gpu.id();
        FRAMES.with(|frames| frames.borrow_mut().push(Frame { gpu: id, commands: Vec::new() }));
        FrameGuard { gpu: id }
    }
}

impl FrameGuard {
    /// Closes the frame and returns what it recorded.
    fn close(self) -> Vec<Command> {
        let commands = self.take();
        std::mem::forget(self);
        commands
    }

    fn take(&self) -> Vec<Command> {
        FRAMES.with(|frames| {
            let mut frames = frames.borrow_mut();
            match frames.iter().rposition(|f| f.gpu == self.gpu) {
                Some(i) => frames.remove(i).commands,
                None => Vec::new(),
            }
        })
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        self.take();
    }
}

/// Buffers and their bound windows come in whole 16-byte vectors, so that kernels may read any
/// operand as `vec4<u32>`s (qmv reads weights and x that way) without the last words falling
/// outside the binding.
pub(crate) const VECTOR_BYTES: u64 = 16;

/// A window of a buffer bound to one kernel binding.
pub(crate) struct BufferWindow<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> BufferWindow<'a> {
    /// Rows `rows` of a buffer holding `row_bytes` bytes per row.
    pub fn rows(buffer: &'a wgpu::Buffer, row_bytes: u64, rows: &Range<usize>) -> Self {
        let offset = rows.start as u64 * row_bytes;
        BufferWindow::bytes(buffer, offset, (rows.end - rows.start) as u64 * row_bytes)
    }

    /// `size` bytes of a buffer from `offset`, widened to whole [`VECTOR_BYTES`] where the
    /// buffer allows (ours always do when `offset` is a multiple of 16).
    pub fn bytes(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        let room = buffer.size().saturating_sub(offset);
        let size = size.max(1).next_multiple_of(VECTOR_BYTES).min(room).max(4);
        BufferWindow { buffer, offset, size }
    }
}

/// Rows between consecutive row offsets that are multiples of `alignment`.
pub(crate) fn aligned_row_step(row_bytes: u64, alignment: u64) -> usize {
    if row_bytes == 0 {
        1
    } else {
        (alignment / gcd(row_bytes, alignment)) as usize
    }
}

/// One kernel launch: a pipeline, its uniform parameters, its buffers and a workgroup count.
pub(crate) struct Dispatch<'a> {
    pub pipeline: &'a wgpu::ComputePipeline,
    pub params: Vec<u8>,
    pub buffers: Vec<BufferWindow<'a>>,
    pub workgroups: u32,
}

/// Lays `n` workgroups out as `(x, y)` with both at most `max`: kernels recover the linear
/// index as `wg.y * num_workgroups.x + wg.x` and ignore the overshoot. `None` past `max * max`.
pub(crate) fn grid(n: u32, max: u32) -> Option<(u32, u32)> {
    if n <= max {
        Some((n.max(1), 1))
    } else {
        let y = n.div_ceil(max);
        (y <= max).then_some((max, y))
    }
}

fn row_chunks(
    op: &'static str,
    rows: usize,
    row_bytes: &[u64],
    max_binding: u64,
    alignment: u64,
) -> Result<Vec<Range<usize>>> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    let fits_whole = row_bytes.iter().all(|&b| (rows as u64).checked_mul(b).is_some_and(|t| t <= max_binding));
    if fits_whole {
        return Ok(std::iter::once(0..rows).collect());
    }
    // Chunk starts must put every buffer's window on an aligned offset.
    let align_rows = row_bytes.iter().filter(|&&b| b > 0).fold(1u64, |acc, &b| lcm(acc, alignment / gcd(b, alignment)));
    let max_rows = row_bytes.iter().filter(|&&b| b > 0).map(|&b| max_binding / b).min().unwrap_or(rows as u64);
    let chunk = max_rows / align_rows * align_rows;
    if chunk == 0 {
        let widest = row_bytes.iter().copied().max().unwrap_or(0);
        return Err(Error::ExceedsDeviceLimit {
            op,
            what: "one aligned block of rows in a storage binding (bytes)",
            value: widest * align_rows,
            limit: max_binding,
        });
    }
    let chunk = chunk as usize;
    Ok((0..rows).step_by(chunk).map(|s| s..(s + chunk).min(rows)).collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
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
    fn chunks_cover_rows_and_align() {
        // f16 input of 96 per row, 4-bit packed (48 B), two f16 scales (4 B): 4 KiB bindings.
        // Starts must be multiples of 8 rows (4 B scale rows on 32 B alignment).
        let chunks = row_chunks("t", 1000, &[192, 48, 4], 4096, 32).unwrap();
        assert!(chunks.len() > 1);
        assert_eq!(chunks.first().unwrap().start, 0);
        assert_eq!(chunks.last().unwrap().end, 1000);
        for c in &chunks {
            for b in [192u64, 48, 4] {
                assert_eq!(c.start as u64 * b % 32, 0);
                assert!((c.end - c.start) as u64 * b <= 4096);
            }
        }
    }

    #[test]
    fn chunk_too_wide_is_an_error() {
        assert!(row_chunks("t", 10, &[4096], 1024, 32).is_err());
        assert_eq!(row_chunks("t", 3, &[100], 1024, 32).unwrap(), std::iter::once(0..3).collect::<Vec<_>>());
        assert!(row_chunks("t", 0, &[100], 1024, 32).unwrap().is_empty());
    }

    #[test]
    fn grid_splits_past_the_dimension_limit() {
        assert_eq!(grid(10, 65535), Some((10, 1)));
        assert_eq!(grid(65536, 65535), Some((65535, 2)));
        assert_eq!(grid(0, 65535), Some((1, 1)));
        assert_eq!(grid(10, 3), None);
    }
}
