use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::deliver::Location;

fn stored(name: &str) -> StoredMessage {
    StoredMessage {
        location: Location::Maildir { name: name.into() },
        size: 10,
        sha256: [7; 32],
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(&dir.path().join("state")).unwrap();
    (dir, store)
}

#[test]
fn files_are_private() {
    let (dir, _store) = open();
    let state = dir.path().join("state");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("state.db")), 0o600);
}

#[test]
fn pending_then_delivered_then_gone() {
    let (_dir, mut store) = open();
    let acct = store.account("alice", 100).unwrap();
    assert_eq!(store.account("alice", 200).unwrap(), acct);
    store
        .add_pending(acct, &[("u1", 10), ("u2", 20)], 100)
        .unwrap();
    let live = store.live_messages(acct).unwrap();
    assert_eq!(live["u1"].state, MessageState::Pending);
    assert_eq!(live["u1"].first_seen, 100);

    let m = stored("n1");
    store
        .journal(acct, "maildir /m", &[("u1", &m)], 110)
        .unwrap();
    let journal = store.pending_journal(acct).unwrap();
    assert_eq!(journal.intents.len(), 1);
    assert_eq!(journal.intents[0].stored, m);
    store
        .commit_delivered(acct, "maildir /m", &[("u1", &m)], 120, true)
        .unwrap();
    assert!(store.pending_journal(acct).unwrap().is_empty());
    let live = store.live_messages(acct).unwrap();
    assert!(live["u1"].state.is_seen());
    assert!(!live["u2"].state.is_seen());

    // u1 leaves the server: it leaves the seen set, history stays.
    let present: HashSet<&str> = ["u2"].into_iter().collect();
    assert_eq!(store.retire_missing(acct, &present, 130).unwrap(), 1);
    assert!(!store.live_messages(acct).unwrap().contains_key("u1"));
    let rows: i64 = store
        .connection()
        .query_row("SELECT COUNT(*) FROM message WHERE uid = 'u1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows, 1);
    // And if it ever comes back it is new again, without a constraint error.
    store.add_pending(acct, &[("u1", 10)], 140).unwrap();
}

#[test]
fn batch_mark_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open_in(dir.path()).unwrap();
        let acct = store.account("a", 1).unwrap();
        store
            .set_batch_mark(
                acct,
                "mbox /x",
                &BatchMark {
                    mbox_length: Some(42),
                    tmp_prefix: None,
                },
                1,
            )
            .unwrap();
    }
    let mut store = Store::open_in(dir.path()).unwrap();
    let acct = store.account("a", 1).unwrap();
    let journal = store.pending_journal(acct).unwrap();
    assert_eq!(
        journal.mark,
        Some((
            "mbox /x".into(),
            BatchMark {
                mbox_length: Some(42),
                tmp_prefix: None,
            }
        ))
    );
    store.clear_journal(acct).unwrap();
    assert!(store.pending_journal(acct).unwrap().is_empty());
}

#[test]
fn skipped_and_deleted_are_recorded() {
    let (_dir, mut store) = open();
    let acct = store.account("a", 1).unwrap();
    store.add_pending(acct, &[("big", 1 << 30)], 1).unwrap();
    store
        .mark_skipped(acct, "big", "larger than max_size")
        .unwrap();
    assert_eq!(
        store.live_messages(acct).unwrap()["big"].state,
        MessageState::Skipped
    );
    store.mark_deleted(acct, &["big"], 5).unwrap();
    assert_eq!(
        store.live_messages(acct).unwrap()["big"].deleted_at,
        Some(5)
    );
    let run = store.start_run(acct, 1).unwrap();
    store
        .finish_run(
            run,
            &RunRecord {
                outcome: "ok".into(),
                ..Default::default()
            },
            2,
        )
        .unwrap();
}

#[test]
fn a_newer_schema_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open_in(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open_in(dir.path()).err().unwrap().to_string();
    assert!(err.contains("newer popsync"), "{err}");
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.db"), vec![0x42; 8192]).unwrap();
    let err = Store::open_in(dir.path()).err().unwrap().to_string();
    assert!(err.contains("state.db"), "{err}");
}

#[test]
fn daemon_schedule_round_trip() {
    let (_dir, mut store) = open();
    assert_eq!(store.next_poll("alice").unwrap(), None);
    store.set_next_poll("alice", 500, 42, 400).unwrap();
    store.set_next_poll("alice", 600, 42, 500).unwrap();
    assert_eq!(store.next_poll("alice").unwrap(), Some((600, 42)));
}

/// Every write path, transactions included, reports a database held by
/// another process as `Busy` (exit 6, try later), not as local trouble.
#[test]
fn a_database_locked_elsewhere_is_busy_on_every_write_path() {
    let (dir, mut store) = open();
    let acct = store.account("alice", 100).unwrap();
    let item = stored("m1");
    store
        .conn
        .busy_timeout(std::time::Duration::from_millis(20))
        .unwrap();
    let holder = Connection::open(dir.path().join("state").join("state.db")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let items = [("u1", &item)];
    let results: Vec<(&str, Result<(), StoreError>)> = vec![
        ("add_pending", store.add_pending(acct, &[("u1", 10)], 100)),
        ("journal", store.journal(acct, "maildir", &items, 100)),
        (
            "commit_delivered",
            store.commit_delivered(acct, "maildir", &items, 100, true),
        ),
        ("clear_journal", store.clear_journal(acct)),
        ("mark_skipped", store.mark_skipped(acct, "u1", "why")),
        ("mark_deleted", store.mark_deleted(acct, &["u1"], 100)),
        ("retire", store.retire(acct, &["u1"], 100)),
        (
            "mark_seen",
            store.mark_seen(acct, &[("u2", 5)], 100).map(|_| ()),
        ),
    ];
    for (what, result) in results {
        assert!(
            matches!(result, Err(StoreError::Busy { .. })),
            "{what}: {result:?}"
        );
    }
}

#[test]
fn retired_rows_that_prove_nothing_are_pruned_after_the_horizon() {
    use crate::deliver::{Location, StoredMessage};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_in(dir.path()).unwrap();
    let acct = store.account("a", 1).unwrap();
    store
        .add_pending(acct, &[("p1", 10), ("p2", 10), ("d1", 10)], 1)
        .unwrap();
    let stored = StoredMessage {
        location: Location::Maildir { name: "n".into() },
        size: 1,
        sha256: [0; 32],
    };
    store
        .commit_delivered(acct, "maildir /m", &[("d1", &stored)], 1, true)
        .unwrap();
    store.retire(acct, &["p1", "d1"], 100).unwrap();
    let day = 86_400;
    assert_eq!(
        store.prune_retired(acct, 100 + 89 * day, 90 * day).unwrap(),
        0
    );
    assert_eq!(
        store.prune_retired(acct, 101 + 90 * day, 90 * day).unwrap(),
        1
    );
    // The delivered record stays (verify and the archive need it); p2 is live.
    assert_eq!(store.delivery_records(acct).unwrap().len(), 1);
    assert!(store.live_messages(acct).unwrap().contains_key("p2"));
}
