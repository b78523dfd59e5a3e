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
        .journal(acct, &TargetId::Maildir("/m".into()), &[("u1", &m)], 110)
        .unwrap();
    let journal = store.pending_journal(acct).unwrap();
    assert_eq!(journal.intents.len(), 1);
    assert_eq!(journal.intents[0].stored, m);
    store
        .commit_delivered(
            acct,
            &TargetId::Maildir("/m".into()),
            &[("u1", &m)],
            120,
            true,
        )
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
                &TargetId::Mbox("/x".into()),
                &BatchToken::from_journal("mbox:42".into()),
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
            TargetId::Mbox("/x".into()),
            Some(BatchToken::from_journal("mbox:42".into()))
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
        .mark_skipped(
            acct,
            "big",
            &SkipReason::TooLarge {
                size: 1 << 30,
                max: 1 << 20,
            },
        )
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
        (
            "journal",
            store.journal(acct, &TargetId::Maildir("/m".into()), &items, 100),
        ),
        (
            "commit_delivered",
            store.commit_delivered(acct, &TargetId::Maildir("/m".into()), &items, 100, true),
        ),
        ("clear_journal", store.clear_journal(acct)),
        (
            "mark_skipped",
            store.mark_skipped(acct, "u1", &SkipReason::Desynced),
        ),
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
        .commit_delivered(
            acct,
            &TargetId::Maildir("/m".into()),
            &[("d1", &stored)],
            1,
            true,
        )
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

/// A state.db as schema 3 (the code before typed target ids) left it: the
/// migration turns every description into a `TargetId`, journal included.
#[test]
fn schema_4_converts_target_descriptions_of_an_old_state() {
    let (_dir, path) = old_state(
        &migrations_before_target_ids(),
        "INSERT INTO account (id, name, created_at) VALUES (1, 'a', 1);
             INSERT INTO message (account_id, uid, first_seen, state, target, location, stored_size, sha256)
                 VALUES (1, 'd1', 1, 'delivered', 'maildir /home/u/Mail 100%', 'maildir:n1', 3, zeroblob(32)),
                        (1, 'd2', 1, 'delivered', 'mda `procmail -d u`', 'mda', 3, zeroblob(32));
             INSERT INTO message (account_id, uid, first_seen, state) VALUES (1, 'p1', 1, 'pending');
             INSERT INTO batch_mark (account_id, target, mbox_length, created_at) VALUES (1, 'mbox /m/in box', 7, 1);
             INSERT INTO intent (account_id, seq, uid, target, location, stored_size, sha256, created_at)
                 VALUES (1, 1, 'i1', 'mbox /m/in box', 'mbox:7:3', 3, zeroblob(32), 1);",
    );
    let store = Store::open(&path).unwrap();
    let version: i64 = store
        .connection()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION as i64);
    let records = store.delivery_records(1).unwrap();
    assert_eq!(
        records.iter().map(|r| r.target.clone()).collect::<Vec<_>>(),
        [
            TargetId::Maildir("/home/u/Mail 100%".into()),
            TargetId::Mda("procmail -d u".into())
        ]
    );
    let journal = store.pending_journal(1).unwrap();
    let mbox = TargetId::Mbox("/m/in box".into());
    assert_eq!(journal.mark.unwrap().0, mbox);
    assert_eq!(journal.intents[0].target, mbox);
    let raw: String = store
        .connection()
        .query_row("SELECT target FROM message WHERE uid = 'd1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(raw, "1:maildir:/home/u/Mail 100%25");
}

/// A target no popsync wrote (forged, or garbage) is refused when read,
/// not guessed at.
#[test]
fn a_bad_target_text_is_a_bad_record() {
    let (_dir, mut store) = open();
    let acct = store.account("a", 1).unwrap();
    store
        .commit_delivered(
            acct,
            &TargetId::Maildir("/m".into()),
            &[("d", &stored("n"))],
            1,
            true,
        )
        .unwrap();
    store
        .connection()
        .execute("UPDATE message SET target = 'maildir /m'", [])
        .unwrap();
    let err = store.delivery_records(acct).unwrap_err().to_string();
    assert!(err.contains("bad target"), "{err}");
}

/// A batch mark written by schema 5 (a column per target kind) reads back
/// as the token the target decodes, so an interrupted batch of the
/// previous version is still recovered after the upgrade.
#[test]
fn batch_marks_of_schema_5_become_tokens() {
    let mut schema_5 = migrations_before_target_ids();
    schema_5.push(M::up_with_hook(
        include_str!("../../migrations/0004_target_ids.sql"),
        encode_target_columns,
    ));
    schema_5.push(M::up_with_hook(
        include_str!("../../migrations/0005_skip_reason_codes.sql"),
        encode_skip_reasons,
    ));
    let (_dir, path) = old_state(
        &schema_5,
        "INSERT INTO account (id, name, created_at) VALUES (1, 'm', 1), (2, 'd', 1), (3, 'x', 1);
         INSERT INTO batch_mark (account_id, target, mbox_length, created_at, tmp_prefix)
             VALUES (1, '1:mbox:/m/in', 7, 1, NULL),
                    (2, '1:maildir:/home/u/Mail', NULL, 1, '1700000000.M5P9'),
                    (3, '1:maildir:/home/u/Mail', NULL, 1, NULL);",
    );
    let store = Store::open(&path).unwrap();
    let token = |acct| store.pending_journal(acct).unwrap().mark.unwrap().1;
    assert_eq!(token(1), Some(BatchToken::from_journal("mbox:7".into())));
    assert_eq!(
        token(2),
        Some(BatchToken::from_journal("maildir:1700000000.M5P9".into()))
    );
    assert_eq!(token(3), None);
}

