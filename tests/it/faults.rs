//! The real binary against a fault-injecting POP3 server: every fault ends
//! in a clear error or warning, a documented exit code, and a mailbox and
//! state where nothing is lost and nothing is stored twice.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::fault_case::{Case, assert_mentions, keep_false};
use support::fault_server::{FaultMessage, FaultServer, Faults, mailbox};
use support::popsync::{Popsync, maildir_messages};

fn count(dir: &Path) -> usize {
    maildir_messages(dir).len()
}

#[test]
fn connection_dropped_in_the_middle_of_a_retr() {
    let faults = Faults {
        drop_in_retr: Some((3, 60)),
        ..Faults::default()
    };
    let c = Case::new(mailbox(5), faults, keep_false());
    let run = c.sync();
    run.expect_code(6);
    assert_mentions(&run, &["closed the connection"]);
    assert_eq!(c.server.mailbox().len(), 5, "no QUIT, so nothing deleted");
    c.assert_nothing_lost();
    c.heal_and_check_all_stored();
    assert!(c.server.mailbox().is_empty(), "keep = false: all deleted");
}

#[test]
fn connection_dropped_after_dele_before_quit_answer() {
    let faults = Faults {
        drop_on_quit: true,
        ..Faults::default()
    };
    let c = Case::new(mailbox(5), faults, keep_false());
    let run = c.sync();
    run.expect_code(6);
    assert_eq!(c.server.mailbox().len(), 5, "deletions not applied");
    assert_eq!(count(&c.maildir), 5, "stored and committed before DELE");
    c.assert_nothing_lost();
    // The next run deletes what it stored, and fetches nothing again.
    c.heal_and_check_all_stored();
    assert!(c.server.mailbox().is_empty());
}

#[test]
fn quit_err_means_nothing_deleted_and_a_retry_next_run() {
    let faults = Faults {
        quit_err: true,
        ..Faults::default()
    };
    let c = Case::new(mailbox(4), faults, keep_false());
    let run = c.sync();
    run.expect_code(0);
    assert_mentions(&run, &["QUIT answered -ERR", "0 deleted"]);
    assert_eq!(c.server.mailbox().len(), 4);
    c.heal_and_check_all_stored();
    assert!(c.server.mailbox().is_empty());
}

#[test]
fn response_codes_at_login_map_to_exit_codes() {
    for (reply, code, word) in [
        ("-ERR [IN-USE] maildrop locked", 6, "IN-USE"),
        ("-ERR [LOGIN-DELAY] wait", 6, "LOGIN-DELAY"),
        ("-ERR [SYS/TEMP] try later", 6, "SYS/TEMP"),
        ("-ERR [SYS/PERM] account disabled", 9, "SYS/PERM"),
        ("-ERR [AUTH] wrong password", 4, "AUTH"),
    ] {
        let faults = Faults {
            pass_reply: Some(reply.into()),
            ..Faults::default()
        };
        let c = Case::new(mailbox(2), faults, keep_false());
        let run = c.sync();
        assert_eq!(run.code(), code, "{reply}: {}", run.stdout());
        assert_mentions(&run, &[word]);
        assert_eq!(c.server.mailbox().len(), 2);
        assert_eq!(count(&c.maildir), 0);
    }
}

#[test]
fn no_uidl_refuses_keep_but_works_with_delete() {
    let no_uidl = || Faults {
        no_uidl: true,
        ..Faults::default()
    };
    let c = Case::new(mailbox(3), no_uidl(), "");
    let run = c.sync();
    run.expect_code(9);
    assert_mentions(&run, &["does not support UIDL"]);
    assert_eq!(count(&c.maildir), 0);

    let c = Case::new(mailbox(3), no_uidl(), keep_false());
    c.sync().expect_code(0);
    c.assert_nothing_lost();
    assert_eq!(count(&c.maildir), 3);
    assert!(c.server.mailbox().is_empty());
    // Nothing new: nothing fetched twice.
    c.server.set_faults(no_uidl());
    c.sync().expect_code(0);
    assert_eq!(count(&c.maildir), 3);
}

#[test]
fn odd_uids_duplicated_too_long_and_path_like() {
    let mut mb = mailbox(7);
    let uids = [
        "dup".to_string(),
        "dup".to_string(),
        "L".repeat(71),
        "a/b".to_string(),
        "..".to_string(),
        "x:y".to_string(),
        "../../etc/passwd".to_string(),
    ];
    for (m, uid) in mb.iter_mut().zip(uids) {
        m.uid = uid;
    }
    let c = Case::new(mb.clone(), Faults::default(), keep_false());
    for _ in 0..2 {
        let run = c.sync();
        run.expect_code(0);
        assert_mentions(&run, &["shared by 2 messages", "exceeds 70"]);
        c.assert_nothing_lost();
        let left: Vec<String> = c.server.mailbox().into_iter().map(|m| m.uid).collect();
        assert_eq!(left, vec!["dup".to_string(), "dup".into(), "L".repeat(71)]);
        assert_eq!(count(&c.maildir), 4, "the valid UIDs, once");
    }
    // No file name came from a UID.
    for sub in ["new", "cur", "tmp"] {
        for e in std::fs::read_dir(c.maildir.join(sub)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.contains("passwd") && !name.contains("a/b"), "{name}");
        }
    }
    assert!(!c.maildir.join("..").join("etc").exists());
}

