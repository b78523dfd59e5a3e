//! A real terminal for tests of prompts: a private tmux server (its own
//! socket, no user config) running one command in a pane that stays after
//! the command exits, so its last lines and exit status can be read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The pane's session name.
const SESSION: &str = "lab";

/// What the pane shows, followed by the status and `]`, once the command exited.
const EXITED: &str = "[exited with status ";

pub fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Killed (server and pane) on drop.
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Runs `command` (a shell command line) in a `width`×`height` pane; the
    /// socket lives in `dir`.
    pub fn start(dir: &Path, command: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let (w, h) = (width.to_string(), height.to_string());
        // The shell reports the status on the screen: tmux's own
        // #{pane_dead_status} is sometimes empty on a loaded machine.
        let command = format!("{command}; echo \"{EXITED}$?]\"");
        let out = tmux.cmd(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &w,
            "-y",
            &h,
            &command,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        // Keep the pane after the command exits, to read its last lines.
        tmux.cmd(&["set-option", "-t", SESSION, "remain-on-exit", "on"]);
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux (scripts/test installs it)")
    }

    /// Types `keys` literally, then Enter.
    pub fn send(&self, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", SESSION, "-l", keys]);
        assert!(out.status.success(), "{out:?}");
        let out = self.cmd(&["send-keys", "-t", SESSION, "Enter"]);
        assert!(out.status.success(), "{out:?}");
    }

    /// Presses one key, in tmux's names (`C-c`, `Enter`).
    pub fn key(&self, key: &str) {
        let out = self.cmd(&["send-keys", "-t", SESSION, key]);
        assert!(out.status.success(), "{out:?}");
    }

    /// The pane's terminal settings, as `stty -a` lists them (while the
    /// command runs: a dead pane has no terminal).
    pub fn stty(&self) -> Vec<String> {
        let out = Command::new("stty")
            .args(["-a", "-F", &self.tty()])
            .output()
            .expect("run stty");
        String::from_utf8_lossy(&out.stdout)
            .split([' ', ';', '\n'])
            .filter(|flag| !flag.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The pane with its scrollback.
    pub fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", SESSION, "-S", "-200"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (bounded, generous for a loaded machine) until `ready` accepts
    /// the screen; returns the screen.
    pub fn wait_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen (still running: {}):\n{screen}",
                self.processes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the pane shows `text` (tmux drops trailing spaces).
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_until(&format!("{text:?}"), |s| s.contains(text))
    }

    /// The command's exit status, once it has exited (bounded wait).
    pub fn exit_status(&self) -> i32 {
        let screen = self.wait_until("the exit status", |s| s.contains(EXITED));
        let status = screen.rsplit(EXITED).next().unwrap_or_default();
        let status = status.split(']').next().unwrap_or_default();
        status
            .parse()
            .unwrap_or_else(|_| panic!("no exit status on the screen:\n{screen}"))
    }
}

impl Tmux {
    /// The pane's terminal, `/dev/pts/N`.
    fn tty(&self) -> String {
        let out = self.cmd(&["display-message", "-p", "-t", SESSION, "#{pane_tty}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Asserts that `program`, run by the pane's shell between two
    /// `stty -g` into `before` and `after` and then `echo "PROGRAM: $?"`,
    /// died of the Ctrl-C it was sent (128 + SIGINT) with the terminal's
    /// settings as they were.
    pub fn assert_interrupted_with_terminal_restored(
        &self,
        program: &str,
        before: &Path,
        after: &Path,
    ) {
        let status = self.exit_status();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        assert_eq!(
            read(after),
            read(before),
            "the terminal's settings changed:\n{}",
            self.screen()
        );
        assert_eq!(status, 0, "the last stty ran");
        let screen = self.screen();
        assert!(screen.contains(&format!("{program}: 130")), "{screen}");
    }

    /// Waits until the pane's terminal no longer echoes what is typed (the
    /// program turned echo off, as it must before reading a password).
    pub fn wait_for_echo_off(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let settings = self.stty();
            if settings.iter().any(|flag| flag == "-echo") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal still echoes: {settings:?}\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What still runs on the pane's terminal (for a failure message).
    fn processes(&self) -> String {
        let tty = self.tty();
        let tty = tty.strip_prefix("/dev/").unwrap_or(&tty).to_string();
        let ps = Command::new("ps")
            .args(["-o", "pid,stat,wchan:32,args", "-t", &tty])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        ps.unwrap_or_else(|e| format!("ps: {e}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}
