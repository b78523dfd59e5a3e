//! Running the real `popsync` binary with a generated config, and an
//! independent reference reader of what the server serves.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::dovecot::Dovecot;

pub const BIN: &str = env!("CARGO_BIN_EXE_popsync");

/// A scratch home for one popsync: config file, state dir, mail targets.
pub struct Popsync {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

impl Popsync {
    /// `accounts` is the TOML after the top-level keys.
    pub fn new(accounts: &str) -> Popsync {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let config = dir.path().join("config.toml");
        let p = Popsync {
            dir,
            config,
            state_dir,
        };
        p.write_config(accounts);
        p
    }

    pub fn write_config(&self, accounts: &str) {
        // A short busy timeout: a test of a locked state.db need not wait
        // out the default 30 s; real writers hold the lock for milliseconds.
        let text = format!(
            "state_dir = {:?}\nstate_busy_timeout = \"3s\"\n\n{accounts}",
            self.state_dir
        );
        std::fs::write(&self.config, text).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("-c").arg(&self.config).args(args);
        cmd.env_remove("POPSYNC_LOG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().unwrap())
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run(cmd.output().unwrap())
    }
}

/// A finished popsync process.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// An `[account.NAME]` table for a Dovecot user.
pub struct AccountToml {
    pub name: String,
    pub lines: Vec<String>,
}

impl AccountToml {
    /// Implicit TLS to the test Dovecot, trusting its CA.
    pub fn tls(name: &str, dovecot: &Dovecot, user: &str) -> AccountToml {
        let password = dovecot
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .expect("known user");
        AccountToml {
            name: name.to_string(),
            lines: vec![
                format!("host = \"{}\"", dovecot.tls_host),
                format!("port = {}", dovecot.tls_port),
                "tls = \"implicit\"".into(),
                format!("ca_file = {:?}", dovecot.pki.ca_pem),
                format!("username = \"{user}\""),
                format!("password = \"{password}\""),
            ],
        }
    }

    /// The plain port with STLS.
    pub fn starttls(name: &str, dovecot: &Dovecot, user: &str) -> AccountToml {
        let mut a = AccountToml::tls(name, dovecot, user);
        a.set("host", &format!("\"{}\"", dovecot.plain_host));
        a.set("port", &dovecot.plain_port.to_string());
        a.set("tls", "\"starttls\"");
        a
    }

    /// Sets (or replaces) `key = value` (value as TOML).
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        let prefix = format!("{key} =");
        self.lines.retain(|l| !l.starts_with(&prefix));
        self.lines.push(format!("{key} = {value}"));
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        let prefix = format!("{key} =");
        self.lines.retain(|l| !l.starts_with(&prefix));
        self
    }

    pub fn maildir(&mut self, path: &Path) -> &mut Self {
        self.set("maildir", &format!("{path:?}"))
    }

    pub fn mbox(&mut self, path: &Path) -> &mut Self {
        self.set("mbox", &format!("{path:?}"))
    }

    pub fn render(&self) -> String {
        format!("[account.{}]\n{}\n", self.name, self.lines.join("\n"))
    }
}

/// What the server serves for every message, read with an independent,
/// deliberately naive client (plain port, USER/PASS): RETR bodies
/// un-stuffed with CRLF turned into LF. Keyed by UID.
pub fn served_messages(dovecot: &Dovecot, user: &str, password: &str) -> HashMap<String, Vec<u8>> {
    let stream = TcpStream::connect((dovecot.plain_host, dovecot.plain_port)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = Vec::new();
    let status = |reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>| {
        line.clear();
        reader.read_until(b'\n', line).unwrap();
        assert!(
            line.starts_with(b"+OK"),
            "{}",
            String::from_utf8_lossy(line)
        );
    };
    status(&mut reader, &mut line);
    for cmd in [format!("USER {user}"), format!("PASS {password}")] {
        writer.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        status(&mut reader, &mut line);
    }
    writer.write_all(b"UIDL\r\n").unwrap();
    status(&mut reader, &mut line);
    let mut uids = Vec::new();
    loop {
        line.clear();
        reader.read_until(b'\n', &mut line).unwrap();
        if line == b".\r\n" {
            break;
        }
        let text = String::from_utf8(line.clone()).unwrap();
        let mut parts = text.split_whitespace();
        let n: u32 = parts.next().unwrap().parse().unwrap();
        uids.push((n, parts.next().unwrap().to_string()));
    }
    let mut out = HashMap::new();
    for (n, uid) in uids {
        writer
            .write_all(format!("RETR {n}\r\n").as_bytes())
            .unwrap();
        status(&mut reader, &mut line);
        let mut body = Vec::new();
        loop {
            line.clear();
            reader.read_until(b'\n', &mut line).unwrap();
            if line == b".\r\n" {
                break;
            }
            let mut l: &[u8] = &line;
            if l.starts_with(b"..") {
                l = &l[1..];
            }
            let l = l.strip_suffix(b"\r\n").expect("CRLF line end");
            body.extend_from_slice(l);
            body.push(b'\n');
        }
        out.insert(uid, body);
    }
    writer.write_all(b"QUIT\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    out
}

/// Every file in `maildir/new` and `maildir/cur`.
pub fn maildir_messages(maildir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for e in entries {
            out.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    out
}

/// Sorted copies, to compare collections as multisets.
pub fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

impl Popsync {
    /// Runs popsync with `input` on its stdin (a pipe, not a terminal),
    /// bounded by `limit`: a command that waits for more input is killed.
    pub fn run_stdin(&self, args: &[&str], input: &str, limit: std::time::Duration) -> Run {
        use std::process::Stdio;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill(); // still our unreaped child: safe
                break child.wait().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Run(Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        })
    }
}
