//! The pipelined fetch loop: RETR into the delivery thread, batch by batch,
//! each batch made durable, journaled, published and committed (by the
//! thread, see `deliver::thread`) before any of its messages may be
//! deleted. The thread writes a message, or closes a batch, while this loop
//! reads the next ones from the socket.

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::Account;
use crate::deliver::thread::{BatchHandle, ClosingBatch, DeliveryThread, PendingMessage, stopped};
use crate::deliver::{DeliverError, MessageMeta, StoredMessage};
use crate::pop3::{Command, StatusLine};
use crate::session::{BodyError, Pipeline, Session, SessionError};
use crate::store::{AccountId, SkipReason};

use super::headers::{HeaderCapture, keep_newest};
use super::plan::{Plan, Wanted};
use super::{AccountReport, SharedStore, SyncError, SyncOptions, received, with_store};

/// A message larger than this is hostile, whatever LIST said.
const MAX_MESSAGE: u64 = 4 * 1024 * 1024 * 1024;

/// How much of one message we read before calling it endless. LIST sizes
/// are advisory (LF counts, lax servers) but never wildly off; without this
/// a RETR that never ends would stream until MAX_MESSAGE.
fn body_limit(list_size: u64) -> u64 {
    list_size
        .saturating_mul(2)
        .saturating_add(1024 * 1024)
        .min(MAX_MESSAGE)
}

/// How far the fetch runs ahead of the replies when the server pipelines:
/// a number of commands and of LIST-announced bytes of RETR replies. The
/// bytes keep a long link full (a fixed count of 64 moved at most 64
/// messages per round trip: 3-4x slower than the link at 50 ms); the count
/// keeps the queued commands (~12 octets each) far below what the socket
/// buffers hold, so writing them can never wait on replies we do not read.
/// The bytes also bound what a stop request still has to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub commands: usize,
    pub bytes: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            commands: 1024,
            bytes: 8 * 1024 * 1024,
        }
    }
}

impl Window {
    /// One command at a time: a server without PIPELINING.
    pub const LOCK_STEP: Window = Window {
        commands: 1,
        bytes: u64::MAX,
    };

    /// Whether one more command may be sent now. One is always allowed, so
    /// a message larger than the window still goes, alone.
    fn admits(&self, commands: usize, retr_bytes: u64) -> bool {
        commands == 0 || (commands < self.commands && retr_bytes < self.bytes)
    }

    /// Whether enough of the window has drained to top it up. Topping up
    /// after every reply sent one RETR per write: for the corpus over TLS,
    /// 4,500 records, each waking the server's TLS proxy and its pop3
    /// process for one command. An eighth of the window at once keeps the
    /// link as full and makes that fewer than a hundred writes.
    fn wants_refill(&self, commands: usize, retr_bytes: u64) -> bool {
        commands == 0
            || (commands + self.commands / 8 <= self.commands
                && retr_bytes.saturating_add(self.bytes / 8) <= self.bytes)
    }
}

/// The fetch loop's pipeline: `window.commands` deep where the server
/// offers PIPELINING (the byte bound is the queue's), lock-step (a window
/// of 1) otherwise.
pub(super) fn pipeline(session: &mut Session, window: Window) -> Pipeline<'_> {
    if session.can_pipeline() {
        session.pipeline(window.commands)
    } else {
        session.pipeline(1)
    }
}

/// What each reply in flight answers (the pipeline knows its shape).
enum InFlight {
    Retr(usize),
    Dele(u32, String),
    /// Confirms that the stream is in step after the last RETR sent.
    Noop,
    /// Ends the session where nothing is deleted in it, sent only once
    /// every earlier reply was read (see `Queue::send_confirmation`).
    Quit,
}

/// What the fetch loop did to the session.
pub(super) struct Fetched {
    /// The UIDs whose DELE the server accepted; gone only once QUIT succeeds.
    pub deleted: Vec<String>,
    /// QUIT's reply, when the loop sent QUIT itself (the session deletes
    /// nothing): the session is over and only needs closing.
    pub quit: Option<StatusLine>,
}

