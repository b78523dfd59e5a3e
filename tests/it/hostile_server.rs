//! A hostile server can only fail the session, quickly and in bounded
//! memory (issue 11, findings 4 and 5): total deadlines on status lines,
//! a minimum rate on bodies and listings, bounded CAPA, error text cut.

use crate::support;

use std::time::{Duration, Instant};

use popsync::config::{AuthMethod, Secret, TlsMode};
use popsync::session::{ConnectOptions, Credentials, Session, SessionError};
use support::scripted::{ScriptedServer, Step, expect, line};

const TIMEOUT: Duration = Duration::from_secs(2);

fn opts(server: &ScriptedServer) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", server.port(), TlsMode::None);
    o.io_timeout = TIMEOUT;
    o.connect_timeout = TIMEOUT;
    o
}

fn creds() -> Credentials {
    Credentials {
        username: "alice".into(),
        secret: Secret::new("secret1"),
        method: AuthMethod::Auto,
        allow_insecure_auth: true,
    }
}

/// `bytes` sent one at a time, `every` apart: always within the idle timeout.
fn dribble(bytes: &[u8], every: Duration) -> Vec<Step> {
    bytes
        .iter()
        .flat_map(|&b| [Step::Send(vec![b]), Step::Sleep(every)])
        .collect()
}

/// Finding 5: a greeting sent one byte every 1.5 s with `timeout = 2s` was
/// read for 45 s; the whole line must now arrive within the timeout.
#[tokio::test]
async fn a_dribbled_greeting_ends_at_the_timeout() {
    let steps = dribble(
        b"+OK a very slow greeting from a hostile server\r\n",
        Duration::from_millis(1500),
    );
    let server = ScriptedServer::start(steps);
    let started = Instant::now();
    let err = Session::connect(&opts(&server)).await.err().unwrap();
    let took = started.elapsed();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    assert!(err.is_transient());
    assert!(took < TIMEOUT * 3, "took {took:?}");
    assert!(err.to_string().contains("status line"), "{err}");
}

/// Finding 5: a UIDL listing dribbled (a byte every 0.5 s) was still
/// connected after 60 s; each `timeout` must now bring 1 KiB.
#[tokio::test]
async fn a_dribbled_listing_ends_for_lack_of_progress() {
    let mut steps = vec![
        line("+OK ready"),
        expect("CAPA"),
        line("+OK"),
        line("USER"),
        line("UIDL"),
        line("."),
        expect("USER alice"),
        line("+OK"),
        expect("PASS secret1"),
        line("+OK"),
        expect("STAT"),
        expect("UIDL"),
        line("+OK 20 200"),
        line("+OK"),
    ];
    steps.extend(dribble(
        &b"1 uid-1\r\n".repeat(20),
        Duration::from_millis(500),
    ));
    let server = ScriptedServer::start(steps);
    let mut s = Session::connect(&opts(&server)).await.unwrap();
    s.login(&creds()).await.unwrap();
    let started = Instant::now();
    let err = s.listings().await.err().unwrap();
    let took = started.elapsed();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
    assert!(took < TIMEOUT * 3, "took {took:?}");
    assert!(err.to_string().contains("1 KiB"), "{err}");
}

/// A body that keeps its rate is not cut, however long it takes in total.
#[tokio::test]
async fn a_slow_but_steady_listing_is_read() {
    let mut steps = vec![
        line("+OK ready"),
        expect("CAPA"),
        line("-ERR no CAPA"),
        expect("USER alice"),
        line("+OK"),
        expect("PASS secret1"),
        line("+OK"),
        expect("STAT"),
        expect("UIDL"),
        line("+OK 300 30000"),
        line("+OK"),
    ];
    // 3 KiB per second for 3 s: longer than the timeout in total.
    let chunk: Vec<u8> = (1..=100)
        .flat_map(|i| format!("{i} uid-{i:0>20}\r\n").into_bytes())
        .collect();
    for _ in 0..3 {
        steps.push(Step::Send(chunk.clone()));
        steps.push(Step::Sleep(Duration::from_millis(1000)));
    }
    steps.push(Step::Send(b".\r\n".to_vec()));
    steps.extend([
        expect("LIST"),
        line("+OK"),
        line("."),
        expect("QUIT"),
        line("+OK"),
    ]);
    let server = ScriptedServer::start(steps);
    let mut s = Session::connect(&opts(&server)).await.unwrap();
    s.login(&creds()).await.unwrap();
    let (uidl, _) = s.listings().await.unwrap();
    assert_eq!(uidl.unwrap().len(), 300);
    s.quit().await.unwrap();
}

