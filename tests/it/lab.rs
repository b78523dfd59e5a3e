//! The POP3 lab as commands, against a real Dovecot: `popsync shell` driven
//! through stdin, `popsync ls`, `sync --dry-run`, and the repair commands
//! (`refetch`, `forget`, `verify --repair`).

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use popsync::deliver::Location;
use popsync::store::Store;
use support::dovecot::Dovecot;
use support::popsync::{AccountToml, Popsync, maildir_messages, served_messages, sorted};

const LIMIT: Duration = Duration::from_secs(60);

/// The lab's message: a line holding only `.`, lines starting with `.`.
const DOTS: &[u8] =
    b"From: Lab <lab@example.org>\nSubject: dots\n\nbefore\n.\n..two\n.one\nafter\n";

fn message(i: usize) -> Vec<u8> {
    format!("From: Sender {i} <s{i}@example.org>\nDate: Tue, 1 Dec 2026 08:0{i}:00 +0000\nSubject: message {i}\n\nbody {i}\n")
        .into_bytes()
}

fn setup(msgs: &[Vec<u8>]) -> (Dovecot, Popsync, std::path::PathBuf) {
    let d = Dovecot::start();
    d.add_messages("alice", msgs);
    let maildir = tempfile::tempdir().unwrap().keep();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&maildir);
    let p = Popsync::new(&a.render());
    (d, p, maildir)
}

/// Every file under `dir` with its length and SHA-256: a "before and after".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.insert(format!("{}/", path.display()), String::new());
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                out.insert(
                    path.display().to_string(),
                    format!("{} bytes, {sha}", bytes.len()),
                );
            }
        }
    }
    out
}

fn state_files(p: &Popsync) -> BTreeMap<String, String> {
    tree(&p.state_dir)
}

/// UID -> maildir file name, from the state.
fn stored_names(p: &Popsync) -> BTreeMap<String, String> {
    let store = Store::open_in(&p.state_dir).unwrap();
    let acct = store.find_account("alice").unwrap().unwrap();
    store
        .delivery_records(acct)
        .unwrap()
        .into_iter()
        .filter(|r| r.gone_at.is_none())
        .map(|r| match r.stored.location {
            Location::Maildir { name } => (r.uid, name),
            other => panic!("not a maildir location: {other:?}"),
        })
        .collect()
}

#[test]
fn shell_lab_session_shows_dots_unstuffed_and_dele_takes_effect_only_at_quit() {
    let (d, p, _) = setup(&[DOTS.to_vec(), message(2)]);
    let run = p.run_stdin(
        &["--trace", "shell", "alice"],
        "STAT\nLIST\nRETR 1\nDELE 1\nRSET\nQUIT\n",
        LIMIT,
    );
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("over TLS"), "{out}");
    assert!(out.contains("alice TRANSACTION> STAT\nS: +OK 2 "), "{out}");
    // Un-stuffed: the lone dot is data, `..two` keeps one of its two dots
    // on the wire... and the terminator is shown apart from the data.
    let body = "S| before\nS| .\nS| ..two\nS| .one\nS| after\nS: .\n";
    assert!(out.contains(body), "{out}");
    assert!(out.contains("message 1 is only marked"), "{out}");
    assert!(out.contains("UPDATE state"), "{out}");
    for text in [&out, &run.stderr()] {
        assert!(!text.contains("secret1"), "password shown:\n{text}");
    }
    assert_eq!(d.message_count("alice"), 2, "RSET undid the DELE");

    let run = p.run_stdin(
        &["shell", "alice", "--raw"],
        "RETR 1\nDELE 1\nQUIT\n",
        LIMIT,
    );
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains(&format!("S| {:<38} | .\n", "..")), "{out}");
    assert!(
        out.contains(&format!("S| {:<38} | ..two\n", "...two")),
        "{out}"
    );
    assert_eq!(d.message_count("alice"), 1, "DELE then QUIT removed it");

    // Without QUIT nothing marked is removed.
    let run = p.run_stdin(&["shell", "alice"], "DELE 1\n", LIMIT);
    run.expect_code(0);
    assert!(
        run.stdout().contains("closing without QUIT"),
        "{}",
        run.stdout()
    );
    assert_eq!(d.message_count("alice"), 1);
    assert!(
        !p.state_dir.join("state.db").exists(),
        "the shell leaves popsync's state alone"
    );
}

