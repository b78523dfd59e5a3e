//! The progress bar on a real 80-column terminal (tmux): messages and bytes
//! on one line that does not wrap, and the same numbers as the summary.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::fault_server::{FaultServer, Faults, mailbox};
use support::popsync::{BIN, Popsync};

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn start(socket: &Path, command: &str) -> Tmux {
        let ok = Command::new("tmux")
            .arg("-S")
            .arg(socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "80",
                "-y",
                "30",
            ])
            .arg(command)
            .status()
            .expect("tmux is installed (scripts/test installs it)")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux {
            socket: socket.to_path_buf(),
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// "59/100 messages, 12.3 KiB" from a bar line.
fn bar_numbers(line: &str) -> Option<(String, String)> {
    let (_, rest) = line.split_once(' ')?;
    let (count, rest) = rest.split_once(" messages, ")?;
    let bytes = rest.split(" [").next()?;
    Some((count.to_string(), bytes.trim().to_string()))
}

#[test]
fn progress_bar_fits_80_columns_and_agrees_with_the_summary() {
    // Message 60's RETR stalls: the bar stands still at 59 for the 6 s
    // timeout, long enough to read it off the screen on a loaded machine.
    let server = FaultServer::start(
        mailbox(100),
        Faults {
            stall_in_retr: Some(60),
            ..Faults::default()
        },
    );
    let p = Popsync::new("");
    let extra = format!("maildir = {:?}", p.path("Mail"));
    let toml = server
        .account_toml("a-long-account-name-for-the-bar", &extra)
        .replace("timeout = \"3s\"\nconnect", "timeout = \"6s\"\nconnect");
    p.write_config(&toml);
    let command = format!(
        "{BIN} -c '{}' sync; echo EXIT=$?; sleep 60",
        p.config.display()
    );
    let tmux = Tmux::start(&p.path("tmux.sock"), &command);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_bar: Option<String> = None;
    let screen = loop {
        let screen = tmux.screen();
        if let Some(line) = screen.lines().find(|l| l.contains(" messages, ")) {
            last_bar = Some(line.to_string());
        }
        if screen.contains("EXIT=") {
            break screen;
        }
        assert!(Instant::now() < deadline, "no end of the run:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let bar = last_bar.unwrap_or_else(|| panic!("no progress bar seen; last screen:\n{screen}"));
    // One line, not wrapped: the bar's brackets and ETA are on it.
    assert!(bar.contains(" [") && bar.contains(']'), "wrapped? {bar:?}");
    assert!(bar.chars().count() <= 80, "{bar:?}");
    assert!(bar.starts_with("a-long-account-name…"), "{bar:?}");
    let (count, bytes) = bar_numbers(&bar).unwrap_or_else(|| panic!("{bar:?}"));
    assert_eq!(count, "59/100", "{bar:?}");
    let summary = screen
        .lines()
        .find(|l| l.starts_with("a-long-account-name-for-the-bar: "))
        .unwrap_or_else(|| panic!("no summary:\n{screen}"));
    assert!(
        summary.contains(&format!("59 new ({bytes})")),
        "bar {bar:?} and summary {summary:?} disagree"
    );
    assert!(screen.contains("EXIT=6"), "{screen}");
}
