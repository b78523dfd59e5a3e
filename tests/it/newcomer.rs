//! A newcomer's mistakes get one line that says what to change: config
//! values checked at load time, no doubled prefixes, a hint on a refused
//! login; and what `status`, `sync` and the log show afterwards.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use popsync::store::{RunRecord, Store};
use support::dovecot::Dovecot;
use support::fault_server::{FaultServer, Faults, mailbox};
use support::popsync::{AccountToml, Popsync};

/// One line on stderr (after the `popsync: ` prefix), naming each of `parts`.
fn assert_one_line_naming(stderr: &str, parts: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line:\n{stderr}");
    for p in parts {
        assert!(lines[0].contains(p), "{:?} should name {p:?}", lines[0]);
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn host_with_a_port_fails_at_load_with_exit_3_and_the_fix() {
    let p = Popsync::new(
        "[account.alice]\nhost = \"127.0.0.1:995\"\nusername = \"alice\"\npassword = \"x\"\nmaildir = \"~/Mail\"\n",
    );
    let run = p.run(&["sync"]);
    run.expect_code(3);
    assert_one_line_naming(
        &run.stderr(),
        &[
            "config.toml",
            "account `alice`",
            "host = \"127.0.0.1\" and port = 995",
        ],
    );
    let p = Popsync::new(
        "[account.alice]\nhost = \"pop3s://pop.example.org\"\nusername = \"alice\"\npassword = \"x\"\n",
    );
    let run = p.run(&["probe", "alice"]);
    run.expect_code(3);
    assert_one_line_naming(&run.stderr(), &["drop the `pop3s://`"]);
}

#[test]
fn relative_maildir_is_refused_instead_of_following_the_current_directory() {
    let p = Popsync::new(
        "[account.alice]\nhost = \"127.0.0.1\"\nusername = \"alice\"\npassword = \"x\"\nmaildir = \"Mail/alice\"\n",
    );
    let run = p.run(&["sync"]);
    run.expect_code(3);
    assert_one_line_naming(
        &run.stderr(),
        &["account `alice`", "`maildir`", "relative path", "`~/`"],
    );
}

#[test]
fn sync_without_a_target_fails_before_connecting_naming_the_account_once() {
    // Nothing listens on the port: a connect attempt would exit 6.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Popsync::new(&format!(
        "[account.alice]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"alice\"\npassword = \"x\"\n"
    ));
    let run = p.run(&["sync"]);
    run.expect_code(3);
    let err = run.stderr();
    assert_one_line_naming(&err, &["no delivery target", "`maildir`"]);
    assert_eq!(count(&err, "account `alice`"), 1, "{err}");
}

#[test]
fn a_held_lock_names_the_account_once_and_says_what_to_do() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&p.path("Mail"));
    p.write_config(&a.render());
    let _held = popsync::sync::AccountLock::acquire(&p.state_dir, "alice").unwrap();
    let run = p.run(&["sync"]);
    run.expect_code(8);
    let err = run.stderr();
    assert_eq!(count(&err, "account `alice`"), 1, "{err}");
    assert!(err.contains("wait for it to finish"), "{err}");
    // Same through the commands that lock by themselves.
    let run = p.run(&["purge", "alice", "--dry-run"]);
    run.expect_code(8);
    assert_eq!(
        count(&run.stderr(), "account `alice`"),
        1,
        "{}",
        run.stderr()
    );
}

#[test]
fn a_refused_login_suggests_what_to_check() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set("password", "\"wrong\"").maildir(&p.path("Mail"));
    p.write_config(&a.render());
    let run = p.run(&["sync"]);
    run.expect_code(4);
    let err = run.stderr();
    for hint in ["`username`", "app password", "auth = \"xoauth2\""] {
        assert!(err.contains(hint), "{hint} missing in {err}");
    }
    assert!(!err.contains("wrong"), "the password leaked: {err}");
}

#[test]
fn a_pin_mismatch_is_not_an_unexpected_error() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set(
        "fingerprint",
        &format!("\"sha256:{}\"", ["00"; 32].join(":")),
    );
    p.write_config(&a.render());
    let run = p.run(&["probe", "alice"]);
    run.expect_code(5);
    let err = run.stderr();
    assert!(!err.contains("unexpected error"), "{err}");
    assert!(
        err.contains("does not match the configured pin") && err.contains("fingerprint = "),
        "{err}"
    );
}

