//! State changes and read-only access for the hands-on commands: `ls` and
//! `sync --dry-run` read without writing, `refetch`/`verify --repair` make a
//! damaged delivery fetchable again, `forget` drops a UID's live record.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::{AccountId, SkipReason, Store, StoreError, err_at};

impl Store {
    /// Opens an existing state for reading only (no migration, no file
    /// created, `query_only` set); `None` when there is no state yet. For
    /// commands that must change nothing on disk. Opened read-write all the
    /// same: a read-only connection cannot remove the `-wal`/`-shm` files
    /// SQLite creates for it, a read-write one removes them at close.
    pub fn open_read_only_in(state_dir: &Path) -> Result<Option<Store>, StoreError> {
        let path = state_dir.join("state.db");
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        // The same trust checks as a read-write open (see `Store::open`).
        crate::ownership::check_private_dir("state directory", state_dir)?;
        crate::ownership::open_private_file("state database", &path, false)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| err_at(&path, e))?;
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| err_at(&path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| err_at(&path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| err_at(&path, e))?;
        if version > super::SCHEMA_VERSION as i64 {
            return Err(StoreError::Schema {
                path,
                detail: "written by a newer popsync (schema version is ahead of this program); upgrade popsync".into(),
            });
        }
        Ok(Some(Store { conn, path }))
    }

    /// Why each live skipped UID was left on the server. Also on a state
    /// opened read-only before schema 5 (no migration ran), whose
    /// `skip_reason` still holds the old text.
    pub fn skip_reasons(
        &self,
        account: AccountId,
    ) -> Result<HashMap<String, SkipReason>, StoreError> {
        let coded = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('message') WHERE name = 'skip_detail'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| self.err(e))?
            > 0;
        let detail = if coded { "skip_detail" } else { "NULL" };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT uid, skip_reason, {detail} FROM message
                 WHERE account_id = ?1 AND gone_at IS NULL AND state = 'skipped'"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([account], |r| {
                let code: Option<String> = r.get(1)?;
                let detail: Option<String> = r.get(2)?;
                let code = code.as_deref().unwrap_or("");
                let reason = if coded {
                    SkipReason::decode(code, detail.as_deref())
                } else {
                    SkipReason::from_legacy_text(code)
                };
                Ok((r.get(0)?, reason))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Turns a live delivered record back into `pending`, so the next sync
    /// fetches the message again; the old location is overwritten by that
    /// delivery. Only for a message not deleted from the server. Returns
    /// whether a record changed. Durable: the caller has already moved the
    /// damaged copy aside.
    pub fn reset_for_refetch(&mut self, account: AccountId, uid: &str) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE message SET state = 'pending', skip_reason = NULL, skip_detail = NULL
                 WHERE account_id = ?1 AND uid = ?2 AND gone_at IS NULL
                   AND deleted_at IS NULL AND state = 'delivered'",
                params![account, uid],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed > 0)
    }

    /// Drops the live records of these UIDs (they stay as history, like a
    /// UID gone from the server), so the next sync counts them as new.
    pub fn forget(
        &mut self,
        account: AccountId,
        uids: &[&str],
        now: i64,
    ) -> Result<(), StoreError> {
        self.retire(account, uids, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{Location, StoredMessage};
    use crate::store::{MessageState, TargetId};

    fn stored(name: &str) -> StoredMessage {
        StoredMessage {
            location: Location::Maildir { name: name.into() },
            size: 10,
            sha256: [7; 32],
        }
    }

    #[test]
    fn refetch_makes_a_delivered_record_pending_and_forget_makes_it_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_in(dir.path()).unwrap();
        let a = s.account("alice", 1).unwrap();
        s.commit_delivered(
            a,
            &TargetId::Maildir("/m".into()),
            &[("d", &stored("n1")), ("e", &stored("n2"))],
            2,
            true,
        )
        .unwrap();
        s.add_pending(a, &[("p", 5)], 2).unwrap();
        s.mark_deleted(a, &["e"], 3).unwrap();

        assert!(s.reset_for_refetch(a, "d").unwrap());
        assert!(!s.reset_for_refetch(a, "p").unwrap(), "not delivered");
        assert!(
            !s.reset_for_refetch(a, "e").unwrap(),
            "deleted from the server"
        );
        let live = s.live_messages(a).unwrap();
        assert_eq!(live["d"].state, MessageState::Pending);
        assert!(s.delivery_records(a).unwrap().iter().all(|r| r.uid != "d"));

        s.forget(a, &["p", "e"], 4).unwrap();
        let live = s.live_messages(a).unwrap();
        assert!(!live.contains_key("p") && !live.contains_key("e"));
        // The delivery of `e` stays as history for verify.
        let e = s.delivery_records(a).unwrap();
        assert_eq!(
            (e.len(), e[0].uid.as_str(), e[0].gone_at),
            (1, "e", Some(4))
        );
    }

    #[test]
    fn read_only_open_writes_nothing_and_sees_the_records() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Store::open_read_only_in(dir.path()).unwrap().is_none());
        assert!(!dir.path().join("state.db").exists());
        {
            let mut s = Store::open_in(dir.path()).unwrap();
            let a = s.account("alice", 1).unwrap();
            s.add_pending(a, &[("k", 6)], 1).unwrap();
            s.mark_skipped(a, "k", &SkipReason::TooLarge { size: 6, max: 5 })
                .unwrap();
        }
        let before = std::fs::read(dir.path().join("state.db")).unwrap();
        let mut s = Store::open_read_only_in(dir.path()).unwrap().unwrap();
        let a = s.find_account("alice").unwrap().unwrap();
        assert_eq!(
            s.skip_reasons(a).unwrap()["k"],
            SkipReason::TooLarge { size: 6, max: 5 }
        );
        assert!(s.forget(a, &["k"], 2).is_err(), "query_only");
        drop(s);
        assert_eq!(std::fs::read(dir.path().join("state.db")).unwrap(), before);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["state.db"], "no -wal or -shm left behind");
    }
}
