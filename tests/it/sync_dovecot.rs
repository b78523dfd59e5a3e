//! `popsync sync` against a real Dovecot: byte-exact mirroring into maildir,
//! mbox and an MDA; incremental runs; deletion policies; the lock; recovery.

use crate::support;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;

use popsync::deliver::{MessageMeta, Target, maildir::Maildir, mbox::parse_mboxrd};
use popsync::store::{Store, TargetId};
use support::dovecot::Dovecot;
use support::popsync::{AccountToml, Popsync, maildir_messages, served_messages, sorted};

/// Messages with the classic traps: lone dots, leading dots, no final
/// newline, 8-bit and NUL bytes, `From ` lines, CRLF inside, long lines.
fn tricky_messages(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut m = format!(
                "From: Sender {i} <sender{i}@example.org>\nTo: alice@example.org\nSubject: message {i}\nMessage-ID: <{i}.test@example.org>\n\n"
            )
            .into_bytes();
            match i % 10 {
                0 => m.extend_from_slice(b"before\n.\nafter the lone dot\n"),
                1 => m.extend_from_slice(b"..two\n...three\n.one\n. space\n"),
                2 => m.extend_from_slice(b"no final newline"),
                3 => m.extend_from_slice(b"8-bit: caf\xc3\xa9 \xff\xfe\x80\n"),
                4 => m.extend_from_slice(b"nul \x00 byte\n"),
                5 => m.extend_from_slice(b"From the start\n>From quoted\n>>From twice\nFrom \n"),
                6 => m.extend_from_slice(b"crlf inside\r\nand a lone \r cr\n"),
                7 => m.extend_from_slice(&vec![b'x'; 5000 + i]),
                8 => m.extend_from_slice(b"\n\n\n.\n\n"),
                _ => m.extend_from_slice(format!("plain body {i}\n").repeat(i % 50 + 1).as_bytes()),
            }
            m
        })
        .collect()
}

fn values(map: &HashMap<String, Vec<u8>>) -> Vec<Vec<u8>> {
    sorted(map.values().cloned().collect())
}

fn new_count(out: &str, account: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{account}: ")))
        .unwrap_or_else(|| panic!("no summary for {account} in {out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn maildir_mirror_is_byte_exact_and_incremental() {
    let d = Dovecot::start();
    let mut msgs = tricky_messages(300);
    let mut long_line = b"Subject: one long line\n\n".to_vec();
    long_line.extend(std::iter::repeat_n(b'L', 1 << 20));
    long_line.push(b'\n');
    msgs.push(long_line);
    let mut big = b"Subject: twenty megabytes\n\n".to_vec();
    for i in 0..(20 << 20) / 80 {
        big.extend_from_slice(format!("{i:079}\n").as_bytes());
    }
    msgs.push(big);
    d.add_messages("alice", &msgs);

    let maildir = tempfile::tempdir().unwrap().keep();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&maildir);
    let p = Popsync::new(&a.render());
    let run = p.run(&["sync"]);
    run.expect_code(0);
    assert_eq!(new_count(&run.stdout(), "alice"), 302);

    let served = served_messages(&d, "alice", "secret1");
    assert_eq!(served.len(), 302);
    assert_eq!(sorted(maildir_messages(&maildir)), values(&served));

    let run = p.run(&["sync"]);
    run.expect_code(0);
    assert_eq!(
        new_count(&run.stdout(), "alice"),
        0,
        "second run is a no-op"
    );
    assert_eq!(maildir_messages(&maildir).len(), 302);

    d.add_messages("alice", &tricky_messages(3));
    let run = p.run(&["sync", "alice"]);
    run.expect_code(0);
    assert_eq!(new_count(&run.stdout(), "alice"), 3);
    let served = served_messages(&d, "alice", "secret1");
    assert_eq!(sorted(maildir_messages(&maildir)), values(&served));
    assert_eq!(
        d.message_count("alice"),
        305,
        "keep = true leaves mail on the server"
    );
    std::fs::remove_dir_all(&maildir).unwrap();
}

#[test]
fn mbox_mirror_round_trips() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(120));
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("alice.mbox");
    let mut a = AccountToml::starttls("alice", &d, "alice");
    a.mbox(&mbox);
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    let served = served_messages(&d, "alice", "secret1");
    let stored = parse_mboxrd(&std::fs::read(&mbox).unwrap());
    assert_eq!(sorted(stored), values(&served));
    p.run(&["sync"]).expect_code(0);
    let stored = parse_mboxrd(&std::fs::read(&mbox).unwrap());
    assert_eq!(stored.len(), 120, "second run appends nothing");
}

