//! `bench/run` (or `cargo bench --bench compare -- [OPTIONS]`): popsync
//! against mpop, fetchmail (+ safecat) and getmail6 on one loopback Dovecot,
//! in one run, alternating, with a raw pipelined read as the yardstick.
//!
//! Options: `--runs N` (timed runs per tool after one warm-up, default 5),
//! `--slow-runs N` (timed runs of fetchmail and getmail6, default = runs),
//! `--skip TOOL,...` (raw, popsync, mpop, fetchmail, getmail), `--no-tls`,
//! `--synthetic N:BYTES` (an extra mailbox of N generated messages),
//! `--accounts N` (many-accounts case, default 1000, 0 = off),
//! `--account-runs N` (default 3), `--big MB` (one message of MB MiB, peak
//! RSS, default 200, 0 = off), `--out DIR` (default bench/results),
//! `--serve` (only start the loaded Dovecot and wait, for profiling by hand).
//!
//! Latency (plain only): every tool reaches Dovecot through a loopback delay
//! line (`common/delay.rs`) holding each chunk `--latency MS` in each
//! direction (default 25 = 50 ms RTT, 0 = off): the first
//! `--latency-messages N` corpus messages (default 1000) and
//! `--latency-accounts N` accounts × 10 (default 200; popsync and mpop).
//! There the raw read sends every RETR at once (bound only by bandwidth).
//! `--only-latency` skips the loopback scenarios.
//!
//! Every run syncs into a fresh directory; all deletions happen after the
//! scenario's last run, so no timed run pays for them.

#[path = "common/corpus.rs"]
mod corpus;
#[path = "common/delay.rs"]
mod delay;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::dovecot::MAIL_USER;
use support::popsync::{maildir_messages, served_messages, sorted};
use support::{Dovecot, DovecotOptions};

const PASSWORD: &str = "benchpass";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tool {
    Raw,
    Popsync,
    Mpop,
    Fetchmail,
    Getmail,
}

impl Tool {
    const ALL: [Tool; 5] = [
        Tool::Raw,
        Tool::Popsync,
        Tool::Mpop,
        Tool::Fetchmail,
        Tool::Getmail,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::Raw => "raw",
            Tool::Popsync => "popsync",
            Tool::Mpop => "mpop",
            Tool::Fetchmail => "fetchmail",
            Tool::Getmail => "getmail",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Raw => "raw pipelined read",
            Tool::Popsync => "popsync",
            Tool::Mpop => "mpop",
            Tool::Fetchmail => "fetchmail+safecat",
            Tool::Getmail => "getmail6",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Transport {
    Plain,
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
        }
    }
}

struct Opts {
    runs: usize,
    /// Timed runs of the slow peers (fetchmail, getmail6): a minute each.
    slow_runs: Option<usize>,
    tools: Vec<Tool>,
    tls: bool,
    synthetic: Option<(usize, usize)>,
    accounts: usize,
    account_runs: usize,
    big_mb: usize,
    out: PathBuf,
    /// Only start the loaded Dovecot and wait (for profiling by hand).
    serve: bool,
    /// One-way delay of the latency scenarios, ms (0 = off).
    latency_ms: u64,
    latency_messages: usize,
    latency_accounts: usize,
    only_latency: bool,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        runs: 5,
        slow_runs: None,
        tools: Tool::ALL.to_vec(),
        tls: true,
        synthetic: None,
        accounts: 1000,
        account_runs: 3,
        big_mb: 200,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results"),
        serve: false,
        latency_ms: 25,
        latency_messages: 1000,
        latency_accounts: 200,
        only_latency: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--runs" => o.runs = value().parse().expect("--runs N"),
            "--slow-runs" => o.slow_runs = Some(value().parse().expect("--slow-runs N")),
            "--no-tls" => o.tls = false,
            "--skip" => {
                let skip = value();
                o.tools
                    .retain(|t| !skip.split(',').any(|s| s.trim() == t.name()));
            }
            "--synthetic" => {
                let v = value();
                let (n, size) = v.split_once(':').expect("--synthetic N:BYTES");
                o.synthetic = Some((n.parse().expect("N"), size.parse().expect("BYTES")));
            }
            "--accounts" => o.accounts = value().parse().expect("--accounts N"),
            "--account-runs" => o.account_runs = value().parse().expect("--account-runs N"),
            "--big" => o.big_mb = value().parse().expect("--big MB"),
            "--out" => o.out = PathBuf::from(value()),
            "--serve" => o.serve = true,
            "--latency" => o.latency_ms = value().parse().expect("--latency MS"),
            "--latency-messages" => {
                o.latency_messages = value().parse().expect("--latency-messages N")
            }
            "--latency-accounts" => {
                o.latency_accounts = value().parse().expect("--latency-accounts N")
            }
            "--only-latency" => o.only_latency = true,
            "--raw-read" => {
                // Internal: the yardstick client, run as its own process.
                let addr = value();
                let user = value();
                let ca = args.next();
                raw_read(&addr, &user, ca.as_deref().map(Path::new));
                std::process::exit(0);
            }
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// One measured process: wall time (ours, µs resolution) and peak RSS
/// (`/usr/bin/time -v`).
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: f64,
    rss_kb: u64,
    ok: bool,
}

