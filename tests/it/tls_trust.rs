//! Real-world certificates: a self-signed server certificate in `ca_file`
//! is trusted as such (like a pin), and every refused certificate is named
//! in the error together with the setting that would fix it.

use crate::support;

use popsync::session::tls::format_fingerprint;
use support::certs::{Leaf, TestPki, cert_sha256, self_signed};
use support::popsync::{Popsync, Run};
use support::scripted::{ScriptedServer, Step, expect, line, tls_server_config_for};

const PASSWORD: &str = "tls-trust-secret";

/// What a well-behaved server says to `probe` (USER/PASS, empty mailbox).
fn probe_script() -> Vec<Step> {
    vec![
        line("+OK ready"),
        expect("CAPA"),
        line("+OK\r\nUSER\r\nUIDL\r\n."),
        expect("USER u"),
        line("+OK"),
        expect("PASS *"),
        line("+OK logged in"),
        expect("STAT"),
        line("+OK 0 0"),
        expect("UIDL"),
        line("+OK\r\n."),
        expect("LIST"),
        line("+OK\r\n."),
        expect("QUIT"),
        line("+OK bye"),
    ]
}

fn probe(server: &ScriptedServer, trust: &str, args: &[&str]) -> Run {
    let p = Popsync::new(&format!(
        "[account.a]\nhost = \"localhost\"\nport = {}\ntls = \"implicit\"\n{trust}\nusername = \"u\"\npassword = \"{PASSWORD}\"\nauth = \"user\"\ntimeout = \"5s\"\nconnect_timeout = \"5s\"\n",
        server.port()
    ));
    let mut all = vec!["probe", "a"];
    all.extend_from_slice(args);
    let run = p.run(&all);
    assert!(!run.stderr().contains(PASSWORD) && !run.stdout().contains(PASSWORD));
    run
}

fn ca_file(leaf: &Leaf) -> String {
    format!("ca_file = {:?}", leaf.pem)
}

#[test]
fn a_self_signed_certificate_in_ca_file_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    // `openssl req -x509`: CA:TRUE; with a SAN, and with the name only in
    // the CN (Courier's set-up).
    for (what, san) in [("with SAN", Some("DNS:localhost")), ("CN only", None)] {
        let leaf = self_signed(dir.path(), &what.replace(' ', "-"), san);
        let server = ScriptedServer::start_tls(probe_script(), tls_server_config_for(&leaf));
        let run = probe(&server, &ca_file(&leaf), &[]);
        run.expect_code(0);
        assert!(
            run.stdout().contains("certificate   CN=localhost"),
            "{what}"
        );
        server.finish_blocking().unwrap();
    }
}

#[test]
fn an_exact_certificate_in_ca_file_still_has_its_dates_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let expired = pki.expired_leaf();
    let server =
        ScriptedServer::start_tls(vec![line("+OK ready")], tls_server_config_for(&expired));
    let run = probe(&server, &ca_file(&expired), &[]);
    run.expect_code(5);
    assert!(
        run.stderr().contains("expired on 2020-01-02"),
        "{}",
        run.stderr()
    );
    assert!(server.transcript().is_empty(), "nothing sent");
}

#[test]
fn a_ca_in_ca_file_keeps_full_name_checks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let wrong = pki.wrong_host_leaf();
    let server = ScriptedServer::start_tls(vec![line("+OK ready")], tls_server_config_for(&wrong));
    let run = probe(&server, &format!("ca_file = {:?}", pki.ca_pem), &[]);
    run.expect_code(5);
    let err = run.stderr();
    assert!(
        err.contains("not valid for the name \"localhost\""),
        "{err}"
    );
    assert!(server.transcript().is_empty());
    // The chain itself is fine.
    let server = ScriptedServer::start_tls(probe_script(), tls_server_config_for(&pki.leaf()));
    probe(&server, &format!("ca_file = {:?}", pki.ca_pem), &[]).expect_code(0);
    server.finish_blocking().unwrap();
}

