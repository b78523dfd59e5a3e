//! Queries for the migration and archive commands: mark-seen and import
//! (state `marked`), the delivery records `verify` and `purge` check, and
//! the numbers `status` shows.

use rusqlite::{OptionalExtension, params};

use super::{AccountId, SkipKind, Store, StoreError, TargetId, decode_location, err_at};
use crate::deliver::StoredMessage;

/// The latest delivery's target: through the partial index
/// `message_delivered` (schema 7), read backwards, not a table scan.
pub(crate) const LAST_TARGET_SQL: &str = "SELECT target FROM message
     WHERE account_id = ?1 AND state = 'delivered'
     ORDER BY delivered_at DESC, id DESC LIMIT 1";

/// What [`Store::mark_seen`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarkCounts {
    /// Newly recorded as seen (state `marked`).
    pub marked: usize,
    /// Already stored or marked: left as they were.
    pub already: usize,
}

/// One message popsync stored, as the state recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub uid: String,
    /// The target it was stored in.
    pub target: TargetId,
    pub stored: StoredMessage,
    pub delivered_at: i64,
    pub deleted_at: Option<i64>,
    /// Set when the UID left the server's listing.
    pub gone_at: Option<i64>,
}

/// The last finished run of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run's row id: orders runs started in the same second.
    pub id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub on_server: Option<u64>,
    pub skipped: u64,
    pub error: Option<String>,
}

/// Counts from the state for `popsync status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AccountCounts {
    /// Live UIDs (on the server at the last complete listing).
    pub known: u64,
    pub marked: u64,
    pub pending: u64,
    /// Every message popsync ever stored for the account, and their bytes.
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Of those, deleted from the server after storing.
    pub deleted: u64,
    /// Live messages left on the server on purpose, counted by kind of
    /// reason, in [`SkipKind`] order.
    #[serde(rename = "skipped_reasons")]
    pub skipped: Vec<(SkipKind, u64)>,
}

