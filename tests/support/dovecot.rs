//! A private Dovecot POP3 server per test (see shared notes `dovecot.md`).
//!
//! Each instance has its own temp dir holding config, base_dir, state_dir,
//! log, PKI, passwd-file and maildirs, and its own ports, so tests can run in
//! parallel. `Drop` stops it.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::certs::TestPki;

pub const DOVECOT_BIN: &str = "/usr/sbin/dovecot";
/// Owner of all test mail: Dovecot refuses uid 0 for mail access.
pub const MAIL_USER: &str = "popsync-vmail";

const START_DEADLINE: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;

const LOOPBACK_1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LOOPBACK_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LOOPBACK_3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

pub fn dovecot_available() -> bool {
    Path::new(DOVECOT_BIN).exists()
}

#[derive(Debug, Clone)]
pub struct DovecotOptions {
    /// (name, password) pairs; default alice:secret1 and bob:secret2.
    pub users: Vec<(String, String)>,
    /// Dovecot's `disable_plaintext_auth`. Dovecot counts a connection whose
    /// remote IP equals its local IP as "secured", so with `true` the plain
    /// listener moves to 127.0.0.2 (clients then connect from 127.0.0.1):
    /// always connect to [`Dovecot::plain_host`].
    pub disable_plaintext_auth: bool,
    /// Dovecot's "high-performance" login mode (reused login/pop3
    /// processes), for benchmarks over many accounts.
    pub high_performance: bool,
    /// Offer STLS on the plain port. With `false` the plain listener's
    /// address gets `ssl = no` and the implicit-TLS listener moves to
    /// 127.0.0.3 (Dovecot can only vary `ssl` per local IP, not per port):
    /// always connect to [`Dovecot::tls_host`].
    pub stls: bool,
    /// Validate XOAUTH2 / OAUTHBEARER tokens with `passdb { driver = oauth2 }`
    /// by POSTing them to this introspection URL (RFC 7662; credentials in
    /// the URL). Password logins keep working through the passwd-file.
    pub oauth2_introspection: Option<String>,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        DovecotOptions {
            users: vec![
                ("alice".into(), "secret1".into()),
                ("bob".into(), "secret2".into()),
            ],
            disable_plaintext_auth: false,
            high_performance: false,
            stls: true,
            oauth2_introspection: None,
        }
    }
}

impl DovecotOptions {
    /// Adds a user to the defaults' list.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// Replaces the user list (e.g. 1,000 generated accounts).
    pub fn users<I, N, P>(mut self, users: I) -> Self
    where
        I: IntoIterator<Item = (N, P)>,
        N: Into<String>,
        P: Into<String>,
    {
        self.users = users
            .into_iter()
            .map(|(n, p)| (n.into(), p.into()))
            .collect();
        self
    }

    pub fn disable_plaintext_auth(mut self, yes: bool) -> Self {
        self.disable_plaintext_auth = yes;
        self
    }

    pub fn high_performance(mut self, yes: bool) -> Self {
        self.high_performance = yes;
        self
    }

    pub fn stls(mut self, yes: bool) -> Self {
        self.stls = yes;
        self
    }

    pub fn oauth2_introspection(mut self, url: &str) -> Self {
        self.oauth2_introspection = Some(url.to_string());
        self
    }
}

pub struct Dovecot {
    pub pki: TestPki,
    /// Plain + STLS listener: connect to `plain_host:plain_port`.
    pub plain_host: IpAddr,
    pub plain_port: u16,
    /// Implicit-TLS listener: connect to `tls_host:tls_port`.
    pub tls_host: IpAddr,
    pub tls_port: u16,
    pub users: Vec<(String, String)>,
    pub options: DovecotOptions,
    conf: PathBuf,
    log_path: PathBuf,
    mail_root: PathBuf,
    uid: u32,
    gid: u32,
    master_pid: Option<i32>,
    // Last field: removed after `Drop::drop` stopped the server.
    dir: tempfile::TempDir,
}