#[test]
fn mda_gets_each_message_on_stdin() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(25));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mda-out");
    std::fs::create_dir(&out).unwrap();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set("mda", &format!("\"cat > {}/msg.$$\"", out.display()));
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    let delivered: Vec<Vec<u8>> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        sorted(delivered),
        values(&served_messages(&d, "alice", "secret1"))
    );
}

#[test]
fn keep_false_removes_only_what_was_stored() {
    let d = Dovecot::start();
    let mut msgs = tricky_messages(40);
    let mut huge = b"Subject: too large\n\n".to_vec();
    huge.extend(std::iter::repeat_n(b'h', 300_000));
    huge.push(b'\n');
    msgs.push(huge);
    d.add_messages("alice", &msgs);
    let served_before = served_messages(&d, "alice", "secret1");
    let maildir = tempfile::tempdir().unwrap();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(maildir.path())
        .set("keep", "false")
        .set("max_size", "\"200k\"");
    let p = Popsync::new(&a.render());
    let run = p.run(&["sync"]);
    run.expect_code(0);
    assert!(run.stderr().contains("max_size"), "{}", run.stderr());
    assert_eq!(
        d.message_count("alice"),
        1,
        "only the skipped message stays"
    );
    let left = served_messages(&d, "alice", "secret1");
    assert!(
        left.values()
            .next()
            .unwrap()
            .starts_with(b"Subject: too large")
    );
    let mut expected: Vec<Vec<u8>> = served_before
        .values()
        .filter(|m| !m.starts_with(b"Subject: too large"))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(sorted(maildir_messages(maildir.path())), expected);
}

#[test]
fn delete_after_days_follows_the_state_clock() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(10));
    let maildir = tempfile::tempdir().unwrap();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(maildir.path()).set("delete_after_days", "30");
    let p = Popsync::new(&a.render());
    let t0: i64 = 1_800_000_000;
    let at = |days: i64| (t0 + days * 86_400).to_string();
    p.run_env(&["sync"], &[("POPSYNC_NOW", &at(0))])
        .expect_code(0);
    assert_eq!(d.message_count("alice"), 10);
    p.run_env(&["sync"], &[("POPSYNC_NOW", &at(29))])
        .expect_code(0);
    assert_eq!(d.message_count("alice"), 10, "not old enough yet");
    // Mail that arrives later is counted from when popsync first saw it.
    d.add_messages("alice", &tricky_messages(2));
    p.run_env(&["sync"], &[("POPSYNC_NOW", &at(31))])
        .expect_code(0);
    assert_eq!(
        d.message_count("alice"),
        2,
        "only the 31-day-old ones are gone"
    );
    assert_eq!(maildir_messages(maildir.path()).len(), 12);
}

#[test]
fn a_second_sync_of_the_same_account_is_refused() {
    let d = Dovecot::start();
    let maildir = tempfile::tempdir().unwrap();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(maildir.path());
    let p = Popsync::new(&a.render());
    std::fs::create_dir_all(p.state_dir.join("locks")).unwrap();
    let lock = std::fs::File::create(p.state_dir.join("locks/alice.lock")).unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let run = p.run(&["sync"]);
    run.expect_code(8);
    assert!(run.stdout().contains("another popsync"), "{}", run.stdout());
    drop(lock);
    p.run(&["sync"]).expect_code(0);
}

#[test]
fn received_header_is_one_prepended_line() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(3));
    let maildir = tempfile::tempdir().unwrap();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(maildir.path()).set("received_header", "true");
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    let served = values(&served_messages(&d, "alice", "secret1"));
    let mut stored: Vec<Vec<u8>> = maildir_messages(maildir.path())
        .into_iter()
        .map(|m| {
            assert!(
                m.starts_with(b"Received: from "),
                "{}",
                String::from_utf8_lossy(&m)
            );
            let nl = m.iter().position(|&b| b == b'\n').unwrap();
            m[nl + 1..].to_vec()
        })
        .collect();
    stored.sort();
    assert_eq!(stored, served);
}

