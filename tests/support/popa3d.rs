//! popa3d, a second real POP3 server besides Dovecot: mbox-backed, no CAPA
//! (so no PIPELINING: clients run in lock-step), UIDs derived from content.
//!
//! popa3d is inetd-style (the connection is its stdin/stdout). The harness
//! listens on a free loopback port itself and starts one popa3d per
//! connection. popa3d authenticates through PAM against the system's users
//! and reads `/var/mail/USER`, so each [`Popa3d`] creates its own system user
//! with a password (removed again on drop): tests may run in parallel.
//!
//! Set-up (done by `scripts/test` as root; never `apt-get install popa3d`,
//! which removes dovecot-pop3d): the package unpacked with `dpkg -x` into
//! `/opt/popsync-tests/popa3d` (or `$POPSYNC_POPA3D_DIR`), a `popa3d` system
//! user, a root-owned `/var/lib/popa3d`, and `/etc/pam.d/popa3d`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `From ` line of every message the harness writes.
const FROM_LINE: &str = "From popsync-test@example.org Thu Nov 26 04:55:21 2026\n";

pub fn popa3d_dir() -> PathBuf {
    std::env::var_os("POPSYNC_POPA3D_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/popsync-tests/popa3d"))
}

pub fn popa3d_bin() -> PathBuf {
    popa3d_dir().join("usr/sbin/popa3d")
}

/// What is missing for popa3d to run here, if anything.
pub fn popa3d_missing() -> Option<String> {
    let mut missing = Vec::new();
    if !popa3d_bin().exists() {
        missing.push(format!(
            "{} (apt-get download popa3d + dpkg -x)",
            popa3d_bin().display()
        ));
    }
    if super::dovecot::lookup_user("popa3d").is_none() {
        missing.push("the popa3d system user".into());
    }
    if !Path::new("/var/lib/popa3d").is_dir() {
        missing.push("/var/lib/popa3d".into());
    }
    if !Path::new("/etc/pam.d/popa3d").exists() {
        missing.push("/etc/pam.d/popa3d".into());
    }
    (!missing.is_empty()).then(|| {
        format!(
            "popa3d cannot run: missing {}; run scripts/test as root once, it sets them up",
            missing.join(", ")
        )
    })
}

pub struct Popa3d {
    addr: SocketAddr,
    user: String,
    password: String,
    mbox: PathBuf,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Child>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Popa3d {
    /// A popa3d serving `messages` (LF line ends, as a client stores them)
    /// to a new system user, on a free port of 127.0.0.1.
    pub fn start(messages: &[Vec<u8>]) -> Popa3d {
        if let Some(why) = popa3d_missing() {
            panic!("{why}");
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let user = format!("p3-{}-{n}", std::process::id());
        let password = format!("Pw-{}-{n}-popa3d", std::process::id());
        create_user(&user, &password);
        let mbox = Path::new("/var/mail").join(&user);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind popa3d port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let children = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, children) = (stop.clone(), children.clone());
            std::thread::Builder::new()
                .name(format!("popa3d-{}", addr.port()))
                .spawn(move || accept_loop(listener, &stop, &children))
                .expect("spawn popa3d acceptor")
        };
        let server = Popa3d {
            addr,
            user,
            password,
            mbox,
            stop,
            children,
            acceptor: Some(acceptor),
        };
        server.set_messages(messages);
        server
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Replaces the mailbox (between runs: popa3d reads it per session).
    pub fn set_messages(&self, messages: &[Vec<u8>]) {
        let mut text = Vec::new();
        for m in messages {
            text.extend_from_slice(&mbox_entry(m));
        }
        write_mbox(&self.mbox, &self.user, &text);
    }

    pub fn add_message(&self, message: &[u8]) {
        let mut all = std::fs::read(&self.mbox).unwrap_or_default();
        all.extend_from_slice(&mbox_entry(message));
        write_mbox(&self.mbox, &self.user, &all);
    }

    /// Removes the message at `index` (0-based, mailbox order).
    pub fn remove_message(&self, index: usize) {
        let mut messages = self.messages();
        messages.remove(index);
        self.set_messages(&messages);
    }

    /// The messages in the mailbox now (deletions applied by QUITs).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let text = std::fs::read(&self.mbox).unwrap_or_default();
        split_mbox(&text)
    }

