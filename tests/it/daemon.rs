//! `popsync daemon` against a real Dovecot: mail dropped into the server
//! while the daemon runs arrives within seconds, whatever other accounts
//! do; signals (reload, poll now, stop); refused logins; a second daemon.

use crate::support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::daemon::{DaemonProcess, wait_until};
use support::dovecot::Dovecot;
use support::popsync::{AccountToml, Popsync, maildir_messages};

const NO_BUS: (&str, &str) = (
    "DBUS_SESSION_BUS_ADDRESS",
    "unix:path=/nonexistent/popsync-test-bus",
);

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!("From: {from}\nTo: someone@example.org\nSubject: {subject}\n\nHello.\n").into_bytes()
}

fn account(p: &Popsync, d: &Dovecot, name: &str, user: &str, interval: &str) -> AccountToml {
    let mut a = AccountToml::tls(name, d, user);
    a.maildir(&p.path(name))
        .set("interval", &format!("\"{interval}\""));
    a
}

fn delivered(p: &Popsync, name: &str) -> usize {
    maildir_messages(&p.path(name)).len()
}

/// Waits until `name`'s maildir holds `n` messages; returns how long it took.
fn wait_delivered(
    p: &Popsync,
    name: &str,
    n: usize,
    timeout: Duration,
    daemon: &DaemonProcess,
) -> Duration {
    let start = Instant::now();
    assert!(
        wait_until(timeout, || delivered(p, name) >= n),
        "{name}: {} of {n} messages after {timeout:?}; log:\n{}",
        delivered(p, name),
        daemon.log()
    );
    start.elapsed()
}

#[test]
fn mail_arrives_within_seconds_while_dead_and_hanging_servers_fail() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    // Nothing listens here: connection refused.
    let dead_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Accepts (the kernel does) and never says a word.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut dead = account(&p, &d, "dead", "alice", "1s");
    dead.set("port", &dead_port.to_string());
    let mut hang = account(&p, &d, "hanging", "bob", "1s");
    hang.set("port", &hanging.local_addr().unwrap().port().to_string())
        .set("timeout", "\"60s\"")
        .set("connect_timeout", "\"60s\"");
    let config = [
        account(&p, &d, "alice", "alice", "1s"),
        account(&p, &d, "bob", "bob", "1s"),
        dead,
        hang,
    ]
    .iter()
    .map(AccountToml::render)
    .collect::<Vec<_>>()
    .join("\n");
    p.write_config(&config);

    let mut daemon = DaemonProcess::start(&p, &[NO_BUS, ("POPSYNC_LOG", "popsync=debug")]);
    daemon.wait_log("alice: 0 new", Duration::from_secs(10));
    daemon.wait_log("bob: 0 new", Duration::from_secs(10));

    d.add_messages(
        "alice",
        &[
            message("a@example.org", "one"),
            message("b@example.org", "two"),
        ],
    );
    d.add_message("bob", &message("c@example.org", "three"));
    let took_alice = wait_delivered(&p, "alice", 2, Duration::from_secs(10), &daemon);
    let took_bob = wait_delivered(&p, "bob", 1, Duration::from_secs(10), &daemon);
    eprintln!("delivered: alice after {took_alice:?}, bob after {took_bob:?}");
    assert!(took_alice < Duration::from_secs(5) && took_bob < Duration::from_secs(5));

    // Several failed polls of the dead server: reported once, the rest at
    // debug level only.
    daemon.wait_log_n("dead: 0 new", 3, Duration::from_secs(15));
    let dead_lines: Vec<String> = daemon
        .log()
        .lines()
        .filter(|l| l.contains("dead: 0 new") && l.contains("FAILED"))
        .map(str::to_string)
        .collect();
    let warned = dead_lines.iter().filter(|l| l.contains("WARN")).count();
    let quiet = dead_lines.iter().filter(|l| l.contains("DEBUG")).count();
    assert_eq!((warned, quiet >= 2), (1, true), "{dead_lines:#?}");
    assert!(
        dead_lines[0].contains("cannot connect"),
        "{}",
        dead_lines[0]
    );

    // No session bus: one warning, and mail keeps coming.
    d.add_message("alice", &message("d@example.org", "four"));
    wait_delivered(&p, "alice", 3, Duration::from_secs(10), &daemon);
    assert_eq!(
        daemon.count("desktop notifications are unavailable"),
        1,
        "{}",
        daemon.log()
    );

    // The hanging server's poll is in flight: a stop still ends within the
    // grace period, with exit 0.
    let stop = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("daemon did not exit");
    let took = stop.elapsed();
    eprintln!("stopped in {took:?}");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(daemon.log().contains("daemon stopped"), "{}", daemon.log());
    assert!(daemon.log().contains("hanging"), "{}", daemon.log());
    // Not a terminal: plain lines for the journal, no colour codes.
    assert!(!daemon.log().contains('\x1b'), "{}", daemon.log());
    drop(hanging);
}

