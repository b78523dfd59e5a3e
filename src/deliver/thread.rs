//! The delivery thread: one OS thread owns the [`Target`] and does all of
//! its file and process work, fed by a queue bounded in bytes. The fetch
//! loop keeps reading the socket while the previous messages are written,
//! and no tokio worker ever waits on a disk or an MDA (except for back
//! pressure, when the queue is full: then off the reactor).
//!
//! Operations run in the order they are sent. Message writes are not
//! answered one by one: `end_message` hands back a [`PendingMessage`] that
//! resolves once the thread has stored it, and the engine collects those
//! before it makes the batch durable. After the first failure in a batch
//! the thread touches nothing more of it (an MDA must not be handed further
//! messages of a batch that will be fetched again) until `abort_batch`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{BatchMark, DeliverError, MessageMeta, StoredMessage, Target};

/// Message bytes queued for the thread at most; memory stays bounded
/// whatever the size of a message or the speed of the disk.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;

type Reply<T> = oneshot::Sender<Result<T, DeliverError>>;

enum Op {
    BeginBatch(Reply<BatchMark>),
    BeginMessage(MessageMeta),
    Write(Vec<u8>),
    EndMessage(Reply<StoredMessage>),
    AbortMessage,
    SyncBatch(Reply<()>),
    PublishBatch(Reply<()>),
    AbortBatch(Reply<()>),
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
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_room(state: &QueueState, bytes: usize) -> bool {
        state.ops.is_empty() || state.bytes + bytes <= QUEUE_BYTES
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
        self.changed.notify_all();
        Ok(())
    }

    /// Pushes, waiting for room.
    fn push_wait(&self, op: Op) -> Result<(), PushError> {
        let mut state = self.lock();
        while !state.stopped && !Self::has_room(&state, op.bytes()) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.stopped {
            return Err(PushError::Stopped);
        }
        state.bytes += op.bytes();
        state.ops.push_back(op);
        self.changed.notify_all();
        Ok(())
    }

