//! Delivery through an external MDA (`sh -c COMMAND`, message on stdin).
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{
    Batch, BatchToken, DeliverError, DurableBatch, Location, Message, MessageMeta, StoredMessage,
    Target,
};

/// Stderr kept for the error message and the log.
const STDERR_CAP: usize = 64 * 1024;

/// A target that hands each message to a command.
pub struct Mda {
    command: String,
    timeout: Duration,
}

/// A batch of MDA deliveries: each message is delivered when it finishes,
/// so there is nothing to sync, publish or undo.
struct MdaBatch<'a> {
    mda: &'a Mda,
}

/// A message being piped into the MDA; dropped unfinished, the MDA's whole
/// process group is killed and reaped.
struct MdaMessage<'a> {
    mda: &'a Mda,
    /// `None` once finished or killed.
    run: Option<Running>,
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

    /// Starts the command with its stdin non-blocking and stderr collected.
    fn spawn(&self) -> Result<Running, DeliverError> {
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
        Ok(Running {
            group: crate::helpers::GroupGuard::new(child.id()),
            child,
            stdin,
            stderr: rx,
            hasher: Sha256::new(),
            size: 0,
            unread: false,
        })
    }
}

impl MdaMessage<'_> {
    fn write_all(&mut self, mut data: &[u8]) -> Result<(), DeliverError> {
        let mda = self.mda;
        let timeout = mda.timeout;
        let Some(run) = self.run.as_mut() else {
            return Err(mda.err("was stopped after an earlier error".into()));
        };
        run.hasher.update(data);
        run.size += data.len() as u64;
        while !data.is_empty() {
            let Some(stdin) = run.stdin.as_mut() else {
                return Ok(()); // it stopped reading; finish reports
            };
            match stdin.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait_writable(stdin, timeout) {
                        self.kill();
                        return Err(mda.err(format!(
                            "timed out after {timeout:?} (not reading its input)"
                        )));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    run.stdin = None;
                    run.unread = true;
                }
                Err(e) => {
                    self.kill();
                    return Err(mda.err(format!("write to its input: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Kills the MDA's whole process group (the shell and what it started).
    fn kill(&mut self) {
        if let Some(mut run) = self.run.take() {
            Mda::kill(&mut run);
        }
    }
}

impl Drop for MdaMessage<'_> {
    fn drop(&mut self) {
        self.kill();
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
        _token: Option<&BatchToken>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError> {
        // A journaled MDA delivery was accepted (exit 0) before it was journaled.
        Ok(pending
            .iter()
            .map(|m| m.location == Location::Mda)
            .collect())
    }

    fn batch(&mut self) -> Result<Box<dyn Batch<'_> + '_>, DeliverError> {
        Ok(Box::new(MdaBatch { mda: self }))
    }
}

impl<'a> Batch<'a> for MdaBatch<'a> {
    fn token(&self) -> Option<BatchToken> {
        None
    }

    fn message(&mut self, meta: &MessageMeta) -> Result<Box<dyn Message + '_>, DeliverError> {
        let mut message = MdaMessage {
            mda: self.mda,
            run: Some(self.mda.spawn()?),
        };
        if let Some(h) = &meta.received_header {
            message.write_all(h)?;
        }
        Ok(Box::new(message))
    }

    fn sync(self: Box<Self>) -> Result<Box<dyn DurableBatch + 'a>, DeliverError> {
        Ok(self)
    }

    fn detach(self: Box<Self>) -> Result<Box<dyn Batch<'static> + Send>, Box<dyn Batch<'a> + 'a>> {
        Err(self)
    }
}

impl DurableBatch for MdaBatch<'_> {
    fn publish(self: Box<Self>) -> Result<(), DeliverError> {
        Ok(())
    }
}

