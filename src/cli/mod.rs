//! The command line: parsing, logging set-up, dispatch, exit codes.

mod daemon;
mod docs;
mod dry_run;
pub mod exit;
mod hidden;
mod import_uids;
mod init;
mod login;
mod ls;
mod mark_seen;
mod probe;
mod purge;
mod repair;
mod server;
mod shell;
mod status;
mod sync;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{FromArgMatches, Parser, Subcommand};

use crate::config::{Config, TlsMode};
use crate::session::TraceSink;
pub use exit::{Exit, Failure};

#[derive(Debug, Parser)]
#[command(
    name = "popsync",
    version,
    about = "Durable POP3 mail fetching and mirroring",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Configuration file [default: $XDG_CONFIG_HOME/popsync/config.toml]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print the POP3 transcript (C:/S: lines, secrets redacted) to stderr
    #[arg(long, global = true)]
    pub trace: bool,
    /// Put a timestamp on each log line [default: on when stderr is a
    /// terminal or a file, off for a pipe or the journal]
    #[arg(long, global = true, overrides_with = "no_log_timestamps")]
    pub log_timestamps: bool,
    /// No timestamps on log lines
    #[arg(long, global = true)]
    pub no_log_timestamps: bool,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Connect, negotiate TLS, log in and describe the server; changes nothing
    Probe {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// Only show the server's certificate, unverified, and stop before login
        #[arg(long)]
        insecure_show_cert: bool,
    },
    /// Fetch new mail of the named accounts (all if none) into their targets
    Sync {
        /// Account names; all accounts when none are given
        accounts: Vec<String>,
        /// Accounts synced at the same time (accounts far away are bound
        /// by round trips, not CPU)
        #[arg(long, default_value_t = 16, value_name = "N")]
        jobs: usize,
        /// Download even if the server seems to have replaced all its UIDs
        #[arg(long)]
        accept_uid_change: bool,
        /// Only list what would be fetched, skipped and deleted; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Record every UID now on the server as seen, downloading nothing
    MarkSeen {
        /// Account name (the NAME of [account.NAME])
        account: String,
    },
    /// Mark as seen the UIDs an older tool (fetchmail, mpop, getmail6) recorded
    ImportUids {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// Which tool wrote FILE
        #[arg(long, value_enum)]
        from: crate::migrate::PeerFormat,
        /// fetchmail's .fetchids, mpop's uidls_file or getmail6's oldmail-* file
        file: PathBuf,
        /// The server's name in FILE, if the old tool used another one
        #[arg(long)]
        host: Option<String>,
        /// The user name in FILE, if the old tool used another one
        #[arg(long)]
        user: Option<String>,
    },
    /// Show what the state knows: last poll, next poll, counts, last error
    Status {
        /// Account name; all accounts when omitted
        account: Option<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Check that every stored message is still in place with its bytes (exit 10 if not)
    Verify {
        /// Account name; all accounts when omitted
        account: Option<String>,
        /// Move missing or altered copies aside and fetch them again at the next sync
        #[arg(long)]
        repair: bool,
    },
    /// What is on the server and what the next sync does with it; changes nothing
    Ls {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// Only the messages the next sync would fetch
        #[arg(long)]
        new: bool,
    },
    /// Type POP3 commands yourself, over the account's TLS, logged in safely
    Shell {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// `account`: log in with the configured credentials; `manual`: type
        /// USER/PASS/APOP yourself (the password is read with echo off)
        #[arg(long, value_enum, default_value_t = shell::Login::Account)]
        login: shell::Login,
        /// Show multi-line answers as sent (dot-stuffed) beside the un-stuffed data
        #[arg(long)]
        raw: bool,
    },
    /// Fetch these messages again at the next sync if their stored copy is missing or altered
    Refetch {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// UIDs to fetch again (as `popsync ls` shows them)
        #[arg(required = true, value_name = "UID")]
        uids: Vec<String>,
    },
    /// Drop popsync's records of these UIDs: the next sync counts them as new
    Forget {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// UIDs to forget (as `popsync ls` shows them)
        #[arg(required = true, value_name = "UID")]
        uids: Vec<String>,
    },
    /// Delete from the server exactly the messages stored by popsync that verify intact now
    Purge {
        /// Account name (the NAME of [account.NAME])
        account: String,
        /// Only show what would be deleted
        #[arg(long)]
        dry_run: bool,
    },
    /// Sign in to the account's OAuth2 provider once (oauth2 = ...); the
    /// tokens are then refreshed by sync and daemon themselves
    Login {
        /// Account name (the NAME of [account.NAME]); it needs `oauth2 = ...`
        account: String,
        /// device: a URL and a code to enter anywhere; loopback: a browser on
        /// this machine comes back to 127.0.0.1 [default: what the provider supports]
        #[arg(long, value_enum)]
        flow: Option<crate::oauth2::flow::Flow>,
        /// Only print the URL, never start a browser (or POPSYNC_NO_BROWSER=1)
        #[arg(long)]
        no_browser: bool,
    },
    /// Keep running in the foreground (for systemd or a terminal): poll
    /// every account on its interval, notify about new mail. SIGHUP reloads
    /// the config, SIGUSR1 polls now, SIGTERM/SIGINT stop cleanly
    Daemon {
        /// Accounts polled at the same time (many: a hanging server holds
        /// one slot and delays no other account)
        #[arg(long, default_value_t = 64, value_name = "N")]
        jobs: usize,
    },
    /// Set up an account: find the server of an address (DNS SRV records,
    /// then pop.DOMAIN, mail.DOMAIN), check TLS and the login (or set up
    /// OAuth2 and sign in), write the config (0600; an existing one gets the
    /// new table appended)
    Init(Box<init::Args>),
    /// Print the manual page (roff): popsync man > ~/.local/share/man/man1/popsync.1
    Man,
    /// Print a shell completion script, e.g. popsync completions bash
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> u8 {
    crate::hardening::disable_core_dumps();
    let parsed = docs::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            };
        }
    };
    let timestamps = if cli.log_timestamps {
        true
    } else if cli.no_log_timestamps {
        false
    } else {
        log_timestamps_by_default()
    };
    init_logging(cli.verbose, cli.quiet, timestamps);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("popsync: cannot start the async runtime: {e}");
            return Exit::Internal.code();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.code(),
        Err(failure) => {
            eprintln!("popsync: {}", failure.message);
            failure.exit.code()
        }
    }
}

