//! `popsync init` against a real Dovecot found through SRV records served by
//! a real DNS server (dnsmasq) on loopback, then `popsync sync` with the
//! config it wrote.

use crate::support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use support::dns::Dnsmasq;
use support::dovecot::Dovecot;
use support::popsync::{Popsync, Run, maildir_messages};

/// `popsync init ARGS` with `stdin` piped in and the resolver on `dns`.
fn init(p: &Popsync, dns: &Dnsmasq, args: &[&str], stdin: &str) -> Run {
    let mut cmd = p.command(&["init"]);
    cmd.args(args)
        .env("POPSYNC_TEST_DNS", dns.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    Run(child.wait_with_output().unwrap())
}

/// `popsync init alice@example.test` as Dovecot's alice, password on stdin,
/// trusting `ca` if given, plus `extra` arguments.
fn init_alice(p: &Popsync, dns: &Dnsmasq, ca: Option<&str>, extra: &[&str], stdin: &str) -> Run {
    let mut args = vec![
        "alice@example.test",
        "--username",
        "alice",
        "--password-stdin",
    ];
    if let Some(ca) = ca {
        args.extend(["--ca-file", ca]);
    }
    args.extend(extra);
    init(p, dns, &args, stdin)
}

fn fresh(p: &Popsync) {
    let _ = std::fs::remove_file(&p.config);
}

#[test]
fn init_finds_dovecot_through_srv_writes_a_private_config_and_sync_works() {
    let d = Dovecot::start();
    d.add_message("alice", b"Subject: hello\n\nfirst\n");
    let dns = Dnsmasq::start(&[
        ("_pop3s._tcp.example.test", "localhost", d.tls_port),
        ("_pop3._tcp.example.test", "localhost", d.plain_port),
    ]);
    let p = Popsync::new("");
    fresh(&p);
    let maildir = p.path("Mail/alice");
    let ca = d.pki.ca_pem.display().to_string();
    let run = init_alice(
        &p,
        &dns,
        Some(&ca),
        &["--maildir", &maildir.display().to_string()],
        &format!("{}\n", d.password("alice")),
    );
    run.expect_code(0);
    let out = run.stdout();
    assert!(
        out.contains(&format!(
            "localhost:{} (implicit TLS, SRV _pop3s._tcp.example.test)",
            d.tls_port
        )),
        "{out}"
    );
    assert!(
        out.contains("fingerprint   sha256:"),
        "the certificate is shown: {out}"
    );
    assert!(
        out.contains("login ok") && out.contains("1 messages"),
        "{out}"
    );
    let mode = std::fs::metadata(&p.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&p.config).unwrap();
    assert!(
        text.starts_with("[account.alice]\nhost = \"localhost\"\n"),
        "{text}"
    );
    assert!(text.contains(&format!("port = {}\n", d.tls_port)), "{text}");
    assert!(
        !run.stderr().contains(d.password("alice")),
        "password echoed"
    );

    // The written config works as it is (state_dir from the environment).
    let state = p.path("xdg-state");
    let sync = p.run_env(&["sync"], &[("XDG_STATE_HOME", state.to_str().unwrap())]);
    sync.expect_code(0);
    assert_eq!(
        maildir_messages(&maildir),
        vec![b"Subject: hello\n\nfirst\n".to_vec()]
    );
}

#[test]
fn init_falls_back_to_stls_and_appends_without_touching_the_rest() {
    let d = Dovecot::start();
    // No _pop3s record and nothing else listening: only _pop3 (STLS) works.
    let dns = Dnsmasq::start(&[("_pop3._tcp.example.test", "localhost", d.plain_port)]);
    let p = Popsync::new(
        "# my accounts\n[account.other]\nhost = \"pop.example.org\"\nusername = \"o\"\nmaildir = \"~/Mail/o\"\n",
    );
    let before = std::fs::read_to_string(&p.config).unwrap();
    let ca = d.pki.ca_pem.display().to_string();
    let bob = |password: &str| {
        let command = format!("echo {password}");
        let args = ["bob@example.test", "--name", "work", "--username", "bob"];
        let more = [
            "--password-command",
            command.as_str(),
            "--ca-file",
            ca.as_str(),
        ];
        init(&p, &dns, &[&args[..], &more[..]].concat(), "")
    };
    let run = bob(d.password("bob"));
    run.expect_code(0);
    let after = std::fs::read_to_string(&p.config).unwrap();
    assert!(
        after.starts_with(&before),
        "the existing text changed:\n{after}"
    );
    let added = &after[before.len()..];
    assert!(
        added.contains("[account.work]") && added.contains("tls = \"starttls\""),
        "{added}"
    );
    assert!(
        added.contains("password_command = ") && !added.contains("password = "),
        "{added}"
    );
    assert!(added.contains("maildir = \"~/Mail/work\""), "{added}");
    // Both accounts load.
    let status = p.run(&["status"]);
    status.expect_code(0);
    assert!(status.stdout().contains("work") && status.stdout().contains("other"));
    // The same name again is refused, and nothing changes.
    let again = bob("x");
    assert_ne!(again.code(), 0);
    assert_eq!(std::fs::read_to_string(&p.config).unwrap(), after);
}

#[test]
fn init_with_a_wrong_password_writes_nothing_and_says_what_to_check() {
    let d = Dovecot::start();
    let dns = Dnsmasq::start(&[("_pop3s._tcp.example.test", "localhost", d.tls_port)]);
    let p = Popsync::new("");
    fresh(&p);
    let ca = d.pki.ca_pem.display().to_string();
    let run = init_alice(&p, &dns, Some(&ca), &[], "not-the-password\n");
    run.expect_code(4);
    let err = run.stderr();
    assert!(
        err.contains("`username`") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    assert!(!p.config.exists());
}

#[test]
fn init_without_a_trusted_certificate_stops_and_names_ca_file() {
    let d = Dovecot::start();
    let dns = Dnsmasq::start(&[("_pop3s._tcp.example.test", "localhost", d.tls_port)]);
    let p = Popsync::new("");
    fresh(&p);
    let run = init_alice(&p, &dns, None, &[], "x\n");
    run.expect_code(5);
    assert!(run.stderr().contains("--ca-file"), "{}", run.stderr());
    // The guessed names do not exist in this DNS: skipped, not looked up elsewhere.
    assert!(
        run.stdout().contains("skipping pop.example.test"),
        "{}",
        run.stdout()
    );
    assert!(!p.config.exists());
}
