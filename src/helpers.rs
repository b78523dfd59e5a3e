//! Helper processes popsync starts (`password_command`, the MDA): each runs
//! in its own process group, which is killed as a whole on a timeout, and
//! every group still running is killed when the daemon stops, so a hung
//! helper can neither hang a sync nor keep a stopped daemon alive.
use std::collections::BTreeSet;
use std::sync::Mutex;

static RUNNING: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Registers a running helper's process group for [`kill_all`] while alive.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: i32,
}

impl GroupGuard {
    /// `pid` is the leader of its own group (`Command::process_group(0)`).
    pub fn new(pid: u32) -> GroupGuard {
        let pgid = pid as i32;
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pgid);
        GroupGuard { pgid }
    }

    /// SIGKILL to the whole group (the shell and everything it started).
    pub fn kill(&self) {
        kill_group(self.pgid);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pgid);
    }
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Kills every helper group still running (daemon stop).
pub fn kill_all() -> usize {
    let groups: Vec<i32> = RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect();
    for &g in &groups {
        kill_group(g);
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    // kill_all itself is exercised by tests/it/runaway_helpers.rs (daemon
    // stop): here it would kill other tests' helpers running in parallel.
    #[test]
    fn kill_ends_the_whole_group_and_drop_unregisters() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let guard = GroupGuard::new(child.id());
        assert!(RUNNING.lock().unwrap().contains(&(child.id() as i32)));
        let started = Instant::now();
        guard.kill();
        child.wait().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(guard);
        assert!(!RUNNING.lock().unwrap().contains(&(child.id() as i32)));
    }
}