#[test]
fn shell_manual_login_reads_the_password_apart_and_never_shows_it() {
    let (_d, p, _) = setup(&[message(1)]);
    let run = p.run_stdin(
        &["--trace", "shell", "alice", "--login", "manual"],
        "STAT\nPASS secret1\nUSER alice\nPASS\nsecret1\n.apop\nSTAT\nQUIT\n",
        LIMIT,
    );
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("alice AUTHORIZATION> STAT\nS: -ERR"), "{out}");
    assert!(
        out.contains("alice AUTHORIZATION> (hidden)\npopsync: not sent"),
        "{out}"
    );
    assert!(
        out.contains("Password (not shown): (hidden)\nS: +OK"),
        "{out}"
    );
    assert!(out.contains("alice TRANSACTION> STAT\nS: +OK 1 "), "{out}");
    // The lab's APOP task: the RFC's example in full, this session's digest cut.
    assert!(out.contains("c4c9334bac560ecc979e58001b3e22fb"), "{out}");
    assert!(out.contains("1. the greeting's timestamp: <"), "{out}");
    for text in [&out, &run.stderr()] {
        assert!(!text.contains("secret1"), "password shown:\n{text}");
    }
}

#[test]
fn shell_refuses_credentials_in_clear_text_like_sync() {
    let d = Dovecot::start();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set("host", &format!("\"{}\"", d.plain_host));
    a.set("port", &d.plain_port.to_string());
    a.set("tls", "\"none\"");
    a.maildir(&tempfile::tempdir().unwrap().keep());
    let p = Popsync::new(&a.render());
    let sync = p.run(&["sync", "alice"]);
    let shell = p.run_stdin(&["shell", "alice"], "STAT\n", LIMIT);
    shell.expect_code(5);
    assert_eq!(sync.code(), 5, "{}", sync.stderr());
    assert!(
        shell.stderr().contains("refusing to send"),
        "{}",
        shell.stderr()
    );

    let run = p.run_stdin(
        &["shell", "alice", "--login", "manual"],
        "USER alice\nPASS\nQUIT\n",
        LIMIT,
    );
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("WITHOUT TLS"), "{out}");
    assert!(out.contains("refusing to send USER credentials"), "{out}");
    assert!(!out.contains("TRANSACTION>"), "{out}");
}

