//! Security checks through the real binary: bad certificates are refused
//! before any credential, no secret reaches a log at any verbosity, secrets
//! on disk stay private, and server text is sanitised before it is shown.

use crate::support;

use std::os::unix::fs::PermissionsExt;

use support::certs::TestPki;
use support::fault_case::keep_false;
use support::fault_server::{FaultServer, Faults, PASSWORD, mailbox};
use support::popsync::Popsync;
use support::scripted::{ScriptedServer, expect, line, tls_server_config_for};

fn hex_pin(sha: &[u8; 32]) -> String {
    let parts: Vec<String> = sha.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", parts.join(":"))
}

/// Implicit TLS to a scripted server showing `leaf`: the handshake must
/// fail on the client, so the server never reads a line.
#[test]
fn bad_certificates_are_refused_before_any_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let stranger = TestPki::generate_with_ca_name(other.path(), "some other CA");
    let mut wrong_pin = pki.leaf_sha256();
    wrong_pin[31] ^= 1;
    let ca = format!("ca_file = {:?}", pki.ca_pem);
    let cases = [
        ("expired", pki.expired_leaf(), ca.clone()),
        ("wrong host", pki.wrong_host_leaf(), ca.clone()),
        ("unknown CA, no ca_file", stranger.leaf(), String::new()),
        ("unknown CA, our ca_file", stranger.leaf(), ca.clone()),
        (
            "pin mismatch",
            pki.leaf(),
            format!("fingerprint = \"{}\"", hex_pin(&wrong_pin)),
        ),
    ];
    for (what, leaf, trust) in cases {
        let server = ScriptedServer::start_tls(
            vec![line("+OK ready"), expect("CAPA")],
            tls_server_config_for(&leaf),
        );
        let p = Popsync::new(&format!(
            "[account.a]\nhost = \"localhost\"\nport = {}\ntls = \"implicit\"\n{trust}\nusername = \"u\"\npassword = \"{PASSWORD}\"\nmaildir = {:?}\n",
            server.port(),
            dir.path().join("Mail")
        ));
        let run = p.run(&["--trace", "-vv", "sync"]);
        run.expect_code(5);
        let out = format!("{}{}", run.stdout(), run.stderr());
        assert!(out.contains("certificate"), "{what}: {out}");
        assert!(server.transcript().is_empty(), "{what}: the client spoke");
        assert!(!out.contains(PASSWORD), "{what}");
    }
}

#[test]
fn no_plaintext_credential_without_allow_insecure_auth() {
    let server = FaultServer::start(mailbox(1), Faults::default());
    let p = Popsync::new("");
    for auth in ["auto", "user", "apop", "plain"] {
        let toml = server
            .account_toml("a", &format!("maildir = {:?}", p.path("Mail")))
            .replace("allow_insecure_auth = true\n", "")
            .replace("auth = \"user\"", &format!("auth = \"{auth}\""));
        p.write_config(&toml);
        let run = p.run(&["sync"]);
        run.expect_code(5);
        assert!(run.stderr().contains("allow_insecure_auth"), "{auth}");
    }
    let sent = server.transcript();
    assert!(
        sent.iter().all(|l| l == "CAPA" || l == "QUIT"),
        "credentials on the wire: {sent:?}"
    );
}

