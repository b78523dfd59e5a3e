//! `popsync daemon`: polls every account on its own interval, concurrently
//! (a bounded pool), backs off per account, obeys signals via [`Control`],
//! and announces new mail through a [`Notifier`].
//!
//! One task per poll; the loop itself only schedules, so a slow, hanging or
//! failing server holds one pool slot and delays no other account.

pub mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::config::{Account, Config};
use crate::notify::{self, Notification, Notifier};
use crate::session::TraceSink;
use crate::sync::{AccountReport, SharedStore, SyncOptions, sync_account, with_store};
pub use schedule::{AccountSchedule, Decision, Note, Outcome, Policy};

/// A notification that takes longer than this is given up.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the outside world (signals) asks of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the configuration (SIGHUP).
    Reload,
    /// Poll every account now (SIGUSR1).
    PollNow,
    /// Finish the polls in hand and return (SIGTERM, SIGINT).
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another popsync daemon is running on this state (lock {path})")]
    Running { path: PathBuf },
    #[error("daemon lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One daemon per state directory: an exclusive `flock` on
/// `state_dir/daemon.lock`, released when the process ends.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
    pub path: PathBuf,
}

impl DaemonLock {
    pub fn acquire(state_dir: &Path) -> Result<DaemonLock, DaemonError> {
        let path = state_dir.join("daemon.lock");
        match crate::sync::lock::try_flock(&path) {
            Ok(Some(file)) => Ok(DaemonLock { _file: file, path }),
            Ok(None) => Err(DaemonError::Running { path }),
            Err(source) => Err(DaemonError::Io { path, source }),
        }
    }
}

pub struct DaemonOptions {
    /// Re-read on [`Control::Reload`].
    pub config_path: PathBuf,
    /// Polls running at once.
    pub jobs: usize,
    pub policy: Policy,
    /// How long a stop waits for polls in hand before dropping them.
    pub stop_grace: Duration,
    pub trace: Option<TraceSink>,
    /// The state's clock in Unix seconds (tests pin it).
    pub clock: fn() -> i64,
}

impl DaemonOptions {
    pub fn new(config_path: PathBuf) -> Self {
        DaemonOptions {
            config_path,
            jobs: 64,
            policy: Policy::default(),
            stop_grace: Duration::from_secs(5),
            trace: None,
            clock: crate::datetime::unix_now,
        }
    }
}