impl Store {
    /// Records UIDs now on the server as seen without downloading them:
    /// unknown, pending and skipped ones become `marked` (never deleted by
    /// sync or purge); delivered and marked ones stay as they are.
    pub fn mark_seen(
        &mut self,
        account: AccountId,
        uids: &[(&str, u64)],
        now: i64,
    ) -> Result<MarkCounts, StoreError> {
        let path = self.path.clone();
        let e = |source| err_at(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let mut counts = MarkCounts::default();
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE message SET state = 'marked', skip_reason = NULL, skip_detail = NULL
                     WHERE account_id = ?1 AND uid = ?2 AND gone_at IS NULL
                       AND state IN ('pending', 'skipped')",
                )
                .map_err(e)?;
            let mut exists = tx
                .prepare_cached(
                    "SELECT 1 FROM message WHERE account_id = ?1 AND uid = ?2 AND gone_at IS NULL",
                )
                .map_err(e)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO message (account_id, uid, first_seen, list_size, state)
                     VALUES (?1, ?2, ?3, ?4, 'marked')",
                )
                .map_err(e)?;
            for (uid, size) in uids {
                if update.execute(params![account, uid]).map_err(e)? > 0 {
                    counts.marked += 1;
                } else if exists.exists(params![account, uid]).map_err(e)? {
                    counts.already += 1;
                } else {
                    insert
                        .execute(params![account, uid, now, *size as i64])
                        .map_err(e)?;
                    counts.marked += 1;
                }
            }
        }
        tx.commit().map_err(e)?;
        Ok(counts)
    }

    /// Every message recorded as delivered for the account, live or not.
    pub fn delivery_records(&self, account: AccountId) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uid, target, location, stored_size, sha256, delivered_at, deleted_at, gone_at
                 FROM message WHERE account_id = ?1 AND state = 'delivered' ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([account], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<Vec<u8>>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (uid, target, location, size, sha, delivered_at, deleted_at, gone_at) =
                row.map_err(|e| self.err(e))?;
            let corrupt = |what: &str| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("delivered message UID {uid:?}: {what}"),
            };
            let location = location
                .as_deref()
                .and_then(decode_location)
                .ok_or_else(|| corrupt("missing or bad location"))?;
            let sha256: [u8; 32] = sha
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("missing or bad sha256"))?;
            out.push(DeliveryRecord {
                target: target
                    .as_deref()
                    .and_then(TargetId::decode)
                    .ok_or_else(|| corrupt("missing or bad target"))?,
                stored: StoredMessage {
                    location,
                    size: size.ok_or_else(|| corrupt("missing size"))? as u64,
                    sha256,
                },
                delivered_at: delivered_at.unwrap_or_default(),
                deleted_at,
                gone_at,
                uid,
            });
        }
        Ok(out)
    }

    /// The target of the latest delivery, if any.
    pub fn last_target(&self, account: AccountId) -> Result<Option<TargetId>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(LAST_TARGET_SQL, [account], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        text.map(|t| {
            TargetId::decode(&t).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("bad target {t:?}"),
            })
        })
        .transpose()
    }

    /// The latest run, and the latest run that failed (may be the same).
    pub fn last_runs(
        &self,
        account: AccountId,
    ) -> Result<(Option<RunSummary>, Option<RunSummary>), StoreError> {
        let query = |filter: &str| {
            self.conn
                .query_row(
                    &format!(
                        "SELECT started_at, finished_at, outcome, on_server, skipped, error, id FROM run
                         WHERE account_id = ?1 AND finished_at IS NOT NULL {filter}
                         ORDER BY started_at DESC, id DESC LIMIT 1"
                    ),
                    [account],
                    |r| {
                        Ok(RunSummary {
                            started_at: r.get(0)?,
                            finished_at: r.get(1)?,
                            outcome: r.get(2)?,
                            on_server: r.get::<_, Option<i64>>(3)?.map(|n| n as u64),
                            skipped: r.get::<_, i64>(4)? as u64,
                            error: r.get(5)?,
                            id: r.get(6)?,
                        })
                    },
                )
                .optional()
                .map_err(|e| self.err(e))
        };
        Ok((query("")?, query("AND error IS NOT NULL")?))
    }

    pub fn account_counts(&self, account: AccountId) -> Result<AccountCounts, StoreError> {
        let mut c = AccountCounts::default();
        let (known, marked, pending): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(state = 'marked'), 0), COALESCE(SUM(state = 'pending'), 0)
                 FROM message WHERE account_id = ?1 AND gone_at IS NULL",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.err(e))?;
        let (delivered, bytes, deleted): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(stored_size), 0), COUNT(deleted_at)
                 FROM message WHERE account_id = ?1 AND state = 'delivered'",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.err(e))?;
        (c.known, c.marked, c.pending) = (known as u64, marked as u64, pending as u64);
        (c.delivered, c.delivered_bytes, c.deleted) =
            (delivered as u64, bytes as u64, deleted as u64);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT skip_reason, COUNT(*) FROM message
                 WHERE account_id = ?1 AND gone_at IS NULL AND state = 'skipped'
                 GROUP BY 1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([account], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.err(e))?;
        // Codes this program does not know (a newer popsync's) count as other.
        let mut by_kind = std::collections::BTreeMap::new();
        for row in rows {
            let (code, n) = row.map_err(|e| self.err(e))?;
            let kind = code
                .as_deref()
                .and_then(SkipKind::from_code)
                .unwrap_or(SkipKind::Other);
            *by_kind.entry(kind).or_insert(0) += n;
        }
        c.skipped = by_kind.into_iter().collect();
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::Location;

    fn stored(name: &str) -> StoredMessage {
        StoredMessage {
            location: Location::Maildir { name: name.into() },
            size: 10,
            sha256: [7; 32],
        }
    }

    #[test]
    fn mark_seen_marks_unknown_pending_and_skipped_but_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_in(dir.path()).unwrap();
        let a = s.account("alice", 1).unwrap();
        s.add_pending(a, &[("p", 5), ("k", 6)], 1).unwrap();
        s.mark_skipped(a, "k", &crate::store::SkipReason::Desynced)
            .unwrap();
        s.commit_delivered(
            a,
            &TargetId::Maildir("/m".into()),
            &[("d", &stored("n1"))],
            2,
            true,
        )
        .unwrap();
        let c = s
            .mark_seen(a, &[("p", 5), ("k", 6), ("d", 1), ("new", 9)], 3)
            .unwrap();
        assert_eq!(
            c,
            MarkCounts {
                marked: 3,
                already: 1
            }
        );
        let live = s.live_messages(a).unwrap();
        for uid in ["p", "k", "new"] {
            assert_eq!(live[uid].state, crate::store::MessageState::Marked, "{uid}");
        }
        assert_eq!(live["d"].state, crate::store::MessageState::Delivered);
        assert_eq!(
            s.mark_seen(a, &[("new", 9)], 4).unwrap(),
            MarkCounts {
                marked: 0,
                already: 1
            }
        );

        let recs = s.delivery_records(a).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].uid, "d");
        assert_eq!(recs[0].target, TargetId::Maildir("/m".into()));
        assert_eq!(recs[0].stored, stored("n1"));
        let counts = s.account_counts(a).unwrap();
        assert_eq!(
            (
                counts.known,
                counts.marked,
                counts.delivered,
                counts.delivered_bytes
            ),
            (4, 3, 1, 10)
        );
    }

    #[test]
    fn last_runs_finds_the_latest_and_the_latest_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open_in(dir.path()).unwrap();
        let a = s.account("alice", 1).unwrap();
        assert_eq!(s.last_runs(a).unwrap(), (None, None));
        let r1 = s.start_run(a, 10).unwrap();
        let failed = crate::store::RunRecord {
            outcome: "auth".into(),
            error: Some("bad password".into()),
            ..Default::default()
        };
        s.finish_run(r1, &failed, 11).unwrap();
        let r2 = s.start_run(a, 20).unwrap();
        let ok = crate::store::RunRecord {
            outcome: "ok".into(),
            on_server: Some(4),
            skipped: 1,
            ..Default::default()
        };
        s.finish_run(r2, &ok, 21).unwrap();
        s.start_run(a, 30).unwrap(); // unfinished: ignored
        let (last, err) = s.last_runs(a).unwrap();
        let last = last.unwrap();
        assert_eq!(
            (last.started_at, last.on_server, last.skipped),
            (20, Some(4), 1)
        );
        assert_eq!(err.unwrap().error.as_deref(), Some("bad password"));
    }
}
