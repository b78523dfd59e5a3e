//! The state rows of a batch, written by the delivery thread between the
//! target's steps (see `deliver::thread`), so the fetch loop never waits
//! for a close.

use crate::deliver::BatchToken;
use crate::deliver::thread::{Finished, Ledger};
use crate::store::{AccountId, StoreError, TargetId};

use super::{SharedStore, with_store};

pub(super) struct StoreLedger {
    pub store: SharedStore,
    pub acct: AccountId,
    pub target_id: TargetId,
    pub now: i64,
    /// Commits are made durable: DELEs of the batch follow.
    pub durable_commits: bool,
}

fn items(batch: &[Finished]) -> Vec<(&str, &crate::deliver::StoredMessage)> {
    batch.iter().map(|(uid, s)| (uid.as_str(), s)).collect()
}

impl Ledger for StoreLedger {
    fn begin(&self, token: &BatchToken) -> Result<(), StoreError> {
        let (acct, id, now) = (self.acct, &self.target_id, self.now);
        with_store(&self.store, |s| s.set_batch_mark(acct, id, token, now))
    }

    fn journal(&self, batch: &[Finished]) -> Result<(), StoreError> {
        let (acct, id, now) = (self.acct, &self.target_id, self.now);
        with_store(&self.store, |s| s.journal(acct, id, &items(batch), now))
    }

    fn commit(
        &self,
        batch: &[Finished],
        journaled: bool,
        keep_mark: bool,
    ) -> Result<(), StoreError> {
        // Relaxed only where a journal lets recovery redo it and no DELE
        // rests on it.
        let durable = self.durable_commits || !journaled;
        let (acct, id, now) = (self.acct, &self.target_id, self.now);
        with_store(&self.store, |s| {
            s.commit_batch(acct, id, &items(batch), now, durable, keep_mark)
        })
    }

    fn forget(&self) -> Result<(), StoreError> {
        let acct = self.acct;
        with_store(&self.store, |s| s.clear_unjournaled_mark(acct))
    }
}