#[test]
fn ls_shows_each_messages_state_after_partial_syncs_and_changes_nothing() {
    let (d, p, _) = setup(&[message(1), message(2)]);
    p.run(&["sync"]).expect_code(0);
    let mut big = message(3);
    big.extend(std::iter::repeat_n(b'x', 5000));
    d.add_messages("alice", &[big, message(4)]);
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&p.path("unused"));
    // max_size skips message 3; the maildir path stays the first one.
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, format!("{config}max_size = 4000\n")).unwrap();

    let before = state_files(&p);
    let run = p.run(&["ls", "alice", "--json"]);
    run.expect_code(0);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let rows = rows.as_array().unwrap();
    let col = |k: &str| -> Vec<String> {
        rows.iter()
            .map(|r| r[k].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(col("state"), ["stored", "stored", "skipped", "new"]);
    assert!(
        col("reason")[2].starts_with("larger than max_size"),
        "{rows:?}"
    );
    assert_eq!(
        col("from"),
        ["Sender 1", "Sender 2", "Sender 3", "Sender 4"]
    );
    assert_eq!(col("subject")[3], "message 4");
    assert_eq!(col("date")[0], "2026-12-01 08:01");
    assert_eq!(rows[0]["msg"], 1);
    let served = served_messages(&d, "alice", "secret1");
    assert!(col("uid").iter().all(|u| served.contains_key(u)));
    assert_eq!(state_files(&p), before, "ls wrote to the state");

    let run = p.run(&["ls", "alice", "--new"]);
    run.expect_code(0);
    let out = run.stdout();
    assert_eq!(out.lines().count(), 2, "header + one new message:\n{out}");
    assert!(
        out.contains("message 4") && !out.contains("message 1"),
        "{out}"
    );
    assert!(out.lines().next().unwrap().contains("SUBJECT"), "{out}");
    // After `mark-seen`, the new one is marked; the skipped one too.
    p.run(&["mark-seen", "alice"]).expect_code(0);
    let run = p.run(&["ls", "alice"]);
    let states: Vec<&str> = run
        .stdout()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(states, ["stored", "stored", "marked", "marked"]);
}

#[test]
fn dry_run_changes_nothing_on_the_server_or_on_disk() {
    let (d, p, maildir) = setup(&[message(1), message(2)]);
    p.run(&["sync"]).expect_code(0);
    d.add_messages("alice", &[message(3)]);
    // keep = false: a real sync would fetch message 3 and delete all three.
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, format!("{config}keep = false\n")).unwrap();

    let (state_before, mail_before) = (state_files(&p), tree(&maildir));
    let run = p.run(&["sync", "--dry-run"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("would fetch message 3 UID"), "{out}");
    assert_eq!(out.matches("would delete message").count(), 2, "{out}");
    assert!(out.contains("1 to fetch, 0 to skip, 2 to delete"), "{out}");
    assert_eq!(state_files(&p), state_before, "state.db changed");
    assert_eq!(tree(&maildir), mail_before, "the maildir changed");
    assert_eq!(d.message_count("alice"), 3, "the server lost mail");
    let log = d.log();
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("retr="))
        .unwrap_or("");
    assert!(
        last.contains("retr=0/0") && last.contains("del=0/"),
        "{last}"
    );

    // The real run then does what the dry run said.
    p.run(&["sync"]).expect_code(0);
    assert_eq!(d.message_count("alice"), 0);
}

#[test]
fn verify_repair_and_refetch_fetch_damaged_copies_again_and_keep_them_aside() {
    let msgs: Vec<Vec<u8>> = (1..=4).map(message).collect();
    let (d, p, maildir) = setup(&msgs);
    p.run(&["sync"]).expect_code(0);
    let names = stored_names(&p);
    let uids: Vec<&String> = names.keys().collect();
    // One copy deleted, one edited by hand.
    std::fs::remove_file(maildir.join("new").join(&names[uids[0]])).unwrap();
    std::fs::write(maildir.join("new").join(&names[uids[1]]), b"edited\n").unwrap();
    p.run(&["verify"]).expect_code(10);
    // Before a repair, a sync does not fetch them again.
    let run = p.run(&["sync"]);
    assert!(run.stdout().contains("alice: 0 new"), "{}", run.stdout());

    let run = p.run(&["verify", "--repair"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("2 to be fetched again"), "{out}");
    let aside = maildir.join("popsync-damaged").join(&names[uids[1]]);
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"edited\n",
        "the edited copy is kept aside"
    );
    let run = p.run(&["sync"]);
    assert!(run.stdout().contains("alice: 2 new"), "{}", run.stdout());
    p.run(&["verify"]).expect_code(0);
    let served = served_messages(&d, "alice", "secret1");
    let values = sorted(served.values().cloned().collect());
    assert_eq!(sorted(maildir_messages(&maildir)), values);

    // refetch of one UID: its copy deleted again.
    let names = stored_names(&p);
    let uid = names.keys().next().unwrap().clone();
    std::fs::remove_file(maildir.join("new").join(&names[&uid])).unwrap();
    let run = p.run(&["refetch", "alice", &uid]);
    run.expect_code(0);
    assert!(
        run.stdout().contains("the next sync fetches it again"),
        "{}",
        run.stdout()
    );
    // An intact copy is not refetched; an unknown UID changes nothing.
    let other = names.keys().nth(1).unwrap().clone();
    assert!(
        p.run(&["refetch", "alice", &other])
            .stdout()
            .contains("intact")
    );
    let bad = p.run(&["refetch", "alice", &uid, "no-such-uid"]);
    bad.expect_code(2);
    assert!(bad.stderr().contains("no-such-uid"), "{}", bad.stderr());
    let run = p.run(&["sync"]);
    assert!(run.stdout().contains("alice: 1 new"), "{}", run.stdout());
    p.run(&["verify"]).expect_code(0);

    // forget: the message counts as new and a second copy is stored.
    let run = p.run(&["forget", "alice", &other]);
    run.expect_code(0);
    assert!(run.stdout().contains("counts as new"), "{}", run.stdout());
    let run = p.run(&["sync"]);
    assert!(run.stdout().contains("alice: 1 new"), "{}", run.stdout());
    assert_eq!(maildir_messages(&maildir).len(), 5);
    p.run(&["verify"]).expect_code(0);
}

