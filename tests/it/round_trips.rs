//! Round trips a sync waits for, pinned with scripted servers: a script
//! that reads several commands before it answers any deadlocks a client
//! that waits for a reply in between (the client's 3 s time-out, or the
//! script's mismatch, fails the test). At 50 ms RTT each round trip saved
//! is 50 ms of every run.

use std::process::Stdio;
use std::time::Duration;

use crate::support;

use support::daemon::wait_until;
use support::popsync::Popsync;
use support::scripted::{ScriptedServer, Step, expect, line};

const PASSWORD: &str = "s3cret-pass";

fn account(server: &ScriptedServer, p: &Popsync, extra: &str) -> String {
    format!(
        "[account.a]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\nauth = \"user\"\nusername = \"u\"\npassword = \"{PASSWORD}\"\ntimeout = \"3s\"\nconnect_timeout = \"3s\"\nmaildir = {:?}\n{extra}\n",
        server.port(),
        p.path("Mail")
    )
}

fn greeting_and_capa(pipelining: bool) -> Vec<Step> {
    let mut steps = vec![
        line("+OK ready"),
        expect("CAPA"),
        line("+OK"),
        line("USER"),
        line("UIDL"),
    ];
    if pipelining {
        steps.push(line("PIPELINING"));
    }
    steps.push(line("."));
    steps
}

/// The login and listing of a mailbox of `n` messages uid-1.., in
/// lock-step order (a pipelining client's lines are read from the buffer).
fn login_and_listing(n: u32) -> Vec<Step> {
    login_and_listing_sized(n, 30)
}

/// The same, with LIST announcing `size` octets a message.
fn login_and_listing_sized(n: u32, size: u32) -> Vec<Step> {
    let mut steps = vec![
        expect("USER u"),
        line("+OK"),
        expect("PASS *"),
        line("+OK logged in"),
        expect("STAT"),
        expect("UIDL"),
        expect("LIST"),
        line(&format!("+OK {n} {}", n * size)),
        line("+OK"),
    ];
    steps.extend((1..=n).map(|i| line(&format!("{i} uid-{i}"))));
    steps.extend([line("."), line("+OK")]);
    steps.extend((1..=n).map(|i| line(&format!("{i} {size}"))));
    steps.push(line("."));
    steps
}

fn message(i: u32) -> Vec<Step> {
    vec![
        line("+OK message follows"),
        line(&format!("Subject: m{i}")),
        line(""),
        line("body"),
        line("."),
    ]
}

fn stored(p: &Popsync) -> usize {
    support::popsync::maildir_messages(&p.path("Mail")).len()
}

/// `popsync sync` against `steps` (account settings `extra`): it must
/// follow the script to its end and store `n` messages.
fn syncs_messages(steps: Vec<Step>, extra: &str, n: usize) {
    let server = ScriptedServer::start(steps);
    let p = Popsync::new("");
    p.write_config(&account(&server, &p, extra));
    p.run(&["sync"]).expect_code(0);
    assert_eq!(stored(&p), n);
    server.finish_blocking().unwrap();
}

fn syncs_two_messages(steps: Vec<Step>, extra: &str) {
    syncs_messages(steps, extra, 2);
}

#[test]
fn login_and_listing_go_out_in_one_write_where_pipelining_is_offered() {
    let mut steps = greeting_and_capa(true);
    // Every command before the first reply: one round trip, not three.
    steps.extend(["USER u", "PASS *", "STAT", "UIDL", "LIST"].map(expect));
    steps.extend([
        line("+OK"),
        line("+OK logged in"),
        line("+OK 0 0"),
        line("+OK"),
        line("."),
        line("+OK"),
        line("."),
    ]);
    steps.extend([expect("QUIT"), line("+OK bye")]);
    let server = ScriptedServer::start(steps);
    let p = Popsync::new("");
    p.write_config(&account(&server, &p, ""));
    let run = p.run(&["sync"]);
    run.expect_code(0);
    assert!(run.stdout().contains("a: 0 new"), "{}", run.stdout());
    server.finish_blocking().unwrap();
}

#[test]
fn a_refused_pipelined_login_is_an_auth_failure_and_the_listing_replies_are_ignored() {
    let mut steps = greeting_and_capa(true);
    steps.extend(["USER u", "PASS *", "STAT", "UIDL", "LIST"].map(expect));
    steps.extend([
        line("+OK"),
        line("-ERR [AUTH] invalid login"),
        line("-ERR not logged in"),
        line("-ERR not logged in"),
        line("-ERR not logged in"),
    ]);
    let server = ScriptedServer::start(steps);
    let p = Popsync::new("");
    p.write_config(&account(&server, &p, ""));
    let mut cmd = p.command(&["--trace", "-vv", "sync"]);
    cmd.env("POPSYNC_LOG", "trace");
    let run = support::popsync::Run(cmd.output().unwrap());
    run.expect_code(4);
    let all = format!("{}{}", run.stdout(), run.stderr());
    assert!(all.contains("invalid login"), "{all}");
    assert!(!all.contains(PASSWORD), "the password leaked: {all}");
    assert_eq!(stored(&p), 0);
    let _ = server.finish_blocking();
}

