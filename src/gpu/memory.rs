//! GPU memory: tensors' buffers (pooled by size class), uploads, readback and the shared
//! scratch buffer.
//!
//! A buffer goes back to the pool when its last tensor is dropped, but is handed out again only
//! once nothing can still use it: every batch open anywhere when it was dropped has been
//! submitted, and the GPU has finished every submission made until then. A reused buffer that
//! must read as zeros is cleared at the start of the next submission, before any work that
//! could use it.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Gpu, VECTOR_BYTES};
use crate::error::{Error, Result};

/// Released buffers waiting for the GPU beyond which the pool polls the device (without
/// blocking) for finished work, so that a caller who never waits still gets buffers back. It
/// polls at most once per submission: nothing new can finish without one, and a poll costs
/// tens of microseconds on some drivers (an op that frees a scratch tensor inside a batch would
/// otherwise pay one each).
const PENDING_BEFORE_POLL: usize = 64;

/// Usages of every storage buffer wgquant allocates.
pub(super) const STORAGE_USAGES: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// The buffer behind a [`Tensor`](crate::Tensor): returned to the pool (pooled) or forgotten by
/// the bind-group cache (otherwise) when the last tensor sharing it is dropped.
pub(crate) struct TensorBuffer {
    buffer: wgpu::Buffer,
    gpu: Gpu,
    pooled: bool,
}

impl std::ops::Deref for TensorBuffer {
    type Target = wgpu::Buffer;

    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TensorBuffer {
    fn drop(&mut self) {
        if self.pooled {
            self.gpu.release(self.buffer.clone());
        } else {
            self.gpu.forget_bindings(&self.buffer);
        }
    }
}

/// Free buffers by size class, and released ones waiting until nothing can use them.
///
/// Free buffers are handed out first in, first out: a workload that repeats (a decode step)
/// releases its buffers in the order it took them, so each op gets back the buffer it had
/// last time and its cached bind groups ([`Gpu::bind_group`]) still match.
#[derive(Default)]
pub(super) struct Pool {
    free: FxHashMap<u64, VecDeque<wgpu::Buffer>>,
    /// Released buffers with the submission count that must complete before reuse (`None`:
    /// released while a batch was open; stamped once none is).
    pending: Vec<(wgpu::Buffer, Option<u64>)>,
    /// Submissions made when the pool last polled.
    polled_at: u64,
}

/// The pool's size for a buffer of `size` bytes: eight classes per power of two (at most 12.5%
/// larger), never past the binding limit for a buffer that fits in one binding (ops bind small
/// tensors whole).
pub(crate) fn size_class(size: u64, max_binding: u64) -> u64 {
    let size = size.max(1).next_multiple_of(VECTOR_BYTES);
    // Between 2^k and 2^(k+1), steps of 2^k / 8.
    let step = (size.next_power_of_two() / 16).max(VECTOR_BYTES);
    let class = size.next_multiple_of(step);
    if size <= max_binding {
        class.min(max_binding)
    } else {
        class
    }
}

impl Gpu {
    /// A buffer for a tensor of `size` bytes: a free pooled buffer of its size class, cleared
    /// first when `zeroed`, or a new (zeroed) one.
    pub(crate) fn output_buffer(&self, what: &'static str, size: u64, zeroed: bool) -> Result<TensorBuffer> {
        let limits = &self.inner.caps.limits;
        let class = size_class(size, self.inner.caps.max_binding());
        let class = if class > limits.max_buffer_size { size.max(1).next_multiple_of(VECTOR_BYTES) } else { class };
        self.check_buffer_size(what, class)?;
        let buffer = match self.take_free(class) {
            Some(buffer) => {
                if zeroed {
                    self.inner.clears.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(buffer.clone());
                }
                buffer
            }
            None => {
                let buffer = self.scoped_outside_batch(what, || {
                    self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(what),
                        size: class,
                        usage: STORAGE_USAGES,
                        mapped_at_creation: false,
                    })
                })?;
                self.track(&buffer);
                buffer
            }
        };
        Ok(TensorBuffer { buffer, gpu: self.clone(), pooled: true })
    }

    /// Submits the clears owed to reused pool buffers now if `buffer` is one of them, so that a
    /// caller recording work on it through their own submissions sees zeros (wgquant's own
    /// submissions run the clears first anyway).
    pub(crate) fn settle_clear(&self, buffer: &wgpu::Buffer) {
        let owed = self.inner.clears.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(buffer);
        if owed {
            let nothing = self
                .inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgquant clears for a caller") });
            self.submit_commands(nothing.finish());
        }
    }

    /// A tensor buffer holding `bytes` (padded with zeros to whole [`VECTOR_BYTES`]).
    pub(crate) fn upload_buffer(&self, what: &'static str, bytes: &[u8]) -> Result<TensorBuffer> {
        let buffer = self.create_buffer_init(what, bytes)?;
        self.track(&buffer);
        Ok(TensorBuffer { buffer, gpu: self.clone(), pooled: false })
    }

    /// Wraps a caller's buffer as a tensor buffer (never pooled).
    pub(crate) fn wrap_buffer(&self, buffer: wgpu::Buffer) -> TensorBuffer {
        self.track(&buffer);
        TensorBuffer { buffer, gpu: self.clone(), pooled: false }
    }

    /// A free buffer of `class` bytes, if one is ready.
    fn take_free(&self, class: u64) -> Option<wgpu::Buffer> {
        let inner = &self.inner;
        let mut pool = inner.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !pool.pending.is_empty() {
            let submitted = inner.submissions.load(Ordering::SeqCst);
            if pool.pending.len() >= PENDING_BEFORE_POLL && submitted > pool.polled_at {
                self.poll_nonblocking();
                pool.polled_at = submitted;
            }
            let batches_open = inner.open_frames.load(Ordering::SeqCst) > 0;
            let completed = inner.completed.load(Ordering::SeqCst);
            let Pool { free, pending, .. } = &mut *pool;
            pending.retain_mut(|(buffer, stamp)| {
                if stamp.is_none() && !batches_open {
                    *stamp = Some(submitted);
                }
                match stamp {
                    Some(s) if *s <= completed => {
                        free.entry(buffer.size()).or_default().push_back(buffer.clone());
                        false
                    }
                    _ => true,
                }
            });
        }
        pool.free.get_mut(&class).and_then(VecDeque::pop_front)
    }

    /// Takes back a pooled buffer whose last tensor was dropped.
    fn release(&self, buffer: wgpu::Buffer) {
        let inner = &self.inner;
        let stamp = (inner.open_frames.load(Ordering::SeqCst) == 0).then(|| inner.submissions.load(Ordering::SeqCst));
        let mut pool = inner.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pool.pending.push((buffer, stamp));
    }

    /// Buffers the pool holds, free or waiting for the GPU (a diagnostic).
    pub fn pooled_buffers(&self) -> usize {
        let pool = self.inner.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pool.free.values().map(VecDeque::len).sum::<usize>() + pool.pending.len()
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
        self.scoped_outside_batch(what, || self.buffer_holding(what, contents, STORAGE_USAGES))
    }

    /// A buffer of `usage` holding `contents` (a whole number of words). Written through the
    /// queue rather than mapped at creation: wgpu panics when it cannot map a buffer it failed
    /// to create (a lost device), and a write reports that as an error instead.
    pub(super) fn buffer_holding(&self, what: &str, contents: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: contents.len() as u64,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.inner.queue.write_buffer(&buffer, 0, contents);
        buffer
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
        let submission = self.scoped(what, || {
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
            let submission = self.submit_commands(encoder.finish());
            (staging, submission)
        })?;
        let (staging, submission) = submission;
        self.map_for_reading(what, &staging, Some(submission))?;
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
    pub(super) fn map_for_reading(
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
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.poll_nonblocking(),
            }
        }
    }

    /// A storage buffer of at least `bytes` for a call's scratch of kind `kind`, reused by later
    /// calls rather than allocated per call (7 MB of partial sums for `qmv_coop` at 14336 x
    /// 4096; wgpu would also zero-fill each fresh one, not knowing that the shaders write every
    /// byte they read), so that the bind groups binding it are cached too. Calls share it
    /// safely: each op records the dispatches that write and read its scratch in one
    /// submission, and wgpu orders the dispatches of one queue that use the same buffer.
    pub(crate) fn scratch(&self, kind: Scratch, bytes: u64) -> Result<Arc<wgpu::Buffer>> {
        // The slot holds a whole buffer or none, whatever a panicking thread was doing.
        let mut slots = self.inner.scratch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = &mut slots[kind as usize];
        if let Some(buffer) = slot.as_ref().filter(|b| b.size() >= bytes) {
            return Ok(Arc::clone(buffer));
        }
        let size = bytes.max(VECTOR_BYTES).next_multiple_of(VECTOR_BYTES);
        self.check_buffer_size("scratch buffer", size)?;
        let buffer = Arc::new(self.scoped_outside_batch("scratch buffer", || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(kind.label()),
                size,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })?);
        self.track(&buffer);
        // Work already recorded keeps the old buffer alive through its bind groups.
        if let Some(old) = slot.replace(Arc::clone(&buffer)) {
            self.forget_bindings(&old);
        }
        Ok(buffer)
    }
}