/// A private state directory whose state.db went through `migrations`
/// only, then ran `sql`: what an older popsync left.
fn old_state(migrations: &[M<'static>], sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = state.join("state.db");
    let mut conn = Connection::open(&path).unwrap();
    Migrations::from_slice(migrations)
        .to_latest(&mut conn)
        .unwrap();
    conn.execute_batch(sql).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

fn migrations_before_target_ids() -> Vec<M<'static>> {
    vec![
        M::up(include_str!("../../migrations/0001_initial.sql")),
        M::up(include_str!("../../migrations/0002_daemon_schedule.sql")),
        M::up(include_str!("../../migrations/0003_batch_tmp_names.sql")),
    ]
}

/// A state.db as schema 4 left it, with the display texts earlier versions
/// stored as skip reasons: the migration turns them into codes, so they
/// read back as the reasons they were and `status` counts them by kind.
#[test]
fn schema_5_turns_skip_texts_into_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = state.join("state.db");
    let texts = [
        ("big1", "larger than max_size (5000 > 2048 bytes)"),
        ("big2", "larger than max_size (7000 > 2048 bytes)"),
        (
            "long",
            "exceeds 66560 bytes although LIST announced 10: stopped reading it",
        ),
        (
            "dot",
            "truncated by the server: data followed its end (an unstuffed lone \".\"?)",
        ),
        (
            "old",
            "received 3 of the 9 bytes LIST announced (truncated by the server?)",
        ),
    ];
    {
        let mut conn = Connection::open(&path).unwrap();
        let mut old = migrations_before_target_ids();
        old.push(M::up_with_hook(
            include_str!("../../migrations/0004_target_ids.sql"),
            encode_target_columns,
        ));
        Migrations::from_slice(&old).to_latest(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO account (id, name, created_at) VALUES (1, 'a', 1)",
            [],
        )
        .unwrap();
        for (uid, text) in texts {
            conn.execute(
                "INSERT INTO message (account_id, uid, first_seen, state, skip_reason)
                 VALUES (1, ?1, 1, 'skipped', ?2)",
                params![uid, text],
            )
            .unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // `ls` reads an older state as it is: no migration, the same reasons.
    let read_only = Store::open_read_only_in(&state).unwrap().unwrap();
    let before_migration = read_only.skip_reasons(1).unwrap();
    drop(read_only);
    let store = Store::open(&path).unwrap();
    let reasons = store.skip_reasons(1).unwrap();
    assert_eq!(reasons, before_migration);
    assert_eq!(
        reasons["big1"],
        SkipReason::TooLarge {
            size: 5000,
            max: 2048
        }
    );
    assert_eq!(
        reasons["long"],
        SkipReason::LongerThanListed {
            limit: 66560,
            listed: 10
        }
    );
    assert_eq!(reasons["dot"], SkipReason::Desynced);
    assert_eq!(reasons["old"], SkipReason::Other(texts[4].1.into()));
    for (uid, text) in texts {
        assert_eq!(reasons[uid].to_string(), text, "shown as before");
    }
    assert_eq!(
        store.account_counts(1).unwrap().skipped,
        [
            (SkipKind::TooLarge, 2),
            (SkipKind::LongerThanListed, 1),
            (SkipKind::Desynced, 1),
            (SkipKind::Other, 1)
        ]
    );
}

/// The lookups every run makes for its account go through an index: a
/// table scan made each of 1,000 accounts pay for all the others' rows.
#[test]
fn per_run_lookups_do_not_scan_every_account() {
    let (_dir, store) = open();
    for (name, sql, args) in [
        ("last_target", super::report::LAST_TARGET_SQL, 1),
        ("prune_retired", PRUNE_RETIRED_SQL, 2),
    ] {
        let mut stmt = store
            .connection()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(vec![1; args]), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN message"))
                && plan.iter().any(|step| step.contains("INDEX")),
            "{name}: {plan:?}"
        );
    }
}

/// A batch committed while the run's next batch (same token) is already
/// marked keeps that mark; its own intent rows go.
#[test]
fn a_commit_keeping_the_mark_drops_only_the_intents() {
    let (_dir, mut store) = open();
    let acct = store.account("a", 1).unwrap();
    let target = TargetId::Maildir("/m".into());
    let token = BatchToken::from_journal("maildir:1.M2P3".into());
    store.add_pending(acct, &[("u1", 10)], 1).unwrap();
    store.set_batch_mark(acct, &target, &token, 1).unwrap();
    let m = stored("n1");
    store.journal(acct, &target, &[("u1", &m)], 2).unwrap();
    store
        .commit_batch(acct, &target, &[("u1", &m)], 3, false, true)
        .unwrap();
    let journal = store.pending_journal(acct).unwrap();
    assert!(journal.intents.is_empty());
    assert_eq!(journal.mark, Some((target.clone(), Some(token))));
    assert!(store.live_messages(acct).unwrap()["u1"].state.is_seen());
    store
        .commit_batch(acct, &target, &[], 4, false, false)
        .unwrap();
    assert!(store.pending_journal(acct).unwrap().is_empty());
}