/// Where the session deletes nothing, QUIT still waits until every reply
/// was read (a NOOP confirms the last RETR). Dovecot reads a pipelined
/// QUIT once less than 2 KiB of output is left in its buffer, answers it
/// and drops what it could not flush: a corpus run over TLS on a loaded
/// machine ended "the server closed the connection", one message short,
/// while Dovecot logged `retr=6046/...` and "Logged out". The QUIT's round
/// trip overlaps the last batch's close.
#[test]
fn quit_goes_out_once_every_reply_was_read() {
    let mut steps = greeting_and_capa(true);
    steps.extend(login_and_listing(2));
    steps.extend(["RETR 1", "RETR 2", "NOOP"].map(expect));
    steps.extend(message(1));
    steps.extend(message(2));
    steps.push(line("+OK"));
    steps.extend([expect("QUIT"), line("+OK bye")]);
    syncs_two_messages(steps, "");
}

/// The first window of RETRs goes out before the plan's state rows are
/// written, so the server answers while they are (15 ms of inserts for
/// the 6,046-message corpus). The test holds the state's write lock from
/// the listing on: the RETRs must arrive all the same.
#[test]
fn the_first_retrs_go_out_before_the_plans_state_rows_are_written() {
    let mut steps = greeting_and_capa(true);
    let mut listing = login_and_listing(2);
    // After the LIST: time for the test to take the lock first.
    listing.insert(7, Step::Sleep(Duration::from_millis(500)));
    steps.extend(listing);
    steps.extend(["RETR 1", "RETR 2", "NOOP"].map(expect));
    steps.extend(message(1));
    steps.extend(message(2));
    steps.push(line("+OK"));
    steps.extend([expect("QUIT"), line("+OK bye")]);
    let server = ScriptedServer::start(steps);
    let p = Popsync::new("");
    p.write_config(&account(&server, &p, ""));
    let child = p
        .command(&["sync"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sent = |what: &str| server.transcript().iter().any(|l| l == what);
    assert!(wait_until(Duration::from_secs(5), || sent("LIST")));
    let holder = rusqlite::Connection::open(p.state_dir.join("state.db")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Well inside the client's 3 s busy time-out.
    let retr_while_locked = wait_until(Duration::from_secs(2), || sent("RETR 1"));
    holder.execute_batch("COMMIT").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        retr_while_locked,
        "no RETR while the state was locked: the server waited on the client's inserts"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored(&p), 2);
    server.finish_blocking().unwrap();
}

/// The window is topped up only once an eighth of it has drained, and the
/// NOOP that confirms the last RETR goes only behind the mailbox's last
/// RETR, not behind a window left unfilled while it drains. LIST announces
/// 512 KiB a message: 16 fill the 8 MiB window, two replies free an eighth.
#[test]
fn the_window_refills_after_an_eighth_and_noop_follows_only_the_last_retr() {
    let n = 20;
    let mut steps = greeting_and_capa(true);
    steps.extend(login_and_listing_sized(n, 524_288));
    steps.extend((1..=16).map(|i| expect(&format!("RETR {i}"))));
    // The client tops up after a message once the next status line is in:
    // after message 2 (RETR 17-18), after 4 (RETR 19-20), then, all sent,
    // the NOOP after 5.
    steps.extend((1..=3).flat_map(message));
    steps.extend(["RETR 17", "RETR 18"].map(expect));
    steps.extend((4..=5).flat_map(message));
    steps.extend(["RETR 19", "RETR 20"].map(expect));
    steps.extend(message(6));
    steps.push(expect("NOOP"));
    steps.extend((7..=n).flat_map(message));
    steps.push(line("+OK"));
    steps.extend([expect("QUIT"), line("+OK bye")]);
    syncs_messages(steps, "", n as usize);
}

/// Lock-step (no PIPELINING): QUIT, sent once the last message was read,
/// is the command whose reply shows that message ended at its terminator.
#[test]
fn lock_step_quit_confirms_the_last_message() {
    let mut steps = greeting_and_capa(false);
    steps.extend([
        expect("USER u"),
        line("+OK"),
        expect("PASS *"),
        line("+OK logged in"),
        expect("STAT"),
        expect("UIDL"),
        line("+OK 2 60"),
        line("+OK"),
        line("1 uid-1"),
        line("2 uid-2"),
        line("."),
        expect("LIST"),
        line("+OK"),
        line("1 30"),
        line("2 30"),
        line("."),
    ]);
    steps.push(expect("RETR 1"));
    steps.extend(message(1));
    steps.push(expect("RETR 2"));
    steps.extend(message(2));
    steps.extend([expect("QUIT"), line("+OK bye")]);
    syncs_two_messages(steps, "");
}

/// With `keep = false` the DELEs come after the commit, so QUIT must not
/// be sent early: a NOOP confirms the last RETR, then the DELEs, then QUIT.
#[test]
fn quit_waits_for_the_deletes_of_a_keep_false_run() {
    let mut steps = greeting_and_capa(true);
    steps.extend(login_and_listing(2));
    steps.extend(["RETR 1", "RETR 2", "NOOP"].map(expect));
    steps.extend(message(1));
    steps.extend(message(2));
    steps.push(line("+OK"));
    steps.extend(["DELE 1", "DELE 2"].map(expect));
    steps.extend([line("+OK"), line("+OK")]);
    steps.extend([expect("QUIT"), line("+OK bye")]);
    syncs_two_messages(steps, "keep = false");
}