/// Runs until [`Control::Stop`] (or the control channel closes), then
/// finishes the polls in hand within `stop_grace` and returns.
pub async fn run(
    config: Config,
    store: SharedStore,
    notifier: Arc<dyn Notifier>,
    opts: DaemonOptions,
    mut control: mpsc::Receiver<Control>,
) {
    let mut d = Daemon::new(config, store, notifier, opts);
    // The config's parse tree is gone: give its pages back.
    d.trim.now();
    tracing::info!(
        "daemon started: {} accounts, up to {} polls at once",
        d.entries.len(),
        d.limit.available_permits()
    );
    loop {
        d.start_due();
        let wake = d.next_wake();
        tokio::select! {
            _ = sleep_until(wake) => {}
            Some(joined) = d.tasks.join_next_with_id(), if !d.tasks.is_empty() => {
                d.finished(joined);
                if d.tasks.is_empty() {
                    d.trim.idle();
                }
            }
            ctl = control.recv() => match ctl {
                Some(Control::Reload) => {
                    d.reload();
                    d.trim.now();
                }
                Some(Control::PollNow) => d.poll_now(),
                Some(Control::Stop) | None => break,
            },
        }
        while d.notes.try_join_next().is_some() {}
    }
    d.shutdown(&mut control).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Entry {
    account: Arc<Account>,
    schedule: AccountSchedule,
    running: bool,
    /// Unique per configuration of the account, so the result of a poll
    /// started before a reload is not taken for the new one's.
    generation: u64,
}

struct PollResult {
    generation: u64,
    account: Arc<Account>,
    /// `None`: skipped because the daemon is stopping.
    report: Option<AccountReport>,
}

struct Daemon {
    config: Config,
    opts: DaemonOptions,
    store: SharedStore,
    notifier: Arc<dyn Notifier>,
    entries: BTreeMap<String, Entry>,
    tasks: JoinSet<PollResult>,
    task_names: HashMap<tokio::task::Id, String>,
    notes: JoinSet<()>,
    limit: Arc<Semaphore>,
    stop_tx: watch::Sender<bool>,
    notify_failed: Arc<AtomicBool>,
    random: Random,
    generations: u64,
    pid: u32,
    trim: Trim,
}

/// Hands heap pages freed by a burst (parsing a large config, a round of
/// polls) back to the kernel. glibc keeps them otherwise: 10,000 accounts
/// stayed at 109 MiB resident, idle, after a 1.7 MB config (its parse tree
/// alone peaks at ~65 MiB) and a first round (cargo bench --bench
/// daemon_scale). At most once a minute, when no poll runs.
struct Trim {
    last: Option<Instant>,
}

impl Trim {
    const EVERY: Duration = Duration::from_secs(60);

    fn idle(&mut self) {
        if self.last.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            self.now();
        }
    }

    fn now(&mut self) {
        self.last = Some(Instant::now());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes no pointers and only returns the
        // allocator's own free pages; no safe wrapper exists (not in rustix).
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

impl Daemon {
    fn new(
        config: Config,
        store: SharedStore,
        notifier: Arc<dyn Notifier>,
        opts: DaemonOptions,
    ) -> Daemon {
        let mut d = Daemon {
            limit: Arc::new(Semaphore::new(opts.jobs.max(1))),
            entries: BTreeMap::new(),
            tasks: JoinSet::new(),
            task_names: HashMap::new(),
            notes: JoinSet::new(),
            stop_tx: watch::channel(false).0,
            notify_failed: Arc::new(AtomicBool::new(false)),
            random: Random::default(),
            generations: 0,
            pid: std::process::id(),
            trim: Trim { last: None },
            config,
            opts,
            store,
            notifier,
        };
        // The accounts live in the entries only (10,000 of them are MBs).
        for account in std::mem::take(&mut d.config.accounts) {
            let entry = d.entry(account);
            d.entries.insert(entry.account.name.clone(), entry);
        }
        d
    }

    fn entry(&mut self, account: Account) -> Entry {
        self.generations += 1;
        Entry {
            schedule: self.fresh_schedule(&account),
            account: Arc::new(account),
            running: false,
            generation: self.generations,
        }
    }

    fn fresh_schedule(&mut self, account: &Account) -> AccountSchedule {
        let rand = self.random.unit();
        AccountSchedule::new(account.interval, &self.opts.policy, Instant::now(), rand)
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.limit.available_permits() == 0 {
            // Nothing can start before a poll finishes, and that wakes the
            // loop by itself (a due time in the past would spin here).
            return None;
        }
        self.entries
            .values()
            .filter(|e| !e.running)
            .filter_map(|e| e.schedule.next())
            .min()
    }

    /// Starts due polls, the longest due first, as far as there are free
    /// slots. The rest wait as entries, not as spawned tasks: a task holds
    /// a whole poll's future from its spawn, and 10,000 accounts due at
    /// start-up once kept 130 MiB resident that way.
    fn start_due(&mut self) {
        let free = self.limit.available_permits();
        if free == 0 {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<(Instant, &String)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.running)
            .filter_map(|(name, e)| e.schedule.next().filter(|t| *t <= now).map(|t| (t, name)))
            .collect();
        due.sort_unstable();
        let due: Vec<String> = due
            .into_iter()
            .take(free)
            .map(|(_, name)| name.clone())
            .collect();
        for name in due {
            if !self.start(&name) {
                break;
            }
        }
    }

    /// Starts a poll if a slot is free; the slot goes with the task.
    fn start(&mut self, name: &str) -> bool {
        let Some(entry) = self.entries.get_mut(name) else {
            return true;
        };
        let Ok(slot) = self.limit.clone().try_acquire_owned() else {
            return false;
        };
        entry.running = true;
        let (account, generation) = (entry.account.clone(), entry.generation);
        let store = self.store.clone();
        let clock = self.opts.clock;
        let mut sync_opts = SyncOptions::new(self.config.state_dir.clone(), clock());
        sync_opts.trace = self.opts.trace.clone();
        sync_opts.stop = Some(self.stop_tx.subscribe());
        let handle = self.tasks.spawn(async move {
            let _slot = slot;
            let report = if sync_opts.stop_requested() {
                None
            } else {
                sync_opts.now = clock();
                Some(sync_account(&account, &store, &sync_opts).await)
            };
            PollResult {
                generation,
                account,
                report,
            }
        });
        self.task_names.insert(handle.id(), name.to_string());
        true
    }

    fn finished(&mut self, joined: Result<(tokio::task::Id, PollResult), JoinError>) {
        let (id, result) = match joined {
            Ok((id, result)) => (id, Ok(result)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(name) = self.task_names.remove(&id) else {
            return;
        };
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                // A panic in one poll must not end the daemon or the account.
                tracing::error!("{name}: the poll failed unexpectedly: {e}");
                if let Some(entry) = self.entries.get_mut(&name) {
                    entry.running = false;
                    let rand = self.random.unit();
                    entry.schedule.record(
                        Outcome::Failed,
                        None,
                        &self.opts.policy,
                        Instant::now(),
                        rand,
                    );
                }
                return;
            }
        };
        let Some(report) = result.report else {
            if let Some(entry) = self.entries.get_mut(&name) {
                entry.running = false;
            }
            return;
        };
        if report.new_messages > 0 && result.account.notify {
            self.send(notify::new_mail(
                &name,
                report.new_messages,
                report.newest_headers.iter(),
            ));
        }
        let current = self
            .entries
            .get_mut(&name)
            .filter(|e| e.generation == result.generation);
        let Some(entry) = current else {
            // Removed or changed by a reload while polling: the new entry
            // has its own schedule.
            tracing::info!("{} (configuration changed meanwhile)", report.summary());
            if let Some(entry) = self.entries.get_mut(&name)
                && self.task_names.values().all(|n| n != &name)
            {
                entry.running = false;
            }
            return;
        };
        entry.running = false;
        let now = Instant::now();
        let outcome = Outcome::of(report.error.as_ref());
        let rand = self.random.unit();
        let decision =
            entry
                .schedule
                .record(outcome, report.login_delay, &self.opts.policy, now, rand);
        let notify = entry.account.notify;
        log_poll(&report, outcome, decision, now);
        if outcome == Outcome::NeedsLogin && decision.note == Note::Failed && notify {
            let reason = report
                .error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default();
            self.send(notify::login_needed(&name, &reason));
        }
        if let Note::Paused { failures } = decision.note
            && notify
        {
            let reason = report
                .error
                .as_ref()
                .map(|e| format!("{e} ({failures} times in a row)"))
                .unwrap_or_default();
            self.send(notify::polling_stopped(&name, &reason));
        }
        if let Some(next) = decision.next {
            let clock = self.opts.clock;
            let unix = clock() + next.saturating_duration_since(now).as_secs() as i64;
            let pid = self.pid;
            if let Err(e) = with_store(&self.store, |s| s.set_next_poll(&name, unix, pid, clock()))
            {
                tracing::warn!("{name}: could not record the next poll: {e}");
            }
        }
    }

    /// Shows `note` in the background; the first failure is logged as a
    /// warning, later ones only at debug level.
    fn send(&mut self, note: Notification) {
        let notifier = self.notifier.clone();
        let failed = self.notify_failed.clone();
        self.notes.spawn(async move {
            let result = match tokio::time::timeout(NOTIFY_TIMEOUT, notifier.notify(note)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {}s",
                    NOTIFY_TIMEOUT.as_secs()
                )),
            };
            if let Err(e) = result {
                if failed.swap(true, Ordering::Relaxed) {
                    tracing::debug!("desktop notification failed: {e}");
                } else {
                    tracing::warn!(
                        "desktop notifications are unavailable (no session bus or no notification server?): {e}; mail is still fetched, and this is not logged again"
                    );
                }
            }
        });
    }

    fn reload(&mut self) {
        let new = match Config::load(&self.opts.config_path).and_then(|c| {
            crate::config::require_targets(&c.path, &c.accounts)?;
            Ok(c)
        }) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!("reload failed, the running configuration stays in force: {e}");
                return;
            }
        };
        if new.state_dir != self.config.state_dir {
            tracing::warn!(
                "reload: state_dir changed to {}; that takes effect only after a restart",
                new.state_dir.display()
            );
        }
        let (mut added, mut changed, mut removed, mut resumed) = (vec![], vec![], vec![], vec![]);
        let names: HashSet<&str> = new.accounts.iter().map(|a| a.name.as_str()).collect();
        self.entries.retain(|name, _| {
            let keep = names.contains(name.as_str());
            if !keep {
                removed.push(name.clone());
            }
            keep
        });
        for account in &new.accounts {
            let name = account.name.clone();
            let fresh = match self.entries.get(&name) {
                Some(e) if *e.account == *account => {
                    if e.schedule.is_paused() || e.schedule.waits_for_login() {
                        // Paused until a reload: this is the reload.
                        let schedule = self.fresh_schedule(account);
                        if let Some(e) = self.entries.get_mut(&name) {
                            e.schedule = schedule;
                        }
                        resumed.push(name);
                    }
                    continue;
                }
                Some(e) => {
                    changed.push(name.clone());
                    e.running
                }
                None => {
                    added.push(name.clone());
                    false
                }
            };
            let mut entry = self.entry(account.clone());
            entry.running = fresh;
            self.entries.insert(name, entry);
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        tracing::info!(
            "configuration reloaded: {} accounts; added: {}; changed: {}; removed: {}; resumed: {}",
            new.accounts.len(),
            list(&added),
            list(&changed),
            list(&removed),
            list(&resumed)
        );
        let state_dir = self.config.state_dir.clone();
        self.config = new;
        self.config.state_dir = state_dir;
        self.config.accounts = Vec::new();
    }

    fn poll_now(&mut self) {
        let now = Instant::now();
        let mut paused = Vec::new();
        for (name, entry) in &mut self.entries {
            if !entry.running && !entry.schedule.poll_now(now) {
                paused.push(name.clone());
            }
        }
        if paused.is_empty() {
            tracing::info!("polling every account now");
        } else {
            tracing::info!(
                "polling every account now, except the paused ({}): reload the configuration to resume them",
                paused.join(", ")
            );
        }
    }

    async fn shutdown(mut self, control: &mut mpsc::Receiver<Control>) {
        let _ = self.stop_tx.send(true);
        if !self.tasks.is_empty() {
            tracing::info!(
                "stopping: finishing the batch in hand of {} polls (at most {}s)",
                self.tasks.len(),
                self.opts.stop_grace.as_secs()
            );
        }
        let deadline = tokio::time::sleep(self.opts.stop_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => self.finished(joined),
                    None => break,
                },
                _ = &mut deadline => {
                    self.abort_polls("did not finish in time");
                    break;
                }
                Some(Control::Stop) = control.recv() => {
                    self.abort_polls("were asked to stop twice");
                    break;
                }
            }
        }
        // Let the notifications of the last polls go out, briefly.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.notes.join_next().await.is_some() {}
        })
        .await;
        // A helper (password_command, MDA) of a dropped poll must not keep
        // the process alive: kill what is left of them.
        let killed = crate::helpers::kill_all();
        if killed > 0 {
            tracing::warn!("stopping: killed {killed} helper processes still running");
        }
        tracing::info!("daemon stopped");
    }

    fn abort_polls(&mut self, why: &str) {
        let names: Vec<&str> = self.task_names.values().map(String::as_str).collect();
        tracing::warn!(
            "stopping: polls of {} {why}; their connections are dropped (safe: uncommitted mail is fetched again next time)",
            names.join(", ")
        );
        self.tasks.abort_all();
    }
}

