//! `status`, `verify` and `purge` against a real Dovecot: the end of a
//! migration deletes from the server only what is provably stored.

use crate::support;

use std::path::{Path, PathBuf};

use support::dovecot::Dovecot;
use support::popsync::{AccountToml, Popsync, maildir_messages};

fn msgs(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!("From: x@example.org\nSubject: {tag} {i}\n\nbody {tag} {i}\n").into_bytes()
        })
        .collect()
}

fn maildir_files(maildir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["new", "cur"]
        .iter()
        .flat_map(|s| std::fs::read_dir(maildir.join(s)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

fn setup(d: &Dovecot) -> (Popsync, PathBuf) {
    let maildir = tempfile::tempdir().unwrap().keep();
    let mut a = AccountToml::tls("alice", d, "alice");
    a.maildir(&maildir);
    (Popsync::new(&a.render()), maildir)
}

#[test]
fn status_table_and_json() {
    let d = Dovecot::start();
    let mut m = msgs("s", 3);
    m.push(format!("Subject: big\n\n{}\n", "x".repeat(5000)).into_bytes());
    d.add_messages("alice", &m);
    let maildir = tempfile::tempdir().unwrap().keep();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&maildir).set("max_size", "\"2K\"");
    let mut b = AccountToml::tls("bob", &d, "bob");
    b.maildir(&maildir.join("bob")).set("password", "\"wrong\"");
    let p = Popsync::new(&format!("{}\n{}", a.render(), b.render()));
    p.run(&["sync", "alice"]).expect_code(0);
    p.run(&["sync", "bob"]).expect_code(4);

    let run = p.run(&["status"]);
    run.expect_code(0);
    let out = run.stdout();
    let alice = out
        .lines()
        .find(|l| l.starts_with("alice "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        alice.contains(" ok ") && alice.contains("3 (") && alice.contains("1 (1 too large)"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("bob ") && l.contains(" auth ")),
        "{out}"
    );
    assert!(out.contains("bob: last error at"), "{out}");

    let run = p.run(&["status", "alice", "--json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let a = &v["accounts"][0];
    assert_eq!(a["account"], "alice");
    assert_eq!(a["outcome"], "ok");
    assert_eq!(a["on_server"], 4);
    assert_eq!(a["known"], 4);
    assert_eq!(a["delivered"], 3);
    let bytes: u64 = maildir_messages(&maildir)
        .iter()
        .map(|m| m.len() as u64)
        .sum();
    assert_eq!(a["delivered_bytes"], bytes);
    assert_eq!(a["skipped_too_large"], 1);
    assert_eq!(a["skipped_bad_uid"], 0);
    assert!(a["last_error"].is_null());
    assert!(a["next_poll"].is_null());
    assert!(a["last_poll"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(v["accounts"].as_array().unwrap().len(), 1);

    p.run(&["status", "carol"]).expect_code(3);
}

#[test]
fn verify_follows_moved_files_and_reports_missing_and_altered() {
    let d = Dovecot::start();
    d.add_messages("alice", &msgs("v", 4));
    let (p, maildir) = setup(&d);
    p.run(&["sync"]).expect_code(0);
    let run = p.run(&["verify"]);
    run.expect_code(0);
    assert!(
        run.stdout().contains("4 deliveries checked") && run.stdout().contains("4 intact"),
        "{}",
        run.stdout()
    );

    // A mail reader moves one into cur/ with flags: still intact.
    let files = maildir_files(&maildir);
    let name = files[0].file_name().unwrap().to_str().unwrap();
    std::fs::rename(&files[0], maildir.join("cur").join(format!("{name}:2,S"))).unwrap();
    p.run(&["verify", "alice"]).expect_code(0);

    // Behind popsync's back: one deleted, one edited.
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::write(&files[2], b"Subject: edited\n\n").unwrap();
    let run = p.run(&["verify"]);
    run.expect_code(10);
    let out = run.stdout();
    assert_eq!(out.matches("alice: missing UID").count(), 1, "{out}");
    assert_eq!(out.matches("alice: altered UID").count(), 1, "{out}");
    assert!(out.contains("2 intact, 1 missing, 1 altered"), "{out}");
    p.run(&["verify", "nobody"]).expect_code(3);
}

#[test]
fn verify_mbox_ranges() {
    let d = Dovecot::start();
    d.add_messages("alice", &msgs("m", 3));
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("alice.mbox");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.mbox(&mbox);
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    p.run(&["verify"]).expect_code(0);
    let mut bytes = std::fs::read(&mbox).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x20;
    std::fs::write(&mbox, &bytes).unwrap();
    let run = p.run(&["verify"]);
    run.expect_code(10);
    assert!(
        run.stdout().contains("2 intact, 0 missing, 1 altered"),
        "{}",
        run.stdout()
    );
}

#[test]
fn purge_deletes_exactly_the_verified_deliveries() {
    let d = Dovecot::start();
    d.add_messages("alice", &msgs("marked", 2));
    let (p, maildir) = setup(&d);
    p.run(&["mark-seen", "alice"]).expect_code(0);
    d.add_messages("alice", &msgs("stored", 5));
    p.run(&["sync"]).expect_code(0);
    assert_eq!(maildir_files(&maildir).len(), 5);
    // Damage two stored copies; one more message arrives after the sync.
    let files = maildir_files(&maildir);
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::write(&files[1], b"edited\n").unwrap();
    d.add_messages("alice", &msgs("late", 1));
    assert_eq!(d.message_count("alice"), 8);

    let run = p.run(&["purge", "alice", "--dry-run"]);
    run.expect_code(7);
    let out = run.stdout();
    assert_eq!(out.matches("would delete message").count(), 3, "{out}");
    assert!(
        out.contains("3 would be deleted from the server, 5 stay"),
        "{out}"
    );
    assert_eq!(
        out.matches("marked as seen, never stored").count(),
        2,
        "{out}"
    );
    assert_eq!(out.matches("stored copy missing").count(), 1, "{out}");
    assert_eq!(out.matches("stored copy altered").count(), 1, "{out}");
    assert_eq!(out.matches("not known to popsync").count(), 1, "{out}");
    assert_eq!(d.message_count("alice"), 8, "dry run deleted something");

    let run = p.run(&["purge", "alice"]);
    run.expect_code(7);
    assert!(
        run.stdout()
            .contains("alice: 3 deleted from the server, 5 stay"),
        "{}",
        run.stdout()
    );
    assert_eq!(d.message_count("alice"), 5);
    let status = p.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.expect_code(0).stdout()).unwrap();
    assert_eq!(v["accounts"][0]["deleted"], 3);

    // A fresh archive of what is left verifies intact: purge takes it all
    // and exits 0.
    let (p2, maildir2) = setup(&d);
    p2.run(&["sync"]).expect_code(0);
    assert_eq!(maildir_files(&maildir2).len(), 5);
    let run = p2.run(&["purge", "alice"]);
    run.expect_code(0);
    assert!(
        run.stdout()
            .contains("alice: 5 deleted from the server, 0 stay"),
        "{}",
        run.stdout()
    );
    assert_eq!(d.message_count("alice"), 0);
    p2.run(&["verify"]).expect_code(0);
    p.run(&["purge", "nobody"]).expect_code(3);
}
