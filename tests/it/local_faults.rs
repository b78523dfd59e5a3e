//! Local faults: a full disk, an unwritable or missing target, a locked,
//! corrupt or too-new state database. Each is a clear error with exit code
//! 7, no DELE reaches the server, and no partial delivery is visible.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::fault_case::{Case, assert_mentions, keep_false};
use support::fault_server::{FaultMessage, Faults, mailbox};
use support::popsync::maildir_messages;

/// Messages of about 100 KiB each: a 2 MiB filesystem holds a few of them.
fn big_mailbox(n: usize) -> Vec<FaultMessage> {
    let mut mb = mailbox(n);
    for (i, m) in mb.iter_mut().enumerate() {
        m.body
            .extend(format!("{i:0>79}\n").repeat(100 * 1024 / 80).as_bytes());
    }
    mb
}

/// A tmpfs of `size` at `dir`; false when this machine cannot mount.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
        .arg("tmpfs")
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn remount(dir: &Path, options: &str) {
    let ok = Command::new("mount")
        .args(["-o", &format!("remount,{options}")])
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount {options}");
}

/// Unmounts on drop, even when the test fails.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn assert_server_untouched(c: &Case) {
    assert_eq!(c.server.mailbox(), c.original, "the server lost messages");
    assert!(
        !c.server.transcript().iter().any(|l| l.starts_with("DELE")),
        "DELE sent after a local failure"
    );
}

/// The disk fills up in the middle of the first batch. With a 2 MiB tmpfs
/// when the machine allows mounting (root here and in CI); otherwise
/// RLIMIT_FSIZE on the child, which makes write(2) fail with EFBIG.
#[test]
fn disk_full_is_a_clear_error_and_nothing_is_deleted() {
    for target in ["maildir", "mbox"] {
        let c = Case::new(big_mailbox(40), Faults::default(), keep_false());
        let disk = c.popsync.path("disk");
        let mounted = mount_tmpfs(&disk, "2m");
        let _guard = mounted.then(|| Mounted(&disk));
        let path = disk.join("Mail");
        let toml = c
            .server
            .account_toml("acct", &format!("{target} = {path:?}\n{}", keep_false()));
        c.popsync.write_config(&toml);
        let run = if mounted {
            eprintln!("{target}: disk full via a 2 MiB tmpfs");
            c.sync()
        } else {
            eprintln!("{target}: cannot mount here; disk full via RLIMIT_FSIZE (EFBIG)");
            let mut cmd = c.popsync.command(&["sync"]);
            // 1 MiB files at most; SIGXFSZ ignored so write(2) returns EFBIG.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: 1 << 20,
                        rlim_max: 1 << 20,
                    };
                    libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                    Ok(())
                });
            }
            support::popsync::Run(cmd.output().unwrap())
        };
        run.expect_code(7);
        assert_mentions(&run, &[if mounted { "space" } else { "too large" }]);
        assert_server_untouched(&c);
        match target {
            "maildir" => {
                assert_eq!(maildir_messages(&path).len(), 0, "nothing half-delivered");
                let tmp = std::fs::read_dir(path.join("tmp")).unwrap().count();
                assert_eq!(tmp, 0, "temporary files removed");
            }
            _ => {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                assert_eq!(len, 0, "the mbox is truncated back");
            }
        }
        if mounted {
            // Space again: everything arrives, once.
            remount(&disk, "size=64m");
            c.sync().expect_code(0);
            assert!(c.server.mailbox().is_empty());
            let stored = match target {
                "maildir" => maildir_messages(&path),
                _ => popsync::deliver::mbox::parse_mboxrd(&std::fs::read(&path).unwrap()),
            };
            let mut want: Vec<Vec<u8>> = c.original.iter().map(|m| m.body.clone()).collect();
            want.sort();
            assert_eq!(support::popsync::sorted(stored), want);
        }
    }
}

#[test]
fn read_only_target_is_a_clear_error() {
    let c = Case::new(mailbox(3), Faults::default(), keep_false());
    let disk = c.popsync.path("ro");
    if mount_tmpfs(&disk, "4m") {
        let _guard = Mounted(&disk);
        // A maildir that exists, on a filesystem that became read-only.
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(disk.join("Mail").join(sub)).unwrap();
        }
        remount(&disk, "ro");
        let toml = c.server.account_toml(
            "acct",
            &format!("maildir = {:?}\n{}", disk.join("Mail"), keep_false()),
        );
        c.popsync.write_config(&toml);
        let run = c.sync();
        run.expect_code(7);
        assert_mentions(&run, &["read-only"]);
        assert_server_untouched(&c);
    } else {
        // chmod does not stop root; a read-only mount is the real test.
        panic!("cannot mount a tmpfs here: the read-only target test needs root");
    }
}

