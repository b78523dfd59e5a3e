//! kill -9 at random moments against a real Dovecot: after a final clean
//! run every server message is stored exactly once, the mbox parses, and
//! nothing left the server that is not stored.
//!
//! Short version: `cargo test --test it crash::` (runs in the normal suite).
//! Long version (≥200 kill points, thousands of messages):
//!     cargo test --release --test it crash:: -- --ignored --nocapture
//! `POPSYNC_CRASH_SEED=N` replays a run's random choices.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use popsync::deliver::mbox::parse_mboxrd;
use support::dovecot::Dovecot;
use support::popsync::{AccountToml, Popsync, maildir_messages};

#[derive(Clone, Copy, Debug)]
enum Mode {
    Maildir,
    Mbox,
    /// maildir with keep = false: DELE + QUIT are in the loop too.
    Delete,
}

struct Params {
    initial: usize,
    per_iteration: usize,
    kills: usize,
}

/// xorshift64*: enough randomness for kill timing, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("POPSYNC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 | 1
        })
}

/// Distinct messages (numbered), with the stuffing and mbox traps.
fn messages(from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| {
            let mut m =
                format!("From: crash{i}@example.org\nSubject: crash test {i}\n\n").into_bytes();
            match i % 4 {
                0 => m.extend_from_slice(b"a lone dot follows\n.\n..two\n"),
                1 => m.extend_from_slice(b"From the start of a line\n>From quoted\n"),
                2 => m.extend_from_slice(&vec![b'z'; 2000 + i % 3000]),
                _ => {}
            }
            m.extend_from_slice(format!("end of {i}\n").as_bytes());
            m
        })
        .collect()
}

fn multiset(v: &[Vec<u8>]) -> HashMap<&[u8], usize> {
    let mut m = HashMap::new();
    for x in v {
        *m.entry(x.as_slice()).or_default() += 1;
    }
    m
}

/// (lost, duplicated): messages of `expected` not in `stored`, and extra
/// copies in `stored`.
fn compare(expected: &[Vec<u8>], stored: &[Vec<u8>]) -> (usize, usize) {
    let want = multiset(expected);
    let have = multiset(stored);
    let lost = want
        .iter()
        .map(|(k, n)| n.saturating_sub(*have.get(k).unwrap_or(&0)))
        .sum();
    let dup = have
        .iter()
        .map(|(k, n)| n.saturating_sub(*want.get(k).unwrap_or(&0)))
        .sum();
    (lost, dup)
}

fn stored(mode: Mode, target: &Path) -> Vec<Vec<u8>> {
    match mode {
        Mode::Maildir | Mode::Delete => maildir_messages(target),
        Mode::Mbox => match std::fs::read(target) {
            Ok(bytes) => parse_mboxrd(&bytes),
            Err(_) => Vec::new(),
        },
    }
}

/// The server's messages, read from Dovecot's maildir while Dovecot may
/// move (new/ -> cur/) or expunge files: vanished files are skipped.
fn server_messages(maildir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                out.push(bytes);
            }
        }
    }
    out
}

struct Outcome {
    killed: usize,
    finished_first: usize,
    lost: usize,
    duplicated: usize,
    messages: usize,
    /// Kill delays as a fraction of one uninterrupted run: <5%, 5–95%, >95%.
    spread: [usize; 3],
}

