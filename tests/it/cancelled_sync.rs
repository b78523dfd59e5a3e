//! A sync dropped in the middle of a batch, as the daemon drops a poll that
//! overran its stop grace (`JoinSet::abort_all`): the batch's handles undo
//! its writes, and what it journaled must not make the next run treat mail
//! that others append meanwhile as its own torn tail.

use crate::support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use popsync::config::Config;
use popsync::deliver::mbox::parse_mboxrd;
use popsync::store::Store;
use popsync::sync::{SyncOptions, sync_account};
use support::fault_server::{FaultServer, Faults, mailbox};
use support::popsync::Popsync;

/// What a local MTA appends to the mbox between two runs.
const LOCAL_MAIL: &[u8] =
    b"From root@localhost Tue Dec  1 12:00:00 2026\nSubject: cron output\n\nlocal mail\n\n";

fn append_local_mail(mbox: &Path) {
    let mut f = std::fs::OpenOptions::new().append(true).open(mbox).unwrap();
    f.write_all(LOCAL_MAIL).unwrap();
}

/// The local mail first, then the server's three; nothing moved aside.
fn assert_local_mail_kept(mbox: &Path) {
    let stored = parse_mboxrd(&std::fs::read(mbox).unwrap());
    assert_eq!(stored.len(), 4, "the local mail stays in the mbox");
    let first = String::from_utf8_lossy(&stored[0]);
    assert!(first.contains("cron output"), "{first}");
    let moved: Vec<_> = std::fs::read_dir(mbox.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("popsync-recovered"))
        .collect();
    assert!(moved.is_empty(), "nothing moved aside: {moved:?}");
}

/// Three messages; RETR 2 sends a little, then nothing. An mbox target.
fn stalled_in_the_second_retr() -> (FaultServer, Popsync, PathBuf) {
    let faults = Faults {
        stall_in_retr: Some(2),
        ..Faults::default()
    };
    let p = Popsync::new("");
    let mbox = p.path("inbox");
    (FaultServer::start(mailbox(3), faults), p, mbox)
}

#[test]
fn a_sync_dropped_mid_batch_leaves_no_mark_that_moves_later_mail_aside() {
    let (server, p, mbox) = stalled_in_the_second_retr();
    p.write_config(&server.account_toml("alice", &format!("mbox = {mbox:?}")));
    let config = Config::load(&p.config).unwrap();
    let account = config.account("alice").unwrap().clone();
    let store = Arc::new(Mutex::new(Store::open_in(&config.state_dir).unwrap()));
    let opts = SyncOptions::new(config.state_dir.clone(), 1_700_000_000);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Message 1 is written into the open batch, message 2 stalls (the
    // account's timeout is 3 s): the future is dropped mid-batch.
    let cut = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(1500),
            sync_account(&account, &store, &opts),
        )
        .await
    });
    assert!(cut.is_err(), "the stalled RETR must outlast the cut");
    assert_eq!(
        std::fs::metadata(&mbox).unwrap().len(),
        0,
        "the dropped batch's bytes are cut back"
    );

    append_local_mail(&mbox);

    // The stalled server serves no one else: the same mailbox, healthy.
    let healed = FaultServer::start(mailbox(3), Faults::default());
    p.write_config(&healed.account_toml("alice", &format!("mbox = {mbox:?}")));
    let config = Config::load(&p.config).unwrap();
    let account = config.account("alice").unwrap().clone();
    let report = rt.block_on(sync_account(&account, &store, &opts));
    assert!(report.error.is_none(), "{}", report.summary());
    assert_eq!(report.new_messages, 3);
    assert_local_mail_kept(&mbox);
}

/// The daemon's own path: SIGTERM while a poll is stalled mid-batch; past
/// the stop grace (5 s) the poll is aborted and the runtime shuts down.
/// The batch is undone before the process exits, and the next run keeps
/// the mail appended since.
#[test]
fn a_poll_aborted_at_daemon_stop_is_undone_and_forgotten() {
    use support::daemon::DaemonProcess;
    let (server, p, mbox) = stalled_in_the_second_retr();
    // A timeout longer than the stop grace: the abort, not the timeout, ends it.
    let slow = |server: &FaultServer| {
        server
            .account_toml("alice", &format!("mbox = {mbox:?}\ninterval = \"1h\""))
            .replace("\ntimeout = \"3s\"", "\ntimeout = \"60s\"")
    };
    p.write_config(&slow(&server));
    let mut daemon = DaemonProcess::start(
        &p,
        &[
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus"),
            ("POPSYNC_LOG", "popsync=debug"),
        ],
    );
    let written = support::daemon::wait_until(Duration::from_secs(20), || {
        std::fs::metadata(&mbox).is_ok_and(|m| m.len() > 0)
    });
    assert!(
        written,
        "message 1 never reached the mbox:\n{}",
        daemon.log()
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(30));
    let log = daemon.log();
    assert!(status.is_some(), "the daemon did not stop:\n{log}");
    assert!(log.contains("did not finish in time"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(
        std::fs::metadata(&mbox).unwrap().len(),
        0,
        "the aborted batch's bytes are cut back:\n{log}"
    );

    append_local_mail(&mbox);
    let healed = FaultServer::start(mailbox(3), Faults::default());
    p.write_config(&slow(&healed));
    let run = p.run(&["sync"]);
    assert_eq!(run.code(), 0, "{:?}", run.0);
    assert_local_mail_kept(&mbox);
}
