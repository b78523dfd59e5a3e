//! The delivery thread: one OS thread owns the [`Target`] and does all of
//! its file and process work, and the [`Ledger`] work (the state rows)
//! between a batch's steps, fed by a queue bounded in bytes. The fetch loop
//! only streams: it keeps reading the socket while earlier messages are
//! written and earlier batches closed, and no tokio worker ever waits on a
//! disk, the state or an MDA (except for back pressure, when the queue is
//! full: then off the reactor).
//!
//! A batch's steps and its rows interleave in the one order recovery relies
//! on, because one thread does both in the order the ops came:
//! begin -> mark journaled -> messages written -> durable -> journaled ->
//! published -> committed. A batch begun behind a closing one waits for
//! that close on the thread, not in the fetch loop.
//!
//! Both sides hold RAII handles. The engine gets a [`BatchHandle`] and
//! [`MessageHandle`]s; dropping one unfinished sends the op that undoes it,
//! without waiting, and [`BatchHandle::close`] turns the batch into a
//! [`ClosingBatch`] the thread finishes whatever becomes of the engine. The
//! thread holds the target's [`Batch`] and [`Message`](super::Message) in
//! the frames of `serve_batch` and `serve_message`, so their lifetimes are
//! the ones the engine's handles describe. Message writes are not answered
//! one by one: [`MessageHandle::finish`] hands back a [`PendingMessage`]
//! that resolves once the thread has stored it. After the first failure in
//! a batch the thread drops (undoes) the batch and touches nothing more of
//! it (an MDA must not be handed further messages of a batch that will be
//! fetched again): the rest of its ops are answered with the failure until
//! the engine ends it. A batch that fails to close ends the thread's
//! batches: later ones are refused, so no second batch's mark can take the
//! place of one recovery still needs.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Batch, BatchToken, DeliverError, MessageMeta, StoredMessage, Target};
use crate::store::StoreError;

/// Message bytes queued for the thread at most; memory stays bounded
/// whatever the size of a message or the speed of the disk.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, DeliverError>>;

/// A finished message of a batch: the engine's key for it (its UID) and
/// where the target stored it.
pub type Finished = (String, StoredMessage);

/// The engine's records of a batch, written by the delivery thread between
/// the target's steps (see the module docs for the order).
pub trait Ledger: Send + Sync {
    /// A batch with a token began: journal the token before any byte of it
    /// is written.
    fn begin(&self, token: &BatchToken) -> Result<(), StoreError>;
    /// The batch is durable, not yet visible: journal its messages.
    fn journal(&self, batch: &[Finished]) -> Result<(), StoreError>;
    /// The messages are in place (published, or delivered by an MDA):
    /// commit them. This also drops the batch's journal, and its mark
    /// unless `keep_mark` (a later batch of the run, with the same token,
    /// has begun). Not `journaled` (an MDA's batch that failed part-way),
    /// no journal could redo the commit after a crash.
    fn commit(
        &self,
        batch: &[Finished],
        journaled: bool,
        keep_mark: bool,
    ) -> Result<(), StoreError>;
    /// The batch was undone before it was journaled: drop its mark, which
    /// would otherwise make the next recovery take another program's later
    /// writes for this batch's.
    fn forget(&self) -> Result<(), StoreError>;
}

enum Op {
    /// Answered with the batch's token once the ledger journaled it.
    BeginBatch(oneshot::Sender<Option<BatchToken>>),
    /// A message and the engine's key for it.
    BeginMessage(MessageMeta, String),
    Write(Vec<u8>),
    EndMessage(Reply<StoredMessage>),
    AbortMessage,
    /// Durable, journaled, published, committed; answered when done.
    CloseBatch(Reply<()>),
    /// Undoes the batch; answers (if asked) once it is undone.
    AbortBatch(Option<oneshot::Sender<()>>),
}

impl Op {
    /// What the op counts against [`QUEUE_BYTES`].
    fn bytes(&self) -> usize {
        match self {
            Op::Write(chunk) => chunk.len(),
            Op::BeginMessage(meta, key) => {
                meta.received_header.as_ref().map_or(0, Vec::len) + key.len()
            }
            _ => 0,
        }
    }
}

/// A FIFO of ops bounded by the bytes they carry (one op is always
/// accepted, however large, so a big chunk cannot wait forever).
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when an op is pushed, popped or the queue closes.
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    ops: VecDeque<Op>,
    bytes: usize,
    /// The sender is gone: the thread drains what is left and ends.
    closed: bool,
    /// The thread is gone: nothing sent will ever run.
    stopped: bool,
    /// Threads blocked in [`Queue::wait`]: only then does a push or pop
    /// signal (a futex wake per op, measured at ~12 per message, otherwise).
    waiters: usize,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, mut state: MutexGuard<'a, QueueState>) -> MutexGuard<'a, QueueState> {
        state.waiters += 1;
        let mut state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        state.waiters -= 1;
        state
    }

    fn wake(&self, state: &QueueState) {
        if state.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Ops without bytes always fit: a handle's Drop never waits.
    fn has_room(state: &QueueState, bytes: usize) -> bool {
        state.ops.is_empty() || bytes == 0 || state.bytes + bytes <= QUEUE_BYTES
    }

    /// Pushes without waiting; gives the op back when the queue is full.
    fn try_push(&self, op: Op) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.stopped {
            return Err(PushError::Stopped);
        }
        if !Self::has_room(&state, op.bytes()) {
            return Err(PushError::Full(op));
        }
        state.bytes += op.bytes();
        state.ops.push_back(op);
        self.wake(&state);
        Ok(())
    }

    /// Pushes, waiting for room.
    fn push_wait(&self, op: Op) -> Result<(), PushError> {
        let mut state = self.lock();
        while !state.stopped && !Self::has_room(&state, op.bytes()) {
            state = self.wait(state);
        }
        if state.stopped {
            return Err(PushError::Stopped);
        }
        state.bytes += op.bytes();
        state.ops.push_back(op);
        self.wake(&state);
        Ok(())
    }

    /// The next op, or `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Op> {
        let mut state = self.lock();
        loop {
            if let Some(op) = state.ops.pop_front() {
                state.bytes -= op.bytes();
                self.wake(&state);
                return Some(op);
            }
            if state.closed {
                return None;
            }
            state = self.wait(state);
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The thread ended: wake senders, drop what can never run.
    fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.ops.clear();
        state.bytes = 0;
        self.changed.notify_all();
    }
}