#[test]
fn an_mbox_in_a_missing_directory_is_created_like_a_maildir() {
    let d = Dovecot::start();
    d.add_message("alice", b"Subject: one\n\nbody\n");
    let p = Popsync::new("");
    let mbox = p.path("Mail/archive/alice.mbox");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.mbox(&mbox);
    p.write_config(&a.render());
    p.run(&["sync"]).expect_code(0);
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert!(text.contains("Subject: one"), "{text}");
}

#[test]
fn a_changed_target_is_a_warning_naming_both() {
    let d = Dovecot::start();
    d.add_message("alice", b"Subject: one\n\nbody\n");
    let p = Popsync::new("");
    let (old, new) = (p.path("Old"), p.path("New"));
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&old);
    p.write_config(&a.render());
    p.run(&["sync"]).expect_code(0);
    a.maildir(&new);
    p.write_config(&a.render());
    let run = p.run(&["sync"]);
    run.expect_code(0);
    let err = run.stderr();
    assert!(
        err.contains(&format!("maildir {}", old.display()))
            && err.contains(&format!("maildir {}", new.display()))
            && err.contains("not fetched again"),
        "{err}"
    );
    // Said once, not at every run into the new target after mail arrived.
    d.add_message("alice", b"Subject: two\n\nbody\n");
    p.run(&["sync"]).expect_code(0);
    let run = p.run(&["sync"]);
    assert!(
        !run.stderr().contains("not fetched again"),
        "{}",
        run.stderr()
    );
}

#[test]
fn status_clears_a_resolved_error_but_keeps_it_in_history() {
    let d = Dovecot::start();
    let p = Popsync::new("");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&p.path("Mail"));
    let good = a.render();
    a.set("password", "\"wrong\"");
    p.write_config(&a.render());
    p.run(&["sync"]).expect_code(4);
    let status = p.run(&["status"]).stdout();
    assert!(status.contains("alice: last error"), "{status}");
    p.write_config(&good);
    p.run(&["sync"]).expect_code(0);
    let status = p.run(&["status"]);
    status.expect_code(0);
    assert!(
        !status.stdout().contains("last error"),
        "{}",
        status.stdout()
    );
    let json: serde_json::Value =
        serde_json::from_str(&p.run(&["status", "--json"]).stdout()).unwrap();
    let row = &json["accounts"][0];
    assert!(row["last_error"].is_null(), "{row}");
    assert_eq!(row["last_failure"]["outcome"], "auth", "{row}");
    assert_eq!(row["last_failure"]["resolved"], true, "{row}");
}

#[test]
fn status_shows_an_interrupted_run_and_pending_messages() {
    let p = Popsync::new(
        "[account.alice]\nhost = \"127.0.0.1\"\nusername = \"alice\"\npassword = \"x\"\nmaildir = \"~/Mail\"\n",
    );
    // The state a daemon stopped mid-poll leaves: three UIDs listed, one
    // stored, the run recorded as interrupted.
    {
        let mut s = Store::open_in(&p.state_dir).unwrap();
        let acct = s.account("alice", 100).unwrap();
        s.add_pending(acct, &[("u1", 10), ("u2", 10), ("u3", 10)], 100)
            .unwrap();
        let run = s.start_run(acct, 100).unwrap();
        let record = RunRecord {
            outcome: "interrupted".into(),
            on_server: Some(3),
            new_messages: 0,
            new_bytes: 0,
            deleted: 0,
            skipped: 0,
            error: None,
        };
        s.finish_run(run, &record, 101).unwrap();
    }
    let out = p.run(&["status"]);
    out.expect_code(0);
    let text = out.stdout();
    let header = text.lines().next().unwrap();
    let row = text.lines().nth(1).unwrap();
    assert!(header.contains("PENDING"), "{text}");
    assert!(row.contains("interrupted"), "{text}");
    let col = header.find("PENDING").unwrap();
    assert!(row[col..].starts_with('3'), "{text}");
}

