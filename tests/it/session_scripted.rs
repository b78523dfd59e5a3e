//! The session against scripted servers: the protocol corners a real
//! Dovecot will not show, and the refusals that must send no credential.

use crate::support;

use std::time::Duration;

use popsync::config::{AuthMethod, Secret, TlsMode};
use popsync::session::{ConnectOptions, Credentials, Session, SessionError};
use support::scripted::{ScriptedServer, Step, expect, line};

const GREETING: &str = "+OK ready <1896.697170952@dbc.mtview.ca.us>";

fn opts(server: &ScriptedServer, tls: TlsMode) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", server.port(), tls);
    o.io_timeout = Duration::from_secs(5);
    o.connect_timeout = Duration::from_secs(5);
    o
}

fn creds(method: AuthMethod, insecure: bool) -> Credentials {
    Credentials {
        username: "mrose".into(),
        secret: Secret::new("tanstaaf"),
        method,
        allow_insecure_auth: insecure,
    }
}

fn capa(lines: &[&str]) -> Vec<Step> {
    let mut steps = vec![expect("CAPA"), line("+OK capabilities follow")];
    steps.extend(lines.iter().map(|l| line(l)));
    steps.push(line("."));
    steps
}

fn script(parts: Vec<Vec<Step>>) -> Vec<Step> {
    parts.into_iter().flatten().collect()
}

#[tokio::test]
async fn apop_sends_the_rfc_digest() {
    let server = ScriptedServer::start(script(vec![
        vec![line(GREETING)],
        capa(&["UIDL", "USER"]),
        vec![
            expect("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            line("+OK maildrop has 0 messages"),
            expect("QUIT"),
            line("+OK bye"),
        ],
    ]));
    let mut s = Session::connect(&opts(&server, TlsMode::None))
        .await
        .unwrap();
    s.login(&creds(AuthMethod::Apop, true)).await.unwrap();
    assert_eq!(s.auth_used(), Some("APOP"));
    s.quit().await.unwrap();
    server.finish().await.unwrap();
}

#[tokio::test]
async fn no_credential_without_tls_unless_allowed() {
    for method in [
        AuthMethod::Auto,
        AuthMethod::User,
        AuthMethod::Apop,
        AuthMethod::Plain,
    ] {
        let server = ScriptedServer::start(script(vec![
            vec![line(GREETING)],
            capa(&["USER", "SASL PLAIN"]),
            vec![Step::Close],
        ]));
        let mut s = Session::connect(&opts(&server, TlsMode::None))
            .await
            .unwrap();
        let err = s.login(&creds(method, false)).await.unwrap_err();
        assert!(matches!(err, SessionError::InsecureAuth { .. }), "{err}");
        assert!(err.is_tls());
        drop(s);
        server.finish().await.unwrap();
    }
}

#[tokio::test]
async fn stls_missing_or_refused_stops_before_credentials() {
    // Not advertised.
    let server = ScriptedServer::start(script(vec![
        vec![line(GREETING)],
        capa(&["USER", "UIDL"]),
        vec![Step::Close],
    ]));
    let err = Session::connect(&opts(&server, TlsMode::Starttls))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SessionError::StlsNotOffered), "{err}");
    server.finish().await.unwrap();

    // Advertised, then refused.
    let server = ScriptedServer::start(script(vec![
        vec![line(GREETING)],
        capa(&["STLS", "USER"]),
        vec![expect("STLS"), line("-ERR not today"), Step::Close],
    ]));
    let err = Session::connect(&opts(&server, TlsMode::Starttls))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SessionError::StlsRefused(_)), "{err}");
    assert!(err.is_tls());
    let transcript = server.transcript();
    assert_eq!(transcript, ["CAPA", "STLS"]);
    server.finish().await.unwrap();
}

#[tokio::test]
async fn plaintext_injected_after_stls_ok_is_refused() {
    let server = ScriptedServer::start(script(vec![
        vec![line(GREETING)],
        capa(&["STLS", "USER"]),
        vec![
            expect("STLS"),
            Step::Send(b"+OK begin TLS\r\n+OK injected\r\n".to_vec()),
            Step::Sleep(Duration::from_millis(500)),
            Step::Close,
        ],
    ]));
    let err = Session::connect(&opts(&server, TlsMode::Starttls))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, SessionError::StlsInjection | SessionError::Tls { .. }),
        "{err}"
    );
    let _ = server.finish().await;
}

