//! `mark-seen` and `import-uids` against a real Dovecot, with state files
//! written by the real peers (Debian's mpop, fetchmail, getmail6): after an
//! import, `sync` fetches exactly what the peer had not.

use crate::support;

use std::path::{Path, PathBuf};

use popsync::store::Store;
use support::dovecot::Dovecot;
use support::peers;
use support::popsync::{AccountToml, Popsync, maildir_messages, sorted};

fn msgs(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!("From: x@example.org\nSubject: {tag} {i}\n\nbody {tag} {i}\n").into_bytes()
        })
        .collect()
}

/// popsync on Dovecot's plain port with STLS (the host the peers used).
fn popsync_for(d: &Dovecot, user: &str) -> (Popsync, PathBuf) {
    let maildir = tempfile::tempdir().unwrap().keep();
    let mut a = AccountToml::starttls(user, d, user);
    a.maildir(&maildir);
    (Popsync::new(&a.render()), maildir)
}

fn marked_count(p: &Popsync, account: &str) -> usize {
    let store = Store::open_in(&p.state_dir).unwrap();
    let Some(id) = store.find_account(account).unwrap() else {
        return 0;
    };
    store
        .live_messages(id)
        .unwrap()
        .values()
        .filter(|k| k.state == popsync::store::MessageState::Marked)
        .count()
}

#[test]
fn mark_seen_then_sync_fetches_only_what_came_after() {
    let d = Dovecot::start();
    d.add_messages("alice", &msgs("old", 5));
    let (p, maildir) = popsync_for(&d, "alice");
    let mut a = AccountToml::starttls("alice", &d, "alice");
    a.maildir(&maildir).set("keep", "false");
    p.write_config(&a.render());
    let run = p.run(&["mark-seen", "alice"]);
    run.expect_code(0);
    assert!(
        run.stdout()
            .contains("alice: 5 marked as seen, 0 already known"),
        "{}",
        run.stdout()
    );
    assert!(maildir_messages(&maildir).is_empty());
    let again = p.run(&["mark-seen", "alice"]);
    assert!(
        again
            .expect_code(0)
            .stdout()
            .contains("0 marked as seen, 5 already known")
    );

    let new = msgs("new", 2);
    d.add_messages("alice", &new);
    p.run(&["sync"]).expect_code(0);
    assert_eq!(sorted(maildir_messages(&maildir)), sorted(new));
    // keep = false deleted what sync stored, never what was marked.
    assert_eq!(d.message_count("alice"), 5);

    let unknown = p.run(&["mark-seen", "nobody"]);
    unknown.expect_code(3);
    assert!(unknown.stderr().contains("nobody"), "{}", unknown.stderr());
}

/// Removes a message Dovecot may have moved from `new/` to `cur/NAME:2,…`.
fn remove_from_server(d: &Dovecot, added: &Path) {
    let name = added.file_name().unwrap().to_str().unwrap();
    let mut removed = 0;
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(d.maildir("alice").join(sub)).unwrap() {
            let path = e.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(name)
            {
                std::fs::remove_file(path).unwrap();
                removed += 1;
            }
        }
    }
    assert_eq!(removed, 1);
}