impl Dovecot {
    pub fn start() -> Dovecot {
        Dovecot::start_with(DovecotOptions::default())
    }

    pub fn start_with(options: DovecotOptions) -> Dovecot {
        assert!(
            dovecot_available(),
            "dovecot-pop3d is not installed: run scripts/test as root (it installs what the tests need), or apt-get install dovecot-pop3d"
        );
        let (uid, gid) = ensure_mail_user();
        let dir = tempfile::Builder::new()
            .prefix("popsync-dovecot-")
            .tempdir()
            .expect("create dovecot temp dir");
        // Dovecot's unprivileged processes (auth as `dovecot`, mail as the
        // mail user) must traverse it; tempfile makes it 0700.
        chmod(dir.path(), 0o755);
        let root = dir.path().to_path_buf();
        let pki = TestPki::generate(&root.join("pki"));
        let mail_root = root.join("mail");
        std::fs::create_dir(&mail_root).expect("create mail root");
        chown(&mail_root, uid, gid);

        let mut passwd = String::new();
        for (name, password) in &options.users {
            assert!(
                !name.contains([':', '/', '\n']) && !password.contains([':', '\n']),
                "unusable test user {name:?}"
            );
            passwd.push_str(&format!("{name}:{{PLAIN}}{password}::::::\n"));
            for sub in ["", "tmp", "new", "cur"] {
                let d = mail_root.join(name).join(sub);
                std::fs::create_dir_all(&d).expect("create maildir");
                chown(&d, uid, gid);
            }
        }
        let passwd_path = root.join("users");
        std::fs::write(&passwd_path, passwd).expect("write passwd-file");
        chmod(&passwd_path, 0o644);
        if let Some(url) = &options.oauth2_introspection {
            // The token's `sub` (oidc-provider: the login name) is the user.
            let args = format!(
                "introspection_mode = post\nintrospection_url = {url}\nusername_attribute = sub\nactive_attribute = active\nactive_value = true\n"
            );
            let path = root.join("oauth2.conf");
            std::fs::write(&path, args).expect("write oauth2 passdb args");
            chmod(&path, 0o644);
        }

        let plain_host = if options.disable_plaintext_auth {
            LOOPBACK_2
        } else {
            LOOPBACK_1
        };
        let tls_host = if options.stls { LOOPBACK_1 } else { LOOPBACK_3 };

        let mut dovecot = Dovecot {
            pki,
            plain_host: IpAddr::V4(plain_host),
            plain_port: 0,
            tls_host: IpAddr::V4(tls_host),
            tls_port: 0,
            users: options.users.clone(),
            options,
            conf: root.join("dovecot.conf"),
            log_path: root.join("dovecot.log"),
            mail_root,
            uid,
            gid,
            master_pid: None,
            dir,
        };

        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let (plain_port, tls_port) = free_ports();
            dovecot.plain_port = plain_port;
            dovecot.tls_port = tls_port;
            std::fs::write(&dovecot.conf, dovecot.config_text()).expect("write dovecot.conf");
            let _ = std::fs::remove_file(&dovecot.log_path);
            match dovecot.try_start() {
                Ok(()) => return dovecot,
                Err(e) => {
                    dovecot.stop();
                    let log = dovecot.log();
                    last_failure = format!("{e}\n--- dovecot log (tail) ---\n{}", tail(&log, 30));
                    // Someone else took a port between our probe and Dovecot's
                    // bind: try again with new ones. Anything else is fatal.
                    if !last_failure.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("dovecot did not start: {last_failure}");
    }

    fn try_start(&mut self) -> Result<(), String> {
        // The daemonised master inherits stdout/stderr: with pipes
        // (`Command::output`) we would wait for it to exit. Use a file.
        let startup = self.dir.path().join("startup.out");
        let out_file =
            std::fs::File::create(&startup).map_err(|e| format!("create {startup:?}: {e}"))?;
        let status = Command::new(DOVECOT_BIN)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(out_file)
            .status()
            .map_err(|e| format!("run {DOVECOT_BIN}: {e}"))?;
        self.master_pid = self.read_master_pid();
        if !status.success() {
            return Err(format!(
                "`dovecot -c` exited with {status}: {}",
                std::fs::read_to_string(&startup).unwrap_or_default()
            ));
        }
        let deadline = Instant::now() + START_DEADLINE;
        let addrs = [self.plain_addr(), self.tls_addr()];
        let mut ready = [false, false];
        while Instant::now() < deadline {
            for (addr, ok) in addrs.iter().zip(ready.iter_mut()) {
                if !*ok {
                    *ok = TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok();
                }
            }
            if ready.iter().all(|ok| *ok) {
                if self.master_pid.is_none() {
                    self.master_pid = self.read_master_pid();
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "ports {addrs:?} did not accept within {START_DEADLINE:?} (ready: {ready:?})"
        ))
    }

    fn config_text(&self) -> String {
        let root = self.dir.path().display().to_string();
        let ssl_cert = self.pki.leaf_pem.display();
        let ssl_key = self.pki.leaf_key.display();
        let mail = self.mail_root.display();
        let instance = instance_name();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let disable_plaintext_auth = yes_no(self.options.disable_plaintext_auth);
        let (plain_host, tls_host) = (self.plain_host, self.tls_host);
        let (plain_port, tls_port) = (self.plain_port, self.tls_port);
        // auth_failure_delay = 0: Dovecot's default 2 s pause after a failed
        // login would slow every wrong-password test down.
        // In high-performance mode login and pop3 processes serve many
        // connections instead of one each (~15 ms of CPU per login saved).
        let (login_perf, pop3_service) = if self.options.high_performance {
            (
                "  service_count = 0\n  process_min_avail = 2\n  vsz_limit = 1G\n",
                "service pop3 {\n  service_count = 0\n  process_min_avail = 2\n  client_limit = 1\n}\n\
                 service auth {\n  client_limit = 5000\n}\n",
            )
        } else {
            ("", "")
        };
        let (mechanisms, oauth2_passdb) = match &self.options.oauth2_introspection {
            Some(_) => (
                "plain login apop cram-md5 xoauth2 oauthbearer",
                format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {root}/oauth2.conf\n}}\n"
                ),
            ),
            None => ("plain login apop cram-md5", String::new()),
        };
        let no_stls = if self.options.stls {
            String::new()
        } else {
            format!("local {plain_host} {{\n  ssl = no\n}}\n")
        };
        format!(
            "# generated by tests/support/dovecot.rs\n\
             base_dir = {root}/run\n\
             state_dir = {root}/state\n\
             instance_name = {instance}\n\
             log_path = {root}/dovecot.log\n\
             listen = 127.0.0.1\n\
             protocols = pop3\n\
             ssl = yes\n\
             ssl_cert = <{ssl_cert}\n\
             ssl_key = <{ssl_key}\n\
             disable_plaintext_auth = {disable_plaintext_auth}\n\
             auth_mechanisms = {mechanisms}\n\
             auth_failure_delay = 0\n\
             pop3_uidl_format = %08Xu%08Xv\n\
             mail_location = maildir:{mail}/%u\n\
             mail_uid = {MAIL_USER}\n\
             mail_gid = {MAIL_USER}\n\
             first_valid_uid = 1\n\
             first_valid_gid = 1\n\
             default_login_user = dovenull\n\
             default_internal_user = dovecot\n\
             {oauth2_passdb}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {root}/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid={MAIL_USER} gid={MAIL_USER} home={mail}/%u\n}}\n\
             service pop3-login {{\n\
             {login_perf}\
             \x20 inet_listener pop3 {{\n    address = {plain_host}\n    port = {plain_port}\n  }}\n\
             \x20 inet_listener pop3s {{\n    address = {tls_host}\n    port = {tls_port}\n    ssl = yes\n  }}\n\
             }}\n\
             {pop3_service}\
             {no_stls}"
        )
    }

