//! `popsync daemon`: the background service. Signals become [`Control`]
//! messages; the loop lives in [`crate::daemon`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::daemon::{self, Control, DaemonError, DaemonLock, DaemonOptions};
use crate::notify::DesktopNotifier;
use crate::session::TraceSink;
use crate::store::Store;

use super::exit::{Exit, Failure};

pub struct Args {
    pub config_path: PathBuf,
    pub jobs: usize,
    pub trace: Option<TraceSink>,
}

pub async fn run(config: Config, args: Args) -> Result<Exit, Failure> {
    let _lock = DaemonLock::acquire(&config.state_dir).map_err(|e| match e {
        DaemonError::Running { .. } => Failure::new(Exit::Locked, e.to_string()),
        DaemonError::Io { .. } => Failure::new(Exit::Delivery, e.to_string()),
    })?;
    let store = Store::open_for(&config)?;
    // Handlers are in place before the daemon says it started.
    let control = signals().map_err(|e| {
        Failure::new(
            Exit::Internal,
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    let mut opts = DaemonOptions::new(args.config_path);
    opts.jobs = args.jobs.max(1);
    opts.trace = args.trace;
    opts.clock = super::sync::now;
    daemon::run(
        config,
        Arc::new(Mutex::new(store)),
        Arc::new(DesktopNotifier),
        opts,
        control,
    )
    .await;
    Ok(Exit::Ok)
}

/// SIGHUP: reload; SIGUSR1: poll now; SIGTERM, SIGINT: stop (a second one
/// stops at once).
fn signals() -> std::io::Result<mpsc::Receiver<Control>> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = usr1.recv() => Control::PollNow,
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
            };
            if tx.send(control).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
