//! A POP3 session over tokio: connect, TLS (implicit or STLS), CAPA, login,
//! commands in lock-step or pipelined.

mod auth;
mod connection;
mod error;
mod pipeline;
pub mod tls;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use auth::Credentials;
pub use connection::{BodyError, BodyStats};
pub use error::SessionError;
pub use pipeline::{Pipeline, Reply};
pub use tls::TlsInfo;
pub use trace::{Trace, TraceSink};

use crate::config::TlsMode;
use crate::pop3::{Capabilities, Command, ListEntry, Listing, Stat, Status, StatusLine, UidList};
use connection::{Connection, Stream, with_timeout};

/// Listings (UIDL, LIST, CAPA) larger than this are hostile: 64 MiB holds
/// about a million UIDL lines.
pub const MAX_LISTING: u64 = 64 * 1024 * 1024;

/// A CAPA response beyond these is hostile (real ones are a few hundred bytes).
pub const MAX_CAPA_BYTES: u64 = 64 * 1024;
pub const MAX_CAPA_LINES: usize = 512;

/// The longest listing line RFC 1939 allows (a status-line's 512 octets);
/// with the entry count it bounds a listing's bytes.
const MAX_LISTING_LINE: u64 = 512;

/// STAT (`None` when its line could not be parsed), UIDL (`None` without
/// UIDL support) and LIST.
pub type MaildropListing = (Option<Stat>, Option<UidList>, Vec<ListEntry>);

/// How to reach the server.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<[u8; 32]>,
    /// Bounds TCP connect and the TLS handshake, each.
    pub connect_timeout: Duration,
    /// Bounds every read and write.
    pub io_timeout: Duration,
    pub trace: Option<TraceSink>,
}

impl ConnectOptions {
    pub fn new(host: impl Into<String>, port: u16, tls: TlsMode) -> Self {
        ConnectOptions {
            host: host.into(),
            port,
            tls,
            ca_file: None,
            fingerprint: None,
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(60),
            trace: None,
        }
    }
}

pub struct Session {
    conn: Connection,
    greeting: StatusLine,
    capabilities: Capabilities,
    tls_info: Option<TlsInfo>,
    auth_used: Option<&'static str>,
}

impl Session {
    /// Connects, secures the channel as `opts.tls` says, reads the greeting
    /// and the capabilities. Nothing secret has been sent when this returns.
    pub async fn connect(opts: &ConnectOptions) -> Result<Session, SessionError> {
        let trace = Trace::new(opts.trace.clone());
        trace.note(&format!(
            "connecting to {}:{} (tls = {:?})",
            opts.host, opts.port, opts.tls
        ));
        let tcp = tcp_connect(opts).await?;
        let _ = tcp.set_nodelay(true);
        connection::quickack(&tcp);

        let stream = match opts.tls {
            TlsMode::Implicit => Stream::Tls(Box::new(handshake(opts, tcp).await?)),
            TlsMode::Starttls | TlsMode::None => Stream::Plain(tcp),
        };
        let mut conn = Connection::new(stream, opts.io_timeout, trace);
        if opts.tls != TlsMode::Implicit {
            detect_implicit_tls_port(&mut conn, opts).await?;
        }
        let greeting = conn.read_status().await?;
        if greeting.status != Status::Ok {
            return Err(SessionError::Command {
                command: "greeting".into(),
                line: greeting,
            });
        }
        let mut session = Session {
            conn,
            greeting,
            capabilities: Capabilities::default(),
            tls_info: None,
            auth_used: None,
        };
        session.capabilities = session.capa().await?;
        if opts.tls == TlsMode::Starttls {
            session = session.starttls(opts).await?;
        }
        session.tls_info = session.conn.tls_connection().map(TlsInfo::from_connection);
        Ok(session)
    }