    /// A plaintext account for this server (popa3d has no TLS).
    pub fn account_toml(&self, name: &str, extra: &str) -> String {
        format!(
            "[account.{name}]\nhost = \"{}\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\nauth = \"user\"\nusername = \"{}\"\npassword = \"{}\"\ntimeout = \"20s\"\nconnect_timeout = \"10s\"\n{extra}\n",
            self.host(),
            self.port(),
            self.user,
            self.password
        )
    }
}

impl Drop for Popa3d {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for mut child in self.children.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.mbox);
        run_with_retry("userdel", &[self.user.as_str()]);
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, children: &Mutex<Vec<Child>>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let _ = tcp.set_nonblocking(false);
                // Like inetd: Nagle stays on. popa3d writes a status line and
                // its data in separate small writes, so a lock-step client
                // without TCP_QUICKACK waits for its own delayed ACK each time.
                let _ = tcp.set_nodelay(false);
                let out = tcp.try_clone().expect("dup connection");
                let child = Command::new(popa3d_bin())
                    .stdin(Stdio::from(OwnedFd::from(tcp)))
                    .stdout(Stdio::from(OwnedFd::from(out)))
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start popa3d");
                let mut kids = children.lock().unwrap();
                // Reap finished sessions so they do not pile up.
                kids.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
                kids.push(child);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("popa3d accept: {e}"),
        }
    }
}

/// One mbox entry: the `From ` line, the message (which must not hold
/// `From ` lines: popa3d serves the mbox as it is), a blank line.
fn mbox_entry(message: &[u8]) -> Vec<u8> {
    assert!(
        !message.starts_with(b"From ") && !message.windows(6).any(|w| w == b"\nFrom "),
        "popa3d test messages must not contain `From ` lines"
    );
    let mut out = FROM_LINE.as_bytes().to_vec();
    out.extend_from_slice(message);
    if !message.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

fn split_mbox(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let sep = format!("\n\n{FROM_LINE}");
    let Some(rest) = text.strip_prefix(FROM_LINE.as_bytes()) else {
        return out;
    };
    let mut rest = rest.to_vec();
    loop {
        match rest.windows(sep.len()).position(|w| w == sep.as_bytes()) {
            Some(i) => {
                out.push(rest[..=i].to_vec());
                rest = rest[i + sep.len()..].to_vec();
            }
            None => {
                let end = rest.len().saturating_sub(1);
                out.push(rest[..end].to_vec());
                return out;
            }
        }
    }
}

fn write_mbox(path: &Path, user: &str, text: &[u8]) {
    let mut f = std::fs::File::create(path).expect("write popa3d mbox");
    f.write_all(text).unwrap();
    f.sync_all().unwrap();
    let (uid, _) = super::dovecot::lookup_user(user).expect("popa3d test user");
    std::os::unix::fs::chown(path, Some(uid), None).expect("chown mbox");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn create_user(user: &str, password: &str) {
    let _ = Command::new("userdel").arg(user).output();
    run_with_retry(
        "useradd",
        &["--no-create-home", "--shell", "/usr/sbin/nologin", user],
    );
    for _ in 0..100 {
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{user}:{password}\n").as_bytes())
            .unwrap();
        if child.wait().unwrap().success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chpasswd for {user} kept failing");
}

/// useradd/userdel fail while another process holds /etc/passwd's lock
/// (tests run in parallel): retry for a while.
fn run_with_retry(program: &str, args: &[&str]) {
    let mut last = String::new();
    for _ in 0..100 {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{program} {args:?} kept failing: {last}");
}
