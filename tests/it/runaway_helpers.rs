//! Runaway helpers (issue 11, findings 6 and 9): password_command is
//! bounded in output and time, its process group is killed on timeout and
//! when the daemon stops; core dumps are off.

use crate::support;

use std::time::{Duration, Instant};

use support::daemon::DaemonProcess;
use support::fault_case::{Case, assert_mentions};
use support::fault_server::{Faults, PASSWORD, mailbox};

/// An account whose secret comes from `cmd` (the fault server expects
/// `PASSWORD`).
fn case_with_command(cmd: &str, extra: &str) -> Case {
    let c = Case::new(mailbox(1), Faults::default(), "");
    let maildir = &c.maildir;
    let toml = c
        .server
        .account_toml("acct", &format!("maildir = {maildir:?}\n{extra}"));
    let toml = toml.replace(
        "password = ",
        &format!("password_command = {cmd:?}\n# was: "),
    );
    c.popsync.write_config(&toml);
    c
}

/// `yes secret1` reached 4.5 GiB RSS in 8 s: now 64 KiB of output, then killed.
#[test]
fn endless_password_command_output_is_cut_and_killed() {
    let c = case_with_command("yes secret1", "");
    let started = Instant::now();
    let run = c.sync();
    run.expect_code(3);
    assert_mentions(&run, &["password_command", "64 kib", "killed"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!run.stderr().contains("secret1"), "{}", run.stderr());
    assert_eq!(c.server.connections(), 0);
}

/// `sleep 3600` hung sync forever: now the timeout ends it, group and all.
#[test]
fn hanging_password_command_times_out_and_its_group_dies() {
    let marker = tempfile::tempdir().unwrap();
    let pidfile = marker.path().join("grandchild.pid");
    let cmd = format!("sleep 3600 & echo $! > {pidfile:?}; wait");
    let c = case_with_command(&cmd, "password_command_timeout = \"1s\"");
    let started = Instant::now();
    let run = c.sync();
    run.expect_code(3);
    assert_mentions(
        &run,
        &["password_command", "did not finish within 1s", "killed"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        support::daemon::wait_until(Duration::from_secs(5), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)),
        "the sleep the command started is still running"
    );
}

/// A daemon stopped while password_command hangs exits promptly and takes
/// the helper with it (it stayed alive after two SIGTERMs).
#[test]
fn daemon_stop_kills_a_hanging_password_command() {
    let c = case_with_command("sleep 3600", "password_command_timeout = \"1h\"");
    let mut d = DaemonProcess::start(&c.popsync, &[]);
    // The first poll starts within seconds and blocks in password_command.
    assert!(support::daemon::wait_until(Duration::from_secs(20), || {
        helper_running("sleep 3600")
    }));
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(status.is_some(), "the daemon did not exit: {}", d.log());
    assert!(
        support::daemon::wait_until(Duration::from_secs(5), || !helper_running("sleep 3600")),
        "the helper outlived the daemon"
    );
}

/// True if a live process has exactly this command line.
fn helper_running(cmdline: &str) -> bool {
    let want: Vec<u8> = cmdline.replace(' ', "\0").into_bytes();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let alive = !stat.contains(") Z ");
        let cl = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        alive && cl.strip_suffix(b"\0").unwrap_or(&cl) == want.as_slice()
    })
}

/// Core dumps would hold the password: popsync turns them off (its
/// helpers inherit the limit), unless POPSYNC_ALLOW_CORE is set.
#[test]
fn core_dumps_are_off_unless_allowed() {
    // Give popsync something to lower (root may raise its own hard limit).
    let unlimited = rustix::process::Rlimit {
        current: None,
        maximum: None,
    };
    let raised = rustix::process::setrlimit(rustix::process::Resource::Core, unlimited).is_ok();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("core-limit");
    let cmd = format!("ulimit -c > {file:?}; echo {PASSWORD}");
    let c = case_with_command(&cmd, "");
    c.sync().expect_code(0);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "0");
    if raised {
        c.popsync
            .run_env(&["sync"], &[("POPSYNC_ALLOW_CORE", "1")])
            .expect_code(0);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "unlimited");
    }
}
