//! The delivery thread: one OS thread owns the [`Target`] and does all of
//! its file and process work, fed by a queue bounded in bytes. The fetch
//! loop keeps reading the socket while the previous messages are written,
//! and no tokio worker ever waits on a disk or an MDA (except for back
//! pressure, when the queue is full: then off the reactor).
//!
//! Both sides hold RAII handles. The engine gets a [`BatchHandle`] (then a
//! [`DurableHandle`]) and [`MessageHandle`]s; dropping one unfinished sends
//! the op that undoes it, without waiting. The thread holds the target's
//! [`Batch`] and [`Message`](super::Message) in the frames of `serve_batch` and
//! `serve_message`, so their lifetimes are the ones the engine's handles
//! describe. Ops run in the order they are sent. Message writes are not
//! answered one by one: [`MessageHandle::finish`] hands back a
//! [`PendingMessage`] that resolves once the thread has stored it. After
//! the first failure in a batch the thread drops (undoes) the batch and
//! touches nothing more of it (an MDA must not be handed further messages
//! of a batch that will be fetched again): the rest of its ops are answered
//! with the failure until the engine ends it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Batch, BatchToken, DeliverError, DurableBatch, MessageMeta, StoredMessage, Target};

/// Message bytes queued for the thread at most; memory stays bounded
/// whatever the size of a message or the speed of the disk.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, DeliverError>>;

enum Op {
    BeginBatch(Reply<Option<BatchToken>>),
    BeginMessage(MessageMeta),
    Write(Vec<u8>),
    EndMessage(Reply<StoredMessage>),
    AbortMessage,
    SyncBatch(Reply<()>),
    PublishBatch(Reply<()>),
    /// Undoes the batch; answers (if asked) once it is undone.
    AbortBatch(Option<oneshot::Sender<()>>),
}

impl Op {
    /// What the op counts against [`QUEUE_BYTES`].
    fn bytes(&self) -> usize {
        match self {
            Op::Write(chunk) => chunk.len(),
            Op::BeginMessage(meta) => meta.received_header.as_ref().map_or(0, Vec::len),
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
/// finish what was sent, drop the target (releasing its locks) and end; the
/// drop waits for that, so the target is gone when the handle is.
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
    /// Moves `target` onto a new thread.
    pub fn spawn(mut target: Box<dyn Target>) -> Result<DeliveryThread, DeliverError> {
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
                serve(target.as_mut(), &worker);
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

    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Starts a batch; its token is to be journaled before any message.
    pub async fn batch(&self) -> Result<BatchHandle<'_>, DeliverError> {
        let token = self.ask(Op::BeginBatch).await?;
        Ok(BatchHandle {
            token,
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

/// The engine's side of a batch taking messages. Dropped, the batch is
/// undone (without waiting; [`BatchHandle::abort`] waits).
pub struct BatchHandle<'t> {
    token: Option<BatchToken>,
    undo: Undo<'t>,
}

/// The engine's side of a durable batch, to be journaled then published.
/// Dropped unpublished, the batch is undone.
pub struct DurableHandle<'t> {
    undo: Undo<'t>,
}

/// The engine's side of a message being written. Dropped unfinished, the
/// message is undone (its tmp file removed, the mbox cut back, the MDA
/// killed) and the batch goes on without it.
pub struct MessageHandle<'b> {
    undo: Undo<'b>,
}

impl<'t> BatchHandle<'t> {
    /// What to journal before the first message (`None`: nothing).
    pub fn token(&self) -> Option<&BatchToken> {
        self.token.as_ref()
    }

    /// Starts a message. Borrowing the batch, one is open at a time.
    pub fn message(&mut self, meta: MessageMeta) -> Result<MessageHandle<'_>, DeliverError> {
        let thread = self.undo.thread;
        thread.send(Op::BeginMessage(meta))?;
        Ok(MessageHandle {
            undo: Undo {
                thread,
                op: || Op::AbortMessage,
            },
        })
    }

    /// Waits until every message of the batch is stored and durable.
    pub async fn sync(self) -> Result<DurableHandle<'t>, DeliverError> {
        let thread = self.undo.thread;
        // On an error `self` is dropped: the batch is undone.
        thread.ask(Op::SyncBatch).await?;
        Ok(DurableHandle { undo: self.undo })
    }

    /// Undoes the batch and waits until it is undone.
    pub async fn abort(self) {
        abort(self.undo).await;
    }
}

impl DurableHandle<'_> {
    /// Makes the batch's messages visible; the batch ends either way.
    pub async fn publish(self) -> Result<(), DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.undo.send_instead(Op::PublishBatch(tx))?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Undoes the batch and waits until it is undone.
    pub async fn abort(self) {
        abort(self.undo).await;
    }
}