#[test]
fn missing_target_directory_is_a_clear_error() {
    let c = Case::new(mailbox(3), Faults::default(), keep_false());
    let file = c.popsync.path("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for target in ["maildir", "mbox"] {
        let path = file.join("Mail");
        let toml = c
            .server
            .account_toml("acct", &format!("{target} = {path:?}\n{}", keep_false()));
        c.popsync.write_config(&toml);
        let run = c.sync();
        run.expect_code(7);
        assert_mentions(&run, &["a-file/Mail"]);
        assert_server_untouched(&c);
        assert_eq!(c.server.connections(), 0, "failed before connecting");
    }
}

fn state_db(c: &Case) -> std::path::PathBuf {
    c.popsync.state_dir.join("state.db")
}

#[test]
fn state_db_locked_by_another_process() {
    let c = Case::new(mailbox(3), Faults::default(), keep_false());
    c.sync().expect_code(0);
    let more = mailbox(6).split_off(3);
    c.server.set_mailbox(more.clone());
    let before = maildir_messages(&c.maildir).len();

    let holder = rusqlite::Connection::open(state_db(&c)).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let run = c.sync();
    drop(holder);
    run.expect_code(6);
    assert_mentions(&run, &["locked by another process"]);
    assert_eq!(c.server.mailbox(), more);
    assert_eq!(maildir_messages(&c.maildir).len(), before);
    // Lock gone: the next run catches up.
    c.sync().expect_code(0);
    assert_eq!(maildir_messages(&c.maildir).len(), 6);
    assert!(c.server.mailbox().is_empty());
}

/// The daemon (or any other process) takes the state database while a
/// batch is in flight: the batch's journal transaction hits SQLITE_BUSY,
/// which is "try later" (exit 6), like a lock met at start, not exit 7.
/// The lock is held past popsync's 30 s busy timeout, then released, so
/// the clean-up after the failure goes through.
#[test]
fn state_db_locked_mid_batch_is_try_later() {
    use std::time::{Duration, Instant};
    let faults = Faults {
        slow_retr: Some((2, Duration::from_secs(1))),
        ..Faults::default()
    };
    let c = Case::new(mailbox(4), faults, keep_false());
    let db = state_db(&c);
    let server = &c.server;
    let run = std::thread::scope(|scope| {
        scope.spawn(|| {
            // RETR 2 is answered a second late: lock while the batch is open.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !server.transcript().iter().any(|l| l == "RETR 2") {
                assert!(Instant::now() < deadline, "RETR 2 never came");
                std::thread::sleep(Duration::from_millis(2));
            }
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            std::thread::sleep(Duration::from_secs(40));
            drop(conn);
        });
        c.sync()
    });
    run.expect_code(6);
    assert_mentions(&run, &["locked by another process"]);
    assert_eq!(c.server.mailbox().len(), 4, "nothing deleted");
    c.assert_nothing_lost();
    // Lock gone: the next run catches up.
    c.sync().expect_code(0);
    c.assert_nothing_lost();
    assert_eq!(maildir_messages(&c.maildir).len(), 4);
    assert!(c.server.mailbox().is_empty());
}

#[test]
fn state_db_corrupt_or_from_a_newer_popsync() {
    for (what, words) in [("corrupt", "not a database"), ("newer", "newer popsync")] {
        let c = Case::new(mailbox(3), Faults::default(), keep_false());
        c.sync().expect_code(0);
        c.server.set_mailbox(mailbox(5).split_off(3));
        let db = state_db(&c);
        match what {
            "corrupt" => {
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
                }
                std::fs::write(&db, vec![0x5a; 64 * 1024]).unwrap();
            }
            _ => {
                let conn = rusqlite::Connection::open(&db).unwrap();
                conn.pragma_update(None, "user_version", 1000).unwrap();
            }
        }
        let run = c.sync();
        run.expect_code(7);
        assert_mentions(&run, &[words]);
        assert_eq!(c.server.mailbox().len(), 2, "{what}: nothing deleted");
        assert_eq!(c.server.connections(), 1, "{what}: no second login");
        assert_eq!(maildir_messages(&c.maildir).len(), 3);
    }
}
