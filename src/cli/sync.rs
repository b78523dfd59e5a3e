//! `popsync sync [ACCOUNT...]`: one run over the selected accounts.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crate::config::{Account, Config};
use crate::session::TraceSink;
use crate::store::Store;
use crate::sync::{SyncError, SyncOptions, sync_account};

use super::exit::{Exit, Failure};

pub struct Args {
    pub jobs: usize,
    pub accept_uid_change: bool,
    pub quiet: bool,
    pub trace: Option<TraceSink>,
}

/// Tests and demos may pin the state's clock: `POPSYNC_NOW=<unix seconds>`.
pub fn now() -> i64 {
    std::env::var("POPSYNC_NOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(crate::datetime::unix_now)
}

pub async fn run(config: &Config, accounts: Vec<&Account>, args: Args) -> Result<Exit, Failure> {
    let store = Store::open_for(config)?;
    let store = Arc::new(Mutex::new(store));
    let mut opts = SyncOptions::new(config.state_dir.clone(), now());
    opts.accept_uid_change = args.accept_uid_change;
    opts.trace = args.trace;
    if !args.quiet && std::io::stderr().is_terminal() {
        opts.progress = Some(indicatif::MultiProgress::new());
    }
    let opts = Arc::new(opts);
    let limit = Arc::new(tokio::sync::Semaphore::new(args.jobs));
    let mut tasks = tokio::task::JoinSet::new();
    for account in accounts {
        let (account, store, opts, limit) =
            (account.clone(), store.clone(), opts.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            sync_account(&account, &store, &opts).await
        });
    }
    let mut exit = Exit::Ok;
    // Each account's line as soon as it is done, not after the slowest.
    while let Some(task) = tasks.join_next().await {
        let report =
            task.map_err(|e| Failure::new(Exit::Internal, format!("an account task failed: {e}")))?;
        let print = || {
            if !args.quiet || report.error.is_some() {
                println!("{}", report.summary());
            }
            if let Some(e) = &report.error {
                // The engine logs failures quietly (the daemon rate-limits
                // them); a person running sync must see the reason on stderr.
                eprintln!("popsync: account `{}`: {e}", report.account);
            }
        };
        match &opts.progress {
            // Above the other accounts' bars, not through them.
            Some(bars) => bars.suspend(print),
            None => print(),
        }
        if let Some(e) = &report.error {
            exit = exit.worst(exit_for(e));
        }
    }
    Ok(exit)
}

pub fn exit_for(e: &SyncError) -> Exit {
    Exit::for_kind(e.kind())
}