    /// The next op, or `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Op> {
        let mut state = self.lock();
        loop {
            if let Some(op) = state.ops.pop_front() {
                state.bytes -= op.bytes();
                self.changed.notify_all();
                return Some(op);
            }
            if state.closed {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
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
    pub fn spawn(target: Box<dyn Target>) -> Result<DeliveryThread, DeliverError> {
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
                Worker {
                    target,
                    failed: false,
                    unreported: None,
                }
                .run(&worker);
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

    pub async fn begin_batch(&self) -> Result<BatchMark, DeliverError> {
        self.ask(Op::BeginBatch).await
    }

    pub fn begin_message(&self, meta: MessageMeta) -> Result<(), DeliverError> {
        self.send(Op::BeginMessage(meta))
    }

    /// Message bytes, already un-stuffed and with LF line endings. Errors
    /// of the write itself come back from the message's [`PendingMessage`].
    pub fn write(&self, chunk: &[u8]) -> Result<(), DeliverError> {
        self.send(Op::Write(chunk.to_vec()))
    }

    pub fn end_message(&self) -> Result<PendingMessage, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::EndMessage(tx))?;
        Ok(PendingMessage {
            reply: rx,
            answer: None,
        })
    }

    pub fn abort_message(&self) {
        // A stopped thread has nothing left to abort.
        let _ = self.send(Op::AbortMessage);
    }

    pub async fn sync_batch(&self) -> Result<(), DeliverError> {
        self.ask(Op::SyncBatch).await
    }

    pub async fn publish_batch(&self) -> Result<(), DeliverError> {
        self.ask(Op::PublishBatch).await
    }

    pub async fn abort_batch(&self) -> Result<(), DeliverError> {
        self.ask(Op::AbortBatch).await
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

struct Worker {
    target: Box<dyn Target>,
    /// An op of the current batch failed: skip the rest of it.
    failed: bool,
    /// The failure of an op nobody waits on (a message's start or bytes),
    /// handed to the next op that is answered.
    unreported: Option<DeliverError>,
}

impl Worker {
    fn run(mut self, queue: &Queue) {
        while let Some(op) = queue.pop() {
            self.apply(op);
        }
    }

    /// Runs `f` unless the batch already failed; a failure marks it.
    fn step<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Target) -> Result<T, DeliverError>,
    ) -> Result<T, DeliverError> {
        if self.failed {
            return Err(self.unreported.take().unwrap_or_else(|| {
                DeliverError::Other("not delivered: an earlier message of this batch failed".into())
            }));
        }
        let result = f(self.target.as_mut());
        self.failed = result.is_err();
        result
    }

    /// Like `step` for ops without a reply: the error waits for one.
    fn step_unanswered(&mut self, f: impl FnOnce(&mut dyn Target) -> Result<(), DeliverError>) {
        if self.failed {
            return;
        }
        if let Err(e) = f(self.target.as_mut()) {
            self.failed = true;
            self.unreported = Some(e);
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::BeginBatch(reply) => {
                self.failed = false;
                self.unreported = None;
                let _ = reply.send(self.step(|t| t.begin_batch()));
            }
            Op::BeginMessage(meta) => self.step_unanswered(|t| t.begin_message(&meta)),
            Op::Write(chunk) => self.step_unanswered(|t| {
                let written = t.write(&chunk);
                if written.is_err() {
                    t.abort_message();
                }
                written
            }),
            Op::EndMessage(reply) => {
                let _ = reply.send(self.step(|t| t.end_message()));
            }
            Op::AbortMessage => self.step_unanswered(|t| {
                t.abort_message();
                Ok(())
            }),
            Op::SyncBatch(reply) => {
                let _ = reply.send(self.step(|t| t.sync_batch()));
            }
            Op::PublishBatch(reply) => {
                let _ = reply.send(self.step(|t| t.publish_batch()));
            }
            Op::AbortBatch(reply) => {
                self.failed = false;
                self.unreported = None;
                let _ = reply.send(self.target.abort_batch());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::Location;
    use std::sync::mpsc;

    /// Records what the thread asked of it; fails a write on demand.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        fail_write: Option<&'static [u8]>,
        /// Each write waits for a token (to hold the thread back).
        gate: Option<mpsc::Receiver<()>>,
        body: Vec<u8>,
    }

    impl Recorder {
        fn new(log: &Arc<Mutex<Vec<String>>>) -> Recorder {
            Recorder {
                log: Arc::clone(log),
                fail_write: None,
                gate: None,
                body: Vec::new(),
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
            _: Option<BatchMark>,
            pending: &[StoredMessage],
        ) -> Result<Vec<bool>, DeliverError> {
            Ok(vec![false; pending.len()])
        }
        fn begin_batch(&mut self) -> Result<BatchMark, DeliverError> {
            self.note("begin_batch".into());
            Ok(BatchMark::default())
        }
        fn begin_message(&mut self, _: &MessageMeta) -> Result<(), DeliverError> {
            self.note("begin_message".into());
            self.body.clear();
            Ok(())
        }
        fn write(&mut self, chunk: &[u8]) -> Result<(), DeliverError> {
            if let Some(gate) = &self.gate {
                gate.recv().unwrap();
            }
            if self.fail_write == Some(chunk) {
                return Err(DeliverError::Other("disk full".into()));
            }
            self.body.extend_from_slice(chunk);
            Ok(())
        }
        fn end_message(&mut self) -> Result<StoredMessage, DeliverError> {
            let body = String::from_utf8_lossy(&self.body).into_owned();
            self.note(format!("end_message {body}"));
            Ok(StoredMessage {
                location: Location::Maildir { name: body },
                size: self.body.len() as u64,
                sha256: [0; 32],
            })
        }
        fn abort_message(&mut self) {
            self.note("abort_message".into());
        }
        fn sync_batch(&mut self) -> Result<(), DeliverError> {
            self.note("sync_batch".into());
            Ok(())
        }
        fn publish_batch(&mut self) -> Result<(), DeliverError> {
            self.note("publish_batch".into());
            Ok(())
        }
        fn abort_batch(&mut self) -> Result<(), DeliverError> {
            self.note("abort_batch".into());
            Ok(())
        }
    }

    fn name(stored: StoredMessage) -> String {
        match stored.location {
            Location::Maildir { name } => name,
            other => panic!("{other:?}"),
        }
    }

    /// A thread in a batch whose target fails to write the chunk `bad`.
    async fn failing_on_bad() -> (Arc<Mutex<Vec<String>>>, DeliveryThread) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut target = Recorder::new(&log);
        target.fail_write = Some(b"bad");
        let thread = DeliveryThread::spawn(Box::new(target)).unwrap();
        thread.begin_batch().await.unwrap();
        (log, thread)
    }

    fn message(thread: &DeliveryThread, chunks: &[&[u8]]) -> PendingMessage {
        thread.begin_message(MessageMeta::default()).unwrap();
        for chunk in chunks {
            thread.write(chunk).unwrap();
        }
        thread.end_message().unwrap()
    }

    #[tokio::test]
    async fn messages_are_written_in_order_and_answered_later() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = DeliveryThread::spawn(Box::new(Recorder::new(&log))).unwrap();
        thread.begin_batch().await.unwrap();
        let first = message(&thread, &[b"a", b"b"]);
        let second = message(&thread, &[b"c"]);
        assert_eq!(name(first.stored().await.unwrap()), "ab");
        assert_eq!(name(second.stored().await.unwrap()), "c");
        thread.sync_batch().await.unwrap();
        thread.publish_batch().await.unwrap();
        drop(thread);
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
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
        let (log, thread) = failing_on_bad().await;
        let first = message(&thread, &[b"ok"]);
        let failing = message(&thread, &[b"bad", b"more"]);
        let after = message(&thread, &[b"later"]);
        assert_eq!(name(first.stored().await.unwrap()), "ok");
        let err = failing.stored().await.unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        let err = after.stored().await.unwrap_err();
        assert!(err.to_string().contains("earlier message"), "{err}");
        assert!(thread.sync_batch().await.is_err());
        thread.abort_batch().await.unwrap();
        // A new batch starts clean.
        thread.begin_batch().await.unwrap();
        let again = message(&thread, &[b"x"]);
        assert_eq!(name(again.stored().await.unwrap()), "x");
        drop(thread);
        let log = log.lock().unwrap().clone();
        // The failed message was aborted; the one after it never began.
        assert_eq!(
            log,
            [
                "begin_batch",
                "begin_message",
                "end_message ok",
                "begin_message",
                "abort_message",
                "abort_batch",
                "begin_batch",
                "begin_message",
                "end_message x"
            ]
        );
    }

    #[tokio::test]
    async fn peek_sees_a_failure_without_waiting() {
        let (_log, thread) = failing_on_bad().await;
        let mut failing = message(&thread, &[b"bad"]);
        // Once the thread is past it, the answer is there.
        thread.sync_batch().await.unwrap_err();
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

    /// A slow MDA keeps only its own thread busy: the runtime (here a single
    /// thread, where any blocking call would stall everything) keeps ticking.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_mda_does_not_block_the_runtime() {
        let mda = Mda::new("cat >/dev/null; sleep 0.6", Duration::from_secs(20));
        let thread = DeliveryThread::spawn(Box::new(mda)).unwrap();
        thread.begin_batch().await.unwrap();
        thread.begin_message(MessageMeta::default()).unwrap();
        thread.write(b"Subject: x\n\nbody\n").unwrap();
        let pending = thread.end_message().unwrap();
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
