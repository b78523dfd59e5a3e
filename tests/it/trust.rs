//! Trust boundaries (issue 11): another local user, symlinks and a state
//! row that is not proof must never make popsync delete server mail it did
//! not safely store, nor write or delete anything outside its targets.
//! Each test replays one reported attack and checks the refusal, that no
//! file outside the target changed, and that the server kept every message.

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::fault_case::{Case, assert_mentions, keep_false};
use support::fault_server::{Faults, mailbox};
use support::users::{chown, other_user};

const DAY: i64 = 86_400;
const T0: i64 = 1_790_000_000;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn assert_server_kept_all(c: &Case) {
    assert_eq!(c.server.mailbox(), c.original, "the server lost messages");
    assert!(
        !c.server.transcript().iter().any(|l| l.starts_with("DELE")),
        "DELE sent: {:?}",
        c.server.transcript()
    );
}

/// Sets a file's times `age` seconds into the past.
fn age(path: &Path, secs: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = rustix::fs::Timespec {
        tv_sec: now - secs,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Finding 1: a state directory another user owns (0777) is refused before
/// anything is read from it, so forged rows cannot cause a DELE.
#[test]
fn state_dir_owned_by_another_user_is_refused() {
    let Some(uid) = other_user() else { return };
    let c = Case::new(mailbox(3), Faults::default(), keep_false());
    let state = &c.popsync.state_dir;
    fs::create_dir_all(state).unwrap();
    chown(state, uid);
    chmod(state, 0o777);
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["state directory", "popsync-other", "chown"]);
    assert_server_kept_all(&c);
    assert!(!state.join("state.db").exists(), "nothing created in it");

    // Ours, but writable by others: the fix is named too.
    chown(state, 0);
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["writable by group or others", "chmod go-w"]);
    assert_server_kept_all(&c);
    chmod(state, 0o700);
    c.heal_and_check_all_stored();
}

/// Finding 1: a state.db another user planted (or a symlink where state.db
/// or a lock file should be) is never opened or created through.
#[test]
fn planted_state_files_and_lock_symlinks_are_refused() {
    let c = Case::new(mailbox(2), Faults::default(), keep_false());
    let state = &c.popsync.state_dir;
    fs::create_dir_all(state.join("locks")).unwrap();
    chmod(state, 0o700);
    let victim = c.popsync.path("victim");
    fs::write(&victim, b"precious\n").unwrap();

    std::os::unix::fs::symlink(&victim, state.join("locks/acct.lock")).unwrap();
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["lock", "symbolic link"]);
    fs::remove_file(state.join("locks/acct.lock")).unwrap();

    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = fs::remove_file(state.join(f));
    }
    let dangling = c.popsync.path("nowhere.db");
    std::os::unix::fs::symlink(&dangling, state.join("state.db")).unwrap();
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["state.db", "symbolic link"]);
    assert!(!dangling.exists(), "created through a dangling symlink");
    fs::remove_file(state.join("state.db")).unwrap();

    if let Some(uid) = other_user() {
        fs::write(state.join("state.db"), b"").unwrap();
        chown(&state.join("state.db"), uid);
        let run = c.sync();
        run.expect_code(7);
        assert_mentions(&run, &["state.db", "popsync-other"]);
        fs::remove_file(state.join("state.db")).unwrap();
    }
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert_server_kept_all(&c);
    c.heal_and_check_all_stored();
}

