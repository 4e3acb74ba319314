//! Launching a kernel over chunks of rows: every op that splits its tensors when one would
//! exceed a storage binding goes through [`launch_chunks`].

use std::ops::Range;

use crate::error::Result;
use crate::gpu::{BufferWindow, Dispatch, Gpu};
use crate::kernels::KernelKey;
use crate::tensor::Tensor;

/// What one launch binds: uniform parameters, buffer windows (bindings 1, 2, ...) and a
/// workgroup count. [`Launch::with`] adds the pipeline.
pub(super) struct Launch<'a> {
    pub params: Vec<u8>,
    pub buffers: Vec<BufferWindow<'a>>,
    pub workgroups: u32,
}

impl<'a> Launch<'a> {
    /// The dispatch of this launch with `pipeline`.
    pub fn with<'p>(self, pipeline: &'p wgpu::ComputePipeline) -> Dispatch<'p>
    where
        'a: 'p,
    {
        Dispatch { pipeline, params: self.params.into(), buffers: self.buffers, workgroups: self.workgroups }
    }
}

/// Splits `rows` rows into chunks whose windows fit a binding (`row_bytes`: the bytes one row
/// takes in each chunked buffer), builds the pipeline of `key` once, and submits one launch per
/// chunk, as `launch(chunk)` describes it. Does nothing for zero rows.
pub(super) fn launch_chunks<'a>(
    op: &'static str,
    gpu: &Gpu,
    rows: usize,
    row_bytes: &[u64],
    key: &KernelKey,
    launch: impl Fn(&Range<usize>) -> Result<Launch<'a>>,
) -> Result<()> {
    let chunks = gpu.row_chunks(op, rows, row_bytes)?;
    if chunks.is_empty() {
        return Ok(());
    }
    let pipeline = gpu.pipeline(key)?;
    let dispatches =
        chunks.iter().map(|chunk| Ok(launch(chunk)?.with(&pipeline))).collect::<Result<Vec<Dispatch<'_>>>>()?;
    gpu.submit(op, &dispatches)?;
    Ok(())
}

/// A binding of all of `t`.
pub(super) fn whole(t: &Tensor) -> BufferWindow<'_> {
    BufferWindow::bytes(t.storage(), 0, t.size_in_bytes())
}