    pub fn plain_addr(&self) -> SocketAddr {
        SocketAddr::new(self.plain_host, self.plain_port)
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::new(self.tls_host, self.tls_port)
    }

    /// The test user's password (panics for an unknown user).
    pub fn password(&self, user: &str) -> &str {
        self.users
            .iter()
            .find(|(n, _)| n == user)
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| panic!("no test user {user:?}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.mail_root.join(user)
    }

    /// Drops one message into `user`'s maildir `new/` (written in `tmp/`,
    /// then renamed, like an MDA). Pass LF line endings: Dovecot stores mail
    /// with LF and serves it with CRLF.
    pub fn add_message(&self, user: &str, bytes: &[u8]) -> PathBuf {
        let maildir = self.maildir(user);
        assert!(
            maildir.join("new").is_dir(),
            "no maildir for user {user:?} (add it in DovecotOptions)"
        );
        let name = unique_name();
        let tmp = maildir.join("tmp").join(&name);
        let mut f = std::fs::File::create(&tmp).expect("create message in tmp/");
        f.write_all(bytes).expect("write message");
        f.sync_all().expect("sync message");
        drop(f);
        chown(&tmp, self.uid, self.gid);
        let new = maildir.join("new").join(&name);
        std::fs::rename(&tmp, &new).expect("move message to new/");
        new
    }

    pub fn add_messages(&self, user: &str, msgs: &[Vec<u8>]) -> Vec<PathBuf> {
        msgs.iter().map(|m| self.add_message(user, m)).collect()
    }

    /// Messages in `user`'s maildir (`new/` + `cur/`): what is left on the
    /// server after DELE + QUIT.
    pub fn message_count(&self, user: &str) -> usize {
        let maildir = self.maildir(user);
        ["new", "cur"]
            .iter()
            .map(|sub| {
                std::fs::read_dir(maildir.join(sub))
                    .map(|rd| rd.filter(|e| e.is_ok()).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Dovecot's whole log (all processes).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn read_master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("run").join("master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the server at once and waits until the master is gone.
    ///
    /// SIGKILL, not `doveadm stop`: a graceful stop takes 1-2 s (the master
    /// waits for its children), which adds up over many tests. The children
    /// watch the master's pipe and exit with it (~0.1 s, ports closed).
    pub fn stop(&mut self) {
        let Some(pid) = self.master_pid.take().or_else(|| self.read_master_pid()) else {
            return self.doveadm_stop();
        };
        // SAFETY: kill(2) of the master this instance started (from its own
        // pid file; it is not our child, so the pid cannot be reused by one).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_gone(pid, Duration::from_secs(5));
    }

    /// `doveadm -c FILE stop`: the graceful way (for tests of a server that
    /// goes away mid-session); waits until the master is gone.
    pub fn stop_graceful(&mut self) {
        let pid = self.master_pid.take().or_else(|| self.read_master_pid());
        self.doveadm_stop();
        if let Some(pid) = pid
            && !wait_gone(pid, Duration::from_secs(10))
        {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_gone(pid, Duration::from_secs(5));
        }
    }

    fn doveadm_stop(&self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until `pid` is gone; false on timeout.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A pid counts as gone once it no longer exists or is a zombie (the
/// daemonised master is not our child, so we cannot reap it).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.trim().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// The mail user's (uid, gid), created as a system user if missing.
fn ensure_mail_user() -> (u32, u32) {
    // Parallel tests would race useradd's lock on /etc/passwd.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ids) = lookup_user(MAIL_USER) {
        return ids;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "system user {MAIL_USER} is missing and tests are not running as root: \
         run .ci/run or `useradd --system --no-create-home {MAIL_USER}`"
    );
    let out = super::users::useradd_system(MAIL_USER);
    // Another test binary may have created it meanwhile: look again.
    lookup_user(MAIL_USER).unwrap_or_else(|| {
        panic!(
            "useradd {MAIL_USER} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Two distinct free loopback ports (both probes are held at once).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind probe port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind probe port");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

fn instance_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "popsync-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn unique_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "{}.M{}P{}Q{}.popsync-test",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
