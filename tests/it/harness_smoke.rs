//! Proves the test harness itself (tests/support) works, without popsync.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};
use support::{
    Dovecot, DovecotOptions, ScriptedServer, Step, TestPki, client_config_trusting, expect, line,
    tls_server_config, tls_server_config_for,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A blocking line-based POP3 client, just enough for the smoke test.
struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> (Raw, String) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut raw = Raw {
            reader: BufReader::new(stream),
        };
        let greeting = raw.read_line();
        (raw, greeting)
    }

    fn read_line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("read line");
        assert!(l.ends_with("\r\n"), "line without CRLF: {l:?}");
        l.trim_end_matches("\r\n").to_string()
    }

    fn cmd(&mut self, c: &str) -> String {
        self.reader
            .get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .expect("write");
        self.read_line()
    }

    /// Reads a multi-line body up to the terminating ".".
    fn multiline(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.read_line();
            if l == "." {
                return lines;
            }
            lines.push(l);
        }
    }
}

const MSG: &[u8] = b"From: a@example.org\nTo: alice@example.org\nSubject: hi\n\nbody line\n";

#[test]
fn dovecot_plain_login_stat_and_wrong_password() {
    let dovecot = Dovecot::start();
    dovecot.add_message("alice", MSG);
    dovecot.add_message("alice", b"Subject: two\n\nsecond\n");
    assert_eq!(dovecot.message_count("alice"), 2);
    assert_eq!(dovecot.message_count("bob"), 0);

    let (mut c, greeting) = Raw::connect(dovecot.plain_addr());
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let ts = &greeting[greeting.find('<').expect("APOP timestamp")..];
    assert!(ts.ends_with('>') && ts.contains('@'), "{greeting}");

    assert!(c.cmd("CAPA").starts_with("+OK"));
    let capa = c.multiline();
    assert!(capa.iter().any(|l| l == "STLS"), "{capa:?}");
    assert!(c.cmd("USER alice").starts_with("+OK"));
    assert!(c.cmd("PASS secret1").starts_with("+OK"));
    let stat = c.cmd("STAT");
    assert!(stat.starts_with("+OK 2 "), "{stat}");
    // Stored with LF, served with CRLF (read_line insists on CRLF).
    assert!(c.cmd("RETR 1").starts_with("+OK"));
    assert_eq!(c.multiline().last().map(String::as_str), Some("body line"));
    assert!(c.cmd("UIDL 1").starts_with("+OK 1 "));
    assert!(c.cmd("QUIT").starts_with("+OK"));

    let (mut c, _) = Raw::connect(dovecot.plain_addr());
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let reply = c.cmd("PASS wrong");
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(dovecot.log().contains("user=<alice>"));
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[tokio::test]
async fn dovecot_tls_port_serves_the_pinned_leaf() {
    let dovecot = Dovecot::start();
    let tls = tls_connect(dovecot.tls_addr(), dovecot.pki.client_config())
        .await
        .expect("TLS to Dovecot trusting only the test CA");
    let presented = tls.get_ref().1.peer_certificates().expect("peer certs")[0].clone();
    let digest: [u8; 32] = Sha256::digest(presented.as_ref()).into();
    assert_eq!(digest, dovecot.pki.leaf_sha256());

    let mut tls = tokio::io::BufReader::new(tls);
    let mut greeting = String::new();
    tls.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("+OK"), "{greeting}");
    tls.write_all(b"QUIT\r\n").await.unwrap();
}

#[tokio::test]
async fn dovecot_options_no_stls_and_plaintext_refused() {
    let dovecot = tokio::task::spawn_blocking(|| {
        Dovecot::start_with(
            DovecotOptions::default()
                .user("carol", "secret3")
                .stls(false)
                .disable_plaintext_auth(true)
                .high_performance(true),
        )
    })
    .await
    .unwrap();
    let addr = dovecot.plain_addr();
    let (capa, user) = tokio::task::spawn_blocking(move || {
        let (mut c, _) = Raw::connect(addr);
        c.cmd("CAPA");
        let capa = c.multiline();
        (capa, c.cmd("USER carol"))
    })
    .await
    .unwrap();
    assert!(!capa.iter().any(|l| l == "STLS"), "{capa:?}");
    assert!(user.starts_with("-ERR"), "USER must be refused: {user}");
    // Implicit TLS still works (on its own address).
    tls_connect(dovecot.tls_addr(), dovecot.pki.client_config())
        .await
        .expect("implicit TLS without STLS");
}