enum PushError {
    Full(Op),
    Stopped,
}

/// The thread ended (a panic in a target) before it answered.
pub fn stopped() -> DeliverError {
    DeliverError::Other("the delivery thread stopped unexpectedly".into())
}

/// The engine's handle on the delivery thread. Dropping it lets the thread
/// finish what was sent (a closing batch is closed, an open one undone),
/// drop the target (releasing its locks) and end; the drop waits for that,
/// so the target is gone when the handle is.
pub struct DeliveryThread {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

/// A message whose end was sent to the thread: resolves to where it was
/// stored, or why it was not.
pub struct PendingMessage {
    reply: oneshot::Receiver<Result<StoredMessage, DeliverError>>,
    /// The thread's answer, once looked at.
    answer: Option<Result<StoredMessage, DeliverError>>,
}

impl PendingMessage {
    pub async fn stored(self) -> Result<StoredMessage, DeliverError> {
        match self.answer {
            Some(answer) => answer,
            None => self.reply.await.unwrap_or_else(|_| Err(stopped())),
        }
    }

    /// The answer if the thread already gave it (without waiting).
    pub fn peek(&mut self) -> Option<&Result<StoredMessage, DeliverError>> {
        if self.answer.is_none() {
            self.answer = match self.reply.try_recv() {
                Ok(answer) => Some(answer),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(stopped())),
            };
        }
        self.answer.as_ref()
    }

    /// The error the thread answered, taken out (after [`Self::peek`]).
    pub fn take_failure(&mut self) -> Option<DeliverError> {
        match self.answer.take() {
            Some(Err(e)) => Some(e),
            other => {
                self.answer = other;
                None
            }
        }
    }
}

impl DeliveryThread {
    /// Moves `target` and `ledger` onto a new thread.
    pub fn spawn(
        mut target: Box<dyn Target>,
        ledger: Box<dyn Ledger>,
    ) -> Result<DeliveryThread, DeliverError> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("popsync-deliver".into())
            .spawn(move || {
                // Stopped even if the target panics, so no sender waits forever.
                struct StopOnExit(Arc<Queue>);
                impl Drop for StopOnExit {
                    fn drop(&mut self) {
                        self.0.stop();
                    }
                }
                let _stop = StopOnExit(Arc::clone(&worker));
                serve(target.as_mut(), ledger.as_ref(), &worker);
            })
            .map_err(|e| DeliverError::Other(format!("cannot start the delivery thread: {e}")))?;
        Ok(DeliveryThread {
            queue,
            thread: Some(thread),
        })
    }

    /// Sends `op`; when the queue is full, waits for room off the reactor.
    fn send(&self, op: Op) -> Result<(), DeliverError> {
        match self.queue.try_push(op) {
            Ok(()) => Ok(()),
            Err(PushError::Full(op)) => {
                crate::sync::blocking(|| self.queue.push_wait(op)).map_err(|_| stopped())
            }
            Err(PushError::Stopped) => Err(stopped()),
        }
    }

    /// Starts a batch, without waiting: the thread journals its token
    /// (through the ledger) before it writes anything of the batch, and a
    /// failure to begin comes back from the batch's first answer.
    pub fn batch(&self) -> Result<BatchHandle<'_>, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::BeginBatch(tx))?;
        Ok(BatchHandle {
            begun: Begun::Waiting(rx),
            undo: Undo {
                thread: self,
                op: || Op::AbortBatch(None),
            },
        })
    }
}

impl Drop for DeliveryThread {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take() {
            crate::sync::blocking(|| {
                let _ = thread.join();
            });
        }
    }
}

/// Sends `op` when dropped, unless kept: how a handle undoes itself.
struct Undo<'t> {
    thread: &'t DeliveryThread,
    op: fn() -> Op,
}

impl Undo<'_> {
    /// Sends `op` instead of the undo.
    fn send_instead(self, op: Op) -> Result<(), DeliverError> {
        let sent = self.thread.send(op);
        // A reference and a fn pointer: forgetting frees nothing.
        std::mem::forget(self);
        sent
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        // A stopped thread has nothing left to undo.
        let _ = self.thread.send((self.op)());
    }
}

/// Whether a batch has a token, once the thread began it.
enum Begun {
    Waiting(oneshot::Receiver<Option<BatchToken>>),
    /// `None`: it never began (its failure is in its other answers).
    Known(Option<bool>),
}