fn crash_loop(mode: Mode, p: &Params, rng: &mut Rng) -> Outcome {
    let d = Dovecot::start();
    let mut added = messages(0, p.initial);
    d.add_messages("alice", &added);
    let dir = tempfile::tempdir().unwrap();

    // Uninterrupted runs (keep = true, their own state) give the time
    // scale the kill moments are drawn from: a fixed cost per run and a
    // cost per message still to fetch.
    let (fixed, per_message) = {
        let mut a = AccountToml::tls("alice", &d, "alice");
        a.maildir(&dir.path().join("yardstick"));
        let probe = Popsync::new(&a.render());
        let t = Instant::now();
        probe.run(&["sync"]).expect_code(0);
        let full = t.elapsed();
        let t = Instant::now();
        probe.run(&["sync"]).expect_code(0);
        let fixed = t.elapsed();
        (fixed, full.saturating_sub(fixed) / p.initial as u32)
    };
    eprintln!("{mode:?}: one run costs {fixed:?} + {per_message:?} per new message");

    let target: PathBuf = dir.path().join("target");
    let mut a = AccountToml::tls("alice", &d, "alice");
    match mode {
        Mode::Maildir => a.maildir(&target),
        Mode::Mbox => a.mbox(&target),
        Mode::Delete => a.maildir(&target).set("keep", "false"),
    };
    let popsync = Popsync::new(&a.render());
    let mut out = Outcome {
        killed: 0,
        finished_first: 0,
        lost: 0,
        duplicated: 0,
        messages: 0,
        spread: [0; 3],
    };
    for i in 0..p.kills {
        let pending = added.len().saturating_sub(stored(mode, &target).len());
        let scale_ms = (fixed + per_message * pending as u32).as_millis().max(20) as u64;
        let delay_ms = match rng.below(10) {
            // Very early: connect, TLS, login, recovery.
            0 => rng.below(scale_ms / 20 + 1),
            // Late: the last batch, DELE, QUIT.
            1 => scale_ms * 9 / 10 + rng.below(scale_ms / 2 + 1),
            _ => rng.below(scale_ms + 1),
        };
        let mut child = popsync
            .command(&["-q", "sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_some() {
            out.finished_first += 1;
        } else {
            child.kill().unwrap(); // SIGKILL
            out.killed += 1;
            let frac = delay_ms as f64 / scale_ms as f64;
            out.spread[if frac < 0.05 {
                0
            } else if frac <= 0.95 {
                1
            } else {
                2
            }] += 1;
        }
        child.wait().unwrap();

        // Invariant at every kill: whatever left the server is stored.
        if let Mode::Delete = mode {
            // Dovecot may still be finishing the killed session: retry
            // before calling a message lost.
            let mut lost = 0;
            for _ in 0..20 {
                let mut present = server_messages(&d.maildir("alice"));
                present.extend(stored(mode, &target));
                lost = compare(&added, &present).0;
                if lost == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(
                lost, 0,
                "iteration {i}: deleted from the server, not stored"
            );
        }
        // Keep work in front of the next kill.
        let more = messages(added.len(), p.per_iteration);
        d.add_messages("alice", &more);
        added.extend(more);
    }

    let run = popsync.run(&["sync"]);
    run.expect_code(0);
    let have = stored(mode, &target);
    let (lost, duplicated) = compare(&added, &have);
    out.lost = lost;
    out.duplicated = duplicated;
    out.messages = added.len();
    match mode {
        Mode::Delete => assert_eq!(d.message_count("alice"), 0, "all deleted at the end"),
        _ => assert_eq!(d.message_count("alice"), added.len(), "nothing deleted"),
    }
    out
}

fn run_all(p: &Params) {
    let seed = seed();
    eprintln!("crash loop seed: POPSYNC_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut total = (0, 0, 0, 0);
    for mode in [Mode::Maildir, Mode::Mbox, Mode::Delete] {
        let o = crash_loop(mode, p, &mut rng);
        eprintln!(
            "{mode:?}: {} messages, {} kill points (early/middle/late {:?}), {} runs finished before their kill, lost {}, duplicated {}",
            o.messages, o.killed, o.spread, o.finished_first, o.lost, o.duplicated
        );
        total.0 += o.killed;
        total.1 += o.lost;
        total.2 += o.duplicated;
        total.3 += o.messages;
        assert_eq!((o.lost, o.duplicated), (0, 0), "{mode:?}");
    }
    eprintln!(
        "total: {} kill points over {} messages: lost {}, duplicated {}",
        total.0, total.3, total.1, total.2
    );
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    run_all(&Params {
        initial: 300,
        per_iteration: 10,
        kills: 10,
    });
}

#[test]
#[ignore = "long: cargo test --release --test it crash:: -- --ignored --nocapture"]
fn kill_9_long_loop() {
    run_all(&Params {
        initial: 2000,
        per_iteration: 20,
        kills: 80,
    });
}
