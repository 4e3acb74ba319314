//! The GPU runtime: a device with wgquant's caches, split by job.
//!
//! [`Gpu`] is a cheap-to-clone handle (an `Arc`) that is `Send + Sync`. It either opens its own
//! device ([`Gpu::new`], [`Gpu::with_options`]) or borrows a caller's ([`Gpu::from_device`]).
//! - [`context`]: options, adapter choice, device opening, [`Caps`];
//! - [`scope`]: error scopes turned into [`Error`](crate::Error)s, device loss, deadlines;
//! - [`memory`]: tensors' pooled buffers, uploads, readback, scratch;
//! - [`pipeline`]: pipelines, bind group layouts, uniforms and bind groups, cached;
//! - [`recorder`]: batches, timing and submission;
//! - [`geometry`]: windows, row chunks and grids (no GPU).

mod context;
mod geometry;
mod memory;
mod pipeline;
mod recorder;
mod scope;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use context::{Caps, GpuOptions};
pub(crate) use geometry::{aligned_row_step, grid, row_chunks, BufferWindow, VECTOR_BYTES};
pub(crate) use memory::{Scratch, TensorBuffer};
pub(crate) use pipeline::MAX_CACHED_TABLE_BYTES;

use crate::kernels::KernelKey;

struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: Caps,
    timeout: Duration,
    pipelines: Mutex<FxHashMap<KernelKey, Arc<wgpu::ComputePipeline>>>,
    bindings: Mutex<pipeline::Bindings>,
    memos: Mutex<pipeline::Memos>,
    pool: Mutex<memory::Pool>,
    /// Reused pool buffers to clear before the next submission's work.
    clears: Mutex<Vec<wgpu::Buffer>>,
    /// Scratch buffers by [`Scratch`] kind, kept between calls (see [`Gpu::scratch`]).
    scratch: Mutex<[Option<Arc<wgpu::Buffer>>; Scratch::KINDS]>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// Submissions made; the n-th submission has serial n.
    submissions: AtomicU64,
    /// The highest serial the GPU has finished (with every one before it).
    completed: Arc<AtomicU64>,
    /// Batches open on any thread.
    open_frames: AtomicUsize,
}

impl GpuInner {
    fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        caps: Caps,
        timeout: Duration,
        lost: Arc<Mutex<Option<String>>>,
    ) -> GpuInner {
        GpuInner {
            device,
            queue,
            caps,
            timeout,
            pipelines: Mutex::default(),
            bindings: Mutex::default(),
            memos: Mutex::default(),
            pool: Mutex::default(),
            clears: Mutex::default(),
            scratch: Mutex::default(),
            uncaptured: Arc::default(),
            lost,
            submissions: AtomicU64::new(0),
            completed: Arc::new(AtomicU64::new(0)),
            open_frames: AtomicUsize::new(0),
        }
    }
}

/// A GPU device and queue with wgquant's caches. Clones share everything.
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
    /// Splits `rows` rows into chunks whose bindings each fit the device's storage binding
    /// limit and start at an aligned offset. `row_bytes` holds, per bound buffer, the bytes one
    /// row occupies.
    pub(crate) fn row_chunks(
        &self,
        op: &'static str,
        rows: usize,
        row_bytes: &[u64],
    ) -> crate::Result<Vec<std::ops::Range<usize>>> {
        let limits = &self.inner.caps.limits;
        geometry::row_chunks(
            op,
            rows,
            row_bytes,
            self.inner.caps.max_binding(),
            limits.min_storage_buffer_offset_alignment.into(),
        )
    }
}

/// One kernel launch: a pipeline, its uniform parameters, its buffers and a workgroup count.
pub(crate) struct Dispatch<'a> {
    pub pipeline: &'a wgpu::ComputePipeline,
    /// Borrowed where a kept plan holds them, so that recording copies nothing.
    pub params: std::borrow::Cow<'a, [u8]>,
    pub buffers: Vec<BufferWindow<'a>>,
    pub workgroups: u32,
}

/// `Gpu` is shared between threads; checked at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Gpu>();
    send_sync::<crate::Tensor>();
    send_sync::<crate::Quantized>();
};