async fn run(cli: Cli) -> Result<Exit, Failure> {
    // Commands that need no configuration.
    match &cli.command {
        Commands::Man => return docs::man(),
        Commands::Completions { shell } => return docs::completions(*shell),
        _ => {}
    }
    if let Commands::Init(args) = cli.command {
        let config_path = match cli.config {
            Some(p) => p,
            None => Config::default_path()?,
        };
        return init::run(config_path, *args).await;
    }
    let config_path = match &cli.config {
        Some(p) => p.clone(),
        None => Config::default_path()?,
    };
    let config = Config::load(&config_path)?;
    let trace: Option<TraceSink> = cli
        .trace
        .then(|| Arc::new(|line: &str| eprintln!("{line}")) as TraceSink);
    match &cli.command {
        Commands::Probe {
            account,
            insecure_show_cert,
        } => {
            let account = config.account(account)?;
            let report = if *insecure_show_cert {
                probe::show_cert(account, trace).await?
            } else {
                probe::run(account, trace).await?
            };
            print!("{report}");
            Ok(Exit::Ok)
        }
        Commands::Sync {
            accounts,
            jobs,
            accept_uid_change,
            dry_run,
        } => {
            let selected = config.select(accounts)?;
            if *dry_run {
                return dry_run::run(&config, selected, *accept_uid_change, trace).await;
            }
            crate::config::require_targets(&config.path, selected.iter().copied())?;
            let args = sync::Args {
                jobs: (*jobs).max(1),
                accept_uid_change: *accept_uid_change,
                quiet: cli.quiet,
                trace,
            };
            sync::run(&config, selected, args).await
        }
        Commands::MarkSeen { account } => {
            mark_seen::run(&config, config.account(account)?, trace).await
        }
        Commands::ImportUids {
            account,
            from,
            file,
            host,
            user,
        } => {
            let args = import_uids::Args {
                format: *from,
                file,
                host: host.as_deref(),
                user: user.as_deref(),
                trace,
            };
            import_uids::run(&config, config.account(account)?, args).await
        }
        Commands::Status { account, json } => {
            let names: Vec<String> = account.iter().cloned().collect();
            status::run(&config, config.select(&names)?, *json)
        }
        Commands::Verify { account, repair } => {
            let names: Vec<String> = account.iter().cloned().collect();
            if *repair {
                return repair::verify_and_repair(&config, config.select(&names)?);
            }
            verify::run(&config, config.select(&names)?, cli.quiet)
        }
        Commands::Ls { account, json, new } => {
            ls::run(&config, config.account(account)?, *json, *new, trace).await
        }
        Commands::Shell {
            account,
            login,
            raw,
        } => shell::run(config.account(account)?, *login, *raw, trace).await,
        Commands::Refetch { account, uids } => {
            repair::refetch(&config, config.account(account)?, uids)
        }
        Commands::Forget { account, uids } => {
            repair::forget(&config, config.account(account)?, uids)
        }
        Commands::Purge { account, dry_run } => {
            purge::run(&config, config.account(account)?, *dry_run, trace).await
        }
        Commands::Man | Commands::Completions { .. } | Commands::Init(_) => {
            unreachable!("handled above")
        }
        Commands::Login {
            account,
            flow,
            no_browser,
        } => {
            let args = login::Args {
                flow: *flow,
                no_browser: *no_browser,
                trace,
            };
            login::run(config.account(account)?, args).await
        }
        Commands::Daemon { jobs } => {
            crate::config::require_targets(&config.path, &config.accounts)?;
            let args = daemon::Args {
                config_path,
                jobs: *jobs,
                trace,
            };
            daemon::run(config, args).await
        }
    }
}

