//! LIST sizes are advisory: servers that announce approximate sizes get
//! every message delivered byte-exact, while a message a server truly cut
//! short (an unstuffed lone `.`) is never stored and never deleted.

use crate::support;

use support::fault_case::{Case, assert_mentions, keep_false};
use support::fault_server::{FaultMessage, Faults, ListSizing};

/// Messages with the lines dot-stuffing is about: `.`, `..`, `.x`.
fn dotted_mailbox() -> Vec<FaultMessage> {
    let bodies: [&[u8]; 4] = [
        b"Subject: dots\n\nbefore\n.\nafter\n",
        b"Subject: two dots\n\n..\n.x\n...more\n",
        b"Subject: plain\n\nno dots here\n",
        b"Subject: dot at the end\n\nlast line is a dot\n.\n",
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| FaultMessage {
            uid: format!("dot-{}", i + 1),
            body: b.to_vec(),
        })
        .collect()
}

fn approximate(sizing: ListSizing) -> Faults {
    Faults {
        list_sizing: sizing,
        ..Faults::default()
    }
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// Every message arrives byte-exact, the summary says once that sizes are
/// approximate, nothing is warned per message, and a rerun is a no-op.
fn delivers_everything(mailbox: Vec<FaultMessage>, faults: Faults, differ: &str) {
    let c = Case::new(mailbox.clone(), faults.clone(), "");
    let run = c.sync();
    run.expect_code(0);
    assert_mentions(&run, &[&format!("{} new", mailbox.len()), "0 skipped"]);
    assert_mentions(
        &run,
        &[&format!(
            "LIST sizes on this server are approximate: {differ} differ"
        )],
    );
    assert!(
        !run.stderr().contains("WARN"),
        "no per-message warning:\n{}",
        run.stderr()
    );
    assert_eq!(
        sorted(c.stored()),
        sorted(mailbox.iter().map(|m| m.body.clone()).collect())
    );
    let again = c.sync();
    again.expect_code(0);
    assert_mentions(&again, &["0 new", "0 skipped"]);
    assert_eq!(c.stored().len(), mailbox.len());

    // keep = false: all of it leaves the server, all of it is stored.
    let c = Case::new(mailbox.clone(), faults, keep_false());
    c.sync().expect_code(0);
    c.assert_nothing_lost();
    assert!(
        c.server.mailbox().is_empty(),
        "everything deleted after storing"
    );
    assert_eq!(c.stored().len(), mailbox.len());
}

#[test]
fn sizes_counted_with_the_stuffing_are_delivered() {
    // Messages 1, 2 and 4 have stuffed lines, so they are listed larger.
    delivers_everything(dotted_mailbox(), approximate(ListSizing::Stuffed), "3 of 4");
}

#[test]
fn sizes_rounded_to_a_kib_are_delivered() {
    delivers_everything(
        dotted_mailbox(),
        approximate(ListSizing::RoundedToKib),
        "4 of 4",
    );
}

#[test]
fn list_zero_does_not_stop_a_10_kib_message() {
    let mut mailbox = dotted_mailbox();
    mailbox.push(FaultMessage {
        uid: "big".into(),
        body: format!("Subject: big\n\n{}\n", "y".repeat(10 * 1024)).into_bytes(),
    });
    delivers_everything(mailbox, approximate(ListSizing::Zero), "5 of 5");
}

#[test]
fn sizes_far_larger_than_sent_are_delivered() {
    let faults = Faults {
        list_size_delta: 1000,
        ..Faults::default()
    };
    delivers_everything(dotted_mailbox(), faults, "4 of 4");
}

/// A lone `.` the server did not stuff, in the last message: only the
/// check after the terminator (a NOOP behind the last RETR, pipelined or
/// in lock-step) tells this from a complete message.
#[test]
fn a_truly_truncated_last_message_is_never_stored_nor_deleted() {
    for no_pipelining in [false, true] {
        let mut mailbox = dotted_mailbox();
        mailbox.retain(|m| m.uid != "dot-1");
        mailbox.push(FaultMessage {
            uid: "torn".into(),
            body: b"Subject: torn\n\nbefore\n.\nafter the lone dot\n".to_vec(),
        });
        let faults = Faults {
            no_stuffing: true,
            no_pipelining,
            ..Faults::default()
        };
        // Only the torn message has a lone dot; the others' dotted lines
        // would break them too, so they get none.
        for m in &mut mailbox[..3] {
            m.body = format!("Subject: clean {}\n\nplain\n", m.uid).into_bytes();
        }
        let c = Case::new(mailbox.clone(), faults.clone(), keep_false());
        let started = std::time::Instant::now();
        let run = c.sync();
        run.expect_code(9);
        assert_mentions(&run, &["message 4", "uid torn", "looks truncated"]);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(c.server.mailbox().len(), 4, "nothing deleted");
        c.assert_nothing_lost();
        assert!(
            !c.stored().iter().any(|s| s.starts_with(b"Subject: torn")),
            "no torn copy stored"
        );
        assert_eq!(c.stored().len(), 3, "the complete messages are kept");
        // The next run tries it again, after the others.
        let run = c.sync();
        run.expect_code(9);
        assert_mentions(&run, &["uid torn"]);
        c.assert_nothing_lost();
        assert!(c.server.mailbox().iter().any(|m| m.uid == "torn"));
        c.heal_and_check_all_stored();
    }
}