#[test]
fn signals_poll_now_reload_and_stop_and_one_daemon_per_state() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    let alice = account(&p, &d, "alice", "alice", "1h");
    p.write_config(&alice.render());
    let mut daemon = DaemonProcess::start(&p, &[NO_BUS]);
    daemon.wait_log("alice: 0 new", Duration::from_secs(10));

    // A second daemon on the same state refuses to start (exit 8).
    let mut second = p
        .command(&["daemon"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        second.try_wait().unwrap().is_some()
    });
    if !exited {
        second.kill().unwrap();
    }
    let second = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(exited, "a second daemon kept running: {stderr}");
    assert_eq!(second.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("another popsync daemon"), "{stderr}");

    // SIGUSR1: poll now, not in an hour.
    d.add_message("alice", &message("a@example.org", "poll now"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(delivered(&p, "alice"), 0);
    daemon.signal(libc::SIGUSR1);
    wait_delivered(&p, "alice", 1, Duration::from_secs(5), &daemon);

    // SIGHUP: a new account is polled at once.
    d.add_message("bob", &message("b@example.org", "reload"));
    let bob = account(&p, &d, "bob", "bob", "1h");
    p.write_config(&format!("{}\n{}", alice.render(), bob.render()));
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("added: bob", Duration::from_secs(5));
    wait_delivered(&p, "bob", 1, Duration::from_secs(10), &daemon);

    // A broken config is refused and the running one stays in force.
    p.write_config("[account.x]\nhots = \"typo\"\n");
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("reload failed", Duration::from_secs(5));
    d.add_message("bob", &message("b@example.org", "still here"));
    daemon.signal(libc::SIGUSR1);
    wait_delivered(&p, "bob", 2, Duration::from_secs(10), &daemon);

    // Removing an account stops its polls.
    p.write_config(&alice.render());
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("removed: bob", Duration::from_secs(5));
    let bob_polls = daemon.count("bob: ");
    d.add_message("bob", &message("b@example.org", "not fetched"));
    daemon.signal(libc::SIGUSR1);
    daemon.wait_log_n("alice: 0 new", 3, Duration::from_secs(10));
    assert_eq!(daemon.count("bob: "), bob_polls, "{}", daemon.log());
    assert_eq!(delivered(&p, "bob"), 2);

    // The schedule is recorded for `popsync status`.
    let store = popsync::store::Store::open_in(&p.state_dir).unwrap();
    let (next, pid) = store
        .next_poll("alice")
        .unwrap()
        .expect("alice's next poll");
    assert_eq!(pid, daemon.child.id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 3000..=now + 4000).contains(&next),
        "next {next}, now {now}"
    );

    daemon.signal(libc::SIGINT);
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("daemon did not exit");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    // And now another daemon may start.
    let again = DaemonProcess::start(&p, &[NO_BUS]);
    again.signal(libc::SIGTERM);
}

#[test]
fn refused_logins_stop_polling_until_the_config_is_reloaded() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    let mut alice = account(&p, &d, "alice", "alice", "1s");
    alice.set("password", "\"wrong\"");
    p.write_config(&alice.render());
    let mut daemon = DaemonProcess::start(&p, &[NO_BUS]);
    daemon.wait_log("polling of alice stopped", Duration::from_secs(30));
    let refusals = daemon.count("login refused");
    assert_eq!(refusals, 3, "{}", daemon.log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.count("login refused"), refusals, "{}", daemon.log());

    // Poll-now does not resume it; a reload with the right password does.
    daemon.signal(libc::SIGUSR1);
    daemon.wait_log("except the paused (alice)", Duration::from_secs(5));
    d.add_message("alice", &message("a@example.org", "after the fix"));
    let alice = account(&p, &d, "alice", "alice", "1s");
    p.write_config(&alice.render());
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("changed: alice", Duration::from_secs(5));
    wait_delivered(&p, "alice", 1, Duration::from_secs(10), &daemon);
    daemon.signal(libc::SIGTERM);
    assert!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}

/// SIGTERM in the middle of a large first sync: the batch in hand is
/// committed, the session ends with QUIT (Dovecot logs "Logged out", not a
/// dropped connection), and the next start fetches exactly the rest.
#[test]
fn stop_during_a_large_fetch_commits_the_batch_and_quits() {
    let d = Dovecot::start();
    let body = "0123456789abcdef\n".repeat(600);
    // Enough that the stop comes first: a stop still reads what is in
    // flight, up to the pipeline window's 8 MiB (~800 of these).
    const TOTAL: usize = 3000;
    let msgs: Vec<Vec<u8>> = (0..TOTAL)
        .map(|i| format!("From: s@example.org\nSubject: m{i}\n\n{body}").into_bytes())
        .collect();
    d.add_messages("alice", &msgs);
    let p = Popsync::new("");
    p.write_config(&account(&p, &d, "alice", "alice", "1h").render());

    let mut daemon = DaemonProcess::start(&p, &[NO_BUS]);
    assert!(wait_until(Duration::from_secs(30), || delivered(
        &p, "alice"
    ) > 0));
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(8))
        .expect("daemon did not exit");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    let first = delivered(&p, "alice");
    assert!(
        first < TOTAL,
        "the stop came too late to test anything ({first})"
    );
    assert!(
        daemon.log().contains("stopping as asked"),
        "{}",
        daemon.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains("Logged out")),
        "no QUIT in Dovecot's log:\n{}",
        d.log()
    );
    eprintln!("stopped after {first} of {TOTAL}");
    let line = format!("alice: {first} new");
    assert_eq!(daemon.count(&line), 1, "{}", daemon.log());
    // Logged and recorded as interrupted, not "ok", with what is left.
    let left = format!("interrupted, {} new left for the next run", TOTAL - first);
    assert_eq!(daemon.count(&left), 1, "{}", daemon.log());
    let table = p.run(&["status"]).stdout();
    let (header, row) = (table.lines().next().unwrap(), table.lines().nth(1).unwrap());
    assert!(row.contains("interrupted"), "{table}");
    let pending = &row[header.find("PENDING").unwrap()..];
    assert!(
        pending.starts_with(&format!("{} ", TOTAL - first)),
        "{table}"
    );

    let daemon = DaemonProcess::start(&p, &[NO_BUS]);
    daemon.wait_log(
        &format!("alice: {} new", TOTAL - first),
        Duration::from_secs(60),
    );
    let mut all = maildir_messages(&p.path("alice"));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), TOTAL, "duplicates or losses");
}
