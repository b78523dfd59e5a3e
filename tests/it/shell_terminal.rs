//! `popsync shell` in a real terminal (a tmux pane): the prompt shows the
//! session state, and the password typed after PASS is not echoed.

use crate::support;

use std::path::Path;

use support::dovecot::Dovecot;
use support::popsync::{AccountToml, BIN, Popsync};
use support::tmux::{Tmux, tmux_available};

fn start(dir: &Path, config: &Path) -> Tmux {
    let command = format!("{BIN} -c {} shell alice --login manual", config.display());
    Tmux::start(dir, &command, 150, 50)
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

#[test]
fn ctrl_c_at_the_password_prompt_leaves_the_terminal_as_it_was() {
    if !tmux_available() {
        eprintln!(
            "SKIPPED: tmux is not installed (scripts/test installs it): apt-get install tmux"
        );
        return;
    }
    let d = Dovecot::start();
    let a = AccountToml::tls("alice", &d, "alice");
    let p = Popsync::new(&a.render());
    // The shell in the pane records the terminal's settings around popsync.
    let (before, after) = (
        p.dir.path().join("stty-before"),
        p.dir.path().join("stty-after"),
    );
    let command = format!(
        "stty -g > '{}'; {BIN} -c {} shell alice --login manual; echo \"shell: $?\"; stty -g > '{}'",
        before.display(),
        p.config.display(),
        after.display()
    );
    let tmux = Tmux::start(p.dir.path(), &command, 150, 50);
    tmux.wait_for("alice AUTHORIZATION>");
    tmux.send("USER alice");
    tmux.wait_for("S: +OK");
    tmux.send("PASS");
    tmux.wait_for("Password (not shown):");
    tmux.wait_for_echo_off();
    tmux.key("C-c");
    tmux.assert_interrupted_with_terminal_restored("shell", &before, &after);
}
