//! The state: SQLite (WAL, synchronous=FULL) in `state_dir/state.db`.
//!
//! It answers "which UIDs have we stored?", keeps the journal that makes a
//! crash between "message in place" and "UID committed" recoverable, and
//! records every run. Schema changes are plain SQL files in `migrations/`.

mod known;
mod location;
mod repair;
mod report;
mod skip_reason;
mod target_id;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::deliver::{BatchToken, StoredMessage};
pub use known::KnownSet;
pub use location::{decode_location, encode_location};
pub use report::{AccountCounts, DeliveryRecord, MarkCounts, RunSummary};
pub use skip_reason::{SkipKind, SkipReason};
pub use target_id::TargetId;

/// How long a statement waits for a lock another process holds on the
/// state (the `state_busy_timeout` default).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many schema versions this program knows.
const SCHEMA_VERSION: usize = 7;

/// Through the partial index `message_gone` (schema 7), not a table scan.
pub(crate) const PRUNE_RETIRED_SQL: &str = "DELETE FROM message WHERE account_id = ?1
     AND gone_at IS NOT NULL AND gone_at < ?2 AND state != 'delivered'";

fn migrations() -> Migrations<'static> {
    let all = vec![
        M::up(include_str!("../../migrations/0001_initial.sql")),
        M::up(include_str!("../../migrations/0002_daemon_schedule.sql")),
        M::up(include_str!("../../migrations/0003_batch_tmp_names.sql")),
        M::up_with_hook(
            include_str!("../../migrations/0004_target_ids.sql"),
            encode_target_columns,
        ),
        M::up_with_hook(
            include_str!("../../migrations/0005_skip_reason_codes.sql"),
            encode_skip_reasons,
        ),
        M::up(include_str!("../../migrations/0006_batch_token.sql")),
        M::up(include_str!(
            "../../migrations/0007_per_account_indexes.sql"
        )),
    ];
    debug_assert_eq!(all.len(), SCHEMA_VERSION);
    Migrations::new(all)
}

/// Schema 4: every `target` written as a description becomes a
/// [`TargetId`]. Text that is no description of ours is left as it was:
/// reading it fails with "bad target", as a forged row should.
fn encode_target_columns(tx: &rusqlite::Transaction) -> rusqlite_migration::HookResult {
    for table in ["message", "batch_mark", "intent"] {
        let rows: Vec<(i64, String)> = tx
            .prepare(&format!(
                "SELECT rowid, target FROM {table} WHERE target IS NOT NULL"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut update = tx.prepare(&format!("UPDATE {table} SET target = ?2 WHERE rowid = ?1"))?;
        for (rowid, text) in rows {
            if let Some(id) = TargetId::from_description(&text) {
                update.execute(params![rowid, id.encode()])?;
            }
        }
    }
    Ok(())
}

/// Schema 5: every `skip_reason` written as display text becomes a
/// [`SkipReason`] code and detail.
fn encode_skip_reasons(tx: &rusqlite::Transaction) -> rusqlite_migration::HookResult {
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT rowid, skip_reason FROM message WHERE skip_reason IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut update =
        tx.prepare("UPDATE message SET skip_reason = ?2, skip_detail = ?3 WHERE rowid = ?1")?;
    for (rowid, text) in rows {
        let (code, detail) = SkipReason::from_legacy_text(&text).encode();
        update.execute(params![rowid, code, detail])?;
    }
    Ok(())
}

pub type AccountId = i64;
pub type RunId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {action}: {source}")]
    Open {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: schema: {detail}")]
    Schema { path: PathBuf, detail: String },
    #[error("state database {path}: locked by another process for too long")]
    Busy { path: PathBuf },
    /// The state directory or a file in it could be changed by someone else.
    #[error("{0}")]
    Unsafe(#[from] crate::ownership::OpenRefused),
    #[error("state database {path}: bad record: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    Pending,
    Delivered,
    Marked,
    Skipped,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Marked => "marked",
            MessageState::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Option<MessageState> {
        Some(match s {
            "pending" => MessageState::Pending,
            "delivered" => MessageState::Delivered,
            "marked" => MessageState::Marked,
            "skipped" => MessageState::Skipped,
            _ => return None,
        })
    }

    /// Stored, or recorded as not to be fetched: no download needed.
    pub fn is_seen(self) -> bool {
        matches!(self, MessageState::Delivered | MessageState::Marked)
    }
}

/// A UID the state knows as currently on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownMessage {
    pub state: MessageState,
    pub first_seen: i64,
    pub deleted_at: Option<i64>,
}

/// One journaled, uncommitted delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub uid: String,
    pub target: TargetId,
    pub stored: StoredMessage,
}

/// What an interrupted run left in the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// The target of the batch in progress and its token (`None`: an old
    /// mark that names nothing to undo).
    pub mark: Option<(TargetId, Option<BatchToken>)>,
    pub intents: Vec<Intent>,
}

