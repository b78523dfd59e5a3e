//! Local delivery targets: maildir, mbox and MDA behind one trait.
//!
//! The sync engine drives a target batch by batch, and owns the journal (the
//! SQLite state). The order of calls for one batch is:
//!
//! 1. `begin_batch()` -> a [`BatchMark`] the engine journals *before* any byte
//!    is written (mbox: the file length before the batch).
//! 2. per message: `begin_message()`, `write()` any number of times,
//!    `end_message()` -> [`StoredMessage`] (location, size, SHA-256 of the
//!    stored bytes). `abort_message()` drops a half-written message.
//! 3. `sync_batch()`: every message of the batch is durable on disk (maildir:
//!    still invisible in `tmp/`; mbox: appended and fsynced; MDA: no-op).
//! 4. the engine journals the batch's `StoredMessage`s (intent rows).
//! 5. `publish_batch()`: messages become visible (maildir: link into `new/`,
//!    remove from `tmp/`, fsync `new/` once).
//! 6. the engine commits the UIDs; later it may DELE them on the server.
//!
//! `abort_batch()` undoes an unfinished batch (remove tmp files, truncate the
//! mbox back to the mark). After a crash, `recover()` is given what the
//! journal still holds and says which journaled messages are intact in place.

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

/// What the engine must journal before a batch writes anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchMark {
    /// mbox: file length before the batch; `None` for other targets.
    pub mbox_length: Option<u64>,
    /// maildir: every `tmp/` file of the batch is named `PREFIX<n>.<host>`;
    /// recovery removes such files and nothing else.
    pub tmp_prefix: Option<String>,
}

impl BatchMark {
    /// Whether the engine must journal the mark before the batch writes.
    pub fn needs_journal(&self) -> bool {
        self.mbox_length.is_some() || self.tmp_prefix.is_some()
    }
}

/// Per-message data the engine passes to `begin_message`.
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

/// A local delivery target. Synchronous on purpose: the engine calls the
/// slow parts (`sync_batch`, `publish_batch`) off the async reactor.
pub trait Target: Send {
    /// Human-readable description for logs, e.g. `maildir /home/a/Mail`.
    fn describe(&self) -> String;

    /// Repairs what an interrupted run left. `mark` is the last journaled
    /// batch mark (if a batch was in progress), `pending` the journaled but
    /// uncommitted messages of that batch, in write order. Returns one bool
    /// per pending message: true if it is intact at its location (the engine
    /// then commits it), false if not (the engine forgets it; re-download).
    /// Never deletes anything that is not provably this program's own partial
    /// write; a torn mbox tail is moved aside into a recovery file, not dropped.
    fn recover(
        &mut self,
        mark: Option<BatchMark>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError>;

    fn begin_batch(&mut self) -> Result<BatchMark, DeliverError>;
    fn begin_message(&mut self, meta: &MessageMeta) -> Result<(), DeliverError>;
    /// Message bytes, already un-stuffed and with LF line endings.
    fn write(&mut self, chunk: &[u8]) -> Result<(), DeliverError>;
    fn end_message(&mut self) -> Result<StoredMessage, DeliverError>;
    fn abort_message(&mut self);
    fn sync_batch(&mut self) -> Result<(), DeliverError>;
    fn publish_batch(&mut self) -> Result<(), DeliverError>;
    fn abort_batch(&mut self) -> Result<(), DeliverError>;
}