/// `ls` and `sync --dry-run` (login + UIDL + LIST only) of `n` messages,
/// through a proxy adding `one_way` each way: (ls, dry run) wall times.
fn ls_against_dry_run(n: usize, one_way: Duration) -> (Duration, Duration) {
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| message(i % 10)).collect();
    let d = Dovecot::start();
    d.add_messages("alice", &msgs);
    let proxy = support::delay_proxy::DelayProxy::start(d.tls_addr(), one_way);
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set("port", &proxy.addr.port().to_string());
    a.maildir(&tempfile::tempdir().unwrap().keep());
    let p = Popsync::new(&a.render());
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        let run = p.run(args);
        run.expect_code(0);
        (started.elapsed(), run)
    };
    timed(&["sync", "--dry-run"]); // warm-up: Dovecot indexes the maildir
    let (dry, _) = timed(&["sync", "--dry-run"]);
    let (ls, run) = timed(&["ls", "alice"]);
    assert_eq!(run.stdout().lines().count(), n + 1, "{}", run.stdout());
    assert!(run.stdout().contains("message 9"), "From/Subject from TOP");
    (ls, dry)
}

#[test]
fn ls_sends_top_pipelined_not_one_round_trip_per_message() {
    // 20 ms round trips: lock-step TOP would take 300 x 20 ms = 6 s more
    // than the listing; pipelined (a window of 64), about one.
    let (ls, dry) = ls_against_dry_run(300, Duration::from_millis(10));
    assert!(
        ls < dry + Duration::from_millis(2500),
        "ls {ls:?} vs UIDL + LIST alone {dry:?}"
    );
}

/// The measurement behind README's figures:
/// `cargo test --release --test it lab::ls_of_3000 -- --ignored --nocapture`
#[test]
#[ignore]
fn ls_of_3000_messages_measured() {
    for one_way in [Duration::ZERO, Duration::from_millis(10)] {
        let (ls, dry) = ls_against_dry_run(3000, one_way);
        println!(
            "3000 messages, round trip {:?} added: ls {:.3} s, sync --dry-run (login + UIDL + LIST) {:.3} s",
            one_way * 2,
            ls.as_secs_f64(),
            dry.as_secs_f64()
        );
    }
}