#[test]
fn scripted_round_trip_and_mismatch() {
    let server = ScriptedServer::start(vec![
        line("+OK scripted <1.2@test>"),
        expect("USER alice"),
        line("+OK"),
        expect("PASS *"),
        Step::Send(b"+OK logged in\r\n".to_vec()),
        expect("QUIT"),
        line("+OK bye"),
        Step::Close,
    ]);
    let (mut c, greeting) = Raw::connect(server.addr());
    assert_eq!(greeting, "+OK scripted <1.2@test>");
    assert_eq!(c.cmd("USER alice"), "+OK");
    assert_eq!(c.cmd("PASS secret1"), "+OK logged in");
    assert_eq!(c.cmd("QUIT"), "+OK bye");
    assert_eq!(server.transcript(), ["USER alice", "PASS secret1", "QUIT"]);
    server.finish_blocking().expect("script ran");

    let server = ScriptedServer::start(vec![line("+OK"), expect("CAPA"), line("+OK")]);
    let (mut c, _) = Raw::connect(server.addr());
    c.reader.get_mut().write_all(b"STAT\r\n").unwrap();
    let err = server.finish_blocking().unwrap_err();
    assert!(err.contains("\"STAT\""), "{err}");

    let server = ScriptedServer::start(vec![line("+OK"), expect("CAPA")]);
    drop(Raw::connect(server.addr()));
    let err = server.finish_blocking().unwrap_err();
    assert!(err.contains("hung up"), "{err}");
}

#[tokio::test]
async fn scripted_stls_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let server = ScriptedServer::start(vec![
        line("+OK"),
        expect("STLS"),
        line("+OK begin TLS"),
        Step::StartTls(tls_server_config(&pki)),
        expect("CAPA"),
        line("+OK"),
        line("."),
    ]);
    let mut tcp =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(server.addr()).await.unwrap());
    let mut l = String::new();
    tcp.read_line(&mut l).await.unwrap();
    tcp.write_all(b"STLS\r\n").await.unwrap();
    l.clear();
    tcp.read_line(&mut l).await.unwrap();
    assert_eq!(l, "+OK begin TLS\r\n");
    let tls = tokio_rustls::TlsConnector::from(pki.client_config())
        .connect(ServerName::try_from("localhost").unwrap(), tcp.into_inner())
        .await
        .expect("STLS handshake");
    let mut tls = tokio::io::BufReader::new(tls);
    tls.write_all(b"CAPA\r\n").await.unwrap();
    l.clear();
    tls.read_line(&mut l).await.unwrap();
    assert_eq!(l, "+OK\r\n");
    server.finish().await.expect("script ran");
}

/// The leafs meant for failure tests really are refused by rustls, each for
/// its own reason, while the good leaf is accepted.
#[tokio::test]
async fn bad_leafs_are_refused_by_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let other_ca = TestPki::generate_other_ca(&dir.path().join("other"));
    let cases = [
        (pki.leaf(), pki.client_config(), None),
        (pki.expired_leaf(), pki.client_config(), Some("Expired")),
        (
            pki.wrong_host_leaf(),
            pki.client_config(),
            Some("NotValidForName"),
        ),
        (
            pki.untrusted_leaf(),
            pki.client_config(),
            Some("UnknownIssuer"),
        ),
        (
            pki.leaf(),
            client_config_trusting(&other_ca),
            Some("UnknownIssuer"),
        ),
    ];
    for (leaf, client, refusal) in cases {
        let server = ScriptedServer::start_tls(vec![line("+OK")], tls_server_config_for(&leaf));
        let result = tls_connect(server.addr(), client).await;
        match (refusal, result) {
            (None, Ok(_)) => server.finish().await.expect("good leaf"),
            (Some(why), Err(e)) => {
                assert!(format!("{e:?}").contains(why), "{leaf:?}: {e:?}");
                assert!(server.finish().await.is_err());
            }
            (want, got) => panic!("{leaf:?}: wanted refusal {want:?}, got {:?}", got.err()),
        }
    }
}

#[test]
fn write_file_0600_sets_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "old").unwrap();
    support::write_file_0600(&path, "password = \"x\"\n");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "password = \"x\"\n"
    );
}
