//! A second local user to play the attacker in trust-boundary tests.

use std::process::Command;
use std::sync::Mutex;

/// The attacker's account: owns files the victim (the test, root in CI)
/// must refuse to trust.
pub const OTHER_USER: &str = "popsync-other";

/// The other user's uid, created as a system user if missing; `None` when
/// the tests do not run as root (they cannot chown to another user then).
pub fn other_user() -> Option<u32> {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("skipped: needs root to create files owned by {OTHER_USER}");
        return None;
    }
    // Threads of this binary, then other test binaries (useradd's own lock
    // on /etc/passwd fails rather than waits).
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(uid) = lookup(OTHER_USER) {
        return Some(uid);
    }
    for _ in 0..20 {
        let out = useradd_system(OTHER_USER);
        if let Some(uid) = lookup(OTHER_USER) {
            return Some(uid);
        }
        eprintln!("useradd: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("could not create the system user {OTHER_USER}");
}

/// `useradd --system` without a home or a login shell.
pub fn useradd_system(name: &str) -> std::process::Output {
    Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output()
        .expect("run useradd")
}

fn lookup(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// `chown uid PATH` (not following a symlink), as root.
pub fn chown(path: &std::path::Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None)
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}