impl Begun {
    /// Whether the batch's writes can be undone (it has a token); false
    /// where each message was delivered when it finished (an MDA).
    async fn undoable(&mut self) -> Option<bool> {
        if let Begun::Waiting(rx) = self {
            *self = Begun::Known(rx.await.ok().map(|token| token.is_some()));
        }
        match self {
            Begun::Known(known) => *known,
            Begun::Waiting(_) => unreachable!("resolved just above"),
        }
    }
}

/// The engine's side of a batch taking messages. Dropped, the batch is
/// undone (without waiting; [`BatchHandle::abort`] waits).
pub struct BatchHandle<'t> {
    begun: Begun,
    undo: Undo<'t>,
}

/// A batch the thread is closing: made durable, journaled, published and
/// committed there, in that order, whether or not anyone waits for it.
pub struct ClosingBatch {
    begun: Begun,
    reply: oneshot::Receiver<Result<(), DeliverError>>,
}

/// The engine's side of a message being written. Dropped unfinished, the
/// message is undone (its tmp file removed, the mbox cut back, the MDA
/// killed) and the batch goes on without it.
pub struct MessageHandle<'b> {
    undo: Undo<'b>,
}

impl BatchHandle<'_> {
    /// Starts the message the engine knows as `key` (its UID). Borrowing
    /// the batch, one is open at a time.
    pub fn message(
        &mut self,
        meta: MessageMeta,
        key: String,
    ) -> Result<MessageHandle<'_>, DeliverError> {
        let thread = self.undo.thread;
        thread.send(Op::BeginMessage(meta, key))?;
        Ok(MessageHandle {
            undo: Undo {
                thread,
                op: || Op::AbortMessage,
            },
        })
    }

    /// Whether the batch's writes can be undone; false for an MDA, which
    /// delivered each message when it finished. Waits until the batch
    /// began (`None`: it never did).
    pub async fn undoable(&mut self) -> Option<bool> {
        self.begun.undoable().await
    }

    /// Hands the batch to the thread to close, without waiting.
    pub fn close(self) -> Result<ClosingBatch, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.undo.send_instead(Op::CloseBatch(tx))?;
        Ok(ClosingBatch {
            begun: self.begun,
            reply: rx,
        })
    }

    /// Undoes the batch and waits until it is undone.
    pub async fn abort(self) {
        let (tx, rx) = oneshot::channel();
        if self.undo.send_instead(Op::AbortBatch(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }
}

impl ClosingBatch {
    /// The close's outcome if the thread already answered (without
    /// waiting); `Some` once.
    pub fn try_closed(&mut self) -> Option<Result<(), DeliverError>> {
        match self.reply.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(stopped())),
        }
    }

    /// Waits for the close's outcome.
    pub async fn closed(&mut self) -> Result<(), DeliverError> {
        (&mut self.reply).await.unwrap_or_else(|_| Err(stopped()))
    }

    /// See [`BatchHandle::undoable`].
    pub async fn undoable(&mut self) -> Option<bool> {
        self.begun.undoable().await
    }
}

impl MessageHandle<'_> {
    /// Message bytes, already un-stuffed and with LF line endings. Errors
    /// of the write itself come back from the message's [`PendingMessage`].
    pub fn write(&self, chunk: &[u8]) -> Result<(), DeliverError> {
        self.undo.thread.send(Op::Write(chunk.to_vec()))
    }

    /// Ends the message; the thread answers once it has stored it.
    pub fn finish(self) -> Result<PendingMessage, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.undo.send_instead(Op::EndMessage(tx))?;
        Ok(PendingMessage {
            reply: rx,
            answer: None,
        })
    }
}

/// What the thread and its closer share: how many batches are begun and
/// not yet ended (a mark is dropped only with the last of them), and
/// whether a close failed (then no batch begins or closes any more).
#[derive(Default)]
struct Books {
    open: Mutex<usize>,
    closing_failed: std::sync::atomic::AtomicBool,
}

