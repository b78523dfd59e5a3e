//! `popsync init` at its prompts in a real terminal (tmux): the address
//! asked for, the server found through SRV records and its certificate
//! shown, the password typed with echo off, a refused password asked again,
//! the account written and the login shown.

use crate::support;

use std::os::unix::fs::PermissionsExt;

use support::dns::Dnsmasq;
use support::dovecot::Dovecot;
use support::popsync::{BIN, Popsync, maildir_messages};
use support::tmux::{Tmux, tmux_available};

/// `popsync init` with no address, resolving through `dns`; only the
/// private CA and the maildir come as flags.
fn init_command(p: &Popsync, dns: &Dnsmasq, d: &Dovecot) -> String {
    format!(
        "env POPSYNC_TEST_DNS={} '{BIN}' -c '{}' init --ca-file '{}' --maildir '{}'",
        dns.addr,
        p.config.display(),
        d.pki.ca_pem.display(),
        p.path("Mail/alice").display()
    )
}

/// [`init_command`] on a terminal.
fn start_init(p: &Popsync, dns: &Dnsmasq, d: &Dovecot) -> Tmux {
    Tmux::start(p.dir.path(), &init_command(p, dns, d), 400, 50)
}

fn world() -> Option<(Dovecot, Dnsmasq, Popsync)> {
    if !tmux_available() {
        eprintln!(
            "SKIPPED: tmux is not installed (scripts/test installs it): apt-get install tmux"
        );
        return None;
    }
    let d = Dovecot::start();
    d.add_message("alice", b"Subject: hello\n\nfirst\n");
    let dns = Dnsmasq::start(&[("_pop3s._tcp.example.test", "localhost", d.tls_port)]);
    let p = Popsync::new("");
    let _ = std::fs::remove_file(&p.config);
    Some((d, dns, p))
}

const PASSWORD_PROMPT: &str = "Password for alice (not shown):";

#[test]
fn init_at_its_prompts_hides_the_password_asks_again_after_a_refusal_and_writes_0600() {
    let Some((d, dns, p)) = world() else { return };
    let password = d.password("alice");
    let tmux = start_init(&p, &dns, &d);

    tmux.wait_for("Mail address:");
    tmux.send("alice@example.test");
    let screen = tmux.wait_for("Login name [alice@example.test]:");
    assert!(
        screen.contains(&format!(
            "localhost:{} (implicit TLS, SRV _pop3s._tcp.example.test)",
            d.tls_port
        )),
        "the server found is shown:\n{screen}"
    );
    assert!(
        screen.contains("certificate   ") && screen.contains("fingerprint   sha256:"),
        "the certificate is shown:\n{screen}"
    );
    tmux.send("alice");
    tmux.wait_for(PASSWORD_PROMPT);
    tmux.wait_for_echo_off();
    tmux.send("wrong-secret-7");
    // One line saying what was refused, then the same question again.
    let screen = tmux.wait_until("a second password prompt", |s| {
        s.matches(PASSWORD_PROMPT).count() == 2
    });
    let refusal: Vec<&str> = screen.lines().filter(|l| l.contains("try again")).collect();
    assert_eq!(refusal.len(), 1, "{screen}");
    assert!(refusal[0].contains("`username`"), "{screen}");
    assert!(
        !p.config.exists(),
        "nothing is written before a login works"
    );
    tmux.wait_for_echo_off();
    tmux.send(password);
    let screen = tmux.wait_for("next: popsync sync alice");
    assert_eq!(tmux.exit_status(), 0, "{screen}");
    assert!(
        screen.contains("login ok") && screen.contains("1 messages"),
        "{screen}"
    );
    assert!(screen.contains("created [account.alice] in"), "{screen}");
    for typed in [password, "wrong-secret-7"] {
        assert!(!screen.contains(typed), "a password was echoed:\n{screen}");
    }

    // The typed password is written, so the new file is the owner's only.
    let mode = std::fs::metadata(&p.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&p.config).unwrap();
    assert!(text.contains("username = \"alice\"\n"), "{text}");
    assert!(
        text.contains(&format!("password = \"{password}\"\n")),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-7"), "{text}");

    let state = p.path("xdg-state");
    let sync = p.run_env(&["sync"], &[("XDG_STATE_HOME", state.to_str().unwrap())]);
    sync.expect_code(0);
    assert_eq!(maildir_messages(&p.path("Mail/alice")).len(), 1);
}

#[test]
fn init_at_its_prompts_gives_up_after_three_refused_passwords_with_exit_4() {
    let Some((d, dns, p)) = world() else { return };
    let tmux = start_init(&p, &dns, &d);
    tmux.wait_for("Mail address:");
    tmux.send("alice@example.test");
    tmux.wait_for("Login name [alice@example.test]:");
    tmux.send("");
    for attempt in 1..=3 {
        tmux.wait_until("the password prompt", |s| {
            s.matches("Password for alice@example.test (not shown):")
                .count()
                == attempt
        });
        tmux.wait_for_echo_off();
        tmux.send(&format!("wrong-{attempt}"));
    }
    assert_eq!(tmux.exit_status(), 4);
    let screen = tmux.screen();
    assert_eq!(screen.matches("try again").count(), 2, "{screen}");
    let last = screen
        .lines()
        .rfind(|l| l.starts_with("popsync: "))
        .unwrap_or_default();
    assert!(
        last.contains("`username`") && last.contains("nothing was written"),
        "{screen}"
    );
    assert!(!screen.contains("wrong-1"), "{screen}");
    assert!(!p.config.exists());
    let _ = d;
}

#[test]
fn ctrl_c_at_the_password_prompt_leaves_the_terminal_as_it_was() {
    let Some((d, dns, p)) = world() else { return };
    // The shell in the pane records the terminal's settings around init.
    let (before, after) = (p.path("stty-before"), p.path("stty-after"));
    let command = format!(
        "stty -g > '{}'; {}; echo \"init: $?\"; stty -g > '{}'",
        before.display(),
        init_command(&p, &dns, &d),
        after.display()
    );
    let tmux = Tmux::start(p.dir.path(), &command, 400, 50);
    tmux.wait_for("Mail address:");
    tmux.send("alice@example.test");
    tmux.wait_for("Login name [alice@example.test]:");
    tmux.send("alice");
    tmux.wait_for(PASSWORD_PROMPT);
    tmux.wait_for_echo_off();
    tmux.key("C-c");
    tmux.assert_interrupted_with_terminal_restored("init", &before, &after);
    assert!(!p.config.exists());
}
