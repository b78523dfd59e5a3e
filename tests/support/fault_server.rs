//! A mailbox-backed POP3 server with fault hooks, for "nothing lost, nothing
//! delivered twice" tests against hostile or broken servers.
//!
//! It behaves like a real server by default (USER/PASS, CAPA, STAT, LIST,
//! UIDL, RETR with dot-stuffing, DELE applied only at QUIT +OK, PIPELINING)
//! and serves connections one after another until dropped. [`Faults`] bends
//! one behaviour at a time; they can be changed between runs. Like
//! `scripted.rs` it runs on its own thread and runtime, so plain `#[test]`s
//! can drive the real binary against it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "hunter2-fault";

/// One message: what a correct client stores (LF line ends) and its UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultMessage {
    pub uid: String,
    pub body: Vec<u8>,
}

/// How the server misbehaves. `Default` is a well-behaved server.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Replaces the greeting line (raw bytes, sent as they are).
    pub greeting: Option<Vec<u8>>,
    /// Extra CAPA lines (e.g. `STLS`); `no_capa_*` remove defaults.
    pub capa_extra: Vec<String>,
    pub no_pipelining: bool,
    /// Answer UIDL with -ERR and leave it out of CAPA.
    pub no_uidl: bool,
    /// The reply to PASS (e.g. `-ERR [IN-USE] locked`).
    pub pass_reply: Option<String>,
    /// The reply to STLS (default: -ERR).
    pub stls_reply: Option<Vec<u8>>,
    /// The status line of LIST/STAT (e.g. claims of 10^9 messages).
    pub list_status: Option<String>,
    /// Raw extra lines appended to the LIST listing.
    pub list_extra: Vec<String>,
    /// After LIST's +OK, stream listing lines without end.
    pub endless_list: bool,
    /// Added to every size LIST reports (lies).
    pub list_size_delta: i64,
    /// How LIST counts a message's size (real servers differ).
    pub list_sizing: ListSizing,
    /// Line ends on the wire are bare LF (sizes counted with LF).
    pub bare_lf: bool,
    /// Lines starting with `.` are not stuffed (a lone `.` line truncates).
    pub no_stuffing: bool,
    /// RETR of this message number: close the connection after this many
    /// bytes of the response.
    pub drop_in_retr: Option<(u32, usize)>,
    /// RETR of this message number: data, forever.
    pub endless_retr: Option<u32>,
    /// RETR of this message number: a little data, then silence.
    pub stall_in_retr: Option<u32>,
    /// RETR of this message number: answered after this pause.
    pub slow_retr: Option<(u32, Duration)>,
    /// Stop answering after the greeting and login.
    pub stall_after_login: bool,
    /// On QUIT: close without answering and without applying deletions.
    pub drop_on_quit: bool,
    /// On QUIT: answer -ERR and apply no deletions.
    pub quit_err: bool,
    /// Like Courier: offer `UTF8` in CAPA, and unless the client sent it
    /// before logging in, serve a message whose header holds 8-bit bytes
    /// as a generated "Cannot display Unicode content" wrapper.
    pub utf8_wrapper: bool,
    /// Holds DELE replies until this many are held (or another command
    /// comes), like a server answering a pipelined batch at once: a
    /// lock-step client then waits for its first reply until it times out.
    pub dele_batch: Option<usize>,
}

/// How the server computes the sizes LIST (and STAT) announce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListSizing {
    /// RFC 1939: octets with CRLF line ends, before stuffing.
    #[default]
    Exact,
    /// The dot-stuffed octets it sends (a few more for `.` lines).
    Stuffed,
    /// Rounded up to whole KiB, like HP OpenMail.
    RoundedToKib,
    /// Always 0.
    Zero,
}

struct Shared {
    mailbox: Vec<FaultMessage>,
    faults: Faults,
    /// Every command line received, all connections (CRLF stripped).
    transcript: Vec<String>,
    connections: usize,
    /// The most DELE lines ever waiting unread behind the command being
    /// handled: 0 for a client that deletes in lock-step.
    max_queued_deles: usize,
}

pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    _cancel: oneshot::Sender<()>,
}

impl FaultServer {
    pub fn start(mailbox: Vec<FaultMessage>, faults: Faults) -> FaultServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fault server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(Shared {
            mailbox,
            faults,
            transcript: Vec::new(),
            connections: 0,
            max_queued_deles: 0,
        }));
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let state = shared.clone();
        std::thread::Builder::new()
            .name(format!("fault-pop3-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let serve = async {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            state.lock().unwrap().connections += 1;
                            // One client at a time, like a locked maildrop.
                            let _ = session(tcp, &state).await;
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = cancel_rx => {}
                    }
                });
            })
            .expect("spawn fault server thread");
        FaultServer {
            addr,
            shared,
            _cancel: cancel_tx,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What is on the server now (deletions applied by successful QUITs).
    pub fn mailbox(&self) -> Vec<FaultMessage> {
        self.shared.lock().unwrap().mailbox.clone()
    }

    pub fn set_mailbox(&self, mailbox: Vec<FaultMessage>) {
        self.shared.lock().unwrap().mailbox = mailbox;
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().unwrap().faults = faults;
    }

    pub fn transcript(&self) -> Vec<String> {
        self.shared.lock().unwrap().transcript.clone()
    }

    /// See `Shared::max_queued_deles`.
    pub fn max_queued_deles(&self) -> usize {
        self.shared.lock().unwrap().max_queued_deles
    }

    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }

    /// A plaintext account table for this server (`tls = "none"`).
    pub fn account_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[account.{name}]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\nauth = \"user\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\ntimeout = \"3s\"\nconnect_timeout = \"3s\"\n{extra}\n",
            self.port()
        )
    }
}

/// `n` distinct messages with UIDs `uid-1`..`uid-n`, including lines that
/// need dot-stuffing.
pub fn mailbox(n: usize) -> Vec<FaultMessage> {
    (1..=n)
        .map(|i| FaultMessage {
            uid: format!("uid-{i}"),
            body: format!(
                "From: s{i}@example.org\nSubject: fault test {i}\n\nbody {i}\n.leading dot\n{}\n",
                "x".repeat(i * 37 % 300)
            )
            .into_bytes(),
        })
        .collect()
}

/// What Courier serves instead of a message with raw 8-bit header bytes
/// to a client that did not ask for UTF-8 mode.
pub const UNICODE_WRAPPER: &[u8] = b"Subject: Cannot display Unicode content\nMime-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"=_courier\"\n\n--=_courier\nContent-Type: text/plain\n\nThis message cannot be displayed without UTF-8 support.\n--=_courier--\n";

fn has_8bit_header(body: &[u8]) -> bool {
    let end = body
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(body.len());
    body[..end].iter().any(|&b| b >= 0x80)
}

/// The body's lines as sent on the wire (without stuffing or terminator).
fn wire_lines(body: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if body.ends_with(b"\n") {
        lines.pop();
    }
    lines
}

/// RFC 1939 size: octets with CRLF line ends (LF when the server is lax).
fn wire_size(body: &[u8], eol: usize) -> u64 {
    wire_lines(body)
        .iter()
        .map(|l| (l.len() + eol) as u64)
        .sum()
}