/// Finding 1 (the forged rows themselves): `delivered` rows for UIDs never
/// fetched do not make a `keep = false` sync delete them.
#[test]
fn forged_delivered_rows_do_not_justify_a_dele() {
    use popsync::deliver::{Location, StoredMessage};
    use popsync::store::Store;
    let c = Case::new(mailbox(3), Faults::default(), keep_false());
    // What the attacker wrote (here through the real store API).
    let desc = popsync::store::TargetId::Maildir(c.maildir.clone());
    {
        let mut store = Store::open_in(&c.popsync.state_dir).unwrap();
        let acct = store.account("acct", T0).unwrap();
        let forged = StoredMessage {
            location: Location::Maildir {
                name: "forged".into(),
            },
            size: 10,
            sha256: [0; 32],
        };
        let items: Vec<(&str, &StoredMessage)> = ["uid-1", "uid-2", "uid-3"]
            .iter()
            .map(|u| (*u, &forged))
            .collect();
        store
            .commit_delivered(acct, &desc, &items, T0, true)
            .unwrap();
    }
    let run = c.sync();
    assert_mentions(&run, &["left on the server", "stored copy"]);
    assert!(run.stdout().contains("0 deleted"), "{}", run.stdout());
    assert_server_kept_all(&c);
}

/// Finding 2: a maildir whose tmp/ is a symlink to the user's documents is
/// refused; nothing in the documents is touched, however old.
#[test]
fn symlinked_maildir_tmp_is_refused_and_nothing_outside_changes() {
    let c = Case::new(mailbox(3), Faults::default(), keep_false());
    let docs = c.popsync.path("docs");
    fs::create_dir_all(&docs).unwrap();
    let thesis = docs.join("thesis.odt");
    fs::write(&thesis, b"years of work").unwrap();
    age(&thesis, 40 * 3600);
    fs::create_dir_all(c.maildir.join("new")).unwrap();
    fs::create_dir_all(c.maildir.join("cur")).unwrap();
    std::os::unix::fs::symlink(&docs, c.maildir.join("tmp")).unwrap();
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["tmp", "not a real directory"]);
    assert_eq!(fs::read(&thesis).unwrap(), b"years of work");
    assert_eq!(fs::read_dir(&docs).unwrap().count(), 1);
    assert_server_kept_all(&c);
}

/// Finding 2: recovery removes only what the journal names; a file popsync
/// did not write stays in tmp/ however old it is.
#[test]
fn recovery_never_removes_files_by_age() {
    let c = Case::new(mailbox(2), Faults::default(), "");
    c.sync().expect_code(0);
    let foreign = c.maildir.join("tmp/thesis.odt");
    fs::write(&foreign, b"not popsync's").unwrap();
    age(&foreign, 40 * 3600);
    // The batch mark a run killed before its first write leaves behind
    // (written directly: the same row in every schema version).
    let db = rusqlite::Connection::open(c.popsync.state_dir.join("state.db")).unwrap();
    db.execute(
        "INSERT INTO batch_mark (account_id, target, mbox_length, created_at)
         SELECT id, ?1, NULL, 0 FROM account WHERE name = 'acct'",
        [popsync::store::TargetId::Maildir(c.maildir.clone()).encode()],
    )
    .unwrap();
    drop(db);
    c.sync().expect_code(0);
    assert_eq!(fs::read(&foreign).unwrap(), b"not popsync's");
}

/// Finding 2: a world-writable maildir is refused with the fix.
#[test]
fn world_writable_maildir_is_refused() {
    let c = Case::new(mailbox(2), Faults::default(), keep_false());
    fs::create_dir_all(&c.maildir).unwrap();
    chmod(&c.maildir, 0o777);
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["maildir", "chmod go-w"]);
    assert_server_kept_all(&c);
    chmod(&c.maildir, 0o700);
    c.heal_and_check_all_stored();
}

