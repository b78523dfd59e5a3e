//! An MDA delivers each message when it exits 0: a later message of the
//! same batch that the MDA refuses must not make the next runs hand the
//! accepted ones to it again (a duplicate on every poll while the refusal
//! lasts).

use crate::support;

use support::fault_server::{FaultMessage, FaultServer, Faults, mailbox};
use support::popsync::Popsync;

#[test]
fn messages_the_mda_accepted_before_a_refusal_are_not_delivered_again() {
    let mut messages = mailbox(3);
    messages[1] = FaultMessage {
        uid: "uid-2".into(),
        body: b"From: s2@example.org\nSubject: poison\n\nthe MDA refuses me\n".to_vec(),
    };
    let server = FaultServer::start(messages, Faults::default());
    let p = Popsync::new("");
    let out = p.path("delivered");
    std::fs::create_dir(&out).unwrap();
    // Each accepted message becomes one file; the poison one exits 1.
    let mda = format!(
        r#"m=$(cat); case "$m" in *poison*) echo refused >&2; exit 1;; esac; printf '%s\n' "$m" > {}/msg.$$"#,
        out.display()
    );
    p.write_config(&server.account_toml("alice", &format!("mda = {mda:?}")));
    for _ in 0..3 {
        let run = p.run(&["sync"]);
        assert_eq!(run.code(), 7, "a delivery failure: {:?}", run.0);
    }
    let mut subjects: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|m| {
            m.lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["Subject: fault test 1"],
        "delivered once, not once per run"
    );
}