impl Books {
    fn open(&self) -> MutexGuard<'_, usize> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closing_failed(&self) -> bool {
        self.closing_failed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn fail_closing(&self) {
        self.closing_failed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A batch ended without being committed: its mark goes unless a later
    /// batch (same token) is open.
    fn forget(&self, ledger: &dyn Ledger) {
        let mut open = self.open();
        if *open <= 1
            && let Err(e) = ledger.forget()
        {
            tracing::warn!("could not clear the mark of an undone batch: {e}");
        }
        *open = open.saturating_sub(1);
    }

    /// A batch ended with its messages left for recovery (journaled, not
    /// all published): its mark and journal stay.
    fn leave(&self) {
        let mut open = self.open();
        *open = open.saturating_sub(1);
    }

    fn commit(
        &self,
        ledger: &dyn Ledger,
        finished: &[Finished],
        journaled: bool,
    ) -> Result<(), StoreError> {
        let mut open = self.open();
        let committed = ledger.commit(finished, journaled, *open > 1);
        *open = open.saturating_sub(1);
        committed
    }
}

/// A detached batch to close on the closer thread.
struct CloseJob {
    batch: Box<dyn Batch<'static> + Send>,
    finished: Vec<Finished>,
    reply: Reply<()>,
}

/// The thread's loop: ops outside a batch, then each batch in its frame.
/// Detached batches close on a second (scoped) thread, in order, while
/// this one writes the next.
fn serve(target: &mut dyn Target, ledger: &dyn Ledger, queue: &Queue) {
    let books = Books::default();
    std::thread::scope(|scope| {
        // Started with the first detached batch.
        let mut closer: Option<std::sync::mpsc::Sender<CloseJob>> = None;
        while let Some(op) = queue.pop() {
            let Op::BeginBatch(begun) = op else {
                refuse(op, misuse("no batch is open"));
                continue;
            };
            let (batch, token) = match begin_batch(target, &books, ledger) {
                Ok(begun) => begun,
                Err(e) => {
                    drain(queue, Failed(Some(e)));
                    continue;
                }
            };
            let undoable = token.is_some();
            let _ = begun.send(token);
            let mut finished = Vec::new();
            match serve_batch(batch, &books, ledger, queue, &mut finished) {
                Ok(Ended::Aborted) => {}
                Ok(Ended::Close(batch, reply)) => match batch.detach() {
                    Ok(batch) => {
                        let jobs =
                            closer.get_or_insert_with(|| spawn_closer(scope, &books, ledger));
                        let job = CloseJob {
                            batch,
                            finished,
                            reply,
                        };
                        if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
                            close_job(job, &books, ledger);
                        }
                    }
                    Err(batch) => {
                        let closed = close(batch, &books, ledger, &finished);
                        let _ = reply.send(closed);
                    }
                },
                Err(failed) => {
                    // The batch is undone (dropped). An MDA delivered each
                    // message when it finished: those are kept, not handed
                    // to it again on every retry.
                    if !undoable && !finished.is_empty() {
                        if let Err(e) = books.commit(ledger, &finished, false) {
                            tracing::warn!("could not record the messages delivered: {e}");
                        }
                    } else {
                        books.forget(ledger);
                    }
                    drain(queue, failed);
                }
            }
        }
    });
}

/// Begins the target's next batch and journals its token (if any) before
/// anything of it is written; refused after a failed close.
fn begin_batch<'t>(
    target: &'t mut dyn Target,
    books: &Books,
    ledger: &dyn Ledger,
) -> Result<(Box<dyn Batch<'t> + 't>, Option<BatchToken>), DeliverError> {
    if books.closing_failed() {
        return Err(after_failed_close());
    }
    let batch = target.batch()?;
    let token = batch.token();
    let mut open = books.open();
    if let Some(token) = &token {
        // On an error `batch` is dropped: nothing was written, nothing to undo.
        ledger.begin(token)?;
    }
    *open += 1;
    Ok((batch, token))
}

/// The closer thread: closes the detached batches sent to it, in order.
fn spawn_closer<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    books: &'env Books,
    ledger: &'env dyn Ledger,
) -> std::sync::mpsc::Sender<CloseJob> {
    let (jobs, rx) = std::sync::mpsc::channel::<CloseJob>();
    std::thread::Builder::new()
        .name("popsync-close".into())
        .spawn_scoped(scope, move || {
            for job in rx {
                close_job(job, books, ledger);
            }
        })
        .expect("cannot start the closing thread");
    jobs
}

fn after_failed_close() -> DeliverError {
    DeliverError::Other("not delivered: an earlier batch of this run failed to close".into())
}

/// A batch failed and was undone; `Some` while the failure is unreported
/// (it came from an op nobody waits on).
struct Failed(Option<DeliverError>);

/// How a batch ended without a failure of its own ops.
enum Ended<'b> {
    /// The engine closed it: the batch and who waits for the close.
    Close(Box<dyn Batch<'b> + 'b>, Reply<()>),
    Aborted,
}

/// Serves a batch until the engine closes or aborts it, collecting its
/// finished messages; on a failure returns, which drops (undoes) the batch.
fn serve_batch<'b>(
    mut batch: Box<dyn Batch<'b> + 'b>,
    books: &Books,
    ledger: &dyn Ledger,
    queue: &Queue,
    finished: &mut Vec<Finished>,
) -> Result<Ended<'b>, Failed> {
    while let Some(op) = queue.pop() {
        match op {
            Op::BeginMessage(meta, key) => {
                if let Some(stored) = serve_message(batch.as_mut(), &meta, queue)? {
                    finished.push((key, stored));
                }
            }
            Op::CloseBatch(reply) => return Ok(Ended::Close(batch, reply)),
            Op::AbortBatch(done) => {
                drop(batch);
                books.forget(ledger);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return Ok(Ended::Aborted);
            }
            other => {
                refuse(other, misuse("out of order in a batch"));
                return Err(Failed(None));
            }
        }
    }
    // The engine is gone without a word: dropping the batch undoes it.
    drop(batch);
    books.forget(ledger);
    Ok(Ended::Aborted)
}

/// On the closer thread: a batch after a failed close is not closed but
/// undone (its journal must not replace the failed one's).
fn close_job(job: CloseJob, books: &Books, ledger: &dyn Ledger) {
    let CloseJob {
        batch,
        finished,
        reply,
    } = job;
    if books.closing_failed() {
        drop(batch);
        books.forget(ledger);
        let _ = reply.send(Err(after_failed_close()));
        return;
    }
    let closed = close(batch, books, ledger, &finished);
    let _ = reply.send(closed);
}

/// Durable -> journaled -> published -> committed. Until it is journaled
/// a failure undoes the batch; after, what is not in place stays for the
/// next run's recovery. A failure ends the thread's batches.
fn close<'b>(
    batch: Box<dyn Batch<'b> + 'b>,
    books: &Books,
    ledger: &dyn Ledger,
    finished: &[Finished],
) -> Result<(), DeliverError> {
    let closed = close_steps(batch, books, ledger, finished);
    if closed.is_err() {
        books.fail_closing();
    }
    closed
}