#[tokio::test]
async fn apop_needs_a_well_formed_timestamp() {
    let server = ScriptedServer::start(script(vec![
        vec![line("+OK ready <no-at-sign>")],
        capa(&["USER"]),
        vec![Step::Close],
    ]));
    let mut s = Session::connect(&opts(&server, TlsMode::None))
        .await
        .unwrap();
    let err = s.login(&creds(AuthMethod::Apop, true)).await.unwrap_err();
    assert!(err.to_string().contains("APOP timestamp"), "{err}");
    drop(s);
    server.finish().await.unwrap();
}

#[tokio::test]
async fn xoauth2_two_steps_and_error_detail() {
    let token = popsync::pop3::sasl::xoauth2("mrose", "tanstaaf");
    let server = ScriptedServer::start(script(vec![
        vec![line(GREETING)],
        capa(&["SASL XOAUTH2"]),
        vec![
            expect("AUTH XOAUTH2"),
            line("+ "),
            expect(&token),
            // {"status":"401"} in base64: the server's error detail.
            line("+ eyJzdGF0dXMiOiI0MDEifQ=="),
            expect(""),
            line("-ERR [AUTH] invalid token"),
            Step::Close,
        ],
    ]));
    let mut s = Session::connect(&opts(&server, TlsMode::None))
        .await
        .unwrap();
    let err = s
        .login(&creds(AuthMethod::Xoauth2, true))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    drop(s);
    server.finish().await.unwrap();
}

#[tokio::test]
async fn in_use_is_not_reported_as_bad_credentials() {
    let server = ScriptedServer::start(script(vec![
        vec![line(GREETING)],
        capa(&["USER"]),
        vec![
            expect("USER mrose"),
            line("+OK"),
            expect("PASS tanstaaf"),
            line("-ERR [IN-USE] mailbox locked by another session"),
            Step::Close,
        ],
    ]));
    let mut s = Session::connect(&opts(&server, TlsMode::None))
        .await
        .unwrap();
    let err = s.login(&creds(AuthMethod::User, true)).await.unwrap_err();
    assert!(err.is_transient() && !err.is_auth(), "{err}");
    drop(s);
    server.finish().await.unwrap();
}

#[tokio::test]
async fn listings_are_pipelined_only_when_offered() {
    for pipelining in [true, false] {
        let mut caps = vec!["USER", "UIDL"];
        if pipelining {
            caps.push("PIPELINING");
        }
        let mut steps = script(vec![
            vec![line(GREETING)],
            capa(&caps),
            vec![
                expect("USER mrose"),
                line("+OK"),
                expect("PASS *"),
                line("+OK"),
            ],
        ]);
        if pipelining {
            // Both commands arrive before the first answer is sent.
            steps.extend([expect("STAT"), expect("UIDL"), expect("LIST")]);
            steps.extend([
                line("+OK 1 120"),
                line("+OK"),
                line("1 abc"),
                line("."),
                line("+OK"),
                line("1 120"),
                line("."),
            ]);
        } else {
            steps.extend([expect("STAT"), expect("UIDL"), line("+OK 1 120")]);
            steps.extend([line("+OK"), line("1 abc"), line(".")]);
            steps.extend([expect("LIST"), line("+OK"), line("1 120"), line(".")]);
        }
        steps.extend([expect("QUIT"), line("+OK")]);
        let server = ScriptedServer::start(steps);
        let mut s = Session::connect(&opts(&server, TlsMode::None))
            .await
            .unwrap();
        s.login(&creds(AuthMethod::User, true)).await.unwrap();
        let (uidl, list) = s.listings().await.unwrap();
        assert_eq!(uidl.unwrap().get(0).uid, Ok("abc"));
        assert_eq!(list[0].size, 120);
        s.quit().await.unwrap();
        server.finish().await.unwrap();
    }
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out() {
    let server = ScriptedServer::start(vec![
        line(GREETING),
        expect("CAPA"),
        Step::Sleep(Duration::from_secs(3)),
        Step::Close,
    ]);
    let mut o = opts(&server, TlsMode::None);
    o.io_timeout = Duration::from_millis(300);
    let err = Session::connect(&o).await.err().unwrap();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    assert!(err.is_transient());
    let _ = server.finish().await;
}

#[tokio::test]
async fn an_endless_status_line_is_refused() {
    let mut flood = b"+OK ".to_vec();
    flood.extend(std::iter::repeat_n(b'x', 1 << 20));
    let server =
        ScriptedServer::start(vec![Step::Send(flood), Step::Sleep(Duration::from_secs(2))]);
    let err = Session::connect(&opts(&server, TlsMode::None))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, SessionError::Protocol(_)), "{err}");
    let _ = server.finish().await;
}

