//! Small helpers shared by the delivery targets.
use std::path::Path;

use super::DeliverError;

/// Builds a `DeliverError::Io` that names the target, the action and the path.
pub(crate) fn io_err(
    target: &str,
    action: &'static str,
    path: &Path,
    source: std::io::Error,
) -> DeliverError {
    DeliverError::Io {
        target: target.to_string(),
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Retries a libc call while it fails with EINTR; returns the errno error otherwise.
pub(crate) fn cvt_retry<F: FnMut() -> libc::c_int>(mut f: F) -> std::io::Result<libc::c_int> {
    loop {
        let r = f();
        if r != -1 {
            return Ok(r);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