/// The exit-code table of README "Exit codes", for `--help`'s footer.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  all accounts succeeded
  1  internal error
  2  command-line usage error
  3  configuration error
  4  the server refused the credentials
  5  TLS or certificate failure, or credentials refused to be sent in clear
  6  network trouble, a temporary server condition, or a lock held by another program: try later
  7  local delivery or state failure (disk full, unwritable maildir, MDA failed)
  8  another popsync process is syncing the account
  9  the server broke the protocol or failed permanently
  10 verify: a stored message is missing, altered or unreadable";

/// Timestamps when stderr is a terminal or a regular file (a log file);
/// none for a pipe or the journal (JOURNAL_STREAM names our stderr), which
/// stamp lines themselves.
fn log_timestamps_by_default() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stderr = std::io::stderr();
    if stderr.is_terminal() {
        return true;
    }
    let Ok(meta) = stderr
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
    else {
        return false;
    };
    let journal = std::env::var("JOURNAL_STREAM").ok();
    timestamps_for(
        meta.file_type().is_file(),
        meta.dev(),
        meta.ino(),
        journal.as_deref(),
    )
}

fn timestamps_for(regular_file: bool, dev: u64, ino: u64, journal_stream: Option<&str>) -> bool {
    let to_journal = journal_stream
        .and_then(|v| v.split_once(':'))
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino));
    regular_file && !to_journal
}

fn init_logging(verbose: u8, quiet: bool, timestamps: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("POPSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("popsync={default}")));
    let is_tty = std::io::stderr().is_terminal();
    // A service's stderr goes to the journal: no colours there.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(is_tty)
        .with_target(false);
    let _ = if timestamps {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
}

pub(crate) fn tls_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Implicit => "implicit",
        TlsMode::Starttls => "starttls",
        TlsMode::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_for_log_files_not_pipes_or_the_journal() {
        assert!(timestamps_for(true, 8, 42, None));
        assert!(!timestamps_for(false, 8, 42, None));
        assert!(!timestamps_for(true, 8, 42, Some("8:42")));
        // Another stream is the journal's: ours is still a file.
        assert!(timestamps_for(true, 8, 42, Some("8:43")));
        assert!(timestamps_for(true, 8, 42, Some("junk")));
    }

    #[test]
    fn every_argument_has_help_and_the_footer_lists_exit_codes() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "`{} {}` has no help text",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
        let help = cmd.clone().render_long_help().to_string();
        assert!(
            help.contains("Exit codes:") && help.contains("10 verify"),
            "{help}"
        );
    }
}