fn close_steps<'b>(
    batch: Box<dyn Batch<'b> + 'b>,
    books: &Books,
    ledger: &dyn Ledger,
    finished: &[Finished],
) -> Result<(), DeliverError> {
    // On an error the target dropped (undid) the batch.
    let durable = batch.sync().inspect_err(|_| books.forget(ledger))?;
    if let Err(e) = ledger.journal(finished) {
        drop(durable);
        books.forget(ledger);
        return Err(e.into());
    }
    if let Err(e) = durable.publish() {
        books.leave();
        return Err(e);
    }
    books.commit(ledger, finished, true)?;
    Ok(())
}

/// Serves one message until it is finished (its stored form) or aborted.
fn serve_message(
    batch: &mut dyn Batch<'_>,
    meta: &MessageMeta,
    queue: &Queue,
) -> Result<Option<StoredMessage>, Failed> {
    let mut message = batch.message(meta).map_err(|e| Failed(Some(e)))?;
    while let Some(op) = queue.pop() {
        match op {
            Op::Write(chunk) => {
                if let Err(e) = std::io::Write::write_all(&mut message, &chunk) {
                    return Err(Failed(Some(DeliverError::from_write(e))));
                }
            }
            Op::EndMessage(reply) => {
                return match message.finish() {
                    Ok(stored) => {
                        let _ = reply.send(Ok(stored.clone()));
                        Ok(Some(stored))
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Err(Failed(None))
                    }
                };
            }
            Op::AbortMessage => return Ok(None),
            other => {
                refuse(other, misuse("out of order in a message"));
                return Err(Failed(None));
            }
        }
    }
    Ok(None)
}

