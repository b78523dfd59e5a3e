//! One sync per account at a time, across processes: an exclusive `flock`
//! on `state_dir/locks/ACCOUNT.lock`, released when the process exits, even
//! by kill -9. Only popsync takes these locks, so flock's indifference to
//! fcntl locks does not matter here (unlike for mbox files).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct AccountLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    // The account is named by whoever prints this (once).
    #[error(
        "another popsync process is syncing this account (lock {}); wait for it to finish, or stop it",
        .path.display()
    )]
    Held { account: String, path: PathBuf },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl AccountLock {
    pub fn acquire(state_dir: &Path, account: &str) -> Result<AccountLock, LockError> {
        let path = state_dir.join("locks").join(format!("{account}.lock"));
        match try_flock(&path) {
            Ok(Some(file)) => Ok(AccountLock { _file: file, path }),
            Ok(None) => Err(LockError::Held {
                account: account.to_string(),
                path,
            }),
            Err(source) => Err(LockError::Io { path, source }),
        }
    }
}

/// Opens (creating it 0600, and its directory 0700) and takes an exclusive,
/// non-blocking `flock` on `path`; `Ok(None)` when another process holds it.
/// The lock lasts as long as the returned file is open.
pub fn try_flock(path: &Path) -> io::Result<Option<File>> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    // SAFETY: flock on a valid, owned descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = AccountLock::acquire(dir.path(), "alice").unwrap();
        let err = AccountLock::acquire(dir.path(), "alice").unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
        assert!(AccountLock::acquire(dir.path(), "bob").is_ok());
        drop(first);
        assert!(AccountLock::acquire(dir.path(), "alice").is_ok());
    }
}