/// Commands still to send and those sent but not yet answered.
struct Queue<'w> {
    wanted: &'w [Wanted<'w>],
    /// Index in `wanted` of the next RETR to send.
    next: usize,
    window: Window,
    /// LIST-announced bytes of the RETRs in flight.
    retr_bytes: u64,
    deletes: VecDeque<(u32, String)>,
    in_flight: VecDeque<InFlight>,
    /// No DELE in this session: the loop ends it with QUIT itself.
    quit_early: bool,
}

impl Queue<'_> {
    /// Queues DELEs first, then RETRs (none when `stopping`), as far as the
    /// window admits, once it has drained enough (see
    /// [`Window::wants_refill`]).
    fn fill(&mut self, pipeline: &mut Pipeline<'_>, stopping: bool) -> Result<(), SessionError> {
        if !self
            .window
            .wants_refill(self.in_flight.len(), self.retr_bytes)
        {
            return Ok(());
        }
        while self.has_room() {
            if let Some((msg, uid)) = self.deletes.pop_front() {
                pipeline.send(&Command::Dele(msg))?;
                self.in_flight.push_back(InFlight::Dele(msg, uid));
            } else if self.next < self.wanted.len() && !stopping {
                pipeline.send(&Command::Retr(self.wanted[self.next].msg))?;
                self.retr_bytes = self.retr_bytes.saturating_add(self.wanted[self.next].size);
                self.in_flight.push_back(InFlight::Retr(self.next));
                self.next += 1;
            } else {
                break;
            }
        }
        Ok(())
    }

    fn has_room(&self) -> bool {
        self.window.admits(self.in_flight.len(), self.retr_bytes)
    }

    /// [`Self::fill`], then, once the last RETR is out and the window has
    /// room, the NOOP (or QUIT) behind it that shows the message really
    /// ended at its terminator. Not before: a window left unfilled while
    /// it drains still has RETRs to send.
    fn top_up(&mut self, pipeline: &mut Pipeline<'_>, stopping: bool) -> Result<(), SessionError> {
        self.fill(pipeline, stopping)?;
        let all_sent = stopping || self.next == self.wanted.len();
        if self.pipelined()
            && all_sent
            && self.has_room()
            && matches!(self.in_flight.back(), Some(InFlight::Retr(_)))
        {
            self.send_confirmation(pipeline)?;
        }
        Ok(())
    }

    /// More than one command in flight (the server pipelines).
    fn pipelined(&self) -> bool {
        self.window.commands > 1
    }

    /// Nothing is left to read or to send: QUIT may go out.
    fn may_quit(&self) -> bool {
        self.quit_early && self.in_flight.is_empty() && self.next == self.wanted.len()
    }

    /// The command that confirms the last RETR: QUIT where this session
    /// deletes nothing (`quit_early`), no RETR is left to send and no reply
    /// is still to be read (lock-step), else NOOP. Never QUIT behind
    /// replies not yet read: Dovecot ends the session as it handles QUIT
    /// and drops the output the client has not taken yet (measured: the
    /// last message cut off when the client read slowly).
    fn send_confirmation(&mut self, pipeline: &mut Pipeline<'_>) -> Result<(), SessionError> {
        let (cmd, item) = if self.may_quit() {
            (Command::Quit, InFlight::Quit)
        } else {
            (Command::Noop, InFlight::Noop)
        };
        pipeline.send(&cmd)?;
        self.in_flight.push_back(item);
        Ok(())
    }
}

/// The batch in progress: its handle on the delivery thread (dropped, the
/// batch is undone) and its messages, ended there, their stored form known
/// once the thread has written them.
struct Batch<'t> {
    handle: BatchHandle<'t>,
    started: Instant,
    items: Items,
    /// Message bytes read (the stored size is known only at the close).
    bytes: u64,
    /// Header sections of the batch's newest messages (bounded ring).
    headers: VecDeque<Vec<u8>>,
    /// Items before this index are known stored.
    checked: usize,
}