/// One line per poll, at the level the outcome deserves; a transient
/// failure streak is logged when it starts and when it ends.
fn log_poll(report: &AccountReport, outcome: Outcome, decision: Decision, now: Instant) {
    let summary = report.summary();
    let retry = decision
        .next
        .map(|t| human_duration(t.saturating_duration_since(now)))
        .unwrap_or_default();
    match decision.note {
        Note::Ok => tracing::info!("{summary}"),
        Note::Recovered { failures } => {
            tracing::info!("{summary} (working again after {failures} failed polls)")
        }
        Note::Failed if outcome == Outcome::Locked => tracing::info!(
            "{}: another popsync process is syncing it; next try in {retry}",
            report.account
        ),
        Note::Failed if outcome == Outcome::NeedsLogin => tracing::error!(
            "{summary}; checked again every {retry} (no network until then), or at once on reload"
        ),
        Note::Failed if outcome == Outcome::Failed || outcome == Outcome::Auth => {
            tracing::error!("{summary}; next try in {retry}")
        }
        Note::Failed => tracing::warn!(
            "{summary}; next try in {retry} (repeats of this are logged only at debug level)"
        ),
        Note::Repeated { streak } => {
            tracing::debug!("{summary}; {streak} in a row; next try in {retry}")
        }
        Note::Paused { failures } => tracing::error!(
            "{summary}; the login was refused {failures} times in a row: polling of {} stopped until the configuration is reloaded",
            report.account
        ),
    }
}

