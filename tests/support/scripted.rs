//! An in-process POP3 server that plays a fixed script, for protocol fault
//! tests (odd greetings, broken multi-line answers, hang-ups, STLS, ...).
//!
//! It runs on its own thread with its own tokio runtime, so it works from
//! plain `#[test]`s driving a blocking client or a child process, and from
//! `#[tokio::test]`s of any flavour without deadlocking their runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::certs::{Leaf, TestPki, cert_der, key_der};

/// How long the server waits for the client to connect.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `Expect` waits for a line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum Step {
    /// Raw bytes, sent as they are.
    Send(Vec<u8>),
    /// A line; CRLF is appended.
    Line(String),
    /// Reads one CRLF-terminated line and records it in the transcript. It
    /// must equal the string, or start with it when the string ends in `*`;
    /// otherwise the script fails and the connection is closed.
    Expect(String),
    Sleep(Duration),
    /// Closes the connection (the script ends here).
    Close,
    /// Upgrades to TLS, server side (after the client's STLS).
    StartTls(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Send(b) => write!(f, "Send({:?})", String::from_utf8_lossy(b)),
            Step::Line(l) => write!(f, "Line({l:?})"),
            Step::Expect(e) => write!(f, "Expect({e:?})"),
            Step::Sleep(d) => write!(f, "Sleep({d:?})"),
            Step::Close => write!(f, "Close"),
            Step::StartTls(_) => write!(f, "StartTls"),
        }
    }
}

/// Shorthands: `line("+OK")`, `expect("USER alice")`, `expect("PASS *")`.
pub fn line(s: &str) -> Step {
    Step::Line(s.to_string())
}

pub fn expect(s: &str) -> Step {
    Step::Expect(s.to_string())
}

pub struct ScriptedServer {
    addr: SocketAddr,
    transcript: Arc<Mutex<Vec<String>>>,
    result: Option<oneshot::Receiver<Result<(), String>>>,
    // Dropping it (with the server) ends a script still waiting.
    _cancel: oneshot::Sender<()>,
}

impl ScriptedServer {
    /// Serves one plain TCP connection with `steps`.
    pub fn start(steps: Vec<Step>) -> ScriptedServer {
        Self::spawn(steps, None)
    }

    /// Serves one implicit-TLS connection (handshake first) with `steps`.
    pub fn start_tls(steps: Vec<Step>, config: Arc<rustls::ServerConfig>) -> ScriptedServer {
        Self::spawn(steps, Some(config))
    }

    fn spawn(steps: Vec<Step>, tls: Option<Arc<rustls::ServerConfig>>) -> ScriptedServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind scripted server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let (result_tx, result_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let log = transcript.clone();
        std::thread::Builder::new()
            .name(format!("scripted-pop3-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("scripted server runtime");
                let outcome = rt.block_on(async move {
                    tokio::select! {
                        r = serve(listener, steps, tls, log) => r,
                        _ = cancel_rx => Err("scripted server dropped before the script ended".into()),
                    }
                });
                let _ = result_tx.send(outcome);
            })
            .expect("spawn scripted server thread");
        ScriptedServer {
            addr,
            transcript,
            result: Some(result_rx),
            _cancel: cancel_tx,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every line the client sent so far (CRLF stripped).
    pub fn transcript(&self) -> Vec<String> {
        self.transcript.lock().unwrap().clone()
    }

    /// Waits for the script to end. Err: the first mismatch, a hang-up, a
    /// timeout or an I/O / TLS error.
    pub async fn finish(mut self) -> Result<(), String> {
        let rx = self.result.take().expect("finish called once");
        rx.await
            .unwrap_or_else(|_| Err("scripted server thread died".into()))
    }

    /// `finish` for blocking tests (must not be called inside a runtime).
    pub fn finish_blocking(mut self) -> Result<(), String> {
        let rx = self.result.take().expect("finish called once");
        rx.blocking_recv()
            .unwrap_or_else(|_| Err("scripted server thread died".into()))
    }
}

/// A server config (ring provider) serving the PKI's `localhost` leaf.
pub fn tls_server_config(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    tls_server_config_for(&pki.leaf())
}

/// A server config serving any leaf (expired, wrong host, untrusted, ...).
pub fn tls_server_config_for(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert_der(&leaf.pem)], key_der(&leaf.key))
    .expect("server certificate and key");
    Arc::new(config)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve(
    listener: std::net::TcpListener,
    steps: Vec<Step>,
    tls: Option<Arc<rustls::ServerConfig>>,
    transcript: Arc<Mutex<Vec<String>>>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let (tcp, _) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept())
        .await
        .map_err(|_| format!("no client connected within {ACCEPT_TIMEOUT:?}"))?
        .map_err(|e| format!("accept: {e}"))?;
    drop(listener);
    let mut io: Box<dyn Io> = Box::new(tcp);
    if let Some(config) = tls {
        io = tls_accept(io, config).await?;
    }
    // Bytes read but not yet consumed as lines.
    let mut buf: Vec<u8> = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let at = |what: String| format!("step {i} ({step:?}): {what}");
        match &step {
            Step::Send(bytes) => write(&mut io, bytes).await.map_err(at)?,
            Step::Line(l) => write(&mut io, format!("{l}\r\n").as_bytes())
                .await
                .map_err(at)?,
            Step::Expect(want) => {
                let got = read_line(&mut io, &mut buf).await.map_err(at)?;
                transcript.lock().unwrap().push(got.clone());
                let ok = match want.strip_suffix('*') {
                    Some(prefix) => got.starts_with(prefix),
                    None => got == *want,
                };
                if !ok {
                    return Err(at(format!("client sent {got:?}")));
                }
            }
            Step::Sleep(d) => tokio::time::sleep(*d).await,
            Step::Close => {
                let _ = io.shutdown().await;
                return Ok(());
            }
            Step::StartTls(config) => {
                // Plaintext pipelined behind STLS would be injected into the
                // TLS session by a careless server: a client must not send it.
                if !buf.is_empty() {
                    return Err(at(format!(
                        "client sent {:?} before the TLS handshake",
                        String::from_utf8_lossy(&buf)
                    )));
                }
                io = tls_accept(io, config.clone()).await.map_err(at)?;
            }
        }
    }
    let _ = io.shutdown().await;
    Ok(())
}

async fn tls_accept(
    io: Box<dyn Io>,
    config: Arc<rustls::ServerConfig>,
) -> Result<Box<dyn Io>, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| format!("TLS handshake timed out after {READ_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(Box::new(tls))
}

async fn write(io: &mut Box<dyn Io>, bytes: &[u8]) -> Result<(), String> {
    io.write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    io.flush().await.map_err(|e| format!("flush: {e}"))
}

/// One line, CRLF required (a POP3 client must not send bare LF).
async fn read_line(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Result<String, String> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&raw).into_owned();
            return match text.strip_suffix("\r\n") {
                Some(l) => Ok(l.to_string()),
                None => Err(format!("line not terminated by CRLF: {text:?}")),
            };
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(READ_TIMEOUT, io.read(&mut chunk))
            .await
            .map_err(|_| format!("no line from the client within {READ_TIMEOUT:?}"))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "client hung up".to_string()
            } else {
                format!(
                    "client hung up after a partial line {:?}",
                    String::from_utf8_lossy(buf)
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