fn encode_body(body: &[u8], faults: &Faults) -> Vec<u8> {
    let eol: &[u8] = if faults.bare_lf { b"\n" } else { b"\r\n" };
    let mut out = Vec::with_capacity(body.len() + 64);
    for l in wire_lines(body) {
        if l.starts_with(b".") && !faults.no_stuffing {
            out.push(b'.');
        }
        out.extend_from_slice(l);
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(b".");
    out.extend_from_slice(eol);
    out
}

async fn session(mut tcp: TcpStream, shared: &Arc<Mutex<Shared>>) -> std::io::Result<()> {
    let faults = shared.lock().unwrap().faults.clone();
    // The maildrop as this session sees it; numbers are 1-based indexes.
    let snapshot = shared.lock().unwrap().mailbox.clone();
    let mut deleted = vec![false; snapshot.len()];
    let eol = if faults.bare_lf { 1 } else { 2 };
    let size_of = |i: usize| {
        let body = &snapshot[i].body;
        let size = match faults.list_sizing {
            ListSizing::Exact => wire_size(body, eol),
            // The response without its terminator line.
            ListSizing::Stuffed => encode_body(body, &faults).len() as u64 - 1 - eol as u64,
            ListSizing::RoundedToKib => wire_size(body, eol).div_ceil(1024) * 1024,
            ListSizing::Zero => 0,
        };
        (size as i64 + faults.list_size_delta).max(0) as u64
    };
    let greeting = faults
        .greeting
        .clone()
        .unwrap_or_else(|| b"+OK fault server ready <1.2@fault>\r\n".to_vec());
    tcp.write_all(&greeting).await?;
    let mut buf = Vec::new();
    let mut authed = false;
    let mut utf8_mode = false;
    let mut held: Vec<u8> = Vec::new();
    loop {
        let Some(line) = read_line(&mut tcp, &mut buf).await? else {
            return Ok(());
        };
        {
            let mut sh = shared.lock().unwrap();
            sh.transcript.push(line.clone());
            let queued = buf
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"DELE"))
                .count();
            sh.max_queued_deles = sh.max_queued_deles.max(queued);
        }
        let mut words = line.splitn(2, ' ');
        let cmd = words.next().unwrap_or("").to_ascii_uppercase();
        let arg = words.next().unwrap_or("");
        if cmd != "DELE" && !held.is_empty() {
            tcp.write_all(&std::mem::take(&mut held)).await?;
        }
        let msg = |arg: &str| -> Option<usize> {
            let n: usize = arg.trim().parse().ok()?;
            (n >= 1 && n <= snapshot.len() && !deleted[n - 1]).then(|| n - 1)
        };
        let mut out: Vec<u8> = Vec::new();
        match cmd.as_str() {
            "CAPA" => {
                out.extend_from_slice(b"+OK capabilities\r\nUSER\r\nRESP-CODES\r\n");
                if !faults.no_uidl {
                    out.extend_from_slice(b"UIDL\r\n");
                }
                if !faults.no_pipelining {
                    out.extend_from_slice(b"PIPELINING\r\n");
                }
                if faults.utf8_wrapper {
                    out.extend_from_slice(b"UTF8\r\n");
                }
                for c in &faults.capa_extra {
                    out.extend_from_slice(format!("{c}\r\n").as_bytes());
                }
                out.extend_from_slice(b".\r\n");
            }
            "STLS" => match &faults.stls_reply {
                Some(reply) => out.extend_from_slice(reply),
                None => out.extend_from_slice(b"-ERR STLS not available\r\n"),
            },
            "USER" => out.extend_from_slice(b"+OK send PASS\r\n"),
            "UTF8" if faults.utf8_wrapper && !authed => {
                utf8_mode = true;
                out.extend_from_slice(b"+OK UTF8 enabled\r\n");
            }
            "PASS" => {
                if let Some(reply) = &faults.pass_reply {
                    out.extend_from_slice(format!("{reply}\r\n").as_bytes());
                } else if arg == PASSWORD {
                    authed = true;
                    out.extend_from_slice(b"+OK logged in\r\n");
                } else {
                    out.extend_from_slice(b"-ERR [AUTH] bad password\r\n");
                }
                if authed && faults.stall_after_login {
                    tcp.write_all(&out).await?;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
            _ if !authed && cmd != "QUIT" => out.extend_from_slice(b"-ERR log in first\r\n"),
            "STAT" | "LIST" if arg.is_empty() => {
                let live: Vec<usize> = (0..snapshot.len()).filter(|&i| !deleted[i]).collect();
                let total: u64 = live.iter().map(|&i| size_of(i)).sum();
                let status = faults
                    .list_status
                    .clone()
                    .unwrap_or_else(|| format!("+OK {} {total}", live.len()));
                out.extend_from_slice(format!("{status}\r\n").as_bytes());
                if cmd == "LIST" {
                    if faults.endless_list {
                        tcp.write_all(&out).await?;
                        let mut n = 1u64;
                        loop {
                            let chunk: String =
                                (0..1000).map(|k| format!("{} 100\r\n", n + k)).collect();
                            n += 1000;
                            tcp.write_all(chunk.as_bytes()).await?;
                        }
                    }
                    for &i in &live {
                        out.extend_from_slice(format!("{} {}\r\n", i + 1, size_of(i)).as_bytes());
                    }
                    for l in &faults.list_extra {
                        out.extend_from_slice(format!("{l}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b".\r\n");
                }
            }
            "UIDL" if faults.no_uidl => out.extend_from_slice(b"-ERR no UIDL here\r\n"),
            "UIDL" if arg.is_empty() => {
                out.extend_from_slice(b"+OK\r\n");
                for (i, m) in snapshot.iter().enumerate() {
                    if !deleted[i] {
                        out.extend_from_slice(format!("{} {}\r\n", i + 1, m.uid).as_bytes());
                    }
                }
                out.extend_from_slice(b".\r\n");
            }
            "RETR" => match msg(arg) {
                None => out.extend_from_slice(b"-ERR no such message\r\n"),
                Some(i) => {
                    let n = (i + 1) as u32;
                    out.extend_from_slice(format!("+OK {} octets\r\n", size_of(i)).as_bytes());
                    if faults.endless_retr == Some(n) {
                        tcp.write_all(&out).await?;
                        let block = b"endless line of a message that never ends\r\n".repeat(1500);
                        loop {
                            tcp.write_all(&block).await?;
                        }
                    }
                    if let Some((k, pause)) = faults.slow_retr
                        && k == n
                    {
                        tokio::time::sleep(pause).await;
                    }
                    if faults.stall_in_retr == Some(n) {
                        out.extend_from_slice(b"Subject: stalled\r\n");
                        tcp.write_all(&out).await?;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let body = &snapshot[i].body;
                    if faults.utf8_wrapper && !utf8_mode && has_8bit_header(body) {
                        out.extend_from_slice(&encode_body(UNICODE_WRAPPER, &faults));
                    } else {
                        out.extend_from_slice(&encode_body(body, &faults));
                    }
                    if let Some((k, after)) = faults.drop_in_retr
                        && k == n
                    {
                        tcp.write_all(&out[..after.min(out.len())]).await?;
                        return Ok(());
                    }
                }
            },
            "DELE" => match msg(arg) {
                None => out.extend_from_slice(b"-ERR no such message\r\n"),
                Some(i) => {
                    deleted[i] = true;
                    out.extend_from_slice(b"+OK marked\r\n");
                }
            },
            "NOOP" => out.extend_from_slice(b"+OK\r\n"),
            "RSET" => {
                deleted.iter_mut().for_each(|d| *d = false);
                out.extend_from_slice(b"+OK\r\n");
            }
            "QUIT" => {
                if faults.drop_on_quit && authed {
                    return Ok(());
                }
                if faults.quit_err && authed {
                    tcp.write_all(b"-ERR some deleted messages not removed\r\n")
                        .await?;
                    return Ok(());
                }
                // RFC 1939 §6: the UPDATE state, only after QUIT.
                if authed {
                    let mut mb = shared.lock().unwrap();
                    let gone: Vec<&FaultMessage> = snapshot
                        .iter()
                        .zip(&deleted)
                        .filter(|(_, d)| **d)
                        .map(|(m, _)| m)
                        .collect();
                    mb.mailbox.retain(|m| !gone.contains(&m));
                }
                tcp.write_all(b"+OK bye\r\n").await?;
                let _ = tcp.shutdown().await;
                return Ok(());
            }
            _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
        }
        if let Some(batch) = faults.dele_batch
            && cmd == "DELE"
        {
            held.append(&mut out);
            if held.iter().filter(|&&b| b == b'\n').count() < batch {
                continue;
            }
            out = std::mem::take(&mut held);
        }
        tcp.write_all(&out).await?;
    }
}

/// One command line; `None` when the client hung up.
async fn read_line(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&raw);
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