/// A batch's messages: UID, the thread's answer, message number.
type Items = Vec<(String, PendingMessage, u32)>;

/// A batch the thread is closing while the loop reads on: what the run
/// reports (and DELEs) once the thread says it is committed.
struct Closing {
    batch: ClosingBatch,
    /// The thread's answer, once looked at.
    answer: Option<Result<(), DeliverError>>,
    items: Items,
    headers: VecDeque<Vec<u8>>,
}

impl Closing {
    /// Whether the thread answered (without waiting).
    fn is_done(&mut self) -> bool {
        if self.answer.is_none() {
            self.answer = self.batch.try_closed();
        }
        self.answer.is_some()
    }
}

impl Batch<'_> {
    /// A failed write stops the run now, not at the batch's close. Looks
    /// only at what the thread already answered (it answers in order).
    fn check_stored(&mut self) -> Result<(), DeliverError> {
        while let Some((_, pending, _)) = self.items.get_mut(self.checked) {
            match pending.peek() {
                Some(Ok(_)) => self.checked += 1,
                Some(Err(_)) => return Err(pending.take_failure().unwrap_or_else(stopped)),
                None => break,
            }
        }
        Ok(())
    }
}

pub(super) struct Fetcher<'a> {
    pub pipeline: Pipeline<'a>,
    pub delivery: &'a DeliveryThread,
    pub store: &'a SharedStore,
    pub account: &'a Account,
    pub acct: AccountId,
    pub opts: &'a SyncOptions,
    pub report: &'a mut AccountReport,
    pub run_id: i64,
    pub delete_after_commit: bool,
    pub list_sizes: ListSizes,
}

/// How many fetched messages had another size than LIST announced.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ListSizes {
    pub fetched: u64,
    pub differ: u64,
}

