//! The command line: parsing, logging set-up, dispatch, exit codes.

pub mod exit;
mod probe;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Account, Config, TlsMode};
use crate::session::{ConnectOptions, Credentials, TraceSink};
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
    },
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> u8 {
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
        Commands::Probe { account } => {
            let account = config.account(account)?;
            let report = probe::run(account, trace).await?;
            print!("{report}");
            Ok(Exit::Ok)
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

pub(crate) fn connect_options(account: &Account, trace: Option<TraceSink>) -> ConnectOptions {
    ConnectOptions {
        host: account.host.clone(),
        port: account.port,
        tls: account.tls,
        ca_file: account.ca_file.clone(),
        fingerprint: account.fingerprint,
        connect_timeout: account.connect_timeout,
        io_timeout: account.timeout,
        trace,
    }
}

pub(crate) fn credentials(account: &Account) -> Result<Credentials, Failure> {
    Ok(Credentials {
        username: account.username.clone(),
        secret: account.secret()?,
        method: account.auth,
        allow_insecure_auth: account.allow_insecure_auth,
    })
}
