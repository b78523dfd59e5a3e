//! The sync engine: one account, one run.
//!
//! Order is law: RETR -> local write made durable -> UID committed in SQLite
//! -> DELE -> QUIT. A crash at any instant costs at worst a re-download.

mod fetch;
pub mod headers;
mod ledger;
pub mod lock;
pub mod plan;
mod received;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Account, ConfigError, TargetConfig};
use crate::deliver::thread::DeliveryThread;
use crate::deliver::{DeliverError, Target, maildir::Maildir, mbox::Mbox, mda::Mda};
use crate::session::{ConnectOptions, Credentials, Session, SessionError, TraceSink};
use crate::store::{AccountId, RunRecord, Store, StoreError, TargetId};
pub use fetch::Window;
pub use lock::{AccountLock, LockError};
pub use plan::{Plan, PlanError, Policy};

/// The state, shared by the accounts of one process.
pub type SharedStore = Arc<Mutex<Store>>;

/// When a batch is made durable and committed: whichever bound comes first.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub messages: usize,
    pub bytes: u64,
    pub time: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            messages: 512,
            bytes: 64 * 1024 * 1024,
            time: Duration::from_secs(2),
        }
    }
}

/// Run-wide settings (not per account).
#[derive(Clone)]
pub struct SyncOptions {
    pub state_dir: PathBuf,
    /// "Now" in Unix seconds: the state's clock (overridable for tests).
    pub now: i64,
    pub limits: BatchLimits,
    /// How much is in flight when the server pipelines.
    pub pipeline: Window,
    pub accept_uid_change: bool,
    pub trace: Option<TraceSink>,
    pub progress: Option<indicatif::MultiProgress>,
    /// Set to true to ask for a polite stop: the batch in hand is finished
    /// and committed, no further RETR is sent, then QUIT.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl SyncOptions {
    pub fn new(state_dir: PathBuf, now: i64) -> Self {
        SyncOptions {
            state_dir,
            now,
            limits: BatchLimits::default(),
            pipeline: Window::default(),
            accept_uid_change: false,
            trace: None,
            progress: None,
            stop: None,
        }
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("local delivery failed: {0}")]
    Deliver(DeliverError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    OAuth2(#[from] crate::oauth2::OAuth2Error),
}

impl From<DeliverError> for SyncError {
    /// A state failure met on the delivery thread is a state failure.
    fn from(e: DeliverError) -> SyncError {
        match e {
            DeliverError::State(e) => SyncError::Store(e),
            e => SyncError::Deliver(e),
        }
    }
}

impl SyncError {
    /// Worth retrying later with nothing changed.
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// What kind of failure this is: the one classification behind the
    /// `run` table's outcome word, the CLI's exit code and the daemon's
    /// schedule.
    pub fn kind(&self) -> FailureKind {
        match self {
            SyncError::Config(_) => FailureKind::Config,
            SyncError::Session(e) => FailureKind::of_session(e),
            SyncError::Plan(_) => FailureKind::Protocol,
            SyncError::Store(e) => FailureKind::of_store(e),
            SyncError::Deliver(e) if e.is_transient() => FailureKind::Busy,
            SyncError::Deliver(_) => FailureKind::Delivery,
            SyncError::Lock(LockError::Held { .. }) => FailureKind::Locked,
            SyncError::Lock(_) => FailureKind::Delivery,
            SyncError::OAuth2(e) => e.kind(),
        }
    }

    /// The short outcome word stored in the `run` table.
    pub fn outcome(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// How a run failed: what a script, the user or the daemon's schedule acts
/// on. The exit code (`cli::exit`), the `run` table's outcome word and the
/// daemon's schedule (`daemon::Outcome`) are each an exhaustive match on
/// it, so a new kind must be placed in all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Config,
    Tls,
    Auth,
    /// The OAuth2 grant is missing, revoked or for another client: nothing
    /// works until the user runs `popsync login` (exit 4, like `Auth`; the
    /// daemon pauses the account instead of counting refused logins).
    NeedsLogin,
    /// Try again later: the network or the connection failed (connect,
    /// time-out, reset).
    Network,
    /// Try again later: the server or a local reader said "not now"
    /// (`[IN-USE]`, `[SYS/TEMP]`, a busy state database, a locked mbox).
    Busy,
    /// Try again later: `[LOGIN-DELAY]`, too soon after the last login.
    LoginDelay,
    Protocol,
    Delivery,
    /// Another popsync holds the account.
    Locked,
}

impl FailureKind {
    /// A state database held by another process is worth retrying; any
    /// other state failure is local trouble.
    pub fn of_store(e: &StoreError) -> FailureKind {
        match e {
            StoreError::Busy { .. } => FailureKind::Busy,
            _ => FailureKind::Delivery,
        }
    }

    pub fn of_session(e: &SessionError) -> FailureKind {
        use crate::pop3::ResponseCode;
        if e.is_tls() {
            return FailureKind::Tls;
        }
        match e.response_code() {
            Some(ResponseCode::LoginDelay) => FailureKind::LoginDelay,
            Some(ResponseCode::InUse | ResponseCode::SysTemp) => FailureKind::Busy,
            _ if e.is_auth() => FailureKind::Auth,
            _ if e.is_transient() => FailureKind::Network,
            _ => FailureKind::Protocol,
        }
    }

    /// Goes away by itself: retried later, never a reason to alarm anyone.
    pub fn is_transient(self) -> bool {
        match self {
            FailureKind::Network
            | FailureKind::Busy
            | FailureKind::LoginDelay
            | FailureKind::Locked => true,
            FailureKind::Config
            | FailureKind::Tls
            | FailureKind::Auth
            | FailureKind::NeedsLogin
            | FailureKind::Protocol
            | FailureKind::Delivery => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Config => "config",
            FailureKind::Tls => "tls",
            FailureKind::Auth | FailureKind::NeedsLogin => "auth",
            // One word for the three: what `status` and scripts act on.
            FailureKind::Network | FailureKind::Busy | FailureKind::LoginDelay => "temporary",
            FailureKind::Protocol => "protocol",
            FailureKind::Delivery => "delivery",
            FailureKind::Locked => "locked",
        }
    }
}

/// What one account's run did.
#[derive(Debug)]
pub struct AccountReport {
    pub account: String,
    pub on_server: u64,
    pub new_messages: u64,
    pub new_bytes: u64,
    pub deleted: u64,
    pub skipped: u64,
    /// Deliveries of an interrupted run found intact and committed.
    pub recovered: u64,
    /// New messages left for the next run because a stop was asked for.
    pub unfetched: u64,
    pub warnings: Vec<String>,
    pub elapsed: Duration,
    pub error: Option<SyncError>,
    /// New messages' locations, newest last (for notifications).
    pub delivered: Vec<crate::deliver::StoredMessage>,
    /// Header sections of the newest delivered messages (at most
    /// [`headers::NEWEST_KEPT`], each at most [`headers::HEADER_CAPTURE_LIMIT`]
    /// bytes), newest last.
    pub newest_headers: VecDeque<Vec<u8>>,
    /// The server's `LOGIN-DELAY` capability (RFC 2449), if it announced one.
    pub login_delay: Option<Duration>,
}

impl AccountReport {
    fn new(account: &str) -> Self {
        AccountReport {
            account: account.to_string(),
            on_server: 0,
            new_messages: 0,
            new_bytes: 0,
            deleted: 0,
            skipped: 0,
            recovered: 0,
            unfetched: 0,
            warnings: Vec::new(),
            elapsed: Duration::ZERO,
            error: None,
            delivered: Vec::new(),
            newest_headers: VecDeque::new(),
            login_delay: None,
        }
    }

    fn warn(&mut self, text: String) {
        tracing::warn!(account = %self.account, "{text}");
        self.warnings.push(text);
    }

    /// The `run` table's outcome word: a failure's kind, `interrupted` when
    /// a stop left new mail for the next run, else `ok`.
    pub fn outcome(&self) -> &'static str {
        match &self.error {
            Some(e) => e.outcome(),
            None if self.unfetched > 0 => "interrupted",
            None => "ok",
        }
    }

    /// One line for the user: what happened, in numbers.
    pub fn summary(&self) -> String {
        let status = match &self.error {
            None if self.unfetched > 0 => {
                format!("interrupted, {} new left for the next run", self.unfetched)
            }
            None => "ok".to_string(),
            Some(e) => format!("FAILED: {e}"),
        };
        format!(
            "{}: {} new ({}), {} deleted, {} skipped, {:.1}s: {status}",
            self.account,
            self.new_messages,
            human_bytes(self.new_bytes),
            self.deleted,
            self.skipped,
            self.elapsed.as_secs_f64()
        )
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Runs blocking work (fsync, SQLite) without stalling other accounts'
/// tasks when the runtime has worker threads to spare.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub(crate) fn with_store<T>(
    store: &SharedStore,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    blocking(|| {
        let mut guard = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
}

pub fn open_target(account: &Account) -> Result<Box<dyn Target>, SyncError> {
    Ok(match account.target()? {
        TargetConfig::Maildir(path) => Box::new(Maildir::open(path)?),
        TargetConfig::Mbox(path) => Box::new(Mbox::open(path)?),
        TargetConfig::Mda(command) => Box::new(Mda::new(command, account.mda_timeout)),
    })
}

pub fn connect_options(account: &Account, trace: Option<TraceSink>) -> ConnectOptions {
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

/// The login: the password (or `password_command`'s), or with `oauth2` an
/// access token from the token store, refreshed first when due.
pub async fn credentials(account: &Account) -> Result<Credentials, SyncError> {
    let secret = match account.oauth2() {
        Some(settings) => crate::oauth2::access_token(&account.name, settings).await?,
        None => blocking(|| account.secret())?,
    };
    Ok(Credentials {
        username: account.username.clone(),
        secret,
        method: account.auth,
        allow_insecure_auth: account.allow_insecure_auth,
    })
}

/// Syncs one account and records the run. Never panics on bad input; every
/// failure ends up in the report's `error`.
pub async fn sync_account(
    account: &Account,
    store: &SharedStore,
    opts: &SyncOptions,
) -> AccountReport {
    let started = Instant::now();
    let mut report = AccountReport::new(&account.name);
    let mut run_id = None;
    let result = run(account, store, opts, &mut report, &mut run_id).await;
    report.elapsed = started.elapsed();
    if let Err(e) = result {
        // The caller reports the outcome (one line per account, or the
        // daemon's once-per-streak rule): no second log line here.
        tracing::debug!(account = %account.name, "{e}");
        report.error = Some(e);
    }
    if let Some(run_id) = run_id {
        let record = RunRecord {
            outcome: report.outcome().to_string(),
            on_server: Some(report.on_server),
            new_messages: report.new_messages,
            new_bytes: report.new_bytes,
            deleted: report.deleted,
            skipped: report.skipped,
            error: report.error.as_ref().map(|e| e.to_string()),
        };
        let finished = opts.now + report.elapsed.as_secs() as i64;
        if let Err(e) = with_store(store, |s| s.finish_run(run_id, &record, finished)) {
            report.warn(format!("could not record the run: {e}"));
        }
    }
    report
}

async fn run(
    account: &Account,
    store: &SharedStore,
    opts: &SyncOptions,
    report: &mut AccountReport,
    run_id: &mut Option<i64>,
) -> Result<(), SyncError> {
    let _lock = AccountLock::acquire(&opts.state_dir, &account.name)?;
    let mut target = blocking(|| open_target(account))?;
    let acct = with_store(store, |s| s.account(&account.name, opts.now))?;
    let target_id = TargetId::of(account.target()?);
    warn_if_target_changed(acct, &target_id, store, report)?;
    *run_id = Some(with_store(store, |s| s.start_run(acct, opts.now))?);
    recover(acct, target.as_mut(), &target_id, store, opts.now, report)?;

    let creds = credentials(account).await?;
    let mut session = Session::connect(&connect_options(account, opts.trace.clone())).await?;
    report.login_delay = session
        .capabilities()
        .login_delay()
        .map(Duration::from_secs);
    if account.utf8 {
        session.enable_utf8().await?;
    }
    // Pipelined where offered: login and listing cost one round trip.
    let listed = session.login_and_list(&creds, account.max_messages).await;
    if let Err(e) = &listed
        && let Some(settings) = account.oauth2()
        && e.is_auth()
    {
        crate::oauth2::forget_access_token(&account.name, settings, &creds.secret).await;
    }
    let (_, uidl, list) = listed?;
    report.on_server = list.len() as u64;

    let policy = Policy {
        keep: account.keep,
        delete_after_days: account.delete_after_days,
        max_size: account.max_size,
        now: opts.now,
    };
    let known = with_store(store, |s| s.known_set(acct))?;
    let mut plan = plan::plan(uidl.as_ref(), &list, &known, policy, opts.accept_uid_change)?;
    if !plan.delete.is_empty() {
        keep_unverified(&mut plan, acct, store, report)?;
    }
    // From here on the target lives on its own thread: file and MDA work
    // overlaps the socket reads and never blocks a tokio worker. Should
    // this future be dropped mid-batch (the daemon aborting a poll past its
    // stop grace), the handles undo the batch there and the thread then
    // forgets its mark; dropping the thread waits for both.
    let ledger = ledger::StoreLedger {
        store: Arc::clone(store),
        acct,
        target_id: target_id.clone(),
        now: opts.now,
        durable_commits: plan::delete_after_commit(policy),
    };
    let delivery = DeliveryThread::spawn(target, Box::new(ledger))?;
    let mut fetcher = fetch::Fetcher {
        pipeline: fetch::pipeline(&mut session, opts.pipeline),
        delivery: &delivery,
        store,
        account,
        acct,
        opts,
        report,
        run_id: run_id.unwrap_or_default(),
        delete_after_commit: plan::delete_after_commit(policy),
        list_sizes: fetch::ListSizes::default(),
    };
    let uidl_complete = uidl.is_some();
    let fetched = fetcher
        .run(&plan, |report| {
            record_plan(&plan, uidl_complete, account, acct, store, opts, report)
        })
        .await?;
    let deleted = fetched.deleted;
    let quit = match fetched.quit {
        Some(line) => {
            session.close().await;
            line
        }
        None => session.quit().await?,
    };
    if quit.is_ok() {
        let uids: Vec<&str> = deleted.iter().map(String::as_str).collect();
        with_store(store, |s| s.mark_deleted(acct, &uids, opts.now))?;
        if uidl.is_none() {
            // Without UIDL the synthetic keys can never match again.
            with_store(store, |s| s.retire(acct, &uids, opts.now))?;
        }
        report.deleted = deleted.len() as u64;
    } else if !deleted.is_empty() {
        report.warn(format!(
            "QUIT answered -ERR ({}): the server may not have removed {} messages; they will be deleted on a later run",
            quit.describe(),
            deleted.len()
        ));
    }
    Ok(())
}

/// The plan's state rows: its new UIDs pending, those gone from a complete
/// UIDL retired (and old ones pruned), the skipped ones marked.
fn record_plan(
    plan: &plan::Plan<'_>,
    uidl_complete: bool,
    account: &Account,
    acct: AccountId,
    store: &SharedStore,
    opts: &SyncOptions,
    report: &mut AccountReport,
) -> Result<(), SyncError> {
    with_store(store, |s| s.add_pending(acct, &plan.new_uids, opts.now))?;
    if uidl_complete {
        // `known` is the live set just read (new UIDs are all present), so
        // no second read of it: that read was a quarter of a no-op run's CPU.
        let gone = &plan.gone;
        if !gone.is_empty() {
            with_store(store, |s| s.retire(acct, gone, opts.now))?;
            tracing::debug!(account = %account.name, retired = gone.len(), "UIDs no longer on the server");
        }
        let pruned = with_store(store, |s| s.prune_retired(acct, opts.now, RETIRED_HORIZON))?;
        if pruned > 0 {
            tracing::debug!(account = %account.name, pruned, "forgot UIDs gone for 90 days");
        }
    }
    for skip in &plan.skip {
        report.skipped += 1;
        let uid = skip.uid.as_deref().unwrap_or("-");
        report.warn(format!(
            "message {} (UID {uid}) left on the server: {}",
            skip.msg, skip.reason
        ));
        if skip.record
            && let Some(uid) = &skip.uid
        {
            with_store(store, |s| s.mark_skipped(acct, uid, &skip.reason))?;
        }
    }
    Ok(())
}

/// Deletions resting on an earlier run (`keep = false` retries,
/// `delete_after_days`) go ahead only for copies that verify now: a state
/// row is not proof (a maildir deleted since, a server that serves an old
/// UID again, a forged row). The others stay on the server, reported.
fn keep_unverified(
    plan: &mut plan::Plan<'_>,
    acct: AccountId,
    store: &SharedStore,
    report: &mut AccountReport,
) -> Result<(), SyncError> {
    let records = with_store(store, |s| s.delivery_records(acct))?;
    let uids: Vec<&str> = plan.delete.iter().map(|&(_, u)| u).collect();
    let verdicts = blocking(|| crate::verify::deletable(&records, uids));
    let mut kept = Vec::new();
    plan.delete.retain(|(msg, uid)| match verdicts.get(*uid) {
        Some(Ok(())) => true,
        Some(Err(why)) => {
            kept.push(format!("message {msg} (UID {uid}): {why}"));
            false
        }
        None => false,
    });
    if !kept.is_empty() {
        let shown: Vec<&str> = kept.iter().take(3).map(String::as_str).collect();
        report.warn(format!(
            "{} messages left on the server because their stored copy does not verify (run `popsync verify`): {}{}",
            kept.len(),
            shown.join("; "),
            if kept.len() > 3 { "; …" } else { "" }
        ));
    }
    Ok(())
}

/// A config pointing at a new target while the state records deliveries to
/// another: say so, since nothing already stored is fetched again.
fn warn_if_target_changed(
    acct: AccountId,
    now: &TargetId,
    store: &SharedStore,
    report: &mut AccountReport,
) -> Result<(), SyncError> {
    if let Some(recorded) = with_store(store, |s| s.last_target(acct))?
        && recorded != *now
    {
        report.warn(format!(
            "the config says {now}, but earlier messages were stored in {recorded}: they stay there and are not fetched again; only new mail goes to {now}"
        ));
    }
    Ok(())
}

/// UIDs gone from the server this long, never stored, are forgotten.
const RETIRED_HORIZON: i64 = 90 * 86_400;

/// Finishes what an interrupted run left in the journal before anything new.
fn recover(
    acct: AccountId,
    target: &mut dyn Target,
    target_id: &TargetId,
    store: &SharedStore,
    now: i64,
    report: &mut AccountReport,
) -> Result<(), SyncError> {
    let journal = with_store(store, |s| s.pending_journal(acct))?;
    if journal.is_empty() {
        return Ok(());
    }
    let desc = target.describe();
    let foreign = journal.mark.as_ref().is_some_and(|(t, _)| t != target_id)
        || journal.intents.iter().any(|i| i.target != *target_id);
    if foreign {
        report.warn(format!(
            "an interrupted run wrote to a different target than {desc}; its unfinished batch will be fetched again"
        ));
        with_store(store, |s| s.clear_journal(acct))?;
        return Ok(());
    }
    let pending: Vec<_> = journal.intents.iter().map(|i| i.stored.clone()).collect();
    let token = journal.mark.as_ref().and_then(|(_, token)| token.as_ref());
    let intact = blocking(|| target.recover(token, &pending))?;
    let committed: Vec<(&str, &crate::deliver::StoredMessage)> = journal
        .intents
        .iter()
        .zip(&intact)
        .filter(|(_, ok)| **ok)
        .map(|(i, _)| (i.uid.as_str(), &i.stored))
        .collect();
    report.recovered = committed.len() as u64;
    with_store(store, |s| {
        s.commit_delivered(acct, target_id, &committed, now, true)
    })?;
    tracing::info!(
        account = %report.account,
        recovered = committed.len(),
        dropped = journal.intents.len() - committed.len(),
        "recovered an interrupted run"
    );
    Ok(())
}