    /// RFC 2595 §4: STLS must be advertised; after the handshake, bytes sent
    /// before it are discarded and CAPA is asked again.
    async fn starttls(mut self, opts: &ConnectOptions) -> Result<Session, SessionError> {
        if !self.capabilities.stls() {
            return Err(SessionError::StlsNotOffered);
        }
        let reply = self.exchange(&Command::Stls).await?;
        if reply.status != Status::Ok {
            return Err(SessionError::StlsRefused(reply));
        }
        if !self.conn.buffered().is_empty() {
            // A man in the middle may inject plaintext here (CVE-2011-0411 class).
            return Err(SessionError::StlsInjection);
        }
        let (tcp, trace, io_timeout) = self.conn.into_plain()?;
        trace.note("TLS handshake");
        let tls = handshake(opts, tcp).await?;
        let mut session = Session {
            conn: Connection::new(Stream::Tls(Box::new(tls)), io_timeout, trace),
            greeting: self.greeting,
            capabilities: Capabilities::default(),
            tls_info: None,
            auth_used: None,
        };
        session.capabilities = session.capa().await?;
        Ok(session)
    }

    /// CAPA; a server without it (RFC 1939 only) has no capabilities.
    async fn capa(&mut self) -> Result<Capabilities, SessionError> {
        let mut p = self.pipeline(1);
        p.send(&Command::Capa)?;
        if !p.next_reply().await?.body_follows {
            return Ok(Capabilities::default());
        }
        let body = p.read_body_to_vec(MAX_CAPA_BYTES).await?;
        let lines = body.iter().filter(|&&b| b == b'\n').count();
        if lines > MAX_CAPA_LINES {
            return Err(SessionError::TooLong {
                what: "CAPA",
                detail: format!("{lines} lines, more than {MAX_CAPA_LINES}"),
            });
        }
        Ok(Capabilities::parse(&body))
    }

    pub fn greeting(&self) -> &StatusLine {
        &self.greeting
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls_info.as_ref()
    }

    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// The mechanism `login` used, e.g. `"USER"`, `"APOP"`, `"SASL PLAIN"`.
    pub fn auth_used(&self) -> Option<&'static str> {
        self.auth_used
    }

    pub fn trace(&self) -> &Trace {
        &self.conn.trace
    }

    /// Whether commands may be sent in batches (RFC 2449 PIPELINING).
    pub fn can_pipeline(&self) -> bool {
        self.capabilities.pipelining()
    }

    /// Sends one command and waits for `+OK`.
    pub async fn command(&mut self, cmd: &Command<'_>) -> Result<StatusLine, SessionError> {
        let mut p = self.pipeline(1);
        p.send(cmd)?;
        Ok(p.expect_ok(cmd).await?.line)
    }

    pub async fn stat(&mut self) -> Result<Stat, SessionError> {
        let line = self.command(&Command::Stat).await?;
        Ok(Stat::parse(&line.text)?)
    }

    /// UIDL and LIST for every message. Pipelined when the server allows.
    /// `uidl` is `None` when the server does not support UIDL.
    pub async fn listings(&mut self) -> Result<(Option<UidList>, Vec<ListEntry>), SessionError> {
        self.listings_bounded(crate::config::DEFAULT_MAX_MESSAGES)
            .await
    }

    /// [`Session::listings`] with at most `max_messages` entries each, and
    /// no more than STAT counted: a hostile server cannot make popsync hold
    /// an unbounded listing. Each listing is parsed line by line as it
    /// arrives, never buffered whole.
    pub async fn listings_bounded(
        &mut self,
        max_messages: u32,
    ) -> Result<(Option<UidList>, Vec<ListEntry>), SessionError> {
        let (_, uidl, list) = self.stat_and_listings(max_messages).await?;
        Ok((uidl, list))
    }

    /// [`Session::listings_bounded`], with the STAT reply it began with
    /// (`None` when the server's STAT line could not be parsed).
    pub async fn stat_and_listings(
        &mut self,
        max_messages: u32,
    ) -> Result<MaildropListing, SessionError> {
        let pipelined = self.can_pipeline();
        // STAT and UIDL have gone out together since STAT was added, with
        // or without PIPELINING; LIST joins them only when it is offered.
        let mut p = self.pipeline(if pipelined { 3 } else { 2 });
        send_listing_commands(&mut p, pipelined)?;
        read_stat_and_listings(&mut p, pipelined, max_messages).await
    }

    /// Ends the session with QUIT: only now does the server remove messages
    /// marked with DELE (RFC 1939 §6). Returns QUIT's reply, which may be
    /// `-ERR` when deletions failed.
    pub async fn quit(mut self) -> Result<StatusLine, SessionError> {
        let line = self.exchange(&Command::Quit).await;
        self.conn.shutdown().await;
        line
    }

    /// Ends a session whose QUIT already went out through a pipeline and
    /// was answered there.
    pub async fn close(mut self) {
        self.conn.shutdown().await;
    }
}

