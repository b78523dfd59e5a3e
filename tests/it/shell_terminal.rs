//! `popsync shell` in a real terminal (a tmux pane): the prompt shows the
//! session state, and the password typed after PASS is not echoed.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::dovecot::Dovecot;
use support::popsync::{AccountToml, BIN, Popsync};

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn send(&self, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", "lab", "-l", keys]);
        assert!(out.status.success(), "{out:?}");
        let out = self.cmd(&["send-keys", "-t", "lab", "Enter"]);
        assert!(out.status.success(), "{out:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .cmd(&["capture-pane", "-p", "-t", "lab", "-S", "-200"])
                .stdout,
        )
        .into_owned()
    }

    /// Waits (bounded) until the pane shows `text` (tmux drops trailing
    /// spaces); returns the screen.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} on the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn start(dir: &Path, config: &Path) -> Tmux {
    let tmux = Tmux {
        socket: dir.join("tmux.sock"),
    };
    let command = format!("{BIN} -c {} shell alice --login manual", config.display());
    let out = tmux.cmd(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "lab",
        "-x",
        "150",
        "-y",
        "50",
        &command,
    ]);
    assert!(out.status.success(), "tmux new-session: {out:?}");
    // Keep the pane after popsync exits, to read its last lines.
    tmux.cmd(&["set-option", "-t", "lab", "remain-on-exit", "on"]);
    tmux
}

#[test]
fn shell_on_a_terminal_reads_the_password_with_echo_off_and_shows_the_state() {
    if !tmux_available() {
        eprintln!(
            "SKIPPED: tmux is not installed (scripts/test installs it): apt-get install tmux"
        );
        return;
    }
    let d = Dovecot::start();
    d.add_message("alice", b"Subject: one\n\nbody\n");
    let a = AccountToml::tls("alice", &d, "alice");
    let p = Popsync::new(&a.render());
    let tmux = start(p.dir.path(), &p.config);

    tmux.wait_for("alice AUTHORIZATION>");
    tmux.send("USER alice");
    tmux.wait_for("S: +OK");
    tmux.send("PASS");
    tmux.wait_for("Password (not shown):");
    tmux.send("secret1");
    let screen = tmux.wait_for("alice TRANSACTION>");
    assert!(screen.contains("S: +OK Logged in."), "{screen}");
    tmux.send("STAT");
    tmux.wait_for("S: +OK 1 ");
    tmux.send("QUIT");
    let screen = tmux.wait_for("S: +OK Logging out");
    assert!(
        !screen.contains("secret1"),
        "the password was echoed:\n{screen}"
    );
    assert!(screen.contains("UPDATE state"), "{screen}");
}