#[test]
fn wholesale_uid_change_is_refused_until_accepted() {
    let n = 30;
    let c = Case::new(mailbox(n), Faults::default(), "");
    c.sync().expect_code(0);
    assert_eq!(count(&c.maildir), n);
    // A server migration: same messages, new UIDs.
    let renumbered: Vec<FaultMessage> = c
        .server
        .mailbox()
        .into_iter()
        .map(|mut m| {
            m.uid = format!("new-{}", m.uid);
            m
        })
        .collect();
    c.server.set_mailbox(renumbered);
    let run = c.sync();
    run.expect_code(9);
    assert_mentions(&run, &["renumbered", "--accept-uid-change"]);
    assert_eq!(count(&c.maildir), n, "nothing downloaded again");
    let run = c.popsync.run(&["sync", "--accept-uid-change"]);
    run.expect_code(0);
    assert_eq!(count(&c.maildir), 2 * n, "the user asked for the copy");
}

#[test]
fn keep_false_with_a_new_batch_of_mail_is_not_a_migration() {
    let c = Case::new(mailbox(25), Faults::default(), keep_false());
    c.sync().expect_code(0);
    assert!(c.server.mailbox().is_empty());
    let fresh: Vec<FaultMessage> = mailbox(50).split_off(25);
    c.server.set_mailbox(fresh);
    c.sync().expect_code(0);
    assert_eq!(count(&c.maildir), 50);
    assert!(c.server.mailbox().is_empty());
}

#[test]
fn status_line_without_end_is_refused() {
    let mut flood = b"+OK ".to_vec();
    flood.extend(std::iter::repeat_n(b'x', 4 << 20));
    let faults = Faults {
        greeting: Some(flood),
        ..Faults::default()
    };
    let c = Case::new(mailbox(2), faults, "");
    let run = c.sync();
    run.expect_code(9);
    assert_mentions(&run, &["status line longer than"]);
    assert_eq!(count(&c.maildir), 0);
}

#[test]
fn retr_that_never_ends_is_cut_off_by_the_list_size() {
    let faults = Faults {
        endless_retr: Some(2),
        ..Faults::default()
    };
    let c = Case::new(mailbox(4), faults, keep_false());
    let started = Instant::now();
    let run = c.sync();
    let took = started.elapsed();
    run.expect_code(9);
    assert_mentions(&run, &["message 2", "LIST"]);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(c.server.mailbox().len(), 4);
    c.assert_nothing_lost();
    c.heal_and_check_all_stored();
}

#[test]
fn a_server_that_stops_answering_times_out() {
    for faults in [
        Faults {
            stall_after_login: true,
            ..Faults::default()
        },
        Faults {
            stall_in_retr: Some(2),
            ..Faults::default()
        },
    ] {
        let c = Case::new(mailbox(3), faults, keep_false());
        let started = Instant::now();
        let run = c.sync();
        run.expect_code(6);
        assert_mentions(&run, &["timed out"]);
        assert!(started.elapsed() < Duration::from_secs(15));
        assert_eq!(c.server.mailbox().len(), 3);
        c.assert_nothing_lost();
    }
}

#[test]
fn list_claiming_a_billion_messages() {
    let faults = Faults {
        list_status: Some("+OK 1000000000 messages (4000000000000 octets)".into()),
        list_extra: vec!["1000000000 4000".into()],
        ..Faults::default()
    };
    let c = Case::new(mailbox(3), faults, keep_false());
    c.sync().expect_code(0);
    c.assert_nothing_lost();
    assert_eq!(count(&c.maildir), 3);

    // A LIST that streams entries without end is bounded, not buffered forever.
    let faults = Faults {
        endless_list: true,
        ..Faults::default()
    };
    let c = Case::new(mailbox(3), faults, keep_false());
    let run = c.sync();
    run.expect_code(9);
    assert_mentions(&run, &["exceeds the limit"]);
    assert_eq!(c.server.mailbox().len(), 3);
    assert_eq!(count(&c.maildir), 0);
}

#[test]
fn list_sizes_that_lie() {
    // Too small (e.g. counted with LF): sizes are advisory, all stored.
    let faults = Faults {
        list_size_delta: -40,
        ..Faults::default()
    };
    let c = Case::new(mailbox(4), faults, keep_false());
    c.sync().expect_code(0);
    c.assert_nothing_lost();
    assert_eq!(count(&c.maildir), 4);

    // Too large: advisory too; the stream was in step, so all stored.
    let faults = Faults {
        list_size_delta: 1000,
        ..Faults::default()
    };
    let c = Case::new(mailbox(4), faults, keep_false());
    let run = c.sync();
    run.expect_code(0);
    assert_mentions(&run, &["4 new", "0 skipped", "approximate: 4 of 4 differ"]);
    assert!(c.server.mailbox().is_empty());
    c.assert_nothing_lost();
    assert_eq!(count(&c.maildir), 4);
}

