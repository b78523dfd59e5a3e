//! A `popsync daemon` child process: its stderr collected line by line,
//! signals, waiting for log lines and for the exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::popsync::Popsync;

pub struct DaemonProcess {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl DaemonProcess {
    /// Starts `popsync daemon` with `env` and waits until it says it started.
    pub fn start(p: &Popsync, env: &[(&str, &str)]) -> DaemonProcess {
        let mut cmd = p.command(&["daemon"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn popsync daemon");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let d = DaemonProcess { child, log };
        d.wait_log("daemon started", Duration::from_secs(10));
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Lines of the log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` appears `n` times in the log; panics with the
    /// log after `timeout`.
    pub fn wait_log_n(&self, needle: &str, n: usize, timeout: Duration) {
        let ok = wait_until(timeout, || self.count(needle) >= n);
        assert!(
            ok,
            "no {n}x {needle:?} within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_n(needle, 1, timeout)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill {sig}");
    }

    /// Waits for the exit; `None` if still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
