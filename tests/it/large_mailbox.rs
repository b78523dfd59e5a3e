//! A large mailbox is listed and planned in compact structures (issue 11):
//! the real binary's peak RSS for a 100,000-entry UIDL stays bounded.
//! bench/uidl-rss measures the 1,000,000-entry figure.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{self, ScriptedServer, Step, expect, line};

const MESSAGES: u32 = 100_000;

/// 40-octet UIDs in no particular order, as servers hand them out.
fn uid(i: u32) -> String {
    format!(
        "{:040x}",
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) >> 8
    )
}

fn script() -> Vec<Step> {
    let mut uidl = String::from("+OK\r\n");
    let mut list = String::from("+OK\r\n");
    for i in 1..=MESSAGES {
        uidl.push_str(&format!("{i} {}\r\n", uid(i)));
        list.push_str(&format!("{i} 100\r\n"));
    }
    uidl.push_str(".\r\n");
    list.push_str(".\r\n");
    vec![
        line("+OK ready"),
        expect("CAPA"),
        Step::Send(b"+OK\r\nUSER\r\nUIDL\r\n.\r\n".to_vec()),
        expect("USER bench"),
        line("+OK"),
        expect("PASS *"),
        line("+OK"),
        expect("STAT"),
        expect("UIDL"),
        line(&format!("+OK {MESSAGES} {}", u64::from(MESSAGES) * 100)),
        Step::Send(uidl.into_bytes()),
        expect("LIST"),
        Step::Send(list.into_bytes()),
        expect("QUIT"),
        line("+OK"),
    ]
}

/// The process's peak RSS in KiB (VmHWM), polled until it exits: the high
/// water mark only grows, and the dry run prints for a while after planning.
fn peak_rss_kib(mut child: std::process::Child) -> (u64, std::process::ExitStatus) {
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, status);
        }
        assert!(Instant::now() < deadline, "popsync did not finish in 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Before the compact listing and plan this run peaked at ~55 MiB (debug
/// build; 388 MiB for a million entries); now ~33 MiB, of which ~15 MiB
/// is the binary and runtime.
#[test]
fn a_100000_message_mailbox_is_planned_in_under_44_mib() {
    let server = ScriptedServer::start(script());
    let p = support::popsync::Popsync::new("");
    p.write_config(&format!(
        "[account.big]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure_auth = true\nauth = \"user\"\nusername = \"bench\"\npassword = \"bench\"\nmaildir = {:?}\ntimeout = \"60s\"\n",
        server.port(),
        p.path("mail"),
    ));
    let stderr = p.path("stderr");
    let child = p
        .command(&["sync", "--dry-run", "big"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let (peak, status) = peak_rss_kib(child);
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "dry run failed: {status}: {err}");
    server.finish_blocking().unwrap();
    let mib = peak as f64 / 1024.0;
    eprintln!("peak RSS {mib:.1} MiB for {MESSAGES} UIDL entries");
    assert!(
        mib < 44.0,
        "peak RSS {mib:.1} MiB for {MESSAGES} UIDL entries"
    );
}
