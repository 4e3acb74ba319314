//! The file-system facts `convert` and `inspect` rely on, checked without trusting names: only
//! regular files are read (a FIFO or device named `config.json` would block a read forever),
//! free space is known before a byte is written, and a temporary directory's owner is known to
//! be alive or gone.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// What a non-regular file is, in words.
fn kind_of(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        return "directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "device";
        }
    }
    "special file"
}

/// Opens `path` for reading, refusing anything but a regular file.
///
/// The file is opened without blocking (on Unix, `O_NONBLOCK`: opening a FIFO with no writer
/// would otherwise wait forever) and its type is checked on the open handle, so a path swapped
/// between a check and the open cannot slip through.
///
/// # Errors
/// [`Error::Io`] when it cannot be opened; [`Error::NotRegularFile`] for a directory, FIFO,
/// socket or device.
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    let io_error = |source| Error::Io { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path).map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(Error::NotRegularFile { path: path.to_path_buf(), kind: kind_of(&meta) });
    }
    Ok(file)
}

/// Reads all of the regular file `path` (see [`open_regular`]).
///
/// # Errors
/// Those of [`open_regular`]; [`Error::Io`] when reading fails.
pub(crate) fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Ok(bytes)
}

/// Checks that `dir` is a directory: a missing one is [`Error::MissingFile`], anything else
/// [`Error::NotADirectory`] (a file given where a model directory belongs is there, not "not
/// found").
pub(crate) fn check_dir(dir: &Path, what: &'static str) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(Error::NotADirectory {
            path: dir.to_path_buf(),
            what,
            kind: if meta.is_file() { "regular file" } else { kind_of(&meta) },
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::MissingFile { path: dir.to_path_buf(), what }),
        Err(source) => Err(Error::Io { path: dir.to_path_buf(), source }),
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`, where the
/// platform tells (`statvfs`'s `f_bavail * f_frsize`).
pub(crate) fn available_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let stats = rustix::fs::statvfs(dir).ok()?;
        Some(stats.f_bavail.saturating_mul(stats.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Whether a process with this id is running (on Unix: `kill(pid, 0)` does not fail with
/// `ESRCH`). Where the platform cannot tell, every process counts as running, so nothing of a
/// live one is ever removed.
pub(crate) fn process_exists(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return true };
        rustix::process::test_kill_process(pid) != Err(rustix::io::Errno::SRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