/// The listing's commands: STAT, UIDL, and LIST when `pipelined` (else
/// LIST waits for UIDL's reply).
fn send_listing_commands(p: &mut Pipeline<'_>, pipelined: bool) -> Result<(), SessionError> {
    p.send(&Command::Stat)?;
    p.send(&Command::Uidl(None))?;
    if pipelined {
        p.send(&Command::List(None))?;
    }
    Ok(())
}

/// Reads the replies to [`send_listing_commands`], sending LIST in between
/// when not `pipelined`.
async fn read_stat_and_listings(
    p: &mut Pipeline<'_>,
    pipelined: bool,
    max_messages: u32,
) -> Result<MaildropListing, SessionError> {
    let stat_line = p.expect_ok(&Command::Stat).await?.line;
    // STAT's count only narrows the bound: a claim of 10^9, or a reply
    // that is not "+OK count size", changes nothing.
    let stat = Stat::parse(&stat_line.text).ok();
    let bound = stat.as_ref().map_or(u64::from(max_messages), |st| {
        st.count.min(u64::from(max_messages))
    });
    let uidl = if p.next_reply().await?.body_follows {
        Some(read_listing(p, "UIDL", bound, max_messages).await?)
    } else {
        None
    };
    if !pipelined {
        p.send(&Command::List(None))?;
    }
    p.expect_ok(&Command::List(None)).await?;
    let list = read_listing(p, "LIST", bound, max_messages).await?;
    Ok((stat, uidl, list))
}

/// Reads a UIDL or LIST body line by line as it arrives, at most `bound`
/// entries, into its compact form.
async fn read_listing<T: Listing>(
    p: &mut Pipeline<'_>,
    what: &'static str,
    bound: u64,
    max_messages: u32,
) -> Result<T, SessionError> {
    let byte_limit = MAX_LISTING.min((bound + 1) * MAX_LISTING_LINE);
    let mut out = T::default();
    let mut partial: Vec<u8> = Vec::new();
    let mut failure: Option<SessionError> = None;
    let take = |line: &[u8], out: &mut T| -> Result<(), SessionError> {
        if line.is_empty() {
            return Ok(());
        }
        if out.entries() as u64 >= bound {
            return Err(SessionError::TooLong {
                what,
                detail: if bound == u64::from(max_messages) {
                    format!(
                        "more than max_messages = {max_messages} entries; raise max_messages for this account if the mailbox really is that large"
                    )
                } else {
                    format!("more entries than the {bound} messages STAT counted")
                },
            });
        }
        out.push_line(line)?;
        Ok(())
    };
    let res = p
        .read_body(byte_limit, |chunk| {
            if failure.is_some() {
                return Ok(());
            }
            let mut rest = chunk;
            while let Some(i) = memchr::memchr(b'\n', rest) {
                let r = if partial.is_empty() {
                    take(&rest[..i], &mut out)
                } else {
                    partial.extend_from_slice(&rest[..i]);
                    let line = std::mem::take(&mut partial);
                    take(&line, &mut out)
                };
                if let Err(e) = r {
                    failure = Some(e);
                    return Ok(());
                }
                rest = &rest[i + 1..];
            }
            partial.extend_from_slice(rest);
            Ok::<(), std::convert::Infallible>(())
        })
        .await;
    match res {
        Ok(_) => {}
        Err(BodyError::Session(e)) => return Err(e),
        Err(BodyError::Sink(never)) => match never {},
    }
    if let Some(e) = failure {
        return Err(e);
    }
    take(&partial, &mut out)?;
    out.shrink_to_fit();
    Ok(out)
}

/// How long a server on port 995 may stay silent before we call it an
/// implicit-TLS port: POP3 servers greet at once, TLS servers wait for us.
const IMPLICIT_TLS_SILENCE: Duration = Duration::from_secs(4);