impl Write for MdaMessage<'_> {
    fn write(&mut self, chunk: &[u8]) -> io::Result<usize> {
        self.write_all(chunk).map_err(DeliverError::into_io)?;
        Ok(chunk.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Message for MdaMessage<'_> {
    fn finish(mut self: Box<Self>) -> Result<StoredMessage, DeliverError> {
        let mda = self.mda;
        let Some(mut run) = self.run.take() else {
            return Err(mda.err("was stopped after an earlier error".into()));
        };
        drop(run.stdin.take()); // EOF for the MDA
        let deadline = Instant::now() + mda.timeout;
        let mut nap = Duration::from_millis(2);
        let status = loop {
            match run.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => {
                    Mda::kill(&mut run);
                    return Err(mda.err(format!("wait: {e}")));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                Mda::kill(&mut run);
                let stderr = Mda::stderr_text(&run);
                if !stderr.is_empty() {
                    tracing::warn!("MDA `{}` stderr: {}", mda.command, stderr.trim_end());
                }
                return Err(mda.err(format!("timed out after {:?}", mda.timeout)));
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(50));
        };
        let stderr = Mda::stderr_text(&run);
        if !status.success() {
            if !stderr.is_empty() {
                tracing::warn!("MDA `{}` stderr: {}", mda.command, stderr.trim_end());
            }
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let mut reason = describe_status(status);
            if !first.is_empty() {
                reason.push_str(": ");
                reason.push_str(first.trim());
            }
            return Err(mda.err(reason));
        }
        if run.unread {
            // Exit 0 is the MDA's word that it took the message.
            tracing::warn!(
                "MDA `{}` exited 0 without reading the whole message",
                mda.command
            );
        }
        Ok(StoredMessage {
            location: Location::Mda,
            size: run.size,
            sha256: run.hasher.finalize().into(),
        })
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
        let mut batch = mda.batch()?;
        let mut message = batch.message(&MessageMeta::default())?;
        for c in msg.chunks(chunk) {
            message.write_all(c).map_err(DeliverError::from_write)?;
        }
        message.finish()
    }

    fn alive(pid: i32) -> bool {
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        rustix::process::test_kill_process(pid).is_ok()
    }

    fn read_pid(path: &std::path::Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    #[test]
    fn a_message_dropped_mid_write_kills_the_mda_and_what_it_started() {
        let td = tempfile::tempdir().unwrap();
        let (shell, helper) = (td.path().join("shell"), td.path().join("helper"));
        let mut mda = Mda::new(
            &format!(
                "sleep 30 & echo $! > '{}'; echo $$ > '{}'; cat >/dev/null",
                helper.display(),
                shell.display()
            ),
            Duration::from_secs(20),
        );
        let mut batch = mda.batch().unwrap();
        let mut message = batch.message(&MessageMeta::default()).unwrap();
        message
            .write_all(b"Subject: half\n\nthe first part")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pids = loop {
            if let (Some(a), Some(b)) = (read_pid(&shell), read_pid(&helper)) {
                break [a, b];
            }
            assert!(Instant::now() < deadline, "the MDA did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(pids.iter().all(|&p| alive(p)));
        drop(message);
        // The shell is killed and reaped at once; the helper in its group
        // gets the same SIGKILL (its parent reaps it shortly).
        assert!(!alive(pids[0]), "the MDA still runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pids[1]) {
            assert!(Instant::now() < deadline, "the MDA's helper still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn bytes_arrive_exactly() {
        let td = tempfile::tempdir().unwrap();
        let out = td.path().join("out");
        let mut mda = Mda::new(
            &format!("cat > '{}'", out.display()),
            Duration::from_secs(10),
        );
        let mut batch = mda.batch().unwrap();
        assert_eq!(batch.token(), None);
        // Larger than a pipe buffer, with NUL and 8-bit bytes.
        let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut message = batch
            .message(&MessageMeta {
                received_header: Some(b"Received: x\n".to_vec()),
            })
            .unwrap();
        for c in msg.chunks(10_000) {
            message.write_all(c).unwrap();
        }
        let s = message.finish().unwrap();
        let want = [b"Received: x\n".as_slice(), &msg].concat();
        assert_eq!(std::fs::read(&out).unwrap(), want);
        assert_eq!(s.location, Location::Mda);
        assert_eq!(s.size, want.len() as u64);
        assert_eq!(s.sha256, <[u8; 32]>::from(Sha256::digest(&want)));
        batch.sync().unwrap().publish().unwrap();
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
