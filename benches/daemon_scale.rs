//! `cargo bench --bench daemon_scale -- [OPTIONS]`: one `popsync daemon`
//! polling many accounts of a loopback Dovecot (one message each), timed
//! from its log: the first round (everything new), then the second round
//! the schedule brings by itself (nothing new), the peak and idle RSS, the
//! CPU per idle poll, and whether every account was polled again within
//! its interval plus jitter. Needs root (Dovecot's mail user).
//!
//! Options: `--accounts N` (default 10000), `--interval SECS` (default 300,
//! the "5m" of the issue), `--jobs N` (the daemon's, default its own 64),
//! `--out FILE` (default bench/results/daemon-scale.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::dovecot::MAIL_USER;
use support::{Dovecot, DovecotOptions};

const PASSWORD: &str = "benchpass";
/// The daemon's default jitter: up to this fraction of a wait is added.
const JITTER: f64 = 0.1;

struct Opts {
    accounts: usize,
    interval: u64,
    jobs: Option<usize>,
    out: PathBuf,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        accounts: 10_000,
        interval: 300,
        jobs: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results/daemon-scale.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--bench" => {}
            "--accounts" => o.accounts = value().parse().expect("--accounts N"),
            "--interval" => o.interval = value().parse().expect("--interval SECS"),
            "--jobs" => o.jobs = Some(value().parse().expect("--jobs N")),
            "--out" => o.out = PathBuf::from(value()),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// The daemon's CPU time (user + system) and memory, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct Proc {
    cpu: Duration,
    rss_kib: u64,
    hwm_kib: u64,
}

fn sample(pid: u32) -> Proc {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses: utime is the 14th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ticks = ticks(11) + ticks(12);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Proc {
        cpu: Duration::from_millis(cpu_ticks * 1000 / hz),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    }
}

/// One poll's log line: when we read it, which account, whether it was ok.
struct Poll {
    at: Instant,
    account: String,
    ok: bool,
}