#[test]
fn each_account_summary_appears_when_that_account_is_done() {
    // `aaa` comes first and hangs in RETR until its 8 s timeout; `zzz` is quick.
    let hanging = FaultServer::start(
        mailbox(3),
        Faults {
            stall_in_retr: Some(1),
            ..Faults::default()
        },
    );
    let quick = FaultServer::start(mailbox(3), Faults::default());
    let p = Popsync::new("");
    let slow_toml = hanging
        .account_toml("aaa", &format!("maildir = {:?}", p.path("A")))
        .replace("timeout = \"3s\"\nconnect", "timeout = \"8s\"\nconnect");
    let quick_toml = quick.account_toml("zzz", &format!("maildir = {:?}", p.path("Z")));
    p.write_config(&format!("{slow_toml}\n{quick_toml}"));
    let started = Instant::now();
    let mut child = p
        .command(&["sync"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let first_after = started.elapsed();
    let status = child.wait().unwrap();
    let total = started.elapsed();
    assert!(first.starts_with("zzz: 3 new"), "{first}");
    assert!(
        first_after + Duration::from_secs(4) < total,
        "the quick account's line came after {first_after:?}, the run took {total:?}"
    );
    assert_eq!(status.code(), Some(6));
}

#[test]
fn log_lines_are_timestamped_in_a_file_but_not_for_the_journal() {
    let server = FaultServer::start(mailbox(3), Faults::default());
    let p = Popsync::new("");
    // Messages over max_size are skipped with a WARN line each.
    let extra = format!("maildir = {:?}\nmax_size = 10", p.path("Mail"));
    p.write_config(&server.account_toml("alice", &extra));
    let log = p.path("log");
    let stamped = |line: &str| line.len() > 20 && line.as_bytes()[4] == b'-' && line.contains('T');
    let run_into = |env: Option<String>, extra: &[&str]| {
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = p.command(&["-v", "sync"]);
        cmd.args(extra).stdout(Stdio::null()).stderr(file);
        cmd.env_remove("JOURNAL_STREAM");
        if let Some(v) = env {
            cmd.env("JOURNAL_STREAM", v);
        }
        assert!(cmd.status().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.is_empty(), "no log line to look at");
        text
    };
    let text = run_into(None, &[]);
    assert!(text.lines().all(stamped), "{text}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&log).unwrap();
    let text = run_into(Some(format!("{}:{}", meta.dev(), meta.ino())), &[]);
    assert!(!text.lines().any(stamped), "{text}");
    let text = run_into(None, &["--no-log-timestamps"]);
    assert!(!text.lines().any(stamped), "{text}");
}

#[test]
fn help_explains_every_argument_and_lists_exit_codes() {
    let p = Popsync::new("");
    let help = p.run(&["--help"]).stdout();
    assert!(
        help.contains("Exit codes:") && help.contains("8  another popsync"),
        "{help}"
    );
    let daemon = p.run(&["daemon", "--help"]).stdout();
    assert!(
        daemon.contains("foreground") && !daemon.contains("in the background"),
        "{daemon}"
    );
    for sub in ["mark-seen", "import-uids", "status", "verify", "purge"] {
        let text = p.run(&[sub, "--help"]).stdout();
        let arg = text
            .lines()
            .find(|l| {
                l.trim_start().starts_with("<ACCOUNT>") || l.trim_start().starts_with("[ACCOUNT]")
            })
            .unwrap_or_else(|| panic!("{sub}: {text}"));
        assert!(arg.contains("Account name"), "{sub}: {arg}");
    }
}

#[test]
fn purge_dry_run_shows_from_and_subject() {
    let d = Dovecot::start();
    d.add_message(
        "alice",
        b"From: =?UTF-8?Q?J=C3=B6rg?= <jorg@example.org>\nSubject: quarterly report\n\nbody\n",
    );
    let p = Popsync::new("");
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.maildir(&p.path("Mail"));
    p.write_config(&a.render());
    p.run(&["sync"]).expect_code(0);
    let run = p.run(&["purge", "alice", "--dry-run"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(
        out.contains("would delete message 1")
            && out.contains("From Jörg, Subject quarterly report"),
        "{out}"
    );
}