/// A command line to measure.
struct Cmd {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Run as this user (getmail6 must not run as root).
    user: Option<&'static str>,
    /// Exit codes that mean success (fetchmail: 1 = no new mail).
    ok_codes: Vec<i32>,
}

impl Cmd {
    fn new(argv: &[&str]) -> Cmd {
        Cmd {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            user: None,
            ok_codes: vec![0],
        }
    }
}

fn measure(cmd: &Cmd, scratch: &Path) -> Sample {
    let timefile = scratch.join("time.out");
    let mut c = Command::new("/usr/bin/time");
    c.arg("-v").arg("-o").arg(&timefile);
    if let Some(user) = cmd.user {
        c.args(["runuser", "-u", user, "--"]);
    }
    c.args(&cmd.argv);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    let started = Instant::now();
    let out = c.output().expect("run /usr/bin/time");
    let wall = started.elapsed().as_secs_f64();
    let ok = out.status.code().is_some_and(|c| cmd.ok_codes.contains(&c));
    if !ok {
        eprintln!(
            "!! {} exited with {}:\n{}\n{}",
            cmd.argv.join(" "),
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 10),
            tail(&String::from_utf8_lossy(&out.stderr), 10),
        );
    }
    let report = std::fs::read_to_string(&timefile).unwrap_or_default();
    let rss_kb = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Sample { wall, rss_kb, ok }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(status.success(), "`{cmd}` failed");
}

fn write_0600(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn make_maildir(dir: &Path) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create maildir");
    }
}

fn count_maildir(dir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|s| std::fs::read_dir(dir.join(s)).map_or(0, |rd| rd.count()))
        .sum()
}

fn chown_tree(dir: &Path, user: &str) {
    sh(&format!("chown -R {user}: '{}'", dir.display()));
}

// ---------------------------------------------------------------- corpus

fn synthetic(n: usize, size: usize, seed: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut m = format!(
                "From: bench@example.org\nTo: user@example.org\nSubject: synthetic {seed}/{i}\n\n"
            )
            .into_bytes();
            let line = b"The quick brown fox jumps over the lazy dog 0123456789 ....\n";
            while m.len() < size {
                let take = line.len().min(size - m.len());
                m.extend_from_slice(&line[..take]);
            }
            if !m.ends_with(b"\n") {
                m.push(b'\n');
            }
            m
        })
        .collect()
}

/// Drops messages straight into `new/` (fast, not durable: benchmark data).
fn load_mailbox(dovecot: &Dovecot, user: &str, msgs: &[Vec<u8>]) {
    let new = dovecot.maildir(user).join("new");
    for (i, m) in msgs.iter().enumerate() {
        std::fs::write(new.join(format!("{i:07}.bench.{user}")), m).expect("load message");
    }
    chown_tree(&dovecot.maildir(user), MAIL_USER);
}

// ---------------------------------------------------------------- tools

struct Env<'a> {
    dovecot: &'a Dovecot,
    work: PathBuf,
    /// Plain connections go through this loopback port (the delay line).
    via: Option<u16>,
    /// RETRs the raw read keeps in flight.
    raw_depth: usize,
}

