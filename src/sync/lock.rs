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
    #[error("account `{account}` is being synced by another popsync process (lock {path})")]
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
        let dir = state_dir.join("locks");
        let path = dir.join(format!("{account}.lock"));
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::WouldBlock {
                LockError::Held {
                    account: account.to_string(),
                    path,
                }
            } else {
                io_err(err)
            });
        }
        Ok(AccountLock { _file: file, path })
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
