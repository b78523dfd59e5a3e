//! The connection: owns the socket (plain or TLS), the read and write
//! buffers and the time-outs, and frames bytes with the pure codec.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::SessionError;
use super::trace::Trace;
use crate::pop3::{
    Command, Event, MAX_STATUS_LINE, PairingError, ReplyPairing, StatusLine, begins_with_status,
    find_status_line,
};

const READ_CHUNK: usize = 64 * 1024;

/// A body (message or listing) must bring at least this much per `timeout`:
/// a server dribbling a byte now and then cannot hold the session forever.
pub(crate) const MIN_PROGRESS: usize = 1024;

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

/// Asks the kernel to ACK what arrives at once. Linux delays ACKs (~40 ms)
/// on a connection it takes for interactive; a server that writes a status
/// line and then its data in two small writes with Nagle on (popa3d, Solid
/// POP3) holds the data until that ACK, on every command. The mode is not
/// sticky (the kernel leaves it by itself), so it is re-armed after every
/// read; setting it also sends an ACK the kernel was holding back.
pub(crate) fn quickack(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Only a speed-up: a socket that refuses it still works.
        let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

/// What a multi-line body held, after un-stuffing (LF line ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyStats {
    pub lines: u64,
    pub bytes: u64,
}

impl BodyStats {
    /// Octets the body had on the wire with CRLF line ends and no stuffing:
    /// what RFC 1939 says LIST reports.
    pub fn crlf_size(&self) -> u64 {
        self.bytes + self.lines
    }
}

/// Why reading a multi-line body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError<E> {
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The sink refused data; the rest of the body was read and dropped, so
    /// the session is still usable.
    #[error(transparent)]
    Sink(E),
}

pub(crate) struct Connection {
    stream: Stream,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    pub(crate) io_timeout: Duration,
    pub(crate) trace: Trace,
}

impl Connection {
    pub(crate) fn new(stream: Stream, io_timeout: Duration, trace: Trace) -> Self {
        Connection {
            stream,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(4096),
            io_timeout,
            trace,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    pub(crate) fn tls_connection(&self) -> Option<&rustls::ClientConnection> {
        match &self.stream {
            Stream::Tls(s) => Some(s.get_ref().1),
            Stream::Plain(_) => None,
        }
    }

    /// Unread bytes already received.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Gives up the plain socket for a TLS upgrade. Bytes that arrived before
    /// the handshake are the caller's to judge (RFC 2595: discard them).
    pub(crate) fn into_plain(self) -> Result<(TcpStream, Trace, Duration), SessionError> {
        match self.stream {
            Stream::Plain(s) => Ok((s, self.trace, self.io_timeout)),
            Stream::Tls(_) => Err(SessionError::TlsConfig("STLS on a TLS connection".into())),
        }
    }

    /// Appends a command to the write buffer; nothing is sent until `flush`.
    pub(crate) fn queue(&mut self, cmd: &Command<'_>) -> Result<(), SessionError> {
        cmd.encode(&mut self.wbuf)?;
        self.trace.client(cmd);
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<(), SessionError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        with_timeout("write", self.io_timeout, write).await??;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads more bytes into the buffer, giving up at `deadline` (a total
    /// limit, not an idle one); an orderly close is an error here because
    /// every caller is waiting for a response. Returns the bytes read.
    pub(crate) async fn fill(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<usize, SessionError> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let start = self.rbuf.len();
        self.rbuf.resize(start + READ_CHUNK, 0);
        let read = tokio::time::timeout_at(deadline, self.stream.read(&mut self.rbuf[start..]))
            .await
            .map_err(|_| SessionError::Timeout {
                what,
                after: self.io_timeout,
            });
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.rbuf.truncate(start);
                return Err(e.into());
            }
            Err(e) => {
                self.rbuf.truncate(start);
                return Err(e);
            }
        };
        self.rbuf.truncate(start + n);
        if n == 0 {
            return Err(SessionError::Closed);
        }
        quickack(self.stream.tcp());
        Ok(n)
    }

    /// One step of `pairing` over the bytes already received (body bytes
    /// into `out`); `None`: [`Connection::fill`] first.
    pub(crate) fn pair_step(
        &mut self,
        pairing: &mut ReplyPairing,
        out: &mut Vec<u8>,
    ) -> Result<Option<Event>, PairingError> {
        let step = pairing.step(&self.rbuf[self.rpos..], out)?;
        self.rpos += step.consumed;
        Ok(step.event)
    }

    /// Waits at most `within` for the server's first bytes. `false`: it
    /// stayed silent (the connection is then unusable).
    pub(crate) async fn await_first_bytes(
        &mut self,
        within: Duration,
    ) -> Result<bool, SessionError> {
        if !self.buffered().is_empty() {
            return Ok(true);
        }
        // Whichever time-out fires first (ours or the read's), it is silence.
        let deadline = Instant::now() + within.min(self.io_timeout);
        match self.fill(deadline, "waiting for the greeting").await {
            Ok(_) => Ok(true),
            Err(SessionError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads one status line (`+OK`, `-ERR` or a SASL `+ `).
    /// The whole line must arrive within `timeout`.
    pub(crate) async fn read_status(&mut self) -> Result<StatusLine, SessionError> {
        let deadline = Instant::now() + self.io_timeout;
        loop {
            if let Some(len) = find_status_line(&self.rbuf[self.rpos..], MAX_STATUS_LINE)? {
                let line = StatusLine::parse(&self.rbuf[self.rpos..self.rpos + len])?;
                self.rpos += len;
                self.trace.server(&line);
                return Ok(line);
            }
            self.fill(deadline, "reading a status line (in total)")
                .await?;
        }
    }

    /// Waits until the next response has begun and says whether it is a
    /// status line, without consuming it.
    pub(crate) async fn next_is_status(&mut self) -> Result<bool, SessionError> {
        let deadline = Instant::now() + self.io_timeout;
        loop {
            if let Some(in_step) = begins_with_status(&self.rbuf[self.rpos..]) {
                return Ok(in_step);
            }
            self.fill(deadline, "waiting for the next response").await?;
        }
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = with_timeout("shutdown", self.io_timeout, self.stream.shutdown()).await;
    }
}

pub(crate) async fn with_timeout<T>(
    what: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, SessionError> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| SessionError::Timeout { what, after })
}
