//! Delivery through an external MDA (`sh -c COMMAND`, message on stdin).
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{BatchMark, DeliverError, Location, MessageMeta, StoredMessage, Target};

/// Stderr kept for the error message and the log.
const STDERR_CAP: usize = 64 * 1024;

/// A target that hands each message to a command.
pub struct Mda {
    command: String,
    timeout: Duration,
    current: Option<Running>,
}

struct Running {
    /// Killed as a group on timeout and when the daemon stops.
    group: crate::helpers::GroupGuard,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Receiver<Vec<u8>>,
    hasher: Sha256,
    size: u64,
    /// The MDA exited or closed stdin before reading everything.
    unread: bool,
}

impl Mda {
    /// `timeout` bounds both a stalled write (MDA not reading) and the wait
    /// for the MDA to exit after the message.
    pub fn new(command: &str, timeout: Duration) -> Mda {
        Mda {
            command: command.to_string(),
            timeout,
            current: None,
        }
    }

    fn err(&self, reason: String) -> DeliverError {
        DeliverError::Mda {
            command: self.command.clone(),
            reason,
        }
    }

    /// Kills the MDA's whole process group (the shell and what it started).
    fn kill(run: &mut Running) {
        run.group.kill();
        let _ = run.child.kill();
        let _ = run.child.wait();
    }

    fn stderr_text(run: &Running) -> String {
        // The group is dead or exited; a daemonized grandchild keeping the
        // pipe open must not hang us.
        let bytes = run
            .stderr
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default();
        // It reaches the terminal, the log, `status` and state.db.
        crate::pop3::sanitize_text(&String::from_utf8_lossy(&bytes), 300)
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), DeliverError> {
        let timeout = self.timeout;
        let Some(run) = self.current.as_mut() else {
            return Err(self.err("write without begin_message".into()));
        };
        run.hasher.update(data);
        run.size += data.len() as u64;
        while !data.is_empty() {
            let Some(stdin) = run.stdin.as_mut() else {
                return Ok(()); // it stopped reading; end_message reports
            };
            match stdin.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_writable(stdin, timeout) {
                        let mut run = self.current.take().expect("checked above");
                        Self::kill(&mut run);
                        return Err(self.err(format!(
                            "timed out after {timeout:?} (not reading its input)"
                        )));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    run.stdin = None;
                    run.unread = true;
                }
                Err(e) => {
                    let mut run = self.current.take().expect("checked above");
                    Self::kill(&mut run);
                    return Err(self.err(format!("write to its input: {e}")));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Mda {
    fn drop(&mut self) {
        if let Some(mut run) = self.current.take() {
            Self::kill(&mut run);
        }
    }
}

fn describe_status(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("failed ({st})"),
    }
}

impl Target for Mda {
    fn describe(&self) -> String {
        format!("mda `{}`", self.command)
    }

    fn recover(
        &mut self,
        _mark: Option<BatchMark>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError> {
        // A journaled MDA delivery was accepted (exit 0) before it was journaled.
        Ok(pending
            .iter()
            .map(|m| m.location == Location::Mda)
            .collect())
    }

    fn begin_batch(&mut self) -> Result<BatchMark, DeliverError> {
        Ok(BatchMark::default())
    }

    fn begin_message(&mut self, meta: &MessageMeta) -> Result<(), DeliverError> {
        self.abort_message();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0) // so a timeout kills everything it started
            .spawn()
            .map_err(|e| self.err(format!("could not start: {e}")))?;
        let stdin = child.stdin.take();
        // Non-blocking, so a stalled MDA cannot hang us past the timeout.
        if let Some(s) = &stdin
            && let Err(e) = set_nonblocking(s)
        {
            crate::helpers::GroupGuard::new(child.id()).kill();
            let _ = child.kill();
            let _ = child.wait();
            return Err(self.err(format!("could not make its input non-blocking: {e}")));
        }
        let (tx, rx) = mpsc::channel();
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    match err.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let room = STDERR_CAP.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(kept);
            });
        }
        self.current = Some(Running {
            group: crate::helpers::GroupGuard::new(child.id()),
            child,
            stdin,
            stderr: rx,
            hasher: Sha256::new(),
            size: 0,
            unread: false,
        });
        if let Some(h) = &meta.received_header {
            self.write_all(h)?;
        }
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), DeliverError> {
        self.write_all(chunk)
    }

