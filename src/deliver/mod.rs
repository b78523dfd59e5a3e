//! Local delivery targets: maildir, mbox and MDA behind one trait.
//!
//! Ownership carries the order of the steps, so a target needs no flags:
//!
//! 1. [`Target::batch`] -> a [`Batch`] (it borrows the target, so there is
//!    one at a time). Its [`Batch::token`] is what the engine journals
//!    *before* any byte is written (mbox: the file length before the batch;
//!    maildir: the name prefix of its `tmp/` files; MDA: nothing).
//! 2. per message: [`Batch::message`] -> a [`Message`] (it borrows the
//!    batch: one at a time), `io::Write` its bytes, [`Message::finish`] ->
//!    [`StoredMessage`] (location, size, SHA-256 of the stored bytes).
//!    Dropping an unfinished message undoes it.
//! 3. [`Batch::sync`] consumes the batch: every message of it is durable
//!    (maildir: still invisible in `tmp/`; mbox: appended and fsynced); the
//!    [`DurableBatch`] it returns takes no more messages.
//! 4. the engine journals the batch's `StoredMessage`s (intent rows).
//! 5. [`DurableBatch::publish`] consumes it: messages become visible
//!    (maildir: link into `new/`, remove from `tmp/`, fsync `new/` once).
//! 6. the engine commits the UIDs; later it may DELE them on the server.
//!
//! Dropping an unpublished batch undoes exactly its own writes (remove its
//! tmp files, truncate the mbox back to where the batch began). After a
//! crash, [`Target::recover`] is given the journaled token and messages and
//! says which of those are intact in place.

pub mod maildir;
pub mod mbox;
pub mod mda;
pub mod thread;
mod util;

use std::path::PathBuf;

/// Where a delivered message lives, as recorded in the state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// Unique file name (without the `:2,flags` suffix a reader may add),
    /// first delivered into `new/`.
    Maildir { name: String },
    /// Byte range of the message in the mbox file, `From ` line included.
    Mbox { offset: u64, length: u64 },
    /// Handed to an MDA that exited 0; nothing local to check.
    Mda,
}

/// One message written by a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub location: Location,
    /// Bytes of the message as stored (for mbox: the range length).
    pub size: u64,
    /// SHA-256 of exactly the bytes at `location` (mbox: of the whole range).
    pub sha256: [u8; 32],
}

/// What a batch journals before it writes anything, opaque to the engine:
/// each target encodes and decodes its own (`mbox:LENGTH`,
/// `maildir:PREFIX`). Read back from the state, it is untrusted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchToken(String);

impl BatchToken {
    /// A token as a target writes it: `KIND:VALUE`.
    fn new(kind: &str, value: impl std::fmt::Display) -> BatchToken {
        BatchToken(format!("{kind}:{value}"))
    }

    /// A token as read from the journal.
    pub fn from_journal(text: String) -> BatchToken {
        BatchToken(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value of a token of `kind`; `None` for another target's token.
    fn value(&self, kind: &str) -> Option<&str> {
        self.0.strip_prefix(kind)?.strip_prefix(':')
    }
}

/// Per-message data for [`Batch::message`].
#[derive(Debug, Clone, Default)]
pub struct MessageMeta {
    /// An optional trace header line (ending in `\n`) written before the message.
    pub received_header: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("{target}: {action} {path}: {source}")]
    Io {
        target: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: locked by another program ({detail})")]
    Locked { target: String, detail: String },
    #[error("MDA `{command}` {reason}")]
    Mda { command: String, reason: String },
    /// The target could be changed by another user, or is a symlink where
    /// a real directory or file must be.
    #[error("{0}")]
    Unsafe(#[from] crate::ownership::UnsafePath),
    /// The state rows the delivery thread writes between a batch's steps
    /// (see [`thread::Ledger`]).
    #[error(transparent)]
    State(#[from] crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

impl DeliverError {
    /// True when retrying later may succeed without the user changing anything
    /// (a lock held by a mail reader, an MDA that timed out).
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliverError::Locked { .. })
    }
}

impl DeliverError {
    /// The error behind an `io::Error` a [`Message`] returned from `write`.
    pub fn from_write(e: std::io::Error) -> DeliverError {
        if !e.get_ref().is_some_and(|inner| inner.is::<DeliverError>()) {
            return DeliverError::Other(format!("write: {e}"));
        }
        match e.into_inner().map(|inner| inner.downcast::<DeliverError>()) {
            Some(Ok(inner)) => *inner,
            _ => unreachable!("checked just above"),
        }
    }

    /// For `io::Write`: carries the full error through `io::Error`.
    fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

/// A local delivery target. Synchronous on purpose: it runs on the
/// delivery thread (see [`thread`]), never on the async reactor.
pub trait Target: Send {
    /// Human-readable description for logs, e.g. `maildir /home/a/Mail`.
    fn describe(&self) -> String;

    /// Repairs what an interrupted run left. `token` is the last journaled
    /// batch token (if a batch was in progress), `pending` the journaled but
    /// uncommitted messages of that batch, in write order. Returns one bool
    /// per pending message: true if it is intact at its location (the engine
    /// then commits it), false if not (the engine forgets it; re-download).
    /// Never deletes anything that is not provably this program's own partial
    /// write; a torn mbox tail is moved aside into a recovery file, not dropped.
    fn recover(
        &mut self,
        token: Option<&BatchToken>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError>;

    /// Starts a batch (mbox: takes the locks, held until the batch ends).
    fn batch(&mut self) -> Result<Box<dyn Batch<'_> + '_>, DeliverError>;
}

/// One batch of messages taking messages; dropped, it undoes its writes.
pub trait Batch<'t> {
    /// What to journal before the first message; `None`: nothing to undo
    /// after a crash (MDA).
    fn token(&self) -> Option<BatchToken>;

    /// Starts a message; its trace header (if any) is written first.
    fn message(&mut self, meta: &MessageMeta) -> Result<Box<dyn Message + '_>, DeliverError>;

    /// Makes every finished message durable (still invisible for maildir);
    /// the batch takes no more messages.
    fn sync(self: Box<Self>) -> Result<Box<dyn DurableBatch + 't>, DeliverError>;

    /// The batch as one that no longer borrows its target, so that it can
    /// be closed on another thread while the target writes the next one:
    /// a maildir's, whose files are its own and whose token is the same for
    /// every batch of the target. `Err(self)` where batches follow one
    /// another in one place (an mbox under its lock) or nothing is left to
    /// close (an MDA). A target's batches all detach, or none does.
    #[allow(clippy::type_complexity)]
    fn detach(self: Box<Self>) -> Result<Box<dyn Batch<'static> + Send>, Box<dyn Batch<'t> + 't>>;
}

/// A batch whose messages are all durable; dropped unpublished, it undoes
/// its writes like a [`Batch`].
pub trait DurableBatch {
    /// Makes the messages visible. Called once the engine journaled the
    /// batch, when its writes belong to recovery: a failed publish leaves
    /// what it could not publish in place for the next run.
    fn publish(self: Box<Self>) -> Result<(), DeliverError>;
}

/// One message being written: bytes through `io::Write` (already
/// un-stuffed, LF line endings; a write error carries a [`DeliverError`],
/// see [`DeliverError::from_write`]). Dropped unfinished, it is undone.
pub trait Message: std::io::Write {
    fn finish(self: Box<Self>) -> Result<StoredMessage, DeliverError>;
}
