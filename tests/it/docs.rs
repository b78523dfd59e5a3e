//! `popsync man`, `popsync completions SHELL` and `--version`: generated from
//! the real command tree, usable by man and bash, and without a config.

use crate::support;

use support::popsync::BIN;

fn run(args: &[&str]) -> std::process::Output {
    // No config anywhere: these commands must not need one.
    let home = tempfile::tempdir().unwrap();
    std::process::Command::new(BIN)
        .args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .output()
        .unwrap()
}

#[test]
fn man_page_is_roff_naming_every_command() {
    let out = run(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH popsync 1"), "{page}");
    for cmd in [
        "probe",
        "sync",
        "status",
        "verify",
        "purge",
        "daemon",
        "completions",
    ] {
        assert!(page.contains(cmd), "{cmd} missing");
    }
    assert!(
        page.contains("Exit codes"),
        "the exit-code table belongs in the page"
    );
}

#[test]
fn bash_completion_completes_subcommands_and_options() {
    let script = String::from_utf8(run(&["completions", "bash"]).stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("popsync.bash");
    std::fs::write(&path, script).unwrap();
    let complete = |words: &str, cword: usize| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _popsync popsync \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        complete("popsync sy", 1)
            .split_whitespace()
            .any(|w| w == "sync")
    );
    assert!(complete("popsync sync --ac", 2).contains("--accept-uid-change"));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let bad = run(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn version_names_commit_tls_sqlite_and_default_paths() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for part in [
        concat!("popsync ", env!("CARGO_PKG_VERSION")),
        "commit:",
        "rustls",
        "ring",
        "SQLite:  3.",
        "/.config/popsync/config.toml",
        "/.local/state/popsync",
    ] {
        assert!(text.contains(part), "{part} missing in {text}");
    }
}