/// What a scratch buffer ([`Gpu::scratch`]) holds: each kind has a buffer of its own, since one
/// op may need both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scratch {
    /// f32 partial sums of slices of k.
    Partials,
    /// x laid out by `qmv_prepare`.
    PreparedX,
    /// `gather_qmm`'s batch table, built on the GPU from its indices.
    GatherTable,
}

impl Scratch {
    /// Kinds of scratch, the length of [`Gpu`]'s scratch slots.
    pub(super) const KINDS: usize = 3;

    fn label(self) -> &'static str {
        match self {
            Scratch::Partials => "wgquant scratch: partial sums",
            Scratch::PreparedX => "wgquant scratch: prepared x",
            Scratch::GatherTable => "wgquant scratch: gather_qmm batch table",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth_and_respect_the_binding_limit() {
        for size in [1u64, 15, 16, 17, 100, 4096, 4097, 8191, 1 << 20, (1 << 20) + 1, 58_720_256] {
            let class = size_class(size, u64::MAX);
            assert!(class >= size && class % VECTOR_BYTES == 0, "{size} -> {class}");
            assert!(class <= (size.next_multiple_of(VECTOR_BYTES) * 9 / 8).max(32), "{size} -> {class}");
        }
        assert_eq!(size_class(1000, 1008), 1008);
        assert_eq!(size_class(2000, 1008), 2048);
    }
}
