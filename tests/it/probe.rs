//! `popsync probe` against a real Dovecot: TLS modes, auth methods, refusals.

use crate::support;

use popsync::session::tls::format_fingerprint;
use support::dovecot::{Dovecot, DovecotOptions};
use support::popsync::{AccountToml, Popsync};

fn probe(account: &AccountToml) -> (Popsync, support::popsync::Run) {
    let p = Popsync::new(&account.render());
    let run = p.run(&["probe", &account.name]);
    (p, run)
}

#[test]
fn probe_over_implicit_tls_describes_the_server() {
    let d = Dovecot::start();
    d.add_message("alice", b"Subject: one\n\nbody\n");
    d.add_message("alice", b"Subject: two\n\nbody\n");
    let (_p, run) = probe(&AccountToml::tls("alice", &d, "alice"));
    run.expect_code(0);
    let out = run.stdout();
    assert!(out.contains("greeting      +OK Dovecot"), "{out}");
    assert!(out.contains("tls           TLSv1.3"), "{out}");
    assert!(out.contains("certificate   CN=localhost"), "{out}");
    let pin = format_fingerprint(&d.pki.leaf_sha256());
    assert!(out.contains(&format!("fingerprint   {pin}")), "{out}");
    assert!(out.contains("PIPELINING"), "{out}");
    assert!(out.contains("auth          SASL PLAIN"), "{out}");
    assert!(out.contains("messages      2 ("), "{out}");
    assert!(out.contains("uidl          yes (2 UIDs)"), "{out}");
    assert_eq!(d.message_count("alice"), 2, "probe changes nothing");
}

#[test]
fn probe_over_starttls_with_every_auth_method() {
    let d = Dovecot::start();
    for (auth, shown) in [
        ("user", "USER"),
        ("apop", "APOP"),
        ("plain", "SASL PLAIN"),
        ("auto", "SASL PLAIN"),
    ] {
        for starttls in [true, false] {
            let mut a = if starttls {
                AccountToml::starttls("alice", &d, "alice")
            } else {
                AccountToml::tls("alice", &d, "alice")
            };
            a.set("auth", &format!("\"{auth}\""));
            let (_p, run) = probe(&a);
            run.expect_code(0);
            let out = run.stdout();
            assert!(
                out.contains(&format!("auth          {shown}\n")),
                "{auth}: {out}"
            );
            assert!(out.contains("tls           TLSv1"), "{auth}: {out}");
        }
    }
}

#[test]
fn wrong_password_is_an_auth_failure() {
    let d = Dovecot::start();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.set("password", "\"not-the-password\"");
    let (_p, run) = probe(&a);
    run.expect_code(4);
    assert!(run.stderr().contains("login refused"), "{}", run.stderr());
    assert!(!run.stderr().contains("not-the-password"));
}

#[test]
fn untrusted_certificate_is_refused_before_login() {
    let d = Dovecot::start();
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = support::certs::TestPki::generate_other_ca(other_dir.path());
    for starttls in [false, true] {
        let mut a = if starttls {
            AccountToml::starttls("alice", &d, "alice")
        } else {
            AccountToml::tls("alice", &d, "alice")
        };
        a.set("ca_file", &format!("{other_ca:?}"));
        let (_p, run) = probe(&a);
        run.expect_code(5);
        assert!(run.stderr().contains("certificate"), "{}", run.stderr());
    }
    // Without ca_file the system roots do not know the test CA either.
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.remove("ca_file");
    probe(&a).1.expect_code(5);
}

#[test]
fn fingerprint_pin_accepts_the_right_cert_and_refuses_another() {
    let d = Dovecot::start();
    let mut a = AccountToml::tls("alice", &d, "alice");
    a.remove("ca_file");
    a.set(
        "fingerprint",
        &format!("\"{}\"", format_fingerprint(&d.pki.leaf_sha256())),
    );
    probe(&a).1.expect_code(0);
    let mut wrong = d.pki.leaf_sha256();
    wrong[0] ^= 0xff;
    a.set(
        "fingerprint",
        &format!("\"{}\"", format_fingerprint(&wrong)),
    );
    let (_p, run) = probe(&a);
    run.expect_code(5);
    assert!(
        run.stderr().contains("does not match the configured pin"),
        "{}",
        run.stderr()
    );
}

#[test]
fn cleartext_login_needs_explicit_permission() {
    let d = Dovecot::start();
    let mut a = AccountToml::starttls("alice", &d, "alice");
    a.set("tls", "\"none\"");
    let (_p, run) = probe(&a);
    run.expect_code(5);
    assert!(
        run.stderr().contains("allow_insecure_auth"),
        "{}",
        run.stderr()
    );
    a.set("allow_insecure_auth", "true");
    let (_p, run) = probe(&a);
    run.expect_code(0);
    // Without TLS, auto prefers APOP: the password itself never crosses.
    assert!(
        run.stdout().contains("auth          APOP"),
        "{}",
        run.stdout()
    );
}

#[test]
fn trace_shows_the_dialogue_without_secrets() {
    let d = Dovecot::start();
    for auth in ["user", "plain", "apop"] {
        let mut a = AccountToml::starttls("alice", &d, "alice");
        a.set("auth", &format!("\"{auth}\""));
        let p = Popsync::new(&a.render());
        let run = p.run(&["--trace", "probe", "alice"]);
        run.expect_code(0);
        let err = run.stderr();
        assert!(err.contains("C: CAPA"), "{err}");
        assert!(err.contains("C: STLS"), "{err}");
        assert!(err.contains("S: +OK"), "{err}");
        assert!(err.contains("lines,"), "bodies are summarised: {err}");
        assert!(err.contains("<redacted"), "{err}");
        assert!(!err.contains("secret1"), "password leaked in trace: {err}");
        // The PLAIN initial response is base64 of the password: not there either.
        let b64 = popsync::pop3::sasl::plain("alice", "secret1");
        assert!(!err.contains(&b64), "{err}");
    }
}

#[test]
fn starttls_required_but_not_offered_sends_no_credential() {
    let d = Dovecot::start_with(DovecotOptions::default().stls(false));
    let a = AccountToml::starttls("alice", &d, "alice");
    let p = Popsync::new(&a.render());
    let run = p.run(&["--trace", "probe", "alice"]);
    run.expect_code(5);
    let err = run.stderr();
    assert!(err.contains("does not offer STLS"), "{err}");
    assert!(!err.contains("C: USER") && !err.contains("C: PASS") && !err.contains("C: AUTH"));
}