/// After a failure: answers the batch's remaining ops until it ends.
fn drain(queue: &Queue, mut failed: Failed) {
    let mut failure = move || {
        failed.0.take().unwrap_or_else(|| {
            DeliverError::Other("not delivered: an earlier message of this batch failed".into())
        })
    };
    while let Some(op) = queue.pop() {
        match op {
            Op::AbortBatch(done) => {
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Op::CloseBatch(reply) => {
                let _ = reply.send(Err(failure()));
                return;
            }
            Op::BeginMessage(..) | Op::Write(_) | Op::AbortMessage => {}
            other => refuse(other, failure()),
        }
    }
}

/// An op the handles never send in this state.
fn misuse(what: &str) -> DeliverError {
    DeliverError::Other(format!("delivery thread: an op {what}"))
}

/// Answers an op that cannot run with `err`.
fn refuse(op: Op, err: DeliverError) {
    match op {
        Op::EndMessage(reply) => drop(reply.send(Err(err))),
        Op::CloseBatch(reply) => drop(reply.send(Err(err))),
        Op::AbortBatch(Some(done)) => drop(done.send(())),
        Op::BeginBatch(_)
        | Op::BeginMessage(..)
        | Op::Write(_)
        | Op::AbortMessage
        | Op::AbortBatch(None) => {
            tracing::debug!("delivery thread: dropped an op: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{DurableBatch, Location, Message};
    use std::sync::mpsc;

    /// Records what the thread asked of it; fails a write on demand.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        fail_write: Option<&'static [u8]>,
        /// Each write waits for a token (to hold the thread back).
        gate: Option<mpsc::Receiver<()>>,
        /// Batches have a token (undoable), or deliver each message when
        /// it finishes (like an MDA).
        undoable: bool,
    }

    /// Records the ledger's calls in the same log as the target's.
    struct RecordingLedger {
        log: Arc<Mutex<Vec<String>>>,
        /// Each journal waits for a token (to hold a close back).
        journal_gate: Option<Mutex<mpsc::Receiver<()>>>,
    }

    impl RecordingLedger {
        fn note(&self, what: &str, batch: &[Finished]) {
            let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("{what} {}", keys.join(",")));
        }
    }

    impl Ledger for RecordingLedger {
        fn begin(&self, token: &BatchToken) -> Result<(), StoreError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("mark {}", token.as_str()));
            Ok(())
        }
        fn journal(&self, batch: &[Finished]) -> Result<(), StoreError> {
            if let Some(gate) = &self.journal_gate {
                // A gate dropped (a failing test) lets everything through.
                let _ = gate.lock().unwrap().recv();
            }
            self.note("journal", batch);
            Ok(())
        }
        fn commit(
            &self,
            batch: &[Finished],
            journaled: bool,
            keep_mark: bool,
        ) -> Result<(), StoreError> {
            let what = match (journaled, keep_mark) {
                (true, false) => "commit",
                (true, true) => "commit-keeping-mark",
                (false, _) => "commit-unjournaled",
            };
            self.note(what, batch);
            Ok(())
        }
        fn forget(&self) -> Result<(), StoreError> {
            self.log.lock().unwrap().push("forget".into());
            Ok(())
        }
    }

    fn spawn(target: Recorder) -> DeliveryThread {
        let ledger = RecordingLedger {
            log: Arc::clone(&target.log),
            journal_gate: None,
        };
        DeliveryThread::spawn(Box::new(target), Box::new(ledger)).unwrap()
    }

    struct RecorderBatch<'a> {
        rec: &'a Recorder,
        /// Dropped unpublished: logged as an abort.
        open: bool,
    }

    struct RecorderMessage<'a> {
        rec: &'a Recorder,
        body: Vec<u8>,
        open: bool,
    }

    impl Recorder {
        fn new(log: &Arc<Mutex<Vec<String>>>) -> Recorder {
            Recorder {
                log: Arc::clone(log),
                fail_write: None,
                gate: None,
                undoable: true,
            }
        }
        fn note(&self, what: String) {
            self.log.lock().unwrap().push(what);
        }
    }

    impl Target for Recorder {
        fn describe(&self) -> String {
            "recorder".into()
        }
        fn recover(
            &mut self,
            _: Option<&BatchToken>,
            pending: &[StoredMessage],
        ) -> Result<Vec<bool>, DeliverError> {
            Ok(vec![false; pending.len()])
        }
        fn batch(&mut self) -> Result<Box<dyn Batch<'_> + '_>, DeliverError> {
            self.note("begin_batch".into());
            Ok(Box::new(RecorderBatch {
                rec: self,
                open: true,
            }))
        }
    }

    impl<'a> Batch<'a> for RecorderBatch<'a> {
        fn token(&self) -> Option<BatchToken> {
            self.rec.undoable.then(|| BatchToken::new("rec", 1))
        }
        fn message(&mut self, _: &MessageMeta) -> Result<Box<dyn Message + '_>, DeliverError> {
            self.rec.note("begin_message".into());
            Ok(Box::new(RecorderMessage {
                rec: self.rec,
                body: Vec::new(),
                open: true,
            }))
        }
        fn sync(self: Box<Self>) -> Result<Box<dyn DurableBatch + 'a>, DeliverError> {
            self.rec.note("sync_batch".into());
            Ok(self)
        }

        fn detach(
            self: Box<Self>,
        ) -> Result<Box<dyn Batch<'static> + Send>, Box<dyn Batch<'a> + 'a>> {
            Err(self)
        }
    }

    impl DurableBatch for RecorderBatch<'_> {
        fn publish(mut self: Box<Self>) -> Result<(), DeliverError> {
            self.rec.note("publish_batch".into());
            self.open = false;
            Ok(())
        }
    }

    impl Drop for RecorderBatch<'_> {
        fn drop(&mut self) {
            if self.open {
                self.rec.note("abort_batch".into());
            }
        }
    }

    impl std::io::Write for RecorderMessage<'_> {
        fn write(&mut self, chunk: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = &self.rec.gate {
                gate.recv().unwrap();
            }
            if self.rec.fail_write == Some(chunk) {
                return Err(DeliverError::Other("disk full".into()).into_io());
            }
            self.body.extend_from_slice(chunk);
            Ok(chunk.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Message for RecorderMessage<'_> {
        fn finish(mut self: Box<Self>) -> Result<StoredMessage, DeliverError> {
            self.open = false;
            let body = String::from_utf8_lossy(&self.body).into_owned();
            self.rec.note(format!("end_message {body}"));
            Ok(StoredMessage {
                location: Location::Maildir { name: body },
                size: self.body.len() as u64,
                sha256: [0; 32],
            })
        }
    }

    impl Drop for RecorderMessage<'_> {
        fn drop(&mut self) {
            if self.open {
                self.rec.note("abort_message".into());
            }
        }
    }

    fn name(stored: StoredMessage) -> String {
        match stored.location {
            Location::Maildir { name } => name,
            other => panic!("{other:?}"),
        }
    }

    fn log_of(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        log.lock().unwrap().clone()
    }

    /// A thread whose target fails to write the chunk `bad`.
    fn failing_on_bad(undoable: bool) -> (Arc<Mutex<Vec<String>>>, DeliveryThread) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut target = Recorder::new(&log);
        target.fail_write = Some(b"bad");
        target.undoable = undoable;
        (log, spawn(target))
    }

    fn message(batch: &mut BatchHandle<'_>, key: &str, chunks: &[&[u8]]) -> PendingMessage {
        let message = batch.message(MessageMeta::default(), key.into()).unwrap();
        for chunk in chunks {
            message.write(chunk).unwrap();
        }
        message.finish().unwrap()
    }

    #[tokio::test]
    async fn messages_are_written_in_order_and_answered_later() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = spawn(Recorder::new(&log));
        let mut batch = thread.batch().unwrap();
        let first = message(&mut batch, "u1", &[b"a", b"b"]);
        let second = message(&mut batch, "u2", &[b"c"]);
        assert_eq!(name(first.stored().await.unwrap()), "ab");
        assert_eq!(name(second.stored().await.unwrap()), "c");
        batch.close().unwrap().closed().await.unwrap();
        drop(thread);
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "mark rec:1",
                "begin_message",
                "end_message ab",
                "begin_message",
                "end_message c",
                "sync_batch",
                "journal u1,u2",
                "publish_batch",
                "commit u1,u2"
            ]
        );
    }

    /// The loop does not wait for a close: the next batch, sent behind it,
    /// begins (and is marked) only once the close is committed.
    #[tokio::test]
    async fn a_batch_begun_behind_a_closing_one_waits_for_its_commit() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = spawn(Recorder::new(&log));
        let mut batch = thread.batch().unwrap();
        let first = message(&mut batch, "u1", &[b"a"]);
        let mut closing = batch.close().unwrap();
        let mut next = thread.batch().unwrap();
        let second = message(&mut next, "u2", &[b"b"]);
        assert_eq!(name(second.stored().await.unwrap()), "b");
        assert!(matches!(closing.try_closed(), Some(Ok(()))));
        assert_eq!(name(first.stored().await.unwrap()), "a");
        next.close().unwrap().closed().await.unwrap();
        drop(thread);
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "mark rec:1",
                "begin_message",
                "end_message a",
                "sync_batch",
                "journal u1",
                "publish_batch",
                "commit u1",
                "begin_batch",
                "mark rec:1",
                "begin_message",
                "end_message b",
                "sync_batch",
                "journal u2",
                "publish_batch",
                "commit u2"
            ]
        );
    }

    /// A maildir's batches close on a second thread: with the first
    /// batch's journal held back, the next batch is still written, and the
    /// first one's commit keeps the mark the next (same token) journaled.
    #[tokio::test]
    async fn a_maildirs_next_batch_is_written_while_the_last_one_closes() {
        let td = tempfile::tempdir().unwrap();
        let md = crate::deliver::maildir::Maildir::open(td.path()).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (open_gate, gate) = mpsc::channel();
        let ledger = RecordingLedger {
            log: Arc::clone(&log),
            journal_gate: Some(Mutex::new(gate)),
        };
        let thread = DeliveryThread::spawn(Box::new(md), Box::new(ledger)).unwrap();
        // Dropped before the thread (which waits for the gate), so that a
        // failing assertion cannot hang the test.
        let open_gate = open_gate;
        let mut first = thread.batch().unwrap();
        let a = message(&mut first, "u1", &[b"Subject: a\n\na\n"]);
        let mut closing = first.close().unwrap();
        let mut second = thread.batch().unwrap();
        let b = message(&mut second, "u2", &[b"Subject: b\n\nb\n"]);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), b.stored()).await;
        waited
            .expect("the next batch waited for the close")
            .unwrap();
        assert!(closing.try_closed().is_none(), "the close is held back");
        open_gate.send(()).unwrap();
        closing.closed().await.unwrap();
        a.stored().await.unwrap();
        open_gate.send(()).unwrap();
        second.close().unwrap().closed().await.unwrap();
        drop(thread);
        let log: Vec<String> = log_of(&log)
            .into_iter()
            .map(|l| {
                if l.starts_with("mark maildir:") {
                    "mark".into()
                } else {
                    l
                }
            })
            .collect();
        assert_eq!(
            log,
            [
                "mark",
                "mark",
                "journal u1",
                "commit-keeping-mark u1",
                "journal u2",
                "commit u2"
            ]
        );
        assert_eq!(std::fs::read_dir(td.path().join("new")).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn after_a_failed_write_nothing_more_of_the_batch_is_delivered() {
        let (log, thread) = failing_on_bad(true);
        let mut batch = thread.batch().unwrap();
        let first = message(&mut batch, "u1", &[b"ok"]);
        let failing = message(&mut batch, "u2", &[b"bad", b"more"]);
        let after = message(&mut batch, "u3", &[b"later"]);
        assert_eq!(name(first.stored().await.unwrap()), "ok");
        let err = failing.stored().await.unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let err = after.stored().await.unwrap_err();
        assert!(err.to_string().contains("earlier message"), "{err}");
        assert!(batch.close().unwrap().closed().await.is_err());
        // A new batch starts clean.
        let mut batch = thread.batch().unwrap();
        let again = message(&mut batch, "u4", &[b"x"]);
        assert_eq!(name(again.stored().await.unwrap()), "x");
        drop(batch);
        drop(thread);
        // The failed message was undone with its batch at once, and the
        // batch's mark dropped; the message after it never began.
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "mark rec:1",
                "begin_message",
                "end_message ok",
                "begin_message",
                "abort_message",
                "abort_batch",
                "forget",
                "begin_batch",
                "mark rec:1",
                "begin_message",
                "end_message x",
                "abort_batch",
                "forget"
            ]
        );
    }

    /// An MDA delivered each message when it finished: a later failure
    /// commits those (without a journal), it does not undo them.
    #[tokio::test]
    async fn a_failure_after_delivered_messages_commits_them() {
        let (log, thread) = failing_on_bad(false);
        let mut batch = thread.batch().unwrap();
        let first = message(&mut batch, "u1", &[b"ok"]);
        let failing = message(&mut batch, "u2", &[b"bad"]);
        assert!(first.stored().await.is_ok());
        assert!(failing.stored().await.is_err());
        assert_eq!(batch.undoable().await, Some(false));
        assert!(batch.close().unwrap().closed().await.is_err());
        drop(thread);
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "begin_message",
                "end_message ok",
                "begin_message",
                "abort_message",
                "abort_batch",
                "commit-unjournaled u1"
            ]
        );
    }

    #[tokio::test]
    async fn dropped_handles_undo_what_they_started() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = spawn(Recorder::new(&log));
        let mut batch = thread.batch().unwrap();
        let kept = message(&mut batch, "u1", &[b"a"]);
        let dropped = batch.message(MessageMeta::default(), "u2".into()).unwrap();
        dropped.write(b"half").unwrap();
        drop(dropped);
        let after = message(&mut batch, "u3", &[b"b"]);
        assert_eq!(name(kept.stored().await.unwrap()), "a");
        assert_eq!(name(after.stored().await.unwrap()), "b");
        drop(batch);
        // An awaited abort: the batch is undone when it returns.
        let batch = thread.batch().unwrap();
        batch.abort().await;
        assert_eq!(log_of(&log).last().unwrap(), "forget");
        drop(thread);
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "mark rec:1",
                "begin_message",
                "end_message a",
                "begin_message",
                "abort_message",
                "begin_message",
                "end_message b",
                "abort_batch",
                "forget",
                "begin_batch",
                "mark rec:1",
                "abort_batch",
                "forget"
            ]
        );
    }

    #[tokio::test]
    async fn peek_sees_a_failure_without_waiting() {
        let (_log, thread) = failing_on_bad(true);
        let mut batch = thread.batch().unwrap();
        let mut failing = message(&mut batch, "u1", &[b"bad"]);
        // Once the thread is past it, the answer is there.
        assert!(batch.close().unwrap().closed().await.is_err());
        assert!(matches!(failing.peek(), Some(Err(_))));
        let err = failing.take_failure().unwrap();
        assert!(err.to_string().contains("disk full"), "{err}");
    }

    #[test]
    fn the_queue_holds_at_most_its_byte_bound() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = mpsc::channel();
        let mut target = Recorder::new(&log);
        target.gate = Some(gate);
        let thread = spawn(target);
        let chunk = vec![b'x'; 1024 * 1024];
        let (begun, _answer) = oneshot::channel();
        thread.send(Op::BeginBatch(begun)).unwrap();
        thread
            .send(Op::BeginMessage(MessageMeta::default(), String::new()))
            .unwrap();
        // The thread takes the first chunk and waits at the gate.
        thread
            .queue
            .push_wait(Op::Write(chunk.clone()))
            .ok()
            .unwrap();
        while thread.queue.lock().bytes > 0 {
            std::thread::yield_now();
        }
        let fits = QUEUE_BYTES / chunk.len();
        for _ in 0..fits {
            assert!(thread.queue.try_push(Op::Write(chunk.clone())).is_ok());
        }
        assert!(matches!(
            thread.queue.try_push(Op::Write(chunk.clone())),
            Err(PushError::Full(_))
        ));
        assert_eq!(thread.queue.lock().bytes, QUEUE_BYTES);
        // An op without bytes (a handle's undo) never waits.
        assert!(thread.queue.try_push(Op::AbortMessage).is_ok());
        // A blocked sender goes on once the thread catches up.
        let sender = {
            let queue = Arc::clone(&thread.queue);
            let chunk = chunk.clone();
            std::thread::spawn(move || queue.push_wait(Op::Write(chunk)).is_ok())
        };
        for _ in 0..=fits + 1 {
            open.send(()).unwrap();
        }
        assert!(sender.join().unwrap());
        drop(thread);
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::*;
    use crate::deliver::mda::Mda;
    use std::time::{Duration, Instant};

    /// Keeps no records.
    struct NoLedger;

    impl Ledger for NoLedger {
        fn begin(&self, _: &BatchToken) -> Result<(), StoreError> {
            Ok(())
        }
        fn journal(&self, _: &[Finished]) -> Result<(), StoreError> {
            Ok(())
        }
        fn commit(&self, _: &[Finished], _: bool, _: bool) -> Result<(), StoreError> {
            Ok(())
        }
        fn forget(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// The engine's handles undo through the thread what a real maildir
    /// wrote: a dropped message, then a dropped batch, leave only the
    /// foreign file in tmp/.
    #[tokio::test]
    async fn dropped_handles_undo_a_real_maildirs_writes() {
        let td = tempfile::tempdir().unwrap();
        let tmp = td.path().join("tmp");
        let md = crate::deliver::maildir::Maildir::open(td.path()).unwrap();
        std::fs::write(tmp.join("foreign"), b"not ours").unwrap();
        let thread = DeliveryThread::spawn(Box::new(md), Box::new(NoLedger)).unwrap();
        let files = || std::fs::read_dir(&tmp).unwrap().count();
        let mut batch = thread.batch().unwrap();
        let message = batch.message(MessageMeta::default(), "k".into()).unwrap();
        message.write(b"Subject: kept\n\nbody\n").unwrap();
        message.finish().unwrap().stored().await.unwrap();
        let message = batch.message(MessageMeta::default(), "k".into()).unwrap();
        message.write(b"Subject: half\n\nthe first").unwrap();
        drop(message);
        // Ops run in order: once a later answer is in, the drop was done.
        let probe = batch.message(MessageMeta::default(), "k".into()).unwrap();
        probe.finish().unwrap().stored().await.unwrap();
        assert_eq!(files(), 3, "foreign, kept, probe");
        batch.abort().await;
        assert_eq!(files(), 1);
        assert!(tmp.join("foreign").exists());
        assert_eq!(std::fs::read_dir(td.path().join("new")).unwrap().count(), 0);
    }

    /// A slow MDA keeps only its own thread busy: the runtime (here a single
    /// thread, where any blocking call would stall everything) keeps ticking.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_mda_does_not_block_the_runtime() {
        let mda = Mda::new("cat >/dev/null; sleep 0.6", Duration::from_secs(20));
        let thread = DeliveryThread::spawn(Box::new(mda), Box::new(NoLedger)).unwrap();
        let mut batch = thread.batch().unwrap();
        let message = batch.message(MessageMeta::default(), "k".into()).unwrap();
        message.write(b"Subject: x\n\nbody\n").unwrap();
        let pending = message.finish().unwrap();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            let mut ticks = 0;
            while started.elapsed() < Duration::from_millis(400) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                ticks += 1;
            }
            ticks
        });
        let ticks = ticker.await.unwrap();
        let stored = pending.stored().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(stored.location, crate::deliver::Location::Mda);
        // 20 possible; a loaded machine still gets several in.
        assert!(ticks >= 5, "the runtime ticked only {ticks} times");
    }
}