/// `3000` as `3,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl<'a> Fetcher<'a> {
    /// Fetches `plan.fetch`, deletes `plan.delete` and (by policy) what it
    /// fetched; see [`Fetched`]. `record_plan` writes the plan's state rows
    /// once the first window is sent and before any reply is read: the
    /// server answers meanwhile instead of waiting on the inserts (15 ms
    /// for the 6,046-message corpus), and nothing is delivered before the
    /// rows are in. Should it fail, the session ends without QUIT, so no
    /// DELE sent takes effect.
    pub async fn run(
        &mut self,
        plan: &Plan<'_>,
        record_plan: impl FnOnce(&mut AccountReport) -> Result<(), SyncError>,
    ) -> Result<Fetched, SyncError> {
        // See `pipeline`: a window of 1 is lock-step, whatever the server offers.
        let window = if self.pipeline.window() > 1 {
            self.opts.pipeline
        } else {
            Window::LOCK_STEP
        };
        let wanted = &plan.fetch;
        let progress = self.progress_bar(wanted);
        if !plan.delete.is_empty() {
            // These DELEs rest on commits of earlier runs, some perhaps
            // relaxed: make sure they are on disk first.
            with_store(self.store, |s| s.flush_to_disk())?;
        }
        let mut queue = Queue {
            wanted,
            next: 0,
            window,
            retr_bytes: 0,
            deletes: plan
                .delete
                .iter()
                .map(|&(m, u)| (m, u.to_string()))
                .collect(),
            in_flight: VecDeque::new(),
            quit_early: plan.delete.is_empty() && !self.delete_after_commit,
        };
        let mut fetched = Fetched {
            deleted: Vec::new(),
            quit: None,
        };
        queue.top_up(&mut self.pipeline, self.opts.stop_requested())?;
        self.pipeline.flush().await?;
        record_plan(self.report)?;
        let mut batch: Option<Batch<'a>> = None;
        // At most one batch closes behind the one being read.
        let mut closing: Option<Closing> = None;
        let result = self
            .fetch_all(
                &mut queue,
                &mut batch,
                &mut closing,
                &mut fetched,
                &progress,
            )
            .await;
        if let Err(e) = result {
            // What closed before the failure still counts (and is kept).
            if let Some(c) = closing.take()
                && let Err(e) = self.finish_close(c).await
            {
                self.report
                    .warn(format!("could not keep the messages received so far: {e}"));
            }
            self.end_batch_after(&e, batch.take()).await;
            return Err(e);
        }
        self.report_list_sizes();
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        if queue.next < wanted.len() {
            self.report.unfetched = (wanted.len() - queue.next) as u64;
            tracing::info!(
                account = %self.account.name,
                left = wanted.len() - queue.next,
                "stopping as asked; the rest is fetched on the next run"
            );
        }
        Ok(fetched)
    }

    /// The loop of [`Self::run`]; on an error the caller ends `batch` and
    /// `closing`.
    async fn fetch_all(
        &mut self,
        queue: &mut Queue<'_>,
        batch: &mut Option<Batch<'a>>,
        closing: &mut Option<Closing>,
        fetched: &mut Fetched,
        progress: &Option<indicatif::ProgressBar>,
    ) -> Result<(), SyncError> {
        let wanted = queue.wanted;
        loop {
            // A stop request: send no further RETR; what is in flight is
            // read, its batch closed and committed, then the caller QUITs.
            queue.top_up(&mut self.pipeline, self.opts.stop_requested())?;
            self.pipeline.flush().await?;
            let Some(item) = queue.in_flight.pop_front() else {
                // Every reply is read: QUIT cannot cut one off now, and its
                // round trip overlaps the last batch's close.
                let quit_now = fetched.quit.is_none() && queue.may_quit();
                if quit_now {
                    self.pipeline.send(&Command::Quit)?;
                    self.pipeline.flush().await?;
                    queue.in_flight.push_back(InFlight::Quit);
                }
                // The last batch's DELEs may follow its commit.
                match closing.take() {
                    Some(c) => self.closed(c, queue).await?,
                    None if quit_now => {}
                    None => break,
                }
                continue;
            };
            match item {
                InFlight::Noop => {
                    // In step whatever it says; the step was checked.
                    self.pipeline.next_reply().await?;
                }
                InFlight::Quit => fetched.quit = Some(self.pipeline.next_reply().await?.line),
                InFlight::Dele(msg, uid) => {
                    let line = self.pipeline.next_reply().await?.line;
                    if line.is_ok() {
                        fetched.deleted.push(uid);
                    } else {
                        self.report.warn(format!(
                            "DELE {msg} (UID {uid}) refused: {}; will retry on a later run",
                            line.describe()
                        ));
                    }
                }
                InFlight::Retr(index) => {
                    let want = &wanted[index];
                    queue.retr_bytes = queue.retr_bytes.saturating_sub(want.size);
                    self.retrieve(want, batch, queue).await?;
                    if let Some(c) = closing.take_if(|c| c.is_done()) {
                        self.closed(c, queue).await?;
                    }
                    if let Some(bar) = progress {
                        // Stored bytes, as the summary counts them, not LIST's.
                        let bytes = batch.as_ref().map_or(0, |b| b.bytes);
                        bar.set_message(super::human_bytes(self.report.new_bytes + bytes));
                        bar.inc(1);
                    }
                    let more = (queue.next < wanted.len() && !self.opts.stop_requested())
                        || queue
                            .in_flight
                            .iter()
                            .any(|f| matches!(f, InFlight::Retr(_)));
                    let full = batch.as_ref().is_some_and(|b| !more || self.batch_full(b));
                    if let Some(done) = batch.take_if(|_| full) {
                        // One close behind the reads: an older one is
                        // awaited first (it is done by now, or nearly).
                        if let Some(c) = closing.take() {
                            self.closed(c, queue).await?;
                        }
                        *closing = Some(self.close_batch(done)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// A closed batch: its messages counted, their DELEs queued.
    async fn closed(&mut self, c: Closing, queue: &mut Queue<'_>) -> Result<(), SyncError> {
        let committed = self.finish_close(c).await?;
        if self.delete_after_commit {
            queue.deletes.extend(committed);
        }
        Ok(())
    }

    /// RETR one message into the target; a server-side refusal is skipped
    /// with a warning, not fatal. LIST sizes are advisory: a message is
    /// complete when its terminator arrived and a status line follows it.
    async fn retrieve(
        &mut self,
        want: &Wanted<'_>,
        batch: &mut Option<Batch<'a>>,
        queue: &mut Queue<'_>,
    ) -> Result<(), SyncError> {
        let line = self.pipeline.next_reply().await?.line;
        let uid_shown = want.uid.unwrap_or("-");
        if !line.is_ok() {
            self.report.skipped += 1;
            self.report.warn(format!(
                "RETR {} (UID {uid_shown}) refused: {}; left on the server",
                want.msg,
                line.describe()
            ));
            return Ok(());
        }
        let batch = match batch {
            Some(batch) => batch,
            slot @ None => slot.insert(self.open_batch()?),
        };
        let uid = match &want.uid {
            Some(uid) => uid.to_string(),
            None => format!("no-uidl:{}:{}", self.run_id, want.msg),
        };
        let meta = MessageMeta {
            received_header: self.account.received_header.then(|| {
                received::header(
                    &self.account.host,
                    &self.account.username,
                    uid_shown,
                    self.opts.now,
                )
            }),
        };
        // Dropped on any early return: the message is undone.
        let message = batch.handle.message(meta, uid.clone())?;
        let limit = body_limit(want.size);
        let mut capture = HeaderCapture::default();
        let body = self
            .pipeline
            .read_body(limit, |chunk| {
                capture.feed(chunk);
                message.write(chunk)
            })
            .await;
        let stats = match body {
            Ok(stats) => stats,
            Err(BodyError::Sink(e)) => return Err(e.into()),
            Err(BodyError::Session(e)) => {
                if matches!(e, SessionError::BodyTooLarge { .. }) {
                    let reason = SkipReason::LongerThanListed {
                        limit,
                        listed: want.size,
                    };
                    self.report.warn(format!(
                        "message {} (UID {uid_shown}) {reason}; left on the server",
                        want.msg
                    ));
                    if let Some(uid) = &want.uid {
                        let (store, acct) = (self.store, self.acct);
                        with_store(store, |s| s.mark_skipped(acct, uid, &reason))?;
                    }
                }
                return Err(e.into());
            }
        };
        self.confirm_in_step(want, queue).await?;
        self.list_sizes.fetched += 1;
        if stats.crlf_size() != want.size {
            self.list_sizes.differ += 1;
        }
        let pending = message.finish()?;
        batch.bytes += stats.bytes;
        batch.items.push((uid, pending, want.msg));
        keep_newest(&mut batch.headers, capture.take());
        batch.check_stored()?;
        Ok(())
    }

    /// Whether the message just read really ended at its terminator: the
    /// next thing on the wire must be a status line. Lock-step servers get
    /// the next command now (or a NOOP at the end), so the check costs no
    /// extra round trip mid-mailbox.
    async fn confirm_in_step(
        &mut self,
        want: &Wanted<'_>,
        queue: &mut Queue<'_>,
    ) -> Result<(), SyncError> {
        if queue.in_flight.is_empty() {
            queue.fill(&mut self.pipeline, self.opts.stop_requested())?;
            if queue.in_flight.is_empty() {
                queue.send_confirmation(&mut self.pipeline)?;
            }
        }
        if self.pipeline.next_is_status().await? {
            return Ok(());
        }
        let uid = want.uid.unwrap_or("-").to_string();
        if let Some(uid) = &want.uid {
            // Fetched after all others next run, so it cannot starve them.
            let (store, acct) = (self.store, self.acct);
            with_store(store, |s| s.mark_skipped(acct, uid, &SkipReason::Desynced))?;
        }
        Err(SessionError::OutOfStep { msg: want.msg, uid }.into())
    }

    /// One line per run, not one per message: approximate sizes are common
    /// (stuffed counts, rounding) and harmless now.
    fn report_list_sizes(&self) {
        let ListSizes { fetched, differ } = self.list_sizes;
        if differ > 0 {
            tracing::info!(
                account = %self.account.name,
                "LIST sizes on this server are approximate: {} of {} differ",
                thousands(differ),
                thousands(fetched)
            );
        }
    }

    fn batch_full(&self, batch: &Batch<'_>) -> bool {
        let limits = self.opts.limits;
        batch.items.len() >= limits.messages
            || batch.bytes >= limits.bytes
            || batch.started.elapsed() >= limits.time
    }

    /// Starts a batch on the delivery thread, which journals its token
    /// before anything is written.
    fn open_batch(&mut self) -> Result<Batch<'a>, SyncError> {
        Ok(Batch {
            handle: self.delivery.batch()?,
            started: Instant::now(),
            items: Vec::new(),
            bytes: 0,
            headers: VecDeque::new(),
            checked: 0,
        })
    }

    /// Hands the batch to the thread: stored -> durable -> journaled ->
    /// published -> committed happens there, in that order, while this
    /// loop reads on.
    fn close_batch(&mut self, batch: Batch<'a>) -> Result<Closing, SyncError> {
        let Batch {
            handle,
            items,
            headers,
            ..
        } = batch;
        Ok(Closing {
            batch: handle.close()?,
            answer: None,
            items,
            headers,
        })
    }

    /// Waits for a close; returns the committed messages as (msg, uid) for
    /// deletion.
    async fn finish_close(&mut self, c: Closing) -> Result<Vec<(u32, String)>, SyncError> {
        let Closing {
            mut batch,
            answer,
            items,
            headers,
        } = c;
        let answer = match answer {
            Some(answer) => answer,
            None => batch.closed().await,
        };
        let mut stored = Vec::with_capacity(items.len());
        for (uid, pending, msg) in items {
            match pending.stored().await {
                Ok(s) => stored.push((uid, s, msg)),
                Err(e) => {
                    // The thread undid the batch at the failure, except
                    // where an MDA delivered each message when it
                    // finished: those before the failure it committed.
                    if batch.undoable().await == Some(false) {
                        self.count_delivered(stored, headers);
                    }
                    return Err(e.into());
                }
            }
        }
        // A failed close: undone by the thread until journaled, left for
        // the next run's recovery after.
        answer?;
        let committed: Vec<(u32, String)> =
            stored.iter().map(|(u, _, m)| (*m, u.clone())).collect();
        self.count_delivered(stored, headers);
        Ok(committed)
    }

    /// Adds committed messages to the run's report.
    fn count_delivered(
        &mut self,
        stored: Vec<(String, StoredMessage, u32)>,
        headers: VecDeque<Vec<u8>>,
    ) {
        self.report.new_messages += stored.len() as u64;
        self.report.new_bytes += stored.iter().map(|(_, s, _)| s.size).sum::<u64>();
        self.report
            .delivered
            .extend(stored.into_iter().map(|(_, s, _)| s));
        for header in headers {
            keep_newest(&mut self.report.newest_headers, header);
        }
    }

    /// After a failure: when the server (not the target) failed, the
    /// batch's complete messages are kept, so that a poison message or a
    /// flaky link cannot undo a run's progress again and again. Otherwise
    /// the batch is undone, but for what an MDA already delivered, which
    /// the thread committed.
    async fn end_batch_after(&mut self, err: &SyncError, batch: Option<Batch<'a>>) {
        let Some(mut batch) = batch else {
            return;
        };
        let keep =
            matches!(err, SyncError::Session(_)) || batch.handle.undoable().await == Some(false);
        if keep && !batch.items.is_empty() {
            let closed = match self.close_batch(batch) {
                Ok(c) => self.finish_close(c).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = closed {
                if matches!(err, SyncError::Session(_)) {
                    self.report
                        .warn(format!("could not keep the messages received so far: {e}"));
                } else {
                    tracing::debug!("closing the delivered part of the batch: {e}");
                }
            }
        } else {
            batch.handle.abort().await;
        }
    }

    fn progress_bar(&self, wanted: &[Wanted<'_>]) -> Option<indicatif::ProgressBar> {
        let multi = self.opts.progress.as_ref()?;
        if wanted.len() < 20 {
            return None;
        }
        let bar = multi.add(indicatif::ProgressBar::new(wanted.len() as u64));
        // Messages and stored bytes (what the summary line reports); the
        // wide bar takes what the terminal has left, so a line never wraps.
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} {pos}/{len} messages, {msg} [{wide_bar}] {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(super::human_bytes(0));
        bar.set_prefix(short_name(&self.account.name));
        // Redraws are rate-limited: the tick shows the last message's count
        // (and a live ETA) while a slow server keeps the bar still.
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        Some(bar)
    }
}

/// An account name cut to fit a progress line of 80 columns.
fn short_name(name: &str) -> String {
    const MAX: usize = 20;
    if name.chars().count() <= MAX {
        return name.to_string();
    }
    let head: String = name.chars().take(MAX - 1).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_bounds_commands_and_announced_bytes() {
        let w = Window {
            commands: 4,
            bytes: 1000,
        };
        assert!(w.admits(0, 0));
        assert!(w.admits(3, 999));
        assert!(!w.admits(4, 0), "at most `commands` in flight");
        assert!(!w.admits(1, 1000), "at most `bytes` announced in flight");
        assert!(w.admits(0, 0) && w.admits(0, u64::MAX), "one always goes");
        assert!(Window::LOCK_STEP.admits(0, 0));
        assert!(!Window::LOCK_STEP.admits(1, 0));
        // A long link needs more than the old fixed 64 small messages in
        // flight (the corpus averages 5.4 KiB per message).
        assert!(Window::default().admits(500, 500 * 5500));
    }

    #[test]
    fn the_window_is_topped_up_only_once_an_eighth_has_drained() {
        let w = Window {
            commands: 64,
            bytes: 8000,
        };
        assert!(w.wants_refill(0, 0), "an empty window always");
        assert!(w.wants_refill(0, u64::MAX));
        assert!(!w.wants_refill(57, 0), "7 of 64 commands drained");
        assert!(w.wants_refill(56, 0));
        assert!(!w.wants_refill(1, 7001), "999 of 8000 bytes drained");
        assert!(w.wants_refill(1, 7000));
        // Lock-step: the next command goes as soon as the last is answered.
        assert!(Window::LOCK_STEP.wants_refill(0, 0));
        assert!(!Window::LOCK_STEP.admits(1, 0));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(3000), "3,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn long_account_names_are_cut_for_the_progress_line() {
        assert_eq!(short_name("alice"), "alice");
        let cut = short_name(&"x".repeat(40));
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn body_limit_follows_list_size_within_bounds() {
        // LIST = 0 or rounded sizes must not stop an ordinary message.
        assert!(body_limit(0) >= 10 * 1024);
        assert!(body_limit(1024) >= 2 * 1024 + 1023);
        assert_eq!(body_limit(0), 1024 * 1024);
        assert_eq!(body_limit(1000), 2000 + 1024 * 1024);
        assert_eq!(body_limit(u64::MAX), MAX_MESSAGE);
    }
}