async fn abort(undo: Undo<'_>) {
    let (tx, rx) = oneshot::channel();
    if undo.send_instead(Op::AbortBatch(Some(tx))).is_ok() {
        let _ = rx.await;
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

/// The thread's loop: ops outside a batch, then each batch in its frame.
fn serve(target: &mut dyn Target, queue: &Queue) {
    while let Some(op) = queue.pop() {
        match op {
            Op::BeginBatch(reply) => {
                let batch = match target.batch() {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                if reply.send(Ok(batch.token())).is_err() {
                    continue; // nobody holds a handle: the batch is undone
                }
                if let Err(failed) = serve_batch(batch, queue) {
                    drain(queue, failed);
                }
            }
            other => refuse(other, misuse("no batch is open")),
        }
    }
}

/// A batch failed and was undone; `Some` while the failure is unreported
/// (it came from an op nobody waits on).
struct Failed(Option<DeliverError>);

/// Serves a batch until the engine publishes or aborts it; on a failure
/// returns, which drops (undoes) the batch.
fn serve_batch(mut batch: Box<dyn Batch<'_> + '_>, queue: &Queue) -> Result<(), Failed> {
    while let Some(op) = queue.pop() {
        match op {
            Op::BeginMessage(meta) => serve_message(batch.as_mut(), &meta, queue)?,
            Op::SyncBatch(reply) => {
                return match batch.sync() {
                    Ok(durable) => {
                        let _ = reply.send(Ok(()));
                        serve_durable(durable, queue);
                        Ok(())
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Err(Failed(None))
                    }
                };
            }
            Op::AbortBatch(done) => {
                drop(batch);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return Ok(());
            }
            other => {
                refuse(other, misuse("out of order in a batch"));
                return Err(Failed(None));
            }
        }
    }
    Ok(())
}

/// Serves one message until it is finished or aborted.
fn serve_message(
    batch: &mut dyn Batch<'_>,
    meta: &MessageMeta,
    queue: &Queue,
) -> Result<(), Failed> {
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
                        let _ = reply.send(Ok(stored));
                        Ok(())
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Err(Failed(None))
                    }
                };
            }
            Op::AbortMessage => return Ok(()),
            other => {
                refuse(other, misuse("out of order in a message"));
                return Err(Failed(None));
            }
        }
    }
    Ok(())
}

