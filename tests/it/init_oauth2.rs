//! `popsync init --oauth2 custom` end to end with real parts: a real OpenID
//! provider (tests/support/oidc.rs), a real Dovecot whose oauth2 passdb
//! checks every token there, found through SRV records; init writes the
//! oauth2 keys, signs in (device flow, approved on the provider's pages),
//! and `popsync sync` delivers with the tokens it stored.

use crate::support;

use std::process::{Command, Stdio};

use support::dns::Dnsmasq;
use support::dovecot::{Dovecot, DovecotOptions};
use support::oidc::{
    Browser, CLIENT_ID, LineReader, OidcProvider, device_prompt, finish, parse_device_prompt,
};
use support::popsync::{BIN, Popsync, Run, maildir_messages};
use support::tmux::{Tmux, tmux_available};

struct World {
    idp: OidcProvider,
    dovecot: Dovecot,
    dns: Dnsmasq,
    /// Its config holds only `state_dir`: init appends the account.
    p: Popsync,
}

fn world() -> World {
    let idp = OidcProvider::start(300);
    let dovecot = Dovecot::start_with(
        DovecotOptions::default().oauth2_introspection(&idp.introspection_url()),
    );
    let dns = Dnsmasq::start(&[("_pop3s._tcp.example.test", "localhost", dovecot.tls_port)]);
    World {
        idp,
        dovecot,
        dns,
        p: Popsync::new(""),
    }
}