/// One line naming the certificate (subject, issuer, dates, fingerprint)
/// and the setting that fixes it; nothing sent to the server.
#[test]
fn an_untrusted_certificate_is_named_with_the_setting_that_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let other_ca = TestPki::generate_other_ca(&dir.path().join("other"));
    let untrusted = pki.leaf();
    let self_signed = self_signed(dir.path(), "ss", Some("DNS:localhost"));
    for (what, leaf, trust, hint) in [
        (
            "CA-signed, other CA",
            &untrusted,
            format!("ca_file = {other_ca:?}"),
            "ca_file = \"FILE\" holding the issuing CA",
        ),
        (
            "self-signed, other CA",
            &self_signed,
            format!("ca_file = {other_ca:?}"),
            "save it as PEM and set ca_file",
        ),
        (
            "self-signed, system CAs",
            &self_signed,
            String::new(),
            "save it as PEM and set ca_file",
        ),
    ] {
        let server =
            ScriptedServer::start_tls(vec![line("+OK ready")], tls_server_config_for(leaf));
        let run = probe(&server, &trust, &[]);
        run.expect_code(5);
        let err = run.stderr();
        let pin = format_fingerprint(&cert_sha256(&leaf.pem));
        for want in [
            "subject \"CN=localhost\"",
            "issuer \"CN=",
            "valid 20",
            &format!("fingerprint = \"{pin}\""),
            hint,
        ] {
            assert!(err.contains(want), "{what}: {want:?} missing in {err}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(
            !err.contains("UnknownIssuer") && !err.contains("CaUsedAsEndEntity"),
            "{err}"
        );
        assert!(server.transcript().is_empty(), "{what}: the client spoke");
    }
}

#[test]
fn a_wrong_pin_names_the_new_fingerprint_without_unexpected_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let mut wrong = pki.leaf_sha256();
    wrong[0] ^= 0xff;
    let server =
        ScriptedServer::start_tls(vec![line("+OK ready")], tls_server_config_for(&pki.leaf()));
    let run = probe(
        &server,
        &format!("fingerprint = \"{}\"", format_fingerprint(&wrong)),
        &[],
    );
    run.expect_code(5);
    let err = run.stderr();
    assert!(err.contains("does not match the configured pin"), "{err}");
    assert!(!err.contains("unexpected error"), "{err}");
    let actual = format_fingerprint(&pki.leaf_sha256());
    assert!(
        err.contains(&format!("set fingerprint = \"{actual}\"")),
        "{err}"
    );
}

#[test]
fn probe_insecure_show_cert_shows_an_unverifiable_certificate_before_login() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = self_signed(dir.path(), "ss", None);
    let pin = format_fingerprint(&cert_sha256(&leaf.pem));
    // Implicit TLS: nothing at all is sent after the handshake.
    let server = ScriptedServer::start_tls(vec![line("+OK ready")], tls_server_config_for(&leaf));
    let run = probe(&server, "", &["--insecure-show-cert"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(
        out.contains("certificate   CN=localhost (NOT verified)"),
        "{out}"
    );
    assert!(out.contains(&format!("fingerprint   {pin}")), "{out}");
    assert!(out.contains("valid         20"), "{out}");
    assert!(server.transcript().is_empty(), "no command, no credential");

    // STARTTLS: STLS only.
    let config = tls_server_config_for(&leaf);
    let server = ScriptedServer::start(vec![
        line("+OK ready"),
        expect("STLS"),
        line("+OK begin TLS"),
        Step::StartTls(config),
    ]);
    let p = Popsync::new(&format!(
        "[account.a]\nhost = \"localhost\"\nport = {}\ntls = \"starttls\"\nusername = \"u\"\npassword = \"{PASSWORD}\"\n",
        server.port()
    ));
    let run = p.run(&["probe", "a", "--insecure-show-cert"]);
    run.expect_code(0);
    assert!(run.stdout().contains(&pin), "{}", run.stdout());
    assert_eq!(server.transcript(), vec!["STLS".to_string()]);
}