/// A run killed after its batch was journaled and published, before the
/// commit: the next run must commit it from the journal, not deliver twice.
#[test]
fn journaled_but_uncommitted_maildir_batch_is_not_delivered_twice() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(6));
    let served = served_messages(&d, "alice", "secret1");
    let maildir = tempfile::tempdir().unwrap();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(maildir.path());
    let p = Popsync::new(&a.render());

    // Play the engine's part for two messages, up to the crash point.
    let mut store = Store::open_in(&p.state_dir).unwrap();
    let acct = store.account("alice", 1).unwrap();
    let mut target = Maildir::open(maildir.path()).unwrap();
    let mut batch = target.batch().unwrap();
    let mut items = Vec::new();
    for (uid, body) in served.iter().take(2) {
        let mut message = batch.message(&MessageMeta::default()).unwrap();
        message.write_all(body).unwrap();
        items.push((uid.clone(), message.finish().unwrap()));
    }
    let batch = batch.sync().unwrap();
    let refs: Vec<(&str, &popsync::deliver::StoredMessage)> =
        items.iter().map(|(u, s)| (u.as_str(), s)).collect();
    store
        .journal(acct, &TargetId::Maildir(maildir.path().into()), &refs, 1)
        .unwrap();
    batch.publish().unwrap();
    drop(store);

    p.run(&["sync"]).expect_code(0);
    assert_eq!(sorted(maildir_messages(maildir.path())), values(&served));
}

/// A run killed in the middle of an mbox append: the torn tail is moved
/// aside, the mbox stays parseable and complete.
#[test]
fn torn_mbox_append_is_repaired() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(5));
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("inbox");
    let p = synced_into_mbox(&d, &mbox);

    let len = std::fs::metadata(&mbox).unwrap().len();
    let mut store = Store::open_in(&p.state_dir).unwrap();
    let acct = store.account("alice", 1).unwrap();
    let desc = TargetId::Mbox(mbox.clone());
    store
        .set_batch_mark(
            acct,
            &desc,
            &popsync::deliver::BatchToken::from_journal(format!("mbox:{len}")),
            1,
        )
        .unwrap();
    drop(store);
    append_torn_message(&mbox);

    d.add_messages("alice", &tricky_messages(2));
    p.run(&["sync"]).expect_code(0);
    assert_torn_tail_recovered(&d, &mbox, dir.path());
}

/// After a sync over a torn mbox tail: the mbox holds exactly what alice's
/// mailbox serves, and the torn tail was moved into one recovery file
/// beside it, not dropped.
fn assert_torn_tail_recovered(d: &Dovecot, mbox: &std::path::Path, dir: &std::path::Path) {
    let stored = parse_mboxrd(&std::fs::read(mbox).unwrap());
    assert_eq!(
        sorted(stored),
        values(&served_messages(d, "alice", "secret1"))
    );
    assert_eq!(
        recovery_files(dir).len(),
        1,
        "the torn tail is kept aside, not dropped"
    );
}

/// alice's mailbox synced once into `mbox`.
fn synced_into_mbox(d: &Dovecot, mbox: &std::path::Path) -> Popsync {
    let mut a = AccountToml::tls("alice", d, "alice");
    a.mbox(mbox);
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    p
}

/// What a run killed in the middle of an mbox append leaves at its end.
fn append_torn_message(mbox: &std::path::Path) {
    let mut f = std::fs::OpenOptions::new().append(true).open(mbox).unwrap();
    f.write_all(b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nSubject: torn\n\npart")
        .unwrap();
}

/// The files recovery moved torn mbox tails into, beside the mbox.
fn recovery_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("popsync-recovered"))
        .collect()
}

/// Turns a state.db back into what schema 5 kept (no schema-7 indexes),
/// with the batch mark it wrote for an interrupted batch: a column per
/// target kind, no token.
fn downgrade_to_schema_5_with_mark(
    state_dir: &std::path::Path,
    target: &TargetId,
    column: &str,
    value: rusqlite::types::Value,
) {
    let db = rusqlite::Connection::open(state_dir.join("state.db")).unwrap();
    db.execute_batch(
        "DROP INDEX message_delivered; DROP INDEX message_gone;
         ALTER TABLE batch_mark DROP COLUMN token; PRAGMA user_version = 5;",
    )
    .unwrap();
    db.execute(
        &format!(
            "INSERT INTO batch_mark (account_id, target, created_at, {column})
             SELECT id, ?1, 1, ?2 FROM account WHERE name = 'alice'"
        ),
        rusqlite::params![target.encode(), value],
    )
    .unwrap();
}