impl World {
    /// `popsync init alice@example.test` for Dovecot's alice with the
    /// custom preset at `issuer`, plus `extra`, resolving through the test DNS.
    fn init_command(&self, issuer: &str, extra: &[&str]) -> Command {
        let ca = self.dovecot.pki.ca_pem.display().to_string();
        let maildir = self.p.path("mail").display().to_string();
        let mut cmd = self.p.command(&[
            "init",
            "alice@example.test",
            "--username",
            "alice",
            "--ca-file",
            &ca,
            "--maildir",
            &maildir,
            "--oauth2",
            "custom",
            "--oauth2-issuer",
            issuer,
            "--oauth2-client-id",
            CLIENT_ID,
        ]);
        cmd.args(extra)
            .env("POPSYNC_TEST_DNS", self.dns.addr.to_string())
            .env("POPSYNC_NO_BROWSER", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// The same at the test provider, waited for.
    fn init(&self, extra: &[&str]) -> Run {
        Run(self
            .init_command(&self.idp.issuer(), extra)
            .output()
            .unwrap())
    }
}

#[test]
fn init_with_the_custom_preset_signs_in_and_sync_delivers() {
    let w = world();
    let before = std::fs::read_to_string(&w.p.config).unwrap();
    let mut child = w
        .init_command(&w.idp.issuer(), &["--login"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn popsync init");
    let out = LineReader::new(child.stdout.take().unwrap());
    let (uri, code) = device_prompt(&out);
    // The account is written before the sign-in starts.
    let text = std::fs::read_to_string(&w.p.config).unwrap();
    assert!(text.starts_with(&before), "{text}");
    let added = &text[before.len()..];
    for line in [
        "[account.alice]\n".to_string(),
        "oauth2 = \"custom\"\n".to_string(),
        format!("oauth2_client_id = \"{CLIENT_ID}\"\n"),
        format!("oauth2_issuer = \"{}\"\n", w.idp.issuer()),
        "oauth2_scopes = [\"openid\", \"offline_access\"]\n".to_string(),
    ] {
        assert!(added.contains(&line), "no {line:?} in:\n{added}");
    }
    assert!(!added.contains("password"), "{added}");

    Browser::new("alice").approve_device(&uri, &code);
    let run = finish(child, out);
    run.expect_code(0);
    let stdout = run.stdout();
    assert!(
        stdout.contains("fingerprint   sha256:") && stdout.contains("logged in to localhost"),
        "{stdout}"
    );
    assert!(w.p.state_dir.join("oauth2/alice.json").exists());

    w.dovecot
        .add_message("alice", b"From: a@example.org\nSubject: one\n\nbody\n");
    let sync = w.p.run(&["sync", "--trace"]);
    sync.expect_code(0);
    assert!(sync.stderr().contains("AUTH XOAUTH2"), "{}", sync.stderr());
    assert_eq!(maildir_messages(&w.p.path("mail")).len(), 1);
}

#[test]
fn init_with_oauth2_and_no_terminal_names_the_next_command_and_refuses_mistakes() {
    let w = world();
    let before = std::fs::read_to_string(&w.p.config).unwrap();
    // A provider that is not there: nothing is written.
    let issuer_typo = Run(w.init_command("http://127.0.0.1:9/", &[]).output().unwrap());
    assert_eq!(issuer_typo.code(), 6, "{}", issuer_typo.stderr());
    let err = issuer_typo.stderr();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--oauth2-issuer") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&w.p.config).unwrap(), before);

    // Without a terminal and without --login: written, and the next step named.
    let ok = w.init(&["--oauth2-scope", "openid", "--oauth2-scope", "pop"]);
    ok.expect_code(0);
    assert!(
        ok.stdout().contains("next: popsync login alice"),
        "{}",
        ok.stdout()
    );
    let text = std::fs::read_to_string(&w.p.config).unwrap();
    assert!(
        text.contains("oauth2_scopes = [\"openid\", \"pop\"]\n"),
        "{text}"
    );
    let grants: Vec<String> = w
        .idp
        .events()
        .into_iter()
        .filter(|e| e.starts_with("grant"))
        .collect();
    assert!(grants.is_empty(), "no sign-in was started: {grants:?}");
    // The account loads; sync says what to run.
    let sync = w.p.run(&["sync"]);
    sync.expect_code(4);
    assert!(
        sync.stderr().contains("run `popsync login alice`"),
        "{}",
        sync.stderr()
    );
}

#[test]
fn init_on_a_terminal_asks_for_the_issuer_and_client_id_then_signs_in() {
    if !tmux_available() {
        eprintln!(
            "SKIPPED: tmux is not installed (scripts/test installs it): apt-get install tmux"
        );
        return;
    }
    let w = world();
    let command = format!(
        "env POPSYNC_TEST_DNS={} POPSYNC_NO_BROWSER=1 '{BIN}' -c '{}' init alice@example.test --ca-file '{}' --maildir '{}' --oauth2 custom",
        w.dns.addr,
        w.p.config.display(),
        w.dovecot.pki.ca_pem.display(),
        w.p.path("mail").display()
    );
    let tmux = Tmux::start(w.p.dir.path(), &command, 400, 50);
    tmux.wait_for("Login name [alice@example.test]:");
    tmux.send("alice");
    tmux.wait_for("OAuth2 issuer URL (serves /.well-known/openid-configuration):");
    tmux.send(&w.idp.issuer());
    tmux.wait_for("OAuth2 client id of the app you registered at your provider");
    tmux.send(CLIENT_ID);
    let screen = tmux.wait_until("the device code", |s| {
        s.lines().any(|l| parse_device_prompt(l).is_some())
    });
    let (uri, code) = screen.lines().find_map(parse_device_prompt).unwrap();
    Browser::new("alice").approve_device(&uri, &code);
    assert_eq!(tmux.exit_status(), 0, "{}", tmux.screen());
    let screen = tmux.screen();
    assert!(screen.contains("added [account.alice] to"), "{screen}");
    assert!(screen.contains("logged in to localhost"), "{screen}");

    w.dovecot
        .add_message("alice", b"From: a@example.org\nSubject: one\n\nbody\n");
    w.p.run(&["sync"]).expect_code(0);
    assert_eq!(maildir_messages(&w.p.path("mail")).len(), 1);
}