impl Env<'_> {
    fn addr(&self, t: Transport) -> (String, u16) {
        if let (Some(port), Transport::Plain) = (self.via, t) {
            return ("127.0.0.1".into(), port);
        }
        match t {
            Transport::Plain => (self.dovecot.plain_host.to_string(), self.dovecot.plain_port),
            Transport::Tls => (self.dovecot.tls_host.to_string(), self.dovecot.tls_port),
        }
    }

    fn ca(&self) -> String {
        self.dovecot.pki.ca_pem.display().to_string()
    }

    /// A fresh directory for one run of one tool: config + maildir. Returns
    /// the command and the maildir.
    fn setup(&self, tool: Tool, t: Transport, users: &[&str], tag: &str) -> (Cmd, PathBuf) {
        let dir = self
            .work
            .join(format!("{}-{}-{tag}", tool.name(), t.name()));
        std::fs::create_dir_all(&dir).expect("create run dir");
        let (host, port) = self.addr(t);
        let ca = self.ca();
        let maildir_of = |u: &str| dir.join("mail").join(u);
        let cmd = match tool {
            Tool::Raw => {
                let exe = std::env::current_exe().expect("current exe");
                let mut argv = vec![
                    exe.display().to_string(),
                    "--raw-read".into(),
                    format!("{host}:{port}"),
                    users[0].to_string(),
                ];
                if t == Transport::Tls {
                    argv.push(ca);
                }
                let mut c = Cmd {
                    argv,
                    ..Cmd::new(&[])
                };
                c.env
                    .push((RAW_DEPTH_VAR.into(), self.raw_depth.to_string()));
                c
            }
            Tool::Popsync => {
                let mut cfg = format!("state_dir = {:?}\n", dir.join("state"));
                for u in users {
                    let tls = if t == Transport::Tls {
                        format!("tls = \"implicit\"\nca_file = {ca:?}\n")
                    } else {
                        "tls = \"none\"\nallow_insecure_auth = true\nauth = \"user\"\n".into()
                    };
                    let _ = write!(
                        cfg,
                        "\n[account.{u}]\nhost = \"{host}\"\nport = {port}\n{tls}\
                         username = \"{u}\"\npassword = \"{PASSWORD}\"\nmaildir = {:?}\nkeep = true\n",
                        maildir_of(u)
                    );
                }
                let conf = dir.join("popsync.toml");
                write_0600(&conf, &cfg);
                Cmd::new(&[
                    support::popsync::BIN,
                    "-q",
                    "-c",
                    &conf.display().to_string(),
                    "sync",
                ])
            }
            Tool::Mpop => {
                let mut cfg = String::from("defaults\n");
                let _ = writeln!(
                    cfg,
                    "host {host}\nport {port}\nauth user\nkeep on\nonly_new on"
                );
                let _ = writeln!(cfg, "uidls_file {}/%U_at_%H", dir.display());
                if t == Transport::Tls {
                    let _ = writeln!(cfg, "tls on\ntls_starttls off\ntls_trust_file {ca}");
                } else {
                    cfg.push_str("tls off\n");
                }
                for u in users {
                    make_maildir(&maildir_of(u));
                    let _ = writeln!(
                        cfg,
                        "\naccount {u}\nuser {u}\npassword {PASSWORD}\ndelivery maildir {}",
                        maildir_of(u).display()
                    );
                }
                let conf = dir.join("mpoprc");
                write_0600(&conf, &cfg);
                Cmd::new(&["mpop", "-q", "-C", &conf.display().to_string(), "-a"])
            }
            Tool::Fetchmail => {
                let mut cfg = String::from("set no syslog\n");
                for u in users {
                    let md = maildir_of(u);
                    make_maildir(&md);
                    // fetchmail matches the certificate's name, not its IP
                    // SAN; without TLS, `sslproto ""` stops it trying STLS.
                    let (poll, ssl) = if t == Transport::Tls {
                        ("localhost", format!(" ssl sslcertck sslcertfile \"{ca}\""))
                    } else {
                        (host.as_str(), " sslproto \"\"".to_string())
                    };
                    let _ = writeln!(
                        cfg,
                        "poll {poll} service {port} protocol pop3 uidl\n  user \"{u}\" password \"{PASSWORD}\" keep{ssl}\n  \
                         mda \"safecat {0}/tmp {0}/new\"",
                        md.display()
                    );
                }
                let conf = dir.join("fetchmailrc");
                std::fs::write(&conf, &cfg).expect("write fetchmailrc");
                std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o700))
                    .expect("chmod");
                let mut c = Cmd::new(&[
                    "fetchmail",
                    "-s",
                    "-N",
                    "-f",
                    &conf.display().to_string(),
                    "-i",
                    &dir.join("fetchids").display().to_string(),
                    "--pidfile",
                    &dir.join("fetchmail.pid").display().to_string(),
                ]);
                c.env.push(("HOME".into(), dir.display().to_string()));
                // fetchmail(1): exit 1 = "no mail" (the incremental run).
                c.ok_codes.push(1);
                c
            }
            Tool::Getmail => {
                let u = users[0];
                let md = maildir_of(u);
                make_maildir(&md);
                let (kind, extra) = if t == Transport::Tls {
                    ("SimplePOP3SSLRetriever", format!("ca_certs = {ca}\n"))
                } else {
                    ("SimplePOP3Retriever", String::new())
                };
                let cfg = format!(
                    "[retriever]\ntype = {kind}\nserver = {host}\nport = {port}\nusername = {u}\npassword = {PASSWORD}\n{extra}\
                     [destination]\ntype = Maildir\npath = {}/\n\
                     [options]\nread_all = false\ndelete = false\nverbose = 0\nmessage_log_syslog = false\n",
                    md.display()
                );
                write_0600(&dir.join("getmailrc"), &cfg);
                chown_tree(&dir, MAIL_USER);
                let mut c = Cmd::new(&[
                    "getmail",
                    "--getmaildir",
                    &dir.display().to_string(),
                    "--rcfile",
                    "getmailrc",
                ]);
                c.env.push(("HOME".into(), dir.display().to_string()));
                c.user = Some(MAIL_USER);
                c
            }
        };
        (cmd, maildir_of(users[0]))
    }
}