fn logged_in(extra_capa: &[&str]) -> Vec<Step> {
    let mut steps = vec![line("+OK ready"), expect("CAPA"), line("+OK")];
    steps.extend(["USER", "UIDL"].iter().chain(extra_capa).map(|l| line(l)));
    steps.extend([
        line("."),
        expect("USER alice"),
        line("+OK"),
        expect("PASS secret1"),
        line("+OK"),
    ]);
    steps
}

/// Finding 4: a 63 MiB CAPA peaked at 1.2 GiB RSS; now 64 KiB / 512 lines.
#[tokio::test]
async fn a_huge_capa_is_refused() {
    let mut steps = vec![line("+OK ready"), expect("CAPA"), line("+OK")];
    steps.push(Step::Send(b"X-FILLER\r\n".repeat(600)));
    steps.push(line("."));
    let server = ScriptedServer::start(steps);
    let err = Session::connect(&opts(&server)).await.err().unwrap();
    assert!(
        matches!(err, SessionError::TooLong { what: "CAPA", .. }),
        "{err}"
    );

    let mut steps = vec![line("+OK ready"), expect("CAPA"), line("+OK")];
    steps.push(Step::Send(vec![b'A'; 100 * 1024]));
    steps.push(line(""));
    steps.push(line("."));
    let server = ScriptedServer::start(steps);
    let err = Session::connect(&opts(&server)).await.err().unwrap();
    assert!(
        matches!(err, SessionError::BodyTooLarge { limit: 65536 }),
        "{err}"
    );
}

/// Finding 4: with no usable login mechanism the error embedded the whole
/// CAPA (a 64 MB line); now it is cut to a few hundred bytes.
#[tokio::test]
async fn the_no_mechanism_error_cuts_the_server_text() {
    let long: Vec<String> = (0..400)
        .map(|i| format!("X-CAP-{i:04} {}", "y".repeat(100)))
        .collect();
    let mut steps = vec![line("+OK ready"), expect("CAPA"), line("+OK")];
    steps.extend(long.iter().map(|l| line(l)));
    steps.push(line("."));
    steps.push(Step::Sleep(Duration::from_secs(1)));
    let server = ScriptedServer::start(steps);
    let mut s = Session::connect(&opts(&server)).await.unwrap();
    let err = s.login(&creds()).await.unwrap_err();
    assert!(matches!(err, SessionError::NoAuthMethod(_)), "{err}");
    assert!(
        err.to_string().len() < 500,
        "{} bytes",
        err.to_string().len()
    );
}

/// Finding 4: UIDL entries beyond STAT's count, or beyond max_messages,
/// end the session with a clear error instead of filling the memory.
#[tokio::test]
async fn listings_longer_than_stat_or_max_messages_are_refused() {
    let mut steps = logged_in(&[]);
    steps.extend([
        expect("STAT"),
        expect("UIDL"),
        line("+OK 2 20"),
        line("+OK"),
    ]);
    steps.push(Step::Send(b"1 a\r\n2 b\r\n3 c\r\n4 d\r\n.\r\n".to_vec()));
    steps.push(Step::Sleep(Duration::from_secs(1)));
    let server = ScriptedServer::start(steps);
    let mut s = Session::connect(&opts(&server)).await.unwrap();
    s.login(&creds()).await.unwrap();
    let err = s.listings().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("more entries than the 2 messages STAT counted"),
        "{err}"
    );

    // STAT lies high (a billion): max_messages still bounds the listing.
    let mut steps = logged_in(&[]);
    steps.extend([
        expect("STAT"),
        expect("UIDL"),
        line("+OK 1000000000 20"),
        line("+OK"),
    ]);
    steps.push(Step::Send(b"1 a\r\n2 b\r\n3 c\r\n4 d\r\n.\r\n".to_vec()));
    steps.push(Step::Sleep(Duration::from_secs(1)));
    let server = ScriptedServer::start(steps);
    let mut s = Session::connect(&opts(&server)).await.unwrap();
    s.login(&creds()).await.unwrap();
    let err = s.listings_bounded(3).await.unwrap_err();
    assert!(err.to_string().contains("max_messages = 3"), "{err}");
}
