//! The command line: parsing, logging set-up, dispatch, exit codes.

mod daemon;
mod dry_run;
pub mod exit;
mod import_uids;
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

use clap::{Parser, Subcommand};

use crate::config::{Config, TlsMode};
use crate::session::TraceSink;
pub use exit::{Exit, Failure};

#[derive(Debug, Parser)]
#[command(
    name = "popsync",
    version,
    about = "Durable POP3 mail fetching and mirroring"
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
        /// Accounts synced at the same time
        #[arg(long, default_value_t = 8, value_name = "N")]
        jobs: usize,
        /// Download even if the server seems to have replaced all its UIDs
        #[arg(long)]
        accept_uid_change: bool,
        /// Only list what would be fetched, skipped and deleted; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Record every UID now on the server as seen, downloading nothing
    MarkSeen { account: String },
    /// Mark as seen the UIDs an older tool (fetchmail, mpop, getmail6) recorded
    ImportUids {
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
        account: Option<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Check that every stored message is still in place with its bytes (exit 10 if not)
    Verify {
        account: Option<String>,
        /// Move missing or altered copies aside and fetch them again at the next sync
        #[arg(long)]
        repair: bool,
    },
    /// What is on the server and what the next sync does with it; changes nothing
    Ls {
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
        account: String,
        #[arg(required = true, value_name = "UID")]
        uids: Vec<String>,
    },
    /// Drop popsync's records of these UIDs: the next sync counts them as new
    Forget {
        account: String,
        #[arg(required = true, value_name = "UID")]
        uids: Vec<String>,
    },
    /// Delete from the server exactly the messages stored by popsync that verify intact now
    Purge {
        account: String,
        /// Only show what would be deleted
        #[arg(long)]
        dry_run: bool,
    },
    /// Run in the background: poll every account on its interval, notify
    /// about new mail. SIGHUP reloads the config, SIGUSR1 polls now,
    /// SIGTERM/SIGINT stop cleanly
    Daemon {
        /// Accounts polled at the same time
        #[arg(long, default_value_t = 64, value_name = "N")]
        jobs: usize,
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> u8 {
    crate::hardening::disable_core_dumps();
    let cli = match Cli::try_parse() {
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
    init_logging(cli.verbose, cli.quiet);
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
        Commands::Daemon { jobs } => {
            let args = daemon::Args {
                config_path,
                jobs: *jobs,
                trace,
            };
            daemon::run(config, args).await
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("POPSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("popsync={default}")));
    let is_tty = std::io::stderr().is_terminal();
    // A service's stderr goes to the journal: no colours, no timestamps of our own.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(is_tty)
        .with_target(false);
    let _ = if is_tty {
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