/// Every verbosity, with the trace on, for USER/PASS, APOP and XOAUTH2.
#[test]
fn secrets_never_reach_the_logs() {
    let server = FaultServer::start(mailbox(2), Faults::default());
    let p = Popsync::new("");
    let apop_digest = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(
            format!("<1.2@fault>{PASSWORD}").as_bytes(),
        ))
    };
    for auth in ["user", "apop"] {
        let toml = server
            .account_toml("a", &format!("maildir = {:?}", p.path("Mail")))
            .replace("auth = \"user\"", &format!("auth = \"{auth}\""));
        p.write_config(&toml);
        for args in [&["sync"][..], &["-v", "sync"], &["-vv", "--trace", "sync"]] {
            for log in [None, Some("trace")] {
                let mut cmd = p.command(args);
                if let Some(level) = log {
                    cmd.env("POPSYNC_LOG", level);
                }
                let out = cmd.output().unwrap();
                let all = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!all.contains(PASSWORD), "{auth} {args:?} {log:?}: {all}");
                assert!(!all.contains(&apop_digest), "{auth} {args:?}: {all}");
            }
        }
    }

    // XOAUTH2: a token from password_command, sent base64-encoded.
    let token = "ya29.very-secret-token";
    let b64 = popsync::pop3::sasl::xoauth2("u", token);
    let server = ScriptedServer::start(vec![
        line("+OK ready"),
        expect("CAPA"),
        line("+OK"),
        line("SASL XOAUTH2"),
        line("."),
        expect("AUTH XOAUTH2"),
        line("+ "),
        expect(&b64),
        line("-ERR [AUTH] invalid token"),
    ]);
    let p = Popsync::new(&format!(
        "[account.a]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\nauth = \"xoauth2\"\nusername = \"u\"\npassword_command = \"echo {token}\"\nmaildir = {:?}\n",
        server.port(),
        p.path("Mail")
    ));
    let mut cmd = p.command(&["-vv", "--trace", "sync"]);
    cmd.env("POPSYNC_LOG", "trace");
    let out = support::popsync::Run(cmd.output().unwrap());
    out.expect_code(4);
    let all = format!("{}{}", out.stdout(), out.stderr());
    assert!(all.contains("AUTH XOAUTH2"), "{all}");
    assert!(!all.contains(token) && !all.contains(&b64), "{all}");
}

#[test]
fn config_with_secrets_readable_by_others_is_refused() {
    let server = FaultServer::start(mailbox(1), Faults::default());
    let p = Popsync::new("");
    p.write_config(&server.account_toml("a", &format!("maildir = {:?}", p.path("Mail"))));
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&p.config, std::fs::Permissions::from_mode(mode)).unwrap();
        let run = p.run(&["sync"]);
        run.expect_code(3);
        assert!(
            run.stderr().contains("chmod 600"),
            "{mode:o}: {}",
            run.stderr()
        );
    }
    assert_eq!(server.connections(), 0);
}

#[test]
fn state_files_are_private() {
    let server = FaultServer::start(mailbox(2), Faults::default());
    let p = Popsync::new("");
    p.write_config(&server.account_toml(
        "a",
        &format!("maildir = {:?}\n{}", p.path("Mail"), keep_false()),
    ));
    // A permissive umask must not leak into the state.
    let mut cmd = p.command(&["sync"]);
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::umask(0);
            Ok(())
        });
    }
    let run = support::popsync::Run(cmd.output().unwrap());
    run.expect_code(0);
    let dir_mode = std::fs::metadata(&p.state_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "state dir {dir_mode:o}");
    let mut files = 0;
    for e in walk(&p.state_dir) {
        let mode = std::fs::metadata(&e).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.display());
        files += 1;
    }
    assert!(files >= 1);
    for e in walk(&p.path("Mail")) {
        let mode = std::fs::metadata(&e).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Terminal escapes, bells and NULs from the server become visible escapes.
#[test]
fn server_text_is_sanitised_before_it_is_shown() {
    let nasty = "\x1b]0;pwned\x07\x1b[2J\x00\x08";
    for faults in [
        Faults {
            pass_reply: Some(format!("-ERR [AUTH] no{nasty}pe")),
            ..Faults::default()
        },
        Faults {
            greeting: Some(format!("-ERR go away{nasty}\r\n").into_bytes()),
            ..Faults::default()
        },
        Faults {
            pass_reply: Some(format!("-ERR [X-{nasty}] odd code")),
            ..Faults::default()
        },
    ] {
        let server = FaultServer::start(mailbox(1), faults);
        let p = Popsync::new("");
        p.write_config(&server.account_toml("a", &format!("maildir = {:?}", p.path("Mail"))));
        let run = p.run(&["-vv", "--trace", "sync"]);
        assert_ne!(run.code(), 0);
        let raw = [run.0.stdout.as_slice(), run.0.stderr.as_slice()].concat();
        for bad in [0x1b_u8, 0x07, 0x00, 0x08] {
            assert!(
                !raw.contains(&bad),
                "control byte {bad:#x} reached the output: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        assert!(run.stdout().contains("\\x1b"), "{}", run.stdout());
    }
}