// ---------------------------------------------------------------- raw read

/// The yardstick: one session, every RETR pipelined (64 in flight, as
/// popsync), bytes discarded after finding each terminator.
fn raw_read(addr: &str, user: &str, ca: Option<&Path>) {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let stream: Box<dyn ReadWrite> = match ca {
        None => Box::new(tcp),
        Some(ca) => {
            let config = support::client_config_trusting(ca);
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let conn = rustls::ClientConnection::new(config, name).expect("tls");
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let mut s = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    let mut status = |s: &mut BufReader<Box<dyn ReadWrite>>| -> String {
        line.clear();
        s.read_until(b'\n', &mut line).expect("read");
        assert!(
            line.starts_with(b"+OK"),
            "{}",
            String::from_utf8_lossy(&line)
        );
        String::from_utf8_lossy(&line).into_owned()
    };
    status(&mut s);
    for cmd in [
        format!("USER {user}\r\n"),
        format!("PASS {PASSWORD}\r\n"),
        "STAT\r\n".into(),
    ] {
        s.get_mut().write_all(cmd.as_bytes()).expect("write");
        s.get_mut().flush().expect("flush");
        let st = status(&mut s);
        if cmd.starts_with("STAT") {
            let n: usize = st
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .expect("STAT");
            read_all(&mut s, n);
        }
    }
    s.get_mut().write_all(b"QUIT\r\n").expect("write");
    s.get_mut().flush().expect("flush");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The raw read's RETRs in flight (set by the bench for each scenario).
const RAW_DEPTH_VAR: &str = "POPSYNC_BENCH_RAW_DEPTH";

fn read_all(s: &mut BufReader<Box<dyn ReadWrite>>, n: usize) {
    let depth: usize = std::env::var(RAW_DEPTH_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let (mut sent, mut done, mut bytes) = (0, 0, 0u64);
    let mut line = Vec::with_capacity(1024);
    while done < n {
        let mut out = String::new();
        while sent < n && sent - done < depth {
            sent += 1;
            let _ = write!(out, "RETR {sent}\r\n");
        }
        if !out.is_empty() {
            s.get_mut().write_all(out.as_bytes()).expect("write");
            s.get_mut().flush().expect("flush");
        }
        line.clear();
        s.read_until(b'\n', &mut line).expect("read");
        assert!(
            line.starts_with(b"+OK"),
            "RETR: {}",
            String::from_utf8_lossy(&line)
        );
        loop {
            line.clear();
            s.read_until(b'\n', &mut line).expect("read");
            if line == b".\r\n" {
                break;
            }
            bytes += line.len() as u64;
        }
        done += 1;
    }
    std::hint::black_box(bytes);
}

// ---------------------------------------------------------------- runs

#[derive(Clone)]
struct Row {
    scenario: String,
    tool: Tool,
    transport: Transport,
    phase: &'static str,
    samples: Vec<Sample>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Scenario<'a> {
    name: String,
    users: Vec<&'a str>,
    expected: usize,
    tools: Vec<(Tool, Transport)>,
    runs: usize,
    /// fetchmail and getmail6 take part in rounds 0..=slow_runs only.
    slow_runs: usize,
    incremental: bool,
}

fn run_scenario(env: &Env, sc: &Scenario, rows: &mut Vec<Row>) {
    let mut first: HashMap<(Tool, Transport), Vec<Sample>> = HashMap::new();
    let mut incr: HashMap<(Tool, Transport), Vec<Sample>> = HashMap::new();
    let scratch = env.work.join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let mut done = Vec::new();
    // Round 0 is the warm-up (page cache, Dovecot's index), not recorded.
    for round in 0..=sc.runs {
        let mut order = sc.tools.clone();
        let len = order.len().max(1);
        order.rotate_left(round % len);
        for &(tool, t) in &order {
            if matches!(tool, Tool::Fetchmail | Tool::Getmail) && round > sc.slow_runs {
                continue;
            }
            // A path without spaces: fetchmail splits its mda command on them.
            let safe: String = sc
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let tag = format!("{safe}-{round}");
            let (cmd, maildir) = env.setup(tool, t, &sc.users, &tag);
            sh("sync");
            let mut s = measure(&cmd, &scratch);
            if tool != Tool::Raw {
                let users_ok = sc.users.iter().all(|u| {
                    count_maildir(&maildir.parent().expect("mail dir").join(u)) == sc.expected
                });
                if !users_ok {
                    eprintln!(
                        "!! {} {} delivered {} of {} messages (first user)",
                        tool.name(),
                        t.name(),
                        count_maildir(&maildir),
                        sc.expected
                    );
                    s.ok = false;
                }
            }
            eprintln!(
                "{:>10} {:<9} {:<5} run {round}: first {:7.3}s {:6} KiB{}",
                sc.name,
                tool.name(),
                t.name(),
                s.wall,
                s.rss_kb,
                if s.ok { "" } else { "  FAILED" }
            );
            if tool == Tool::Popsync && round == 0 && sc.name == "corpus" {
                check_exact(env, sc.users[0], &maildir);
            }
            let inc = (sc.incremental && tool != Tool::Raw).then(|| {
                let mut s = measure(&cmd, &scratch);
                let delivered: usize = sc
                    .users
                    .iter()
                    .map(|u| count_maildir(&maildir.parent().expect("mail dir").join(u)))
                    .sum();
                if delivered != sc.expected * sc.users.len() {
                    eprintln!("!! {} incremental run changed the maildir", tool.name());
                    s.ok = false;
                }
                eprintln!("{:>37} incremental {:7.3}s {:6} KiB", "", s.wall, s.rss_kb);
                s
            });
            if round > 0 {
                first.entry((tool, t)).or_default().push(s);
                if let Some(i) = inc {
                    incr.entry((tool, t)).or_default().push(i);
                }
            }
            done.push(env.work.join(format!("{}-{}-{tag}", tool.name(), t.name())));
        }
    }
    // Only now: with online discard, removing thousands of files keeps the
    // disk busy for a second or more after `rm` and `sync` return, which
    // slowed whichever run came next (measured: popsync 0.46 s -> 1.35 s).
    for dir in done {
        let _ = std::fs::remove_dir_all(&dir);
    }
    sh("sync");
    for &(tool, t) in &sc.tools {
        for (phase, map) in [("first", &first), ("incremental", &incr)] {
            if let Some(samples) = map.get(&(tool, t)) {
                rows.push(Row {
                    scenario: sc.name.clone(),
                    tool,
                    transport: t,
                    phase,
                    samples: samples.clone(),
                });
            }
        }
    }
}

/// popsync's maildir holds exactly what the server serves (as a multiset).
fn check_exact(env: &Env, user: &str, maildir: &Path) {
    let served = served_messages(env.dovecot, user, PASSWORD);
    let ok = sorted(served.into_values().collect()) == sorted(maildir_messages(maildir));
    eprintln!("popsync byte-exact against the server: {ok}");
    assert!(ok, "popsync's maildir differs from what the server serves");
}

// ---------------------------------------------------------------- report

struct Stat {
    median: f64,
    min: f64,
    max: f64,
    rss_median: f64,
    rss_max: u64,
    ratio: Option<f64>,
    ok: bool,
}

fn stat(row: &Row, rows: &[Row]) -> Stat {
    let mut walls: Vec<f64> = row.samples.iter().map(|s| s.wall).collect();
    let mut rss: Vec<f64> = row.samples.iter().map(|s| s.rss_kb as f64).collect();
    let base = rows.iter().find(|r| {
        r.scenario == row.scenario
            && r.tool == Tool::Popsync
            && r.transport == row.transport
            && r.phase == row.phase
    });
    // Median of paired ratios: run k of the tool over run k of popsync.
    let ratio = base.map(|b| {
        let mut ratios: Vec<f64> = row
            .samples
            .iter()
            .zip(&b.samples)
            .map(|(s, p)| s.wall / p.wall)
            .collect();
        median(&mut ratios)
    });
    Stat {
        min: walls.iter().copied().fold(f64::INFINITY, f64::min),
        max: walls.iter().copied().fold(0.0, f64::max),
        median: median(&mut walls),
        rss_median: median(&mut rss),
        rss_max: row.samples.iter().map(|s| s.rss_kb).max().unwrap_or(0),
        ratio,
        ok: row.samples.iter().all(|s| s.ok),
    }
}

fn report(rows: &[Row], out: &Path, header: &str) {
    std::fs::create_dir_all(out).expect("create results dir");
    let mut md = format!("{header}\n\n");
    md.push_str("| scenario | tool | transport | run | n | median s | min–max s | ÷ popsync (paired median) | peak RSS MiB (median / max) | all ok |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "scenario,tool,transport,phase,runs,median_s,min_s,max_s,ratio_to_popsync,rss_median_kib,rss_max_kib,ok\n",
    );
    for row in rows {
        let s = stat(row, rows);
        let ratio = s.ratio.map_or("–".into(), |r| format!("{r:.2}×"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3}–{:.3} | {} | {:.1} / {:.1} | {} |",
            row.scenario,
            row.tool.label(),
            row.transport.name(),
            row.phase,
            row.samples.len(),
            s.median,
            s.min,
            s.max,
            ratio,
            s.rss_median / 1024.0,
            s.rss_max as f64 / 1024.0,
            if s.ok { "yes" } else { "NO" }
        );
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.4},{:.4},{:.4},{},{:.0},{},{}",
            row.scenario,
            row.tool.name(),
            row.transport.name(),
            row.phase,
            row.samples.len(),
            s.median,
            s.min,
            s.max,
            s.ratio.map_or(String::new(), |r| format!("{r:.3}")),
            s.rss_median,
            s.rss_max,
            s.ok
        );
    }
    println!("{md}");
    std::fs::write(out.join("results.md"), &md).expect("write results.md");
    std::fs::write(out.join("results.csv"), &csv).expect("write results.csv");
    chart(rows, out);
}

/// A PNG bar chart of the corpus first sync (time, memory) via gnuplot.
fn chart(rows: &[Row], out: &Path) {
    let mut data = String::new();
    for row in rows.iter().filter(|r| r.scenario == "corpus") {
        let s = stat(row, rows);
        let _ = writeln!(
            data,
            "\"{}\\n{}\\n{}\" {:.4} {:.2}",
            row.tool.label(),
            row.transport.name(),
            if row.phase == "first" {
                "first"
            } else {
                "no-op"
            },
            s.median,
            s.rss_median / 1024.0
        );
    }
    if data.is_empty() {
        // `--only-latency`: no corpus rows, and gnuplot would leave an
        // empty PNG behind its "x range is invalid".
        return;
    }
    let dat = out.join("chart.dat");
    std::fs::write(&dat, data).expect("write chart.dat");
    let script = format!(
        "set terminal pngcairo size 1400,900 font ',9'\n\
         set output '{png}'\n\
         set multiplot layout 2,1 title 'SpamAssassin corpus (6,046 messages, 32.9 MB), loopback Dovecot: medians'\n\
         set style fill solid 0.8\nset boxwidth 0.7\nset grid ytics\nunset key\nset xtics font ',8'\n\
         set logscale y\nset ylabel 'wall time, s (log)'\n\
         plot '{dat}' using 0:2:xtic(1) with boxes lc rgb '#3060a0', '' using 0:2:(sprintf('%.2f',$2)) with labels offset 0,0.7\n\
         unset logscale y\nset yrange [0:*]\nset ylabel 'peak RSS, MiB'\n\
         plot '{dat}' using 0:3:xtic(1) with boxes lc rgb '#a06030', '' using 0:3:(sprintf('%.1f',$3)) with labels offset 0,0.7\n\
         unset multiplot\n",
        png = out.join("chart.png").display(),
        dat = dat.display()
    );
    let gp = out.join("chart.gp");
    std::fs::write(&gp, script).expect("write chart.gp");
    match Command::new("gnuplot").arg(&gp).status() {
        Ok(s) if s.success() => {}
        other => eprintln!("!! gnuplot failed ({other:?}); CSV and markdown are written"),
    }
    let _ = std::fs::remove_file(&dat);
    let _ = std::fs::remove_file(&gp);
}

fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // `cargo test --all-targets` runs bench targets too: only `cargo bench`
    // (which passes --bench) starts the long comparison.
    if !std::env::args().any(|a| a == "--bench" || a == "--raw-read") {
        eprintln!("compare: run via bench/run or `cargo bench --bench compare`");
        return;
    }
    let opts = parse_opts();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = corpus::load(&root.join("bench/cache"));
    eprintln!(
        "corpus: {} messages, {} bytes",
        corpus.len(),
        corpus.iter().map(Vec::len).sum::<usize>()
    );
    let latency_accounts = if opts.latency_ms > 0 {
        opts.latency_accounts
    } else {
        0
    };
    let account_names: Vec<String> = (1..=opts.accounts.max(latency_accounts))
        .map(|i| format!("a{i:04}"))
        .collect();
    let mut users: Vec<(String, String)> = ["corpus", "synth", "big", "latency"]
        .iter()
        .map(|u| (u.to_string(), PASSWORD.to_string()))
        .collect();
    users.extend(
        account_names
            .iter()
            .map(|u| (u.clone(), PASSWORD.to_string())),
    );
    let dovecot = Dovecot::start_with(
        DovecotOptions::default()
            .high_performance(true)
            .users(users),
    );
    load_mailbox(&dovecot, "corpus", &corpus);
    let latency_corpus = &corpus[..opts.latency_messages.min(corpus.len())];
    if opts.latency_ms > 0 {
        load_mailbox(&dovecot, "latency", latency_corpus);
    }
    if let Some((n, size)) = opts.synthetic {
        load_mailbox(&dovecot, "synth", &synthetic(n, size, 0));
    }
    if opts.big_mb > 0 {
        load_mailbox(&dovecot, "big", &synthetic(1, opts.big_mb << 20, 0));
    }
    for (i, u) in account_names.iter().enumerate() {
        let msgs: Vec<Vec<u8>> = corpus
            .iter()
            .cycle()
            .skip(i * 10 % corpus.len())
            .take(10)
            .cloned()
            .collect();
        load_mailbox(&dovecot, u, &msgs);
    }
    if opts.serve {
        println!(
            "serving: plain {} tls {} ca {} users corpus synth big a0001.. password {PASSWORD}; Ctrl-C to stop",
            dovecot.plain_addr(),
            dovecot.tls_addr(),
            dovecot.pki.ca_pem.display()
        );
        std::io::stdout().flush().expect("flush");
        std::thread::sleep(std::time::Duration::from_secs(24 * 3600));
    }
    let work = tempfile::Builder::new()
        .prefix("popsync-bench-")
        .tempdir_in(root.join("bench/cache"))
        .expect("work dir");
    // getmail runs as the mail user and must reach its own run directory.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let env = Env {
        dovecot: &dovecot,
        work: work.path().to_path_buf(),
        via: None,
        raw_depth: 64,
    };
    let load_before = machine_load();
    let started = Instant::now();

    let mut transports = vec![Transport::Plain];
    if opts.tls {
        transports.push(Transport::Tls);
    }
    let pairs = |tools: &[Tool]| -> Vec<(Tool, Transport)> {
        transports
            .iter()
            .flat_map(|&t| tools.iter().map(move |&tool| (tool, t)))
            .filter(|(tool, _)| opts.tools.contains(tool))
            .collect()
    };
    let mut rows = Vec::new();
    if !opts.only_latency {
        loopback_scenarios(&env, &opts, &corpus, &account_names, &pairs, &mut rows);
    }
    if opts.latency_ms > 0 {
        let one_way = std::time::Duration::from_millis(opts.latency_ms);
        let proxy = delay::DelayProxy::start(dovecot.plain_addr(), one_way);
        let env = Env {
            via: Some(proxy.port()),
            // Every RETR at once: the link's own limit.
            raw_depth: usize::MAX,
            ..env
        };
        let rtt = format!("{} ms RTT", 2 * opts.latency_ms);
        let plain = |tools: &[Tool]| -> Vec<(Tool, Transport)> {
            tools
                .iter()
                .filter(|t| opts.tools.contains(t))
                .map(|&t| (t, Transport::Plain))
                .collect()
        };
        run_scenario(
            &env,
            &Scenario {
                name: format!("corpus {} @ {rtt}", latency_corpus.len()),
                users: vec!["latency"],
                expected: latency_corpus.len(),
                tools: plain(&Tool::ALL),
                runs: opts.runs,
                slow_runs: opts.slow_runs.unwrap_or(opts.runs),
                incremental: true,
            },
            &mut rows,
        );
        if latency_accounts > 0 {
            let names: Vec<&str> = account_names[..latency_accounts]
                .iter()
                .map(String::as_str)
                .collect();
            run_scenario(
                &env,
                &Scenario {
                    name: format!("{latency_accounts} accounts × 10 @ {rtt}"),
                    users: names,
                    expected: 10,
                    tools: plain(&[Tool::Popsync, Tool::Mpop]),
                    runs: opts.account_runs,
                    slow_runs: 0,
                    // mpop needs ~0.4 s per account here: a second pass
                    // would double the scenario for a figure we have.
                    incremental: false,
                },
                &mut rows,
            );
        }
    }
    let header = format!(
        "Run {} UTC-epoch, {:.0} s, load average before {} / after {}; {} cores; Dovecot {} (high-performance login mode), loopback{}.",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        started.elapsed().as_secs_f64(),
        load_before,
        machine_load(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        String::from_utf8_lossy(
            &Command::new("dovecot")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim(),
        if opts.latency_ms > 0 {
            format!(
                "; latency scenarios through a user-space delay line of {} ms each way",
                opts.latency_ms
            )
        } else {
            String::new()
        }
    );
    report(&rows, &opts.out, &header);
}

/// The (tool, transport) pairs of a scenario, from the tools it runs.
type Pairs<'a> = dyn Fn(&[Tool]) -> Vec<(Tool, Transport)> + 'a;

/// The loopback scenarios: corpus, synthetic, one big message, many accounts.
fn loopback_scenarios(
    env: &Env,
    opts: &Opts,
    corpus: &[Vec<u8>],
    account_names: &[String],
    pairs: &Pairs,
    rows: &mut Vec<Row>,
) {
    run_scenario(
        env,
        &Scenario {
            name: "corpus".into(),
            users: vec!["corpus"],
            expected: corpus.len(),
            tools: pairs(&Tool::ALL),
            runs: opts.runs,
            slow_runs: opts.slow_runs.unwrap_or(opts.runs),
            incremental: true,
        },
        rows,
    );
    if let Some((n, size)) = opts.synthetic {
        run_scenario(
            env,
            &Scenario {
                name: format!("synthetic {n}×{size}B"),
                users: vec!["synth"],
                expected: n,
                tools: pairs(&[Tool::Raw, Tool::Popsync, Tool::Mpop]),
                runs: opts.runs,
                slow_runs: 0,
                incremental: true,
            },
            rows,
        );
    }
    if opts.big_mb > 0 {
        run_scenario(
            env,
            &Scenario {
                name: format!("one {} MiB message", opts.big_mb),
                users: vec!["big"],
                expected: 1,
                tools: vec![
                    (Tool::Popsync, Transport::Plain),
                    (Tool::Mpop, Transport::Plain),
                ]
                .into_iter()
                .filter(|(t, _)| opts.tools.contains(t))
                .collect(),
                runs: opts.runs.min(3),
                slow_runs: 0,
                incremental: false,
            },
            rows,
        );
    }
    if opts.accounts > 0 {
        let names: Vec<&str> = account_names[..opts.accounts]
            .iter()
            .map(String::as_str)
            .collect();
        run_scenario(
            env,
            &Scenario {
                name: format!("{} accounts × 10", opts.accounts),
                users: names,
                expected: 10,
                tools: vec![
                    (Tool::Popsync, Transport::Plain),
                    (Tool::Mpop, Transport::Plain),
                ]
                .into_iter()
                .filter(|(t, _)| opts.tools.contains(t))
                .collect(),
                runs: opts.account_runs,
                slow_runs: 0,
                incremental: true,
            },
            rows,
        );
    }
}
