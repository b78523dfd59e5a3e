//! One sync per account at a time, across processes: an exclusive `flock`
//! on `state_dir/locks/ACCOUNT.lock`, released when the process exits, even
//! by kill -9. Only popsync takes these locks, so flock's indifference to
//! fcntl locks does not matter here (unlike for mbox files).

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
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
        crate::ownership::check_private_dir("lock directory", dir)
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
    }
    // Never through a symlink another user planted; the file must be ours.
    let file =
        crate::ownership::open_private_file("lock file", path, true).map_err(|e| match e {
            crate::ownership::OpenRefused::Io { source, .. } => source,
            unsafe_path => io::Error::new(io::ErrorKind::PermissionDenied, unsafe_path.to_string()),
        })?;
    // std's try_lock is flock(LOCK_EX | LOCK_NB) on Linux.
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
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