/// An inetd-style server (popa3d, Solid POP3) writes each status line and
/// then the message as two small writes with Nagle on: the message leaves
/// only when the status line is ACKed. A client that delays its ACKs
/// (Linux: ~40 ms) pays that on every lock-step RETR; TCP_QUICKACK, re-armed
/// after each read, does not.
#[tokio::test]
async fn lock_step_retrs_do_not_wait_for_delayed_acks() {
    const MESSAGES: u32 = 60;
    let body = "Subject: hi\r\n\r\nshort body\r\n.\r\n";
    let mut steps = vec![line(GREETING)];
    steps.extend(capa(&["UIDL", "USER"]));
    for n in 1..=MESSAGES {
        steps.push(expect(&format!("RETR {n}")));
        steps.push(line("+OK message follows"));
        steps.push(Step::Send(body.as_bytes().to_vec()));
    }
    steps.extend([expect("QUIT"), line("+OK bye")]);
    let server = ScriptedServer::start(steps);
    let mut s = Session::connect(&opts(&server, TlsMode::None))
        .await
        .unwrap();
    assert!(!s.can_pipeline());
    let started = std::time::Instant::now();
    for n in 1..=MESSAGES {
        let cmd = popsync::pop3::Command::Retr(n);
        let mut p = s.pipeline(1);
        p.send(&cmd).unwrap();
        p.expect_ok(&cmd).await.unwrap();
        p.read_body(1 << 20, |_| Ok::<(), ()>(())).await.unwrap();
    }
    let elapsed = started.elapsed();
    s.quit().await.unwrap();
    server.finish().await.unwrap();
    // Delayed ACKs cost >= 40 ms per RETR here (2.4 s for 60); without
    // them the loop is a few ms. The bound leaves room for a loaded machine.
    eprintln!("{MESSAGES} lock-step RETRs: {elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(800),
        "{MESSAGES} lock-step RETRs took {elapsed:?}: waiting for delayed ACKs?"
    );
}

/// APOP with PIPELINING: the digest and the listing in one write; a
/// refused APOP is the auth error, whatever the listing replies say.
#[tokio::test]
async fn apop_and_the_listing_are_pipelined_where_offered() {
    for accepted in [true, false] {
        let mut steps = script(vec![
            vec![line(GREETING)],
            capa(&["UIDL", "PIPELINING"]),
            vec![
                expect("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
                expect("STAT"),
                expect("UIDL"),
                expect("LIST"),
            ],
        ]);
        if accepted {
            steps.extend([
                line("+OK maildrop has 1 message"),
                line("+OK 1 120"),
                line("+OK"),
                line("1 abc"),
                line("."),
                line("+OK"),
                line("1 120"),
                line("."),
                expect("QUIT"),
                line("+OK"),
            ]);
        } else {
            steps.extend([line("-ERR [AUTH] permission denied")]);
            steps.extend([line("-ERR"), line("-ERR"), line("-ERR")]);
        }
        let server = ScriptedServer::start(steps);
        let mut s = Session::connect(&opts(&server, TlsMode::None))
            .await
            .unwrap();
        let listed = s.login_and_list(&creds(AuthMethod::Apop, true), 1000).await;
        if accepted {
            let (stat, uidl, list) = listed.unwrap();
            assert_eq!(stat.unwrap().count, 1);
            assert_eq!(uidl.unwrap().get(0).uid, Ok("abc"));
            assert_eq!(list[0].size, 120);
            assert_eq!(s.auth_used(), Some("APOP"));
            s.quit().await.unwrap();
        } else {
            let err = listed.unwrap_err();
            assert!(err.is_auth(), "{err}");
            assert_eq!(s.auth_used(), None);
            drop(s);
        }
        server.finish().await.unwrap();
    }
}