/// Finding 3: an mbox that is a symlink to a file another user may write
/// (or owns) is refused; that file is not appended to.
#[test]
fn symlinked_mbox_to_a_foreign_file_is_refused() {
    let c = Case::new(mailbox(2), Faults::default(), keep_false());
    let profile = c.popsync.path("profile");
    fs::write(&profile, b"export PATH\n").unwrap();
    chmod(&profile, 0o666);
    let mbox = c.popsync.path("mail.mbox");
    std::os::unix::fs::symlink(&profile, &mbox).unwrap();
    c.popsync.write_config(
        &c.server
            .account_toml("acct", &format!("mbox = {mbox:?}\nkeep = false")),
    );
    let run = c.sync();
    run.expect_code(7);
    assert_mentions(&run, &["mbox", "chmod go-w"]);
    if let Some(uid) = other_user() {
        chmod(&profile, 0o644);
        chown(&profile, uid);
        let run = c.sync();
        run.expect_code(7);
        assert_mentions(&run, &["mbox", "popsync-other"]);
    }
    assert_eq!(fs::read(&profile).unwrap(), b"export PATH\n");
    assert_server_kept_all(&c);
}

/// Finding 7: a config file others may write (even without a password) or
/// owned by another user is refused with exit 3: its password_command and
/// mda run as the victim.
#[test]
fn config_others_could_change_is_refused() {
    let c = Case::new(mailbox(1), Faults::default(), "");
    let toml = fs::read_to_string(&c.popsync.config).unwrap();
    let toml = toml.replace("password = ", "password_command = \"echo\"\n# was: ");
    fs::write(&c.popsync.config, toml).unwrap();
    chmod(&c.popsync.config, 0o666);
    let run = c.sync();
    run.expect_code(3);
    assert_mentions(&run, &["config file", "chmod go-w"]);
    if let Some(uid) = other_user() {
        chmod(&c.popsync.config, 0o644);
        chown(&c.popsync.config, uid);
        let run = c.sync();
        run.expect_code(3);
        assert_mentions(&run, &["config file", "popsync-other", "chown"]);
    }
    assert_eq!(
        c.server.connections(),
        0,
        "connected with an untrusted config"
    );
}

/// Finding 8: after the maildir was deleted, `delete_after_days` must not
/// delete the server copies, the last ones left.
#[test]
fn delete_after_days_keeps_mail_whose_local_copy_is_gone() {
    let c = Case::new(mailbox(5), Faults::default(), "delete_after_days = 1");
    let at = |d: i64| (T0 + d * DAY).to_string();
    c.popsync
        .run_env(&["sync"], &[("POPSYNC_NOW", &at(0))])
        .expect_code(0);
    assert_eq!(c.stored().len(), 5);
    fs::remove_dir_all(&c.maildir).unwrap();
    let run = c.popsync.run_env(&["sync"], &[("POPSYNC_NOW", &at(2))]);
    assert_mentions(&run, &["5 messages left on the server", "missing"]);
    assert!(run.stdout().contains("0 deleted"), "{}", run.stdout());
    assert_server_kept_all(&c);
}

/// Finding 9: an MDA's stderr with terminal escapes and bidi controls
/// reached the summary line, `status` and state.db as it was.
#[test]
fn mda_stderr_is_sanitised_everywhere_it_is_shown_or_stored() {
    let c = Case::new(mailbox(1), Faults::default(), "");
    let mda = r"printf '\033[2J\033]0;pwned\007no such user \342\200\256gpj.exe\n' >&2; exit 75";
    c.popsync
        .write_config(&c.server.account_toml("acct", &format!("mda = {mda:?}")));
    let run = c.sync();
    run.expect_code(7);
    let status = c.popsync.run(&["status"]);
    let db = rusqlite::Connection::open(c.popsync.state_dir.join("state.db")).unwrap();
    let stored: String = db
        .query_row("SELECT error FROM run WHERE error IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    for (what, text) in [
        ("sync output", format!("{}{}", run.stdout(), run.stderr())),
        ("status", status.stdout()),
        ("state.db", stored),
    ] {
        assert!(text.contains("no such user"), "{what}: {text}");
        assert!(
            !text.contains('\x1b') && !text.contains('\x07'),
            "{what}: {text:?}"
        );
        assert!(!text.contains('\u{202E}'), "{what}: {text:?}");
    }
    assert_eq!(c.server.mailbox(), c.original, "the server lost messages");
}