fn account_name(i: usize) -> String {
    format!("a{i:05}")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("daemon_scale: run via `cargo bench --bench daemon_scale`");
        return;
    }
    let opts = parse_opts();
    let n = opts.accounts;
    let users: Vec<(String, String)> = (1..=n)
        .map(|i| (account_name(i), PASSWORD.to_string()))
        .collect();
    eprintln!("starting Dovecot with {n} users");
    let dovecot = Dovecot::start_with(
        DovecotOptions::default()
            .high_performance(true)
            .users(users),
    );
    for i in 1..=n {
        let name = account_name(i);
        let msg = format!(
            "From: bench@example.org\nTo: {name}@example.org\nSubject: scale {i}\n\nhello\n"
        );
        std::fs::write(dovecot.maildir(&name).join("new").join("1.bench"), msg)
            .expect("load message");
    }
    let status = Command::new("chown")
        .args(["-R", &format!("{MAIL_USER}:")])
        .arg(
            dovecot
                .maildir(&account_name(1))
                .parent()
                .expect("mail root"),
        )
        .status()
        .expect("chown");
    assert!(status.success(), "chown the mail root");

    let mut toml = format!("[defaults]\ninterval = {}\nnotify = false\n", opts.interval);
    let work = tempfile::tempdir().expect("work dir");
    for i in 1..=n {
        let name = account_name(i);
        let _ = write!(
            toml,
            "\n[account.{name}]\nhost = \"{}\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\n\
             auth = \"user\"\nusername = \"{name}\"\npassword = \"{PASSWORD}\"\nmaildir = {:?}\n",
            dovecot.plain_host,
            dovecot.plain_port,
            work.path().join("mail").join(&name)
        );
    }
    let p = support::popsync::Popsync::new(&toml);
    let mut cmd = p.command(&["daemon"]);
    if let Some(jobs) = opts.jobs {
        cmd.args(["--jobs", &jobs.to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let load_before = machine_load();
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn popsync daemon");
    let pid = child.id();
    let polls: Arc<Mutex<Vec<Poll>>> = Arc::default();
    let other: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (polls, other) = (polls.clone(), other.clone());
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                // "INFO a00001: 1 new (60 B), 0 deleted, 0 skipped, 0.0s: ok"
                let account = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|w| w.strip_suffix(':'))
                    .filter(|w| w.starts_with('a') && line.contains(" deleted, "));
                match account {
                    Some(a) => polls.lock().unwrap().push(Poll {
                        at,
                        account: a.to_string(),
                        ok: line.ends_with(": ok"),
                    }),
                    None => other.lock().unwrap().push(line),
                }
            }
        });
    }
    let count = || polls.lock().unwrap().len();
    let wait_for = |want: usize, limit: Duration| -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while count() < want {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(polls.lock().unwrap()[want - 1].at)
    };
    let interval = Duration::from_secs(opts.interval);
    // A first round slower than the interval is itself a finding: report it.
    let first_done = wait_for(n, interval.max(Duration::from_secs(1800))).unwrap_or_else(|| {
        panic!(
            "first round: {} of {n} polls within the interval; other log lines:\n{}",
            count(),
            other.lock().unwrap().join("\n")
        )
    });
    let first_round = first_done - started;
    eprintln!("first round: {n} polls in {first_round:.1?}");
    let after_first = sample(pid);
    // The second round comes by itself: interval + jitter after each poll.
    let limit = interval.mul_f64(1.0 + JITTER) + first_round + Duration::from_secs(60);
    let second_done = wait_for(2 * n, limit);
    let after_second = sample(pid);
    std::thread::sleep(Duration::from_secs(2));
    let idle = sample(pid);
    let _ = child.kill();
    let _ = child.wait();

    let polls = polls.lock().unwrap();
    let ok = polls.iter().filter(|p| p.ok).count();
    let mut by_account: HashMap<&str, Vec<Instant>> = HashMap::new();
    for p in polls.iter() {
        by_account.entry(&p.account).or_default().push(p.at);
    }
    // Lateness: how far past interval × (1 + jitter) a second poll came.
    let bound = interval.mul_f64(1.0 + JITTER);
    let mut late = 0;
    let mut worst_gap = Duration::ZERO;
    let mut early = 0;
    for times in by_account.values() {
        match times.as_slice() {
            [a, b, ..] => {
                let gap = *b - *a;
                worst_gap = worst_gap.max(gap);
                if gap > bound + Duration::from_secs(1) {
                    late += 1;
                }
                if gap + Duration::from_secs(1) < interval {
                    early += 1;
                }
            }
            _ => late += 1,
        }
    }
    let second_round = second_done.map(|t| t - first_done);
    let idle_cpu = after_second.cpu.saturating_sub(after_first.cpu);
    let mut md = format!(
        "Run {} UTC-epoch; load average before {load_before} / after {}; {} cores; \
         `cargo bench --bench daemon_scale -- --accounts {n} --interval {}`{}\n\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine_load(),
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        opts.interval,
        opts.jobs
            .map_or(String::new(), |j| format!(" (--jobs {j})")),
    );
    md.push_str("| what | value |\n|---|---|\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(md, "| {k} | {v} |");
    };
    row(
        "accounts (1 message each), interval",
        format!("{n}, {} s", opts.interval),
    );
    row(
        "first round (all new): last poll after start",
        format!("{:.1} s", first_round.as_secs_f64()),
    );
    row(
        "second round (nothing new), by the schedule",
        second_round.map_or("INCOMPLETE".into(), |d| {
            format!("last poll {:.1} s after the first round's", d.as_secs_f64())
        }),
    );
    row("polls logged / ok", format!("{} / {ok}", polls.len()));
    row(
        "accounts polled again within interval × (1 + jitter) + 1 s",
        format!(
            "{} of {n} (late or missing: {late}; early: {early}; widest gap {:.1} s)",
            n - late.min(n),
            worst_gap.as_secs_f64()
        ),
    );
    row(
        "CPU, first round",
        format!("{:.2} s", after_first.cpu.as_secs_f64()),
    );
    row(
        "CPU per idle poll (second round)",
        format!("{:.2} ms", idle_cpu.as_secs_f64() * 1000.0 / n as f64),
    );
    row(
        "peak RSS (VmHWM)",
        format!("{:.1} MiB", idle.hwm_kib as f64 / 1024.0),
    );
    row(
        "RSS after the first round / idle after the second",
        format!(
            "{:.1} / {:.1} MiB",
            after_first.rss_kib as f64 / 1024.0,
            idle.rss_kib as f64 / 1024.0
        ),
    );
    println!("{md}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).expect("results dir");
    }
    std::fs::write(&opts.out, &md).expect("write results");
    drop(dovecot);
}

fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
