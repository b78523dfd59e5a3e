//! What describes popsync itself: `--version`'s details, `popsync man` and
//! `popsync completions SHELL`, all from the clap definitions.

use std::io::Write;

use clap::CommandFactory;

use super::Cli;
use super::exit::{Exit, Failure};

/// `popsync --version`: what a bug report needs (as mpop's does).
pub fn long_version() -> String {
    let config = crate::config::Config::default_path()
        .map_or_else(|e| format!("unknown ({e})"), |p| p.display().to_string());
    let state = crate::config::default_state_dir()
        .map_or_else(|e| format!("unknown ({e})"), |p| p.display().to_string());
    format!(
        "{version}\n\
         commit:  {commit}\n\
         TLS:     rustls 0.23, ring crypto provider; system CA store, ca_file or fingerprint pin\n\
         auth:    USER/PASS, APOP, SASL PLAIN, XOAUTH2\n\
         SQLite:  {sqlite} (bundled)\n\
         config:  {config} (default; -c FILE for another)\n\
         state:   {state} (default; state_dir in the config)",
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("POPSYNC_GIT_COMMIT"),
        sqlite = rusqlite::version(),
    )
}

/// The command tree with the runtime parts of `--version`.
pub fn command() -> clap::Command {
    Cli::command().long_version(long_version())
}

/// `popsync man`: the manual page (roff) on stdout.
pub fn man() -> Result<Exit, Failure> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command())
        .render(&mut out)
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot render the man page: {e}")))?;
    write_stdout(&out)
}

/// `popsync completions SHELL`: a completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<Exit, Failure> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), "popsync", &mut out);
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<Exit, Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot write to stdout: {e}")))?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_names_what_a_bug_report_needs() {
        let v = long_version();
        for part in [
            "commit:",
            "rustls",
            "ring",
            "SQLite:  3.",
            "config:",
            "state:",
        ] {
            assert!(v.contains(part), "{part} missing in {v}");
        }
    }
}