/// `tls = "starttls"`/`"none"` reached a TLS port when the server answers
/// with a TLS record, or (on port 995) says nothing at all for a while:
/// a configuration mistake, reported in seconds, not after the read timeout.
async fn detect_implicit_tls_port(
    conn: &mut Connection,
    opts: &ConnectOptions,
) -> Result<(), SessionError> {
    let mismatch = |evidence| SessionError::TlsWherePlainExpected {
        addr: format!("{}:{}", opts.host, opts.port),
        port: opts.port,
        tls: if opts.tls == TlsMode::Starttls {
            "starttls"
        } else {
            "none"
        },
        evidence,
    };
    let within = if opts.port == 995 {
        IMPLICIT_TLS_SILENCE.min(opts.io_timeout)
    } else {
        opts.io_timeout
    };
    if !conn.await_first_bytes(within).await? {
        if opts.port == 995 {
            return Err(mismatch("sent no POP3 greeting within a few seconds"));
        }
        return Err(SessionError::NoGreeting {
            addr: format!("{}:{}", opts.host, opts.port),
            after: within,
        });
    }
    if crate::pop3::looks_like_tls_record(conn.buffered()) {
        return Err(mismatch("answered with a TLS record"));
    }
    Ok(())
}

async fn tcp_connect(opts: &ConnectOptions) -> Result<TcpStream, SessionError> {
    with_timeout(
        "connect",
        opts.connect_timeout,
        TcpStream::connect((opts.host.as_str(), opts.port)),
    )
    .await?
    .map_err(|source| SessionError::Connect {
        addr: format!("{}:{}", opts.host, opts.port),
        source,
    })
}

/// Connects and completes the TLS handshake (implicit or after STLS)
/// accepting any certificate, and returns the server's certificate. Sends
/// no credential and nothing after the handshake: for showing a server's
/// certificate that cannot be verified (`probe --insecure-show-cert`).
pub async fn show_certificate(opts: &ConnectOptions) -> Result<tls::CertSummary, SessionError> {
    let trace = Trace::new(opts.trace.clone());
    let tcp = match opts.tls {
        TlsMode::Implicit => tcp_connect(opts).await?,
        TlsMode::None => {
            return Err(SessionError::TlsConfig(
                "tls = \"none\": there is no certificate to show".into(),
            ));
        }
        TlsMode::Starttls => {
            let tcp = tcp_connect(opts).await?;
            let mut conn = Connection::new(Stream::Plain(tcp), opts.io_timeout, trace);
            conn.read_status().await?;
            conn.queue(&Command::Stls)?;
            conn.flush().await?;
            let reply = conn.read_status().await?;
            if reply.status != Status::Ok {
                return Err(SessionError::StlsRefused(reply));
            }
            conn.into_plain()?.0
        }
    };
    let (config, presented) = tls::show_cert_client_config();
    let name = rustls::pki_types::ServerName::try_from(opts.host.clone())
        .map_err(|e| SessionError::TlsConfig(format!("host {:?}: {e}", opts.host)))?;
    let mut stream = with_timeout(
        "TLS handshake",
        opts.connect_timeout,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await?
    .map_err(|e| SessionError::Tls {
        host: opts.host.clone(),
        reason: e.to_string(),
    })?;
    let _ = with_timeout(
        "shutdown",
        opts.io_timeout,
        tokio::io::AsyncWriteExt::shutdown(&mut stream),
    )
    .await;
    let cert = presented.get().ok_or_else(|| SessionError::Tls {
        host: opts.host.clone(),
        reason: "the server presented no certificate".into(),
    })?;
    Ok(tls::CertSummary::of(&cert))
}

async fn handshake(
    opts: &ConnectOptions,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SessionError> {
    let (config, presented) =
        tls::observed_client_config(opts.ca_file.as_deref(), opts.fingerprint)?;
    let name = rustls::pki_types::ServerName::try_from(opts.host.clone())
        .map_err(|e| SessionError::TlsConfig(format!("host {:?}: {e}", opts.host)))?;
    let connector = TlsConnector::from(Arc::clone(&config));
    with_timeout(
        "TLS handshake",
        opts.connect_timeout,
        connector.connect(name, tcp),
    )
    .await?
    .map_err(|e| {
        let ctx = tls::HandshakeContext {
            host: &opts.host,
            port: opts.port,
            implicit: opts.tls == TlsMode::Implicit,
            ca_file: opts.ca_file.as_deref(),
            pinned: opts.fingerprint.is_some(),
            presented: presented.get(),
        };
        tls::handshake_error(&ctx, e)
    })
}