impl Journal {
    pub fn is_empty(&self) -> bool {
        self.mark.is_none() && self.intents.is_empty()
    }
}

/// Counters and outcome of one run, for the `run` table.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub outcome: String,
    pub on_server: Option<u64>,
    pub new_messages: u64,
    pub new_bytes: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub error: Option<String>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed, mode 0600 in a 0700 directory) and migrates.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_waiting(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// `open`, waiting up to `busy_timeout` whenever another process holds
    /// the database locked before giving up with [`StoreError::Busy`].
    pub fn open_waiting(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir).map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                action: "create directory",
                source,
            })?;
        }
        // Another user who can write the state can make popsync delete
        // server mail it never stored (forged `delivered` rows).
        if let Some(dir) = path.parent() {
            crate::ownership::check_private_dir("state directory", dir)?;
        }
        crate::ownership::open_private_file("state database", path, true)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            if std::fs::symlink_metadata(&side).is_ok() {
                crate::ownership::open_private_file("state database", &side, false)?;
            }
        }
        let sql = |source| err_at(path, source);
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sql)?;
        conn.busy_timeout(busy_timeout).map_err(sql)?;
        // A corrupt file fails here with "file is not a database".
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Schema {
                path: path.to_path_buf(),
                detail: match e {
                    rusqlite_migration::Error::MigrationDefinition(
                        rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
                    ) => "written by a newer popsync (schema version is ahead of this program); upgrade popsync".into(),
                    other => other.to_string(),
                },
            })?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// `state_dir/state.db`.
    pub fn open_in(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open(&state_dir.join("state.db"))
    }

    /// The configured state: `state_dir/state.db` with its busy timeout.
    pub fn open_for(config: &crate::config::Config) -> Result<Store, StoreError> {
        Store::open_waiting(
            &config.state_dir.join("state.db"),
            config.state_busy_timeout,
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        err_at(&self.path, source)
    }

    /// Bookkeeping whose loss in a crash or power cut costs at worst a
    /// re-download (pending rows, retired UIDs, skips, deletion marks after
    /// QUIT) or a missing history row (runs, schedule): committed without
    /// waiting for the disk. In WAL mode the log is written in order and the
    /// next FULL commit (`journal`, `commit_delivered`) fsyncs it up to its
    /// own frames, these included; so no relaxed commit can be lost while a
    /// later durable one, and the DELE it allows, survives.
    fn relaxed<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let out = f(self);
        // Never leave the connection relaxed for the durable commits.
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.err(e))?;
        out
    }

    /// The account's id, created on first use.
    pub fn account(&mut self, name: &str, now: i64) -> Result<AccountId, StoreError> {
        self.relaxed(|this| {
            let found: Option<i64> = this
                .conn
                .query_row("SELECT id FROM account WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| this.err(e))?;
            if let Some(id) = found {
                return Ok(id);
            }
            this.conn
                .execute(
                    "INSERT INTO account (name, created_at) VALUES (?1, ?2)",
                    params![name, now],
                )
                .map_err(|e| this.err(e))?;
            Ok(this.conn.last_insert_rowid())
        })
    }

    pub fn find_account(&self, name: &str) -> Result<Option<AccountId>, StoreError> {
        self.conn
            .query_row("SELECT id FROM account WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every live UID (on the server at the last complete listing).
    pub fn live_messages(
        &self,
        account: AccountId,
    ) -> Result<HashMap<String, KnownMessage>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uid, state, first_seen, deleted_at FROM message
                 WHERE account_id = ?1 AND gone_at IS NULL",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([account], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (uid, state, first_seen, deleted_at) = row.map_err(|e| self.err(e))?;
            let state = MessageState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("unknown message state {state:?}"),
            })?;
            out.insert(
                uid,
                KnownMessage {
                    state,
                    first_seen,
                    deleted_at,
                },
            );
        }
        Ok(out)
    }

    /// [`Store::live_messages`] in compact, sorted form, for planning: read
    /// in the index's UID order, so nothing is sorted in memory.
    pub fn known_set(&self, account: AccountId) -> Result<KnownSet, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uid, state, first_seen, deleted_at FROM message
                 WHERE account_id = ?1 AND gone_at IS NULL ORDER BY uid",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([account]).map_err(|e| self.err(e))?;
        let mut set = KnownSet::default();
        // Rows that do not arrive in Rust's order (never, with SQLite's
        // BINARY collation) are sorted here instead.
        let mut unsorted = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let uid: String = r.get(0).map_err(|e| self.err(e))?;
            let state: String = r.get(1).map_err(|e| self.err(e))?;
            let state = MessageState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("unknown message state {state:?}"),
            })?;
            let message = KnownMessage {
                state,
                first_seen: r.get(2).map_err(|e| self.err(e))?,
                deleted_at: r.get(3).map_err(|e| self.err(e))?,
            };
            if !unsorted.is_empty() || !set.push_sorted(&uid, message) {
                unsorted.push((uid, message));
            }
        }
        if unsorted.is_empty() {
            set.shrink_to_fit();
            return Ok(set);
        }
        unsorted.extend(set.iter().map(|(u, m)| (u.to_string(), m)));
        KnownSet::from_rows(unsorted).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            detail: "more than 4 GiB of live UIDs".to_string(),
        })
    }

    /// Records UIDs seen on the server for the first time, as pending.
    pub fn add_pending(
        &mut self,
        account: AccountId,
        new: &[(&str, u64)],
        now: i64,
    ) -> Result<(), StoreError> {
        self.relaxed(|this| {
            if new.is_empty() {
                return Ok(());
            }
            let tx = this.conn.transaction().map_err(|e| err_at(&this.path, e))?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO message (account_id, uid, first_seen, list_size, state)
                         VALUES (?1, ?2, ?3, ?4, 'pending')",
                    )
                    .map_err(|e| err_at(&this.path, e))?;
                for (uid, size) in new {
                    stmt.execute(params![account, uid, now, *size as i64])
                        .map_err(|e| err_at(&this.path, e))?;
                }
            }
            tx.commit().map_err(|e| err_at(&this.path, e))
        })
    }

    /// After a complete, successful UIDL: UIDs no longer listed leave the
    /// seen set (their rows stay as history). Returns how many.
    pub fn retire_missing(
        &mut self,
        account: AccountId,
        present: &std::collections::HashSet<&str>,
        now: i64,
    ) -> Result<usize, StoreError> {
        let live = self.live_messages(account)?;
        let gone = missing_uids(&live, present);
        self.retire(account, &gone, now)?;
        Ok(gone.len())
    }

    /// Forgets retired rows that prove nothing: UIDs gone from the server
    /// for longer than `horizon_secs` that popsync never stored (pending,
    /// marked, skipped). Delivered rows stay: they are the archive's record.
    /// Keeps the state proportional to the mailbox and the archive, whatever
    /// a server once listed. Returns how many rows went.
    pub fn prune_retired(
        &mut self,
        account: AccountId,
        now: i64,
        horizon_secs: i64,
    ) -> Result<usize, StoreError> {
        self.conn
            .execute(PRUNE_RETIRED_SQL, params![account, now - horizon_secs])
            .map_err(|e| self.err(e))
    }

    /// Takes these UIDs out of the seen set (their rows stay as history).
    pub fn retire(
        &mut self,
        account: AccountId,
        gone: &[&str],
        now: i64,
    ) -> Result<(), StoreError> {
        self.stamp_live("gone_at", account, gone, now)
    }

    /// Sets `column = now` on these live UIDs, in one relaxed transaction.
    fn stamp_live(
        &mut self,
        column: &'static str,
        account: AccountId,
        uids: &[&str],
        now: i64,
    ) -> Result<(), StoreError> {
        if uids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE message SET {column} = ?3
             WHERE account_id = ?1 AND uid = ?2 AND gone_at IS NULL"
        );
        self.relaxed(|this| {
            let tx = this.conn.transaction().map_err(|e| err_at(&this.path, e))?;
            {
                let mut stmt = tx.prepare_cached(&sql).map_err(|e| err_at(&this.path, e))?;
                for uid in uids {
                    stmt.execute(params![account, uid, now])
                        .map_err(|e| err_at(&this.path, e))?;
                }
            }
            tx.commit().map_err(|e| err_at(&this.path, e))
        })
    }

    /// Journals a batch's start before the target writes anything.
    pub fn set_batch_mark(
        &mut self,
        account: AccountId,
        target: &TargetId,
        token: &BatchToken,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO batch_mark (account_id, target, created_at, token)
                 VALUES (?1, ?2, ?3, ?4)",
                params![account, target.encode(), now, token.as_str()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Journals durable, not yet published messages (one transaction).
    pub fn journal(
        &mut self,
        account: AccountId,
        target: &TargetId,
        items: &[(&str, &StoredMessage)],
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| err_at(&self.path, e))?;
        {
            let next: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM intent WHERE account_id = ?1",
                    [account],
                    |r| r.get(0),
                )
                .map_err(|e| err_at(&self.path, e))?;
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO intent (account_id, seq, uid, target, location, stored_size, sha256, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| err_at(&self.path, e))?;
            for (i, (uid, stored)) in items.iter().enumerate() {
                stmt.execute(params![
                    account,
                    next + i as i64,
                    uid,
                    target.encode(),
                    encode_location(&stored.location),
                    stored.size as i64,
                    &stored.sha256[..],
                    now
                ])
                .map_err(|e| err_at(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| err_at(&self.path, e))
    }

    /// Commits delivered messages and clears the journal, in one transaction.
    ///
    /// `durable`: wait for the disk (a DELE will follow). Without it the
    /// commit may be lost in a power cut, which costs nothing: the journal
    /// it clears was committed durably, so recovery commits the batch again.
    pub fn commit_delivered(
        &mut self,
        account: AccountId,
        target: &TargetId,
        items: &[(&str, &StoredMessage)],
        now: i64,
        durable: bool,
    ) -> Result<(), StoreError> {
        self.commit_batch(account, target, items, now, durable, false)
    }

    /// [`Self::commit_delivered`] for a batch closing while a later one of
    /// the same run is already marked (`keep_mark`: its mark, the same
    /// token, stays).
    pub fn commit_batch(
        &mut self,
        account: AccountId,
        target: &TargetId,
        items: &[(&str, &StoredMessage)],
        now: i64,
        durable: bool,
        keep_mark: bool,
    ) -> Result<(), StoreError> {
        if durable {
            self.commit_delivered_tx(account, target, items, now, keep_mark)
        } else {
            self.relaxed(|this| this.commit_delivered_tx(account, target, items, now, keep_mark))
        }
    }

    /// Makes every earlier commit durable, relaxed ones included: a WAL
    /// checkpoint syncs the log first. Called before DELEs that rest on
    /// commits of earlier runs.
    pub fn flush_to_disk(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }

    fn commit_delivered_tx(
        &mut self,
        account: AccountId,
        target: &TargetId,
        items: &[(&str, &StoredMessage)],
        now: i64,
        keep_mark: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| err_at(&self.path, e))?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE message SET state = 'delivered', skip_reason = NULL, skip_detail = NULL,
                         delivered_at = ?3, target = ?4, location = ?5, stored_size = ?6, sha256 = ?7
                     WHERE account_id = ?1 AND uid = ?2 AND gone_at IS NULL",
                )
                .map_err(|e| err_at(&self.path, e))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO message (account_id, uid, first_seen, state, delivered_at,
                         target, location, stored_size, sha256)
                     VALUES (?1, ?2, ?3, 'delivered', ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| err_at(&self.path, e))?;
            let target = target.encode();
            for (uid, stored) in items {
                let location = encode_location(&stored.location);
                let args = params![
                    account,
                    uid,
                    now,
                    target,
                    location,
                    stored.size as i64,
                    &stored.sha256[..]
                ];
                let changed = update.execute(args).map_err(|e| err_at(&self.path, e))?;
                if changed == 0 {
                    insert.execute(args).map_err(|e| err_at(&self.path, e))?;
                }
            }
            let dropped = if keep_mark {
                drop_intents(&tx, account)
            } else {
                drop_journal(&tx, account)
            };
            dropped.map_err(|e| err_at(&self.path, e))?;
        }
        tx.commit().map_err(|e| err_at(&self.path, e))
    }

    /// What an interrupted run left behind.
    pub fn pending_journal(&self, account: AccountId) -> Result<Journal, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let target_id = |text: String| {
            TargetId::decode(&text).ok_or_else(|| corrupt(format!("bad target {text:?}")))
        };
        let mark = self
            .conn
            .query_row(
                "SELECT target, token FROM batch_mark WHERE account_id = ?1",
                [account],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .map(|(target, token)| {
                Ok::<_, StoreError>((target_id(target)?, token.map(BatchToken::from_journal)))
            })
            .transpose()?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uid, target, location, stored_size, sha256 FROM intent
                 WHERE account_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([account], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut intents = Vec::new();
        for row in rows {
            let (uid, target, location, size, sha) = row.map_err(|e| self.err(e))?;
            let location = decode_location(&location)
                .ok_or_else(|| corrupt(format!("bad location {location:?}")))?;
            let sha256: [u8; 32] = sha
                .try_into()
                .map_err(|_| corrupt("bad sha256 length".into()))?;
            intents.push(Intent {
                uid,
                target: target_id(target)?,
                stored: StoredMessage {
                    location,
                    size: size as u64,
                    sha256,
                },
            });
        }
        Ok(Journal { mark, intents })
    }

    pub fn clear_journal(&mut self, account: AccountId) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| err_at(&self.path, e))?;
        drop_journal(&tx, account).map_err(|e| err_at(&self.path, e))?;
        tx.commit().map_err(|e| err_at(&self.path, e))
    }

    /// Drops the batch mark when no message was journaled under it: call
    /// only once its batch is undone (its bytes gone, nothing to repair).
    /// A mark left behind would make the next recovery take mail another
    /// program appended since for this batch's torn tail.
    pub fn clear_unjournaled_mark(&mut self, account: AccountId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM batch_mark WHERE account_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM intent WHERE account_id = ?1)",
                [account],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Leaves a message on the server on purpose, with the reason for `status`.
    pub fn mark_skipped(
        &mut self,
        account: AccountId,
        uid: &str,
        reason: &SkipReason,
    ) -> Result<(), StoreError> {
        let (code, detail) = reason.encode();
        self.relaxed(|this| {
            this.conn
                .execute(
                    "UPDATE message SET state = 'skipped', skip_reason = ?3, skip_detail = ?4
                     WHERE account_id = ?1 AND uid = ?2 AND gone_at IS NULL AND state IN ('pending', 'skipped')",
                    params![account, uid, code, detail],
                )
                .map_err(|e| this.err(e))?;
            Ok(())
        })
    }

    /// QUIT confirmed these deletions.
    pub fn mark_deleted(
        &mut self,
        account: AccountId,
        uids: &[&str],
        now: i64,
    ) -> Result<(), StoreError> {
        self.stamp_live("deleted_at", account, uids, now)
    }

    pub fn start_run(&mut self, account: AccountId, now: i64) -> Result<RunId, StoreError> {
        self.relaxed(|this| {
            this.conn
                .execute(
                    "INSERT INTO run (account_id, started_at) VALUES (?1, ?2)",
                    params![account, now],
                )
                .map_err(|e| this.err(e))?;
            Ok(this.conn.last_insert_rowid())
        })
    }

    pub fn finish_run(
        &mut self,
        run: RunId,
        record: &RunRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        self.relaxed(|this| {
            this.conn
                .execute(
                    "UPDATE run SET finished_at = ?2, outcome = ?3, on_server = ?4, new_messages = ?5,
                         new_bytes = ?6, deleted = ?7, skipped = ?8, error = ?9
                     WHERE id = ?1",
                    params![
                        run,
                        now,
                        record.outcome,
                        record.on_server.map(|n| n as i64),
                        record.new_messages as i64,
                        record.new_bytes as i64,
                        record.deleted as i64,
                        record.skipped as i64,
                        record.error
                    ],
                )
                .map_err(|e| this.err(e))?;
            Ok(())
        })
    }

    /// A running daemon records when it will poll `account` next.
    pub fn set_next_poll(
        &mut self,
        account: &str,
        next_poll: i64,
        pid: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        self.relaxed(|this| {
            this.conn
                .execute(
                    "INSERT OR REPLACE INTO daemon_schedule (account, next_poll, pid, updated_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![account, next_poll, pid, now],
                )
                .map_err(|e| this.err(e))?;
            Ok(())
        })
    }

    /// The daemon's next poll of `account` and the daemon's pid, if recorded.
    pub fn next_poll(&self, account: &str) -> Result<Option<(i64, u32)>, StoreError> {
        self.conn
            .query_row(
                "SELECT next_poll, pid FROM daemon_schedule WHERE account = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Raw access for commands that report (status, verify) and for tests.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Live UIDs (from [`Store::live_messages`]) a complete listing no longer has.
pub fn missing_uids<'a>(
    live: &'a HashMap<String, KnownMessage>,
    present: &std::collections::HashSet<&str>,
) -> Vec<&'a str> {
    live.keys()
        .map(String::as_str)
        .filter(|u| !present.contains(u))
        .collect()
}

/// Removes an account's journal (intents and batch mark) inside `tx`.
fn drop_journal(tx: &rusqlite::Transaction<'_>, account: AccountId) -> rusqlite::Result<()> {
    drop_intents(tx, account)?;
    tx.execute("DELETE FROM batch_mark WHERE account_id = ?1", [account])?;
    Ok(())
}

/// The journaled messages, not the mark.
fn drop_intents(tx: &rusqlite::Transaction<'_>, account: AccountId) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM intent WHERE account_id = ?1", [account])?;
    Ok(())
}

/// The one mapping from SQLite errors to [`StoreError`]: a database held
/// by another process (SQLITE_BUSY, SQLITE_LOCKED, whatever the statement)
/// is `Busy`, i.e. "try later", never local trouble that needs a human.
fn err_at(path: &Path, source: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(e, _) = &source
        && matches!(
            e.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        )
    {
        return StoreError::Busy {
            path: path.to_path_buf(),
        };
    }
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests;
