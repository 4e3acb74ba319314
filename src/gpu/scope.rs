//! Error capture and deadlines: wgpu's error scopes turned into [`Error`]s, device loss, and
//! waits that give up.
//!
//! Scopes are opened around pipeline creation and around each submission (for a batch: from
//! its start to its submission), never around a single buffer or bind group inside a batch:
//! every pop blocks, and what a batch's scopes catch still names its ops.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::Gpu;
use crate::error::{Error, Result};

/// Validation, out-of-memory and internal error scopes, pushed together on this thread. wgpu
/// requires scopes to be popped in reverse order: the fields are declared innermost first, so
/// that dropping unpopped scopes (a failed batch, a panic) pops them in that order too.
pub(super) struct Scopes {
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
    internal: wgpu::ErrorScopeGuard,
}

impl Scopes {
    pub fn push(device: &wgpu::Device) -> Scopes {
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scopes { validation, oom, internal }
    }

    /// Pops the scopes (innermost first) and turns what they caught into an error naming `what`.
    pub fn pop(self, what: impl FnOnce() -> String) -> Result<()> {
        let validation = pollster::block_on(self.validation.pop());
        let oom = pollster::block_on(self.oom.pop());
        let internal = pollster::block_on(self.internal.pop());
        if let Some(e) = oom {
            return Err(Error::OutOfMemory { what: what(), message: e.to_string() });
        }
        if let Some(e) = validation.or(internal) {
            return Err(Error::Validation { what: what(), message: e.to_string() });
        }
        Ok(())
    }
}

impl Gpu {
    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns whatever
    /// they caught into an [`Error`] naming `what`.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lost(what)?;
        let scopes = Scopes::push(&self.inner.device);
        let out = f();
        self.lost_or(scopes.pop(|| what.to_string()), what)?;
        Ok(out)
    }

    /// `caught`, unless the device was lost: a destroyed device makes every call a validation
    /// error before wgpu reports the loss, which is the error that explains them.
    pub(super) fn lost_or(&self, caught: Result<()>, what: &str) -> Result<()> {
        if caught.is_err() {
            self.poll_nonblocking();
            self.check_lost(what)?;
        }
        caught
    }

    pub(super) fn check_lost(&self, what: &str) -> Result<()> {
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

    /// Polls the device without blocking, so that finished work's callbacks run (a lost
    /// device is reported by the next wait).
    pub(super) fn poll_nonblocking(&self) {
        let _ = catch_unwind(AssertUnwindSafe(|| self.inner.device.poll(wgpu::PollType::Poll)));
    }

    /// Blocks until all submitted work has finished (with the deadline).
    ///
    /// # Errors
    /// [`Error::Timeout`] or [`Error::DeviceLost`].
    pub fn synchronize(&self) -> Result<()> {
        self.wait("synchronize", None)
    }

    /// wgpu errors that escaped every scope since the last call (should stay empty).
    pub fn take_uncaptured_errors(&self) -> Vec<String> {
        self.inner.uncaptured.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }
}