/// "45s", "5m", "1h30m".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Uniform numbers in [0, 1) for jitter: std's randomly keyed hasher over a
/// counter is plenty, and needs no crate.
#[derive(Default)]
struct Random {
    state: RandomState,
    n: u64,
}

impl Random {
    fn unit(&mut self) -> f64 {
        self.n += 1;
        (self.state.hash_one(self.n) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(300)), "5m");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let mut r = Random::default();
        let v: Vec<f64> = (0..1000).map(|_| r.unit()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(v.iter().any(|x| *x < 0.1) && v.iter().any(|x| *x > 0.9));
    }

    /// 10,000 accounts all due at start-up: only `jobs` polls are spawned;
    /// the others wait as schedule entries, and the loop sleeps until a
    /// poll finishes instead of spinning on their past due times.
    #[tokio::test]
    async fn due_polls_beyond_the_free_slots_are_not_spawned() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!("state_dir = {:?}\n", dir.path().join("state"));
        for i in 0..200 {
            text.push_str(&format!(
                "[account.a{i}]\nhost = \"127.0.0.1\"\nport = 9\nusername = \"u\"\n\
                 tls = \"none\"\nmaildir = {:?}\n",
                dir.path().join(format!("m{i}"))
            ));
        }
        let config = Config::parse(&text, &dir.path().join("config.toml")).unwrap();
        let store = Arc::new(std::sync::Mutex::new(
            crate::store::Store::open_in(&config.state_dir).unwrap(),
        ));
        let mut opts = DaemonOptions::new(dir.path().join("config.toml"));
        opts.jobs = 4;
        // Everything due at once.
        opts.policy.startup_spread = Duration::ZERO;
        let notifier = Arc::new(crate::notify::RecordingNotifier::default());
        let mut d = Daemon::new(config, store, notifier, opts);
        d.start_due();
        assert_eq!(d.tasks.len(), 4, "one task per free slot");
        assert_eq!(d.entries.values().filter(|e| e.running).count(), 4);
        assert_eq!(d.next_wake(), None, "no wake-up while every slot is busy");
        d.start_due();
        assert_eq!(d.tasks.len(), 4);
        d.tasks.abort_all();
    }

    #[test]
    fn a_second_daemon_on_the_same_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DaemonLock::acquire(dir.path()).unwrap();
        let err = DaemonLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, DaemonError::Running { .. }), "{err}");
        drop(first);
        DaemonLock::acquire(dir.path()).unwrap();
    }
}