fn serve_durable(durable: Box<dyn DurableBatch + '_>, queue: &Queue) {
    while let Some(op) = queue.pop() {
        match op {
            Op::PublishBatch(reply) => {
                let _ = reply.send(durable.publish());
                return;
            }
            Op::AbortBatch(done) => {
                drop(durable);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            other => refuse(other, misuse("out of order in a durable batch")),
        }
    }
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
            Op::PublishBatch(reply) => {
                let _ = reply.send(Err(failure()));
                return;
            }
            Op::BeginMessage(_) | Op::Write(_) | Op::AbortMessage => {}
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
        Op::BeginBatch(reply) => drop(reply.send(Err(err))),
        Op::EndMessage(reply) => drop(reply.send(Err(err))),
        Op::SyncBatch(reply) | Op::PublishBatch(reply) => drop(reply.send(Err(err))),
        Op::AbortBatch(Some(done)) => drop(done.send(())),
        Op::BeginMessage(_) | Op::Write(_) | Op::AbortMessage | Op::AbortBatch(None) => {
            tracing::debug!("delivery thread: dropped an op: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{Location, Message};
    use std::sync::mpsc;

    /// Records what the thread asked of it; fails a write on demand.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        fail_write: Option<&'static [u8]>,
        /// Each write waits for a token (to hold the thread back).
        gate: Option<mpsc::Receiver<()>>,
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
            None
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
    fn failing_on_bad() -> (Arc<Mutex<Vec<String>>>, DeliveryThread) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut target = Recorder::new(&log);
        target.fail_write = Some(b"bad");
        (log, DeliveryThread::spawn(Box::new(target)).unwrap())
    }

    fn message(batch: &mut BatchHandle<'_>, chunks: &[&[u8]]) -> PendingMessage {
        let message = batch.message(MessageMeta::default()).unwrap();
        for chunk in chunks {
            message.write(chunk).unwrap();
        }
        message.finish().unwrap()
    }

    #[tokio::test]
    async fn messages_are_written_in_order_and_answered_later() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = DeliveryThread::spawn(Box::new(Recorder::new(&log))).unwrap();
        let mut batch = thread.batch().await.unwrap();
        let first = message(&mut batch, &[b"a", b"b"]);
        let second = message(&mut batch, &[b"c"]);
        assert_eq!(name(first.stored().await.unwrap()), "ab");
        assert_eq!(name(second.stored().await.unwrap()), "c");
        batch.sync().await.unwrap().publish().await.unwrap();
        drop(thread);
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "begin_message",
                "end_message ab",
                "begin_message",
                "end_message c",
                "sync_batch",
                "publish_batch"
            ]
        );
    }

    #[tokio::test]
    async fn after_a_failed_write_nothing_more_of_the_batch_is_delivered() {
        let (log, thread) = failing_on_bad();
        let mut batch = thread.batch().await.unwrap();
        let first = message(&mut batch, &[b"ok"]);
        let failing = message(&mut batch, &[b"bad", b"more"]);
        let after = message(&mut batch, &[b"later"]);
        assert_eq!(name(first.stored().await.unwrap()), "ok");
        let err = failing.stored().await.unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let err = after.stored().await.unwrap_err();
        assert!(err.to_string().contains("earlier message"), "{err}");
        assert!(batch.sync().await.is_err());
        // A new batch starts clean.
        let mut batch = thread.batch().await.unwrap();
        let again = message(&mut batch, &[b"x"]);
        assert_eq!(name(again.stored().await.unwrap()), "x");
        drop(batch);
        drop(thread);
        // The failed message was undone with its batch at once; the one
        // after it never began.
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "begin_message",
                "end_message ok",
                "begin_message",
                "abort_message",
                "abort_batch",
                "begin_batch",
                "begin_message",
                "end_message x",
                "abort_batch"
            ]
        );
    }

    #[tokio::test]
    async fn dropped_handles_undo_what_they_started() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = DeliveryThread::spawn(Box::new(Recorder::new(&log))).unwrap();
        let mut batch = thread.batch().await.unwrap();
        let kept = message(&mut batch, &[b"a"]);
        let dropped = batch.message(MessageMeta::default()).unwrap();
        dropped.write(b"half").unwrap();
        drop(dropped);
        let after = message(&mut batch, &[b"b"]);
        assert_eq!(name(kept.stored().await.unwrap()), "a");
        assert_eq!(name(after.stored().await.unwrap()), "b");
        let durable = batch.sync().await.unwrap();
        drop(durable);
        // An awaited abort: the batch is undone when it returns.
        let batch = thread.batch().await.unwrap();
        batch.abort().await;
        assert_eq!(log_of(&log).last().unwrap(), "abort_batch");
        drop(thread);
        assert_eq!(
            log_of(&log),
            [
                "begin_batch",
                "begin_message",
                "end_message a",
                "begin_message",
                "abort_message",
                "begin_message",
                "end_message b",
                "sync_batch",
                "abort_batch",
                "begin_batch",
                "abort_batch"
            ]
        );
    }

    #[tokio::test]
    async fn peek_sees_a_failure_without_waiting() {
        let (_log, thread) = failing_on_bad();
        let mut batch = thread.batch().await.unwrap();
        let mut failing = message(&mut batch, &[b"bad"]);
        // Once the thread is past it, the answer is there.
        assert!(batch.sync().await.is_err());
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
        let thread = DeliveryThread::spawn(Box::new(target)).unwrap();
        let chunk = vec![b'x'; 1024 * 1024];
        let (begun, _answer) = oneshot::channel();
        thread.send(Op::BeginBatch(begun)).unwrap();
        thread
            .send(Op::BeginMessage(MessageMeta::default()))
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

    /// The engine's handles undo through the thread what a real maildir
    /// wrote: a dropped message, then a dropped batch, leave only the
    /// foreign file in tmp/.
    #[tokio::test]
    async fn dropped_handles_undo_a_real_maildirs_writes() {
        let td = tempfile::tempdir().unwrap();
        let tmp = td.path().join("tmp");
        let md = crate::deliver::maildir::Maildir::open(td.path()).unwrap();
        std::fs::write(tmp.join("foreign"), b"not ours").unwrap();
        let thread = DeliveryThread::spawn(Box::new(md)).unwrap();
        let files = || std::fs::read_dir(&tmp).unwrap().count();
        let mut batch = thread.batch().await.unwrap();
        let message = batch.message(MessageMeta::default()).unwrap();
        message.write(b"Subject: kept\n\nbody\n").unwrap();
        message.finish().unwrap().stored().await.unwrap();
        let message = batch.message(MessageMeta::default()).unwrap();
        message.write(b"Subject: half\n\nthe first").unwrap();
        drop(message);
        // Ops run in order: once a later answer is in, the drop was done.
        let probe = batch.message(MessageMeta::default()).unwrap();
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
        let thread = DeliveryThread::spawn(Box::new(mda)).unwrap();
        let mut batch = thread.batch().await.unwrap();
        let message = batch.message(MessageMeta::default()).unwrap();
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