    fn end_message(&mut self) -> Result<StoredMessage, DeliverError> {
        let Some(mut run) = self.current.take() else {
            return Err(self.err("end_message without begin_message".into()));
        };
        drop(run.stdin.take()); // EOF for the MDA
        let deadline = Instant::now() + self.timeout;
        let mut nap = Duration::from_millis(2);
        let status = loop {
            match run.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    Self::kill(&mut run);
                    return Err(self.err(format!("wait: {e}")));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                Self::kill(&mut run);
                let stderr = Self::stderr_text(&run);
                if !stderr.is_empty() {
                    tracing::warn!("MDA `{}` stderr: {}", self.command, stderr.trim_end());
                }
                return Err(self.err(format!("timed out after {:?}", self.timeout)));
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(50));
        };
        let stderr = Self::stderr_text(&run);
        if !status.success() {
            if !stderr.is_empty() {
                tracing::warn!("MDA `{}` stderr: {}", self.command, stderr.trim_end());
            }
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let mut reason = describe_status(status);
            if !first.is_empty() {
                reason.push_str(": ");
                reason.push_str(first.trim());
            }
            return Err(self.err(reason));
        }
        if run.unread {
            // Exit 0 is the MDA's word that it took the message.
            tracing::warn!(
                "MDA `{}` exited 0 without reading the whole message",
                self.command
            );
        }
        Ok(StoredMessage {
            location: Location::Mda,
            size: run.size,
            sha256: run.hasher.finalize().into(),
        })
    }

    fn abort_message(&mut self) {
        if let Some(mut run) = self.current.take() {
            Self::kill(&mut run);
        }
    }

    fn sync_batch(&mut self) -> Result<(), DeliverError> {
        Ok(())
    }

    fn publish_batch(&mut self) -> Result<(), DeliverError> {
        Ok(())
    }

    fn abort_batch(&mut self) -> Result<(), DeliverError> {
        self.abort_message();
        Ok(())
    }
}

fn set_nonblocking(fd: impl AsFd) -> rustix::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
}

/// Waits up to `timeout` for room in the pipe; `false` when none came.
/// An interrupted or failed poll counts as room: the write that follows
/// tells which it was.
fn wait_writable(fd: impl AsFd, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let timeout = Timespec::try_from(timeout).ok();
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    !matches!(rustix::event::poll(&mut fds, timeout.as_ref()), Ok(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mda: &mut Mda, msg: &[u8], chunk: usize) -> Result<StoredMessage, DeliverError> {
        mda.begin_message(&MessageMeta::default())?;
        for c in msg.chunks(chunk) {
            mda.write(c)?;
        }
        mda.end_message()
    }

    #[test]
    fn bytes_arrive_exactly() {
        let td = tempfile::tempdir().unwrap();
        let out = td.path().join("out");
        let mut mda = Mda::new(
            &format!("cat > '{}'", out.display()),
            Duration::from_secs(10),
        );
        mda.begin_batch().unwrap();
        // Larger than a pipe buffer, with NUL and 8-bit bytes.
        let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        mda.begin_message(&MessageMeta {
            received_header: Some(b"Received: x\n".to_vec()),
        })
        .unwrap();
        for c in msg.chunks(10_000) {
            mda.write(c).unwrap();
        }
        let s = mda.end_message().unwrap();
        let want = [b"Received: x\n".as_slice(), &msg].concat();
        assert_eq!(std::fs::read(&out).unwrap(), want);
        assert_eq!(s.location, Location::Mda);
        assert_eq!(s.size, want.len() as u64);
        assert_eq!(s.sha256, <[u8; 32]>::from(Sha256::digest(&want)));
        mda.sync_batch().unwrap();
        mda.publish_batch().unwrap();
        assert_eq!(mda.recover(None, &[s]).unwrap(), vec![true]);
    }

    #[test]
    fn exit_status_is_reported() {
        let mut mda = Mda::new("echo 'no such user' >&2; exit 75", Duration::from_secs(10));
        let err = run(&mut mda, &vec![b'x'; 200_000], 4096).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DeliverError::Mda { .. }));
        assert!(text.contains("status 75"), "{text}");
        assert!(text.contains("no such user"), "{text}");
        let err = run(&mut mda, b"small\n", 1).unwrap_err().to_string();
        assert!(err.contains("status 75"), "{err}");
    }

    #[test]
    fn timeout_kills() {
        let mut mda = Mda::new("sleep 10", Duration::from_millis(200));
        let t = Instant::now();
        let err = run(&mut mda, b"hello\n", 3).unwrap_err().to_string();
        assert!(err.contains("timed out after 200ms"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // An MDA that never reads: the write itself times out.
        let t = Instant::now();
        let err = run(&mut mda, &vec![b'x'; 1 << 20], 65536)
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