/// A batch mark the previous version journaled before it was killed is
/// still honoured after the upgrade: the torn mbox tail is moved aside, the
/// maildir batch's own tmp/ files are removed (and nothing else).
#[test]
fn an_interrupted_batch_of_the_previous_version_is_recovered_after_upgrade() {
    let d = Dovecot::start();
    d.add_messages("alice", &tricky_messages(3));
    let dir = tempfile::tempdir().unwrap();

    let mbox = dir.path().join("inbox");
    let p = synced_into_mbox(&d, &mbox);
    let len = std::fs::metadata(&mbox).unwrap().len();
    let id = TargetId::Mbox(mbox.clone());
    downgrade_to_schema_5_with_mark(&p.state_dir, &id, "mbox_length", (len as i64).into());
    append_torn_message(&mbox);
    p.run(&["sync"]).expect_code(0);
    assert_torn_tail_recovered(&d, &mbox, dir.path());

    let maildir = dir.path().join("Mail");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&maildir);
    let p = Popsync::new(&a.render());
    p.run(&["sync"]).expect_code(0);
    let prefix = "1700000000.M1P99";
    let ours = maildir.join(format!("tmp/{prefix}Q3.host"));
    let foreign = maildir.join("tmp/1700000000.M1P98Q3.host");
    std::fs::write(&ours, b"half a message").unwrap();
    std::fs::write(&foreign, b"another deliverer's").unwrap();
    let id = TargetId::Maildir(maildir.clone());
    downgrade_to_schema_5_with_mark(&p.state_dir, &id, "tmp_prefix", prefix.to_string().into());
    p.run(&["sync"]).expect_code(0);
    assert!(
        !ours.exists(),
        "the interrupted batch's own file is removed"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), b"another deliverer's");
}

/// The engine's hooks for the daemon: the report keeps only the newest
/// three messages' header sections, and a stop request sends no RETR.
#[test]
fn report_keeps_newest_headers_and_stop_sends_no_retr() {
    use popsync::config::Config;
    use popsync::sync::{SyncOptions, sync_account};
    use std::sync::{Arc, Mutex};

    let d = Dovecot::start();
    for i in 0..5 {
        let body = "x".repeat(40_000);
        d.add_message(
            "alice",
            format!("From: s{i}@example.org\nSubject: number {i}\n\n{body}\n").as_bytes(),
        );
        // Dovecot orders by file name; keep the drops in order.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let p = Popsync::new("");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&p.path("mail"));
    p.write_config(&a.render());
    let config = Config::load(&p.config).unwrap();
    let account = config.account("alice").unwrap().clone();
    let store = Arc::new(Mutex::new(Store::open_in(&config.state_dir).unwrap()));
    let rt = tokio::runtime::Runtime::new().unwrap();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(true);
    let mut opts = SyncOptions::new(config.state_dir.clone(), 1_700_000_000);
    opts.stop = Some(stop_rx);
    let report = rt.block_on(sync_account(&account, &store, &opts));
    assert!(report.error.is_none(), "{}", report.summary());
    assert_eq!((report.on_server, report.new_messages), (5, 0));
    assert!(maildir_messages(&p.path("mail")).is_empty());

    stop_tx.send(false).unwrap();
    let report = rt.block_on(sync_account(&account, &store, &opts));
    assert!(report.error.is_none(), "{}", report.summary());
    assert_eq!(report.new_messages, 5);
    let headers: Vec<String> = report
        .newest_headers
        .iter()
        .map(|h| String::from_utf8(h.clone()).unwrap())
        .collect();
    assert_eq!(headers.len(), 3, "{headers:?}");
    for (h, i) in headers.iter().zip(2..) {
        assert_eq!(
            h,
            &format!("From: s{i}@example.org\nSubject: number {i}\n\n")
        );
    }
}
