//! Recording and submitting work: dispatches go into this thread's open batch for the device
//! ([`Gpu::batch`], [`Gpu::time`]) or are submitted at once; one compute pass per submission.
//!
//! A batch holds one set of error scopes from its start to its submission, so that nothing in
//! it waits on the device per op; what they catch comes back from the batch naming its ops.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::scope::Scopes;
use super::{grid, Dispatch, Gpu};
use crate::error::{Error, Result};

/// A recorded dispatch, waiting for its batch's compute pass.
struct Command {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: (u32, u32, u32),
}

/// The dispatches a batch on this thread has recorded for one device, the ops that recorded
/// them (for error messages) and the batch's error scopes.
struct Frame {
    gpu: usize,
    /// Whether the frame may be submitted in parts while it records ([`Gpu::batch`]); a timed
    /// frame ([`Gpu::time`]) is one pass.
    streams: bool,
    commands: Vec<Command>,
    ops: Vec<String>,
    scopes: Option<Scopes>,
}

thread_local! {
    /// Open batches of this thread, innermost last.
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// Dispatches after which a batch submits what it has recorded and goes on recording, so that
/// the GPU works on the first ops while the host records the rest: the wait after the batch
/// is then its GPU time plus the recording of at most this many dispatches, not the recording
/// of them all. Each part costs a queue submission, so parts are not made smaller.
const STREAM_DISPATCHES: usize = 32;

/// Ops named in a batch's error message before the list is cut short.
const OPS_NAMED: usize = 8;

/// What a batch's error names: its ops.
fn batch_name(ops: &[String]) -> String {
    if ops.is_empty() {
        return "batch".to_string();
    }
    let more = if ops.len() > OPS_NAMED { ", ..." } else { "" };
    format!("batch of {}{more}", ops[..ops.len().min(OPS_NAMED)].join(", "))
}

/// Closes its frame when dropped, so that a panic inside a batch does not leave it open.
struct FrameGuard {
    gpu: Gpu,
    taken: bool,
}

/// What a closed frame recorded.
struct Recorded {
    commands: Vec<Command>,
    ops: Vec<String>,
    scopes: Option<Scopes>,
}

impl FrameGuard {
    fn open(gpu: &Gpu, streams: bool) -> FrameGuard {
        let scopes = Some(Scopes::push(&gpu.inner.device));
        gpu.inner.open_frames.fetch_add(1, Ordering::SeqCst);
        FRAMES.with(|frames| {
            frames.borrow_mut().push(Frame { gpu: gpu.id(), streams, commands: Vec::new(), ops: Vec::new(), scopes })
        });
        FrameGuard { gpu: gpu.clone(), taken: false }
    }

    /// Removes the frame and returns what it recorded. The frame still counts as open (for the
    /// pool) until the guard is dropped, after its work is submitted.
    fn take(&mut self) -> Recorded {
        if std::mem::replace(&mut self.taken, true) {
            return Recorded { commands: Vec::new(), ops: Vec::new(), scopes: None };
        }
        let id = self.gpu.id();
        FRAMES.with(|frames| {
            let mut frames = frames.borrow_mut();
            match frames.iter().rposition(|f| f.gpu == id) {
                Some(i) => {
                    let f = frames.remove(i);
                    Recorded { commands: f.commands, ops: f.ops, scopes: f.scopes }
                }
                None => Recorded { commands: Vec::new(), ops: Vec::new(), scopes: None },
            }
        })
    }
}

impl Drop for FrameGuard {
    fn drop(&mut self) {
        drop(self.take());
        self.gpu.inner.open_frames.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gpu {
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
        let record = || {
            dispatches
                .iter()
                .zip(&grids)
                .map(|(d, &(x, y))| Command {
                    pipeline: d.pipeline.clone(),
                    bind_group: self.bind_group(d),
                    workgroups: (x, y, 1),
                })
                .collect::<Vec<_>>()
        };
        if self.recording() {
            self.enqueue(what, record());
            return Ok(());
        }
        self.scoped(what, || {
            let commands = record();
            self.submit_commands(self.encode(what, &commands, None));
        })
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
        if self.recording() {
            self.enqueue(what, vec![command]);
            return Ok(());
        }
        self.scoped(what, || {
            self.submit_commands(self.encode(what, &[command], None));
        })
    }

    /// Runs `f` and submits all the GPU work that wgquant ops (and [`Gpu::dispatch`]) record
    /// inside it in few submissions of one compute pass each, instead of one per op: many
    /// matmuls, one submit for up to 32 dispatches. A longer batch submits each 32 dispatches
    /// as they are recorded, so that the GPU works while the host records the rest. Returns
    /// `f`'s result without waiting for the GPU. Inside `f`, reading a tensor back (or
    /// [`Gpu::time`]) first submits what was recorded so far, since the read needs it; a batch
    /// inside a batch joins the outer one. Batches are per thread: work another thread issues
    /// meanwhile is not captured. If `f` fails, what it recorded since the last submitted part
    /// is not submitted (a submitted part only writes the outputs of its own ops, which `f`'s
    /// failure drops). A wgpu error inside the batch (a validation error, memory running out)
    /// comes back when the batch ends, naming the ops it recorded.
    ///
    /// # Errors
    /// `f`'s error, or device errors from recording or submitting the batch.
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
        self.check_lost("batch")?;
        let mut frame = FrameGuard::open(self, true);
        let out = f();
        let Recorded { commands, ops, scopes } = frame.take();
        if out.is_ok() && !commands.is_empty() {
            self.submit_commands(self.encode("batch", &commands, None));
        }
        let caught = self.lost_or(scopes.map_or(Ok(()), |s| s.pop(|| batch_name(&ops))), "batch");
        drop(frame);
        let out = out?;
        caught?;
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
        self.check_lost("Gpu::time")?;
        let mut frame = FrameGuard::open(self, false);
        let out = f();
        let Recorded { commands, ops, scopes } = frame.take();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                drop(scopes);
                return Err(e);
            }
        };
        let device = &self.inner.device;
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
        let submission =
            self.submit_commands(self.encode("Gpu::time", &commands, Some((&query_set, &resolved, &readback))));
        if let Some(scopes) = scopes {
            self.lost_or(scopes.pop(|| format!("Gpu::time of {}", batch_name(&ops))), "Gpu::time")?;
        }
        drop(frame);
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
    pub(super) fn recording(&self) -> bool {
        let id = self.id();
        FRAMES.with(|frames| frames.borrow().iter().any(|f| f.gpu == id))
    }

    /// Runs `f` in error scopes of its own outside a batch; inside one, the batch's scopes
    /// catch its errors.
    pub(super) fn scoped_outside_batch<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        if self.recording() {
            Ok(f())
        } else {
            self.scoped(what, f)
        }
    }

    /// Submits what the innermost batch on this thread has recorded so far (nothing otherwise),
    /// and reports the errors its scopes caught until now.
    pub(super) fn flush(&self) -> Result<()> {
        let id = self.id();
        let taken = FRAMES.with(|frames| {
            frames
                .borrow_mut()
                .iter_mut()
                .rev()
                .find(|f| f.gpu == id)
                .map(|f| (std::mem::take(&mut f.commands), std::mem::take(&mut f.ops), f.scopes.take()))
        });
        let Some((commands, ops, scopes)) = taken else { return Ok(()) };
        if !commands.is_empty() {
            self.submit_commands(self.encode("batch", &commands, None));
        }
        let caught = self.lost_or(scopes.map_or(Ok(()), |s| s.pop(|| batch_name(&ops))), "batch");
        // The rest of the batch gets scopes of its own.
        let fresh = Scopes::push(&self.inner.device);
        FRAMES.with(|frames| {
            if let Some(f) = frames.borrow_mut().iter_mut().rev().find(|f| f.gpu == id) {
                f.scopes = Some(fresh);
            }
        });
        caught
    }

    /// Adds `commands` to this thread's innermost batch for this device, submitting the
    /// batch's commands so far once a streaming batch holds [`STREAM_DISPATCHES`] (its error
    /// scopes stay open: what they catch is reported when the batch ends).
    fn enqueue(&self, what: &str, commands: Vec<Command>) {
        let id = self.id();
        let part = FRAMES.with(|frames| {
            let mut frames = frames.borrow_mut();
            let frame = frames.iter_mut().rev().find(|f| f.gpu == id)?;
            frame.commands.extend(commands);
            if !frame.ops.iter().any(|op| op == what) {
                frame.ops.push(what.to_string());
            }
            (frame.streams && frame.commands.len() >= STREAM_DISPATCHES).then(|| std::mem::take(&mut frame.commands))
        });
        if let Some(part) = part {
            self.submit_commands(self.encode("batch", &part, None));
        }
    }

    /// Encodes `commands` into one compute pass (timed when `timestamps` holds a query set, a
    /// resolve buffer and a readback buffer).
    fn encode(
        &self,
        what: &str,
        commands: &[Command],
        timestamps: Option<(&wgpu::QuerySet, &wgpu::Buffer, &wgpu::Buffer)>,
    ) -> wgpu::CommandBuffer {
        let mut encoder =
            self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
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
        encoder.finish()
    }

    /// Submits `work`, preceded by the clears of reused pool buffers still owed (under the lock
    /// that holds them, so that no other submission can run work on such a buffer first), and
    /// counts the submission as completed once the GPU has finished it.
    pub(super) fn submit_commands(&self, work: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        let inner = &self.inner;
        let mut clears = inner.clears.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let clear = (!clears.is_empty()).then(|| {
            let mut encoder =
                inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgquant clears") });
            for buffer in clears.drain(..) {
                encoder.clear_buffer(&buffer, 0, None);
            }
            encoder.finish()
        });
        let submission = inner.queue.submit(clear.into_iter().chain(std::iter::once(work)));
        let serial = inner.submissions.fetch_add(1, Ordering::SeqCst) + 1;
        drop(clears);
        let completed = Arc::clone(&inner.completed);
        inner.queue.on_submitted_work_done(move || {
            completed.fetch_max(serial, Ordering::SeqCst);
        });
        submission
    }

    /// Identifies the device for this thread's batch frames.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }
}