#[test]
fn shell_apop_login_computes_the_digest_and_never_shows_the_password() {
    let (_d, p, _) = setup(&[message(1)]);
    let run = p.run_stdin(
        &["--trace", "shell", "alice", "--login", "manual"],
        "APOP alice\nsecret1\nSTAT\nQUIT\n",
        LIMIT,
    );
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("alice TRANSACTION> STAT\nS: +OK 1 "), "{out}");
    for text in [&out, &run.stderr()] {
        assert!(!text.contains("secret1"), "password shown:\n{text}");
    }
    assert!(
        run.stderr().contains("C: APOP alice <redacted>"),
        "{}",
        run.stderr()
    );
}

#[test]
fn an_altered_mbox_copy_stays_in_place_and_the_fresh_copy_is_appended() {
    let d = Dovecot::start();
    d.add_messages("alice", &[message(1), message(2)]);
    let mbox = tempfile::tempdir().unwrap().keep().join("alice.mbox");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.mbox(&mbox);
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    let mut bytes = std::fs::read(&mbox).unwrap();
    let at = bytes.windows(6).position(|w| w == b"body 1").unwrap();
    bytes[at] = b'B';
    std::fs::write(&mbox, &bytes).unwrap();
    p.run(&["verify"]).expect_code(10);

    let run = p.run(&["verify", "--repair"]);
    run.expect_code(0);
    assert!(run.stdout().contains("left in place"), "{}", run.stdout());
    assert_eq!(
        std::fs::read(&mbox).unwrap(),
        bytes,
        "the mbox was rewritten"
    );
    let run = p.run(&["sync"]);
    assert!(run.stdout().contains("alice: 1 new"), "{}", run.stdout());
    p.run(&["verify"]).expect_code(0);
    let after = std::fs::read(&mbox).unwrap();
    assert!(after.starts_with(&bytes), "appended, not rewritten");
    assert_eq!(String::from_utf8_lossy(&after).matches("body 1").count(), 1);
    assert_eq!(String::from_utf8_lossy(&after).matches("Body 1").count(), 1);
}

/// A maildir whose path is not UTF-8 (here: $HOME named in Latin-1, the
/// config says `~/Mail`): the state keeps the path's bytes, so verify finds
/// the copies and `verify --repair` moves the damaged one aside in that
/// same maildir. Before typed target ids the state held `Path::display`
/// text, U+FFFD for the bad byte, and verify looked in a directory that
/// does not exist.
#[test]
fn a_maildir_path_that_is_not_utf8_verifies_and_repairs() {
    use std::os::unix::ffi::OsStrExt;
    let d = Dovecot::start();
    d.add_messages("alice", &(1..=3).map(message).collect::<Vec<_>>());
    let top = tempfile::tempdir().unwrap();
    let home = top
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9-home"));
    std::fs::create_dir(&home).unwrap();
    let maildir = home.join("Mail");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set("maildir", "\"~/Mail\"");
    let p = Popsync::new(&a.render());
    let run = |args: &[&str]| {
        let mut cmd = p.command(args);
        cmd.env("HOME", &home);
        support::popsync::Run(cmd.output().unwrap())
    };
    run(&["sync"]).expect_code(0);
    assert_eq!(maildir_messages(&maildir).len(), 3);
    let out = run(&["verify"]).expect_code(0).stdout();
    assert!(out.contains("3 intact"), "{out}");

    let names = stored_names(&p);
    let uid = names.keys().next().unwrap();
    std::fs::write(maildir.join("new").join(&names[uid]), b"edited\n").unwrap();
    run(&["verify"]).expect_code(10);
    let out = run(&["verify", "--repair"]).expect_code(0).stdout();
    assert!(out.contains("1 to be fetched again"), "{out}");
    let aside = maildir.join("popsync-damaged").join(&names[uid]);
    assert_eq!(std::fs::read(&aside).unwrap(), b"edited\n");
    let out = run(&["sync"]).stdout();
    assert!(out.contains("alice: 1 new"), "{out}");
    run(&["verify"]).expect_code(0);
    let served = served_messages(&d, "alice", "secret1");
    assert_eq!(
        sorted(maildir_messages(&maildir)),
        sorted(served.values().cloned().collect())
    );
}