#[test]
fn bare_lf_line_ends_are_stored_exactly() {
    let faults = Faults {
        bare_lf: true,
        ..Faults::default()
    };
    let c = Case::new(mailbox(6), faults, keep_false());
    c.sync().expect_code(0);
    c.assert_nothing_lost();
    assert_eq!(count(&c.maildir), 6);
    assert!(c.server.mailbox().is_empty());
}

#[test]
fn unstuffed_lone_dot_truncates_and_stays_on_the_server() {
    let mut mb = mailbox(5);
    // Only message 3 has a line that needs stuffing.
    for m in &mut mb {
        m.body = String::from_utf8(m.body.clone())
            .unwrap()
            .replace("\n.leading dot", "")
            .into_bytes();
    }
    mb[2].body = b"Subject: lone dot\n\nbefore\n.\nafter the dot\n".to_vec();
    let faults = Faults {
        no_stuffing: true,
        ..Faults::default()
    };
    let c = Case::new(mb, faults.clone(), keep_false());
    let run = c.sync();
    assert_mentions(&run, &["message 3", "truncated"]);
    assert!(
        c.server.mailbox().iter().any(|m| m.uid == "uid-3"),
        "the truncated message stays on the server"
    );
    c.assert_nothing_lost();
    assert!(
        !c.stored()
            .iter()
            .any(|s| s.starts_with(b"Subject: lone dot")),
        "no torn copy stored"
    );
    // Later runs against the same broken server still make progress.
    c.server.set_faults(faults);
    c.sync();
    c.assert_nothing_lost();
    assert_eq!(count(&c.maildir), 4, "every intact message stored");
    c.heal_and_check_all_stored();
}

#[test]
fn tls_required_but_stls_refused_stripped_or_hijacked_sends_no_credential() {
    for stls in [
        Some(Some(b"-ERR not now\r\n".to_vec())),
        None,
        Some(Some(b"+OK begin TLS\r\n+OK injected\r\n".to_vec())),
    ] {
        let faults = Faults {
            capa_extra: if stls.is_some() {
                vec!["STLS".into()]
            } else {
                vec![]
            },
            stls_reply: stls.flatten(),
            ..Faults::default()
        };
        let server = FaultServer::start(mailbox(2), faults);
        let p = Popsync::new("");
        let maildir = p.path("Mail");
        let toml = server
            .account_toml("acct", &format!("maildir = {maildir:?}"))
            .replace("tls = \"none\"", "tls = \"starttls\"")
            .replace("allow_insecure_auth = true", "");
        p.write_config(&toml);
        let run = p.run(&["--trace", "sync"]);
        run.expect_code(5);
        assert_mentions(&run, &["no credential was sent"]);
        let t = server.transcript();
        assert!(
            !t.iter()
                .any(|l| l.starts_with("USER") || l.starts_with("PASS")),
            "{t:?}"
        );
        assert!(!run.stderr().contains(support::fault_server::PASSWORD));
    }
}

#[test]
fn apop_with_a_malformed_timestamp_is_not_attempted() {
    let faults = Faults {
        greeting: Some(b"+OK ready <not a msg-id>\r\n".to_vec()),
        ..Faults::default()
    };
    let server = FaultServer::start(mailbox(1), faults);
    let p = Popsync::new("");
    let toml = server
        .account_toml("acct", &format!("maildir = {:?}", p.path("Mail")))
        .replace("auth = \"user\"", "auth = \"apop\"");
    p.write_config(&toml);
    let run = p.run(&["sync"]);
    run.expect_code(4);
    assert_mentions(&run, &["APOP timestamp"]);
    assert!(!server.transcript().iter().any(|l| l.starts_with("APOP")));
}

/// purge sends its DELEs in a window where PIPELINING is offered: this
/// server answers DELEs only 32 at a time, so a client that waited for
/// each reply before the next DELE would time out. Without PIPELINING the
/// DELEs go out one by one.
#[test]
fn purge_pipelines_its_deles_only_where_offered() {
    for pipelining in [true, false] {
        let faults = Faults {
            no_pipelining: !pipelining,
            dele_batch: pipelining.then_some(32),
            ..Faults::default()
        };
        let server = FaultServer::start(mailbox(96), faults);
        let p = Popsync::new("");
        let maildir = p.path("Mail");
        p.write_config(&server.account_toml("acct", &format!("maildir = {maildir:?}")));
        p.run(&["sync"]).expect_code(0);
        assert_eq!(count(&maildir), 96);
        let run = p.run(&["purge", "acct"]);
        run.expect_code(0);
        assert!(
            run.stdout()
                .contains("acct: 96 deleted from the server, 0 stay"),
            "pipelining {pipelining}: {}",
            run.stdout()
        );
        assert!(server.mailbox().is_empty());
        let t = server.transcript();
        assert_eq!(t.iter().filter(|l| l.starts_with("DELE")).count(), 96);
        if !pipelining {
            assert_eq!(server.max_queued_deles(), 0, "DELEs sent ahead: {t:?}");
        }
    }
}