/// The peer fetches `before` messages (bob's mail is in the same state
/// file where the format allows), one of them then leaves the server, and
/// `after` arrive; import + sync must fetch exactly `after`.
fn import_then_sync(from: &str, peer: fn(&Dovecot, &str, &Path) -> PathBuf, shares_file: bool) {
    let d = Dovecot::start();
    let before = msgs("before", 4);
    let paths = d.add_messages("alice", &before);
    d.add_messages("bob", &msgs("bob", 2));
    let dir = tempfile::tempdir().unwrap();
    if shares_file {
        peer(&d, "bob", dir.path());
    }
    let file = peer(&d, "alice", dir.path());
    remove_from_server(&d, &paths[0]);
    let after = msgs("after", 3);
    d.add_messages("alice", &after);

    let (p, maildir) = popsync_for(&d, "alice");
    let file_arg = file.to_str().unwrap();
    let run = p.run(&["import-uids", "alice", "--from", from, file_arg]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(
        out.contains("read 4 UIDs")
            && out.contains("3 marked as seen, 0 already known, 1 not on the server"),
        "{out}"
    );
    let bob_lines = if shares_file { 2 } else { 0 };
    assert!(
        out.contains(&format!("; {bob_lines} lines skipped")),
        "{out}"
    );
    assert_eq!(
        out.matches("belongs to another account (bob@").count(),
        bob_lines,
        "{out}"
    );
    assert_eq!(marked_count(&p, "alice"), 3);

    p.run(&["sync"]).expect_code(0);
    assert_eq!(sorted(maildir_messages(&maildir)), sorted(after));
    // Nothing new: a second import changes nothing.
    let again = p.run(&["import-uids", "alice", "--from", from, file_arg]);
    assert!(
        again
            .expect_code(0)
            .stdout()
            .contains("0 marked as seen, 3 already known")
    );
}

#[test]
fn import_from_mpop() {
    import_then_sync("mpop", peers::run_mpop, true);
}

#[test]
fn import_from_fetchmail() {
    import_then_sync("fetchmail", peers::run_fetchmail, true);
}

#[test]
fn import_from_getmail() {
    // getmail6 keeps one file per account.
    import_then_sync("getmail", peers::run_getmail, false);
}

#[test]
fn bad_state_files_import_nothing_and_say_why() {
    let d = Dovecot::start();
    d.add_messages("alice", &msgs("m", 3));
    let dir = tempfile::tempdir().unwrap();
    let mpop = peers::run_mpop(&d, "alice", dir.path());
    let (p, maildir) = popsync_for(&d, "alice");
    let import = |from: &str, file: &Path| {
        p.run(&[
            "import-uids",
            "alice",
            "--from",
            from,
            file.to_str().unwrap(),
        ])
    };

    // Truncated: the last UID line cut off (the list promises 3).
    let bytes = std::fs::read(&mpop).unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 17]).unwrap();
    let run = import("mpop", &cut);
    run.expect_code(2);
    assert!(
        run.stderr().contains("truncated") && run.stderr().contains("nothing was imported"),
        "{}",
        run.stderr()
    );
    // Cut in the middle of a line.
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    assert!(
        import("mpop", &cut)
            .expect_code(2)
            .stderr()
            .contains("without a newline")
    );

    // Foreign: mpop's file read as fetchmail's, a getmail file as mpop's.
    let run = import("fetchmail", &mpop);
    run.expect_code(2);
    assert!(
        run.stderr().contains("not a fetchmail UID file"),
        "{}",
        run.stderr()
    );
    let getmail_like = dir.path().join("oldmail-elsewhere-110-alice");
    std::fs::write(&getmail_like, "000000016b07c14d\x001795670349\n").unwrap();
    assert!(
        import("mpop", &getmail_like)
            .expect_code(2)
            .stderr()
            .contains("not a mpop UID file")
    );
    // A getmail file of another account (its name says so).
    let run = import("getmail", &getmail_like);
    run.expect_code(2);
    assert!(
        run.stderr()
            .contains("none of its 1 UIDs belong to alice@127.0.0.1"),
        "{}",
        run.stderr()
    );
    // Missing file, unknown account.
    assert!(
        import("mpop", &dir.path().join("nope"))
            .expect_code(2)
            .stderr()
            .contains("nope")
    );
    p.run(&[
        "import-uids",
        "carol",
        "--from",
        "mpop",
        mpop.to_str().unwrap(),
    ])
    .expect_code(3);

    assert_eq!(
        marked_count(&p, "alice"),
        0,
        "a refused file marked something"
    );
    let run = p.run(&["sync"]);
    run.expect_code(0);
    assert_eq!(maildir_messages(&maildir).len(), 3);
}
