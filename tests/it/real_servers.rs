//! The sync scenarios that matter most, against two real POP3 servers:
//! Dovecot (maildir, CAPA, PIPELINING) and popa3d (mbox, no CAPA, so
//! lock-step; UIDs derived from content).

use crate::support;

use support::dovecot::Dovecot;
use support::popa3d::Popa3d;
use support::popsync::{AccountToml, Popsync, Run, maildir_messages, sorted};

enum Real {
    // Boxed: a Dovecot handle is large (its options, PKI paths).
    Dovecot(Box<Dovecot>),
    Popa3d(Popa3d),
}

impl Real {
    fn both(messages: &[Vec<u8>]) -> Vec<Real> {
        let d = Dovecot::start();
        d.add_messages("alice", messages);
        vec![
            Real::Dovecot(Box::new(d)),
            Real::Popa3d(Popa3d::start(messages)),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Real::Dovecot(_) => "dovecot",
            Real::Popa3d(_) => "popa3d",
        }
    }

    fn add(&self, message: &[u8]) {
        match self {
            Real::Dovecot(d) => {
                d.add_message("alice", message);
            }
            Real::Popa3d(p) => p.add_message(message),
        }
    }

    fn remove_first(&self) {
        match self {
            Real::Dovecot(d) => {
                let new = d.maildir("alice").join("new");
                let cur = d.maildir("alice").join("cur");
                let mut files: Vec<_> = [new, cur]
                    .iter()
                    .flat_map(|dir| std::fs::read_dir(dir).unwrap().flatten())
                    .map(|e| e.path())
                    .collect();
                files.sort();
                std::fs::remove_file(&files[0]).unwrap();
            }
            Real::Popa3d(p) => p.remove_message(0),
        }
    }

    fn on_server(&self) -> usize {
        match self {
            Real::Dovecot(d) => d.message_count("alice"),
            Real::Popa3d(p) => p.messages().len(),
        }
    }

    fn popsync(&self, extra: &str) -> (Popsync, std::path::PathBuf) {
        let p = Popsync::new("");
        let maildir = p.path("Mail");
        let toml = match self {
            Real::Dovecot(d) => {
                let mut a = AccountToml::tls("acct", d, "alice");
                a.maildir(&maildir);
                format!("{}{extra}\n", a.render())
            }
            Real::Popa3d(s) => s.account_toml("acct", &format!("maildir = {maildir:?}\n{extra}")),
        };
        p.write_config(&toml);
        (p, maildir)
    }
}

/// Messages with what trips up clients: dot lines, 8-bit bytes, long and
/// empty lines (no `From ` lines: popa3d serves its mbox as it is). Each
/// has its own Message-ID: popa3d derives UIDs from a few headers only, so
/// messages without any of them share one UID (and popsync rightly leaves
/// such messages on the server).
fn tricky() -> Vec<Vec<u8>> {
    let bodies: Vec<Vec<u8>> = vec![
        b"Subject: dots\n\n.\n..\n.x\n...\nend\n".to_vec(),
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\nK\u{f6}ln, \u{fc}ber alles\n"
            .as_bytes()
            .to_vec(),
        b"Subject: empty lines\n\n\n\n\nafter three\n".to_vec(),
        format!("Subject: long\n\n{}\n", "L".repeat(20_000)).into_bytes(),
        b"Subject: bytes\n\n\x01\x7f\xff\xfe tab\there\n".to_vec(),
    ];
    let mut v: Vec<Vec<u8>> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let mut m = format!("Message-ID: <tricky-{i}@t>\n").into_bytes();
            m.extend_from_slice(&b);
            m
        })
        .collect();
    for i in 0..20 {
        v.push(format!("Subject: plain {i}\nMessage-ID: <{i}@t>\n\nbody {i}\n").into_bytes());
    }
    v
}

/// A sync that exits 0 and reports `new` new messages.
fn sync_expecting(p: &Popsync, new: usize, what: &str) {
    let run: Run = p.run(&["sync"]);
    run.expect_code(0);
    let want = format!("acct: {new} new");
    assert!(
        run.stdout().contains(&want),
        "{what}: want {want:?}: {}{}",
        run.stdout(),
        run.stderr()
    );
}

/// The maildir holds exactly `messages`, byte for byte.
fn assert_stored(maildir: &std::path::Path, messages: &[Vec<u8>], what: &str) {
    assert!(
        sorted(maildir_messages(maildir)) == sorted(messages.to_vec()),
        "{what}: the maildir does not hold exactly the server's messages"
    );
}

#[test]
fn first_sync_is_byte_exact_and_a_second_is_a_no_op() {
    let messages = tricky();
    for server in Real::both(&messages) {
        let what = server.name();
        let (p, maildir) = server.popsync("");
        sync_expecting(&p, messages.len(), what);
        assert_stored(&maildir, &messages, what);
        sync_expecting(&p, 0, what);
        assert_eq!(maildir_messages(&maildir).len(), messages.len(), "{what}");
        assert_eq!(server.on_server(), messages.len(), "{what}: keep = true");
    }
}

#[test]
fn incremental_sync_fetches_only_the_new_mail() {
    let messages = tricky();
    for server in Real::both(&messages[..5]) {
        let what = server.name();
        let (p, maildir) = server.popsync("");
        p.run(&["sync"]).expect_code(0);
        for m in &messages[5..8] {
            server.add(m);
        }
        // Another client removed a message meanwhile: nothing new for it.
        server.remove_first();
        sync_expecting(&p, 3, what);
        assert_stored(&maildir, &messages[..8], what);
        assert_eq!(server.on_server(), 7, "{what}");
        sync_expecting(&p, 0, what);
    }
}

#[test]
fn keep_false_stores_everything_then_empties_the_server() {
    let messages = tricky();
    for server in Real::both(&messages) {
        let what = server.name();
        let (p, maildir) = server.popsync("keep = false");
        sync_expecting(&p, messages.len(), what);
        assert_stored(&maildir, &messages, what);
        assert_eq!(server.on_server(), 0, "{what}: all deleted after storing");
        server.add(b"Message-ID: <later@t>\nSubject: later\n\nlate mail\n");
        p.run(&["sync"]).expect_code(0);
        assert_eq!(
            maildir_messages(&maildir).len(),
            messages.len() + 1,
            "{what}"
        );
        assert_eq!(server.on_server(), 0, "{what}");
    }
}

/// popsync vs mpop against popa3d served inetd-style (Nagle on, no
/// PIPELINING, so both clients run lock-step): rounds alternate, and the
/// paired ratio of medians is printed. A measurement, not a timed test:
/// `cargo test --release --test it real_servers::lock_step -- --ignored --nocapture`
#[test]
#[ignore]
fn lock_step_popa3d_popsync_vs_mpop() {
    use std::time::Instant;
    let n: usize = std::env::var("POPSYNC_MEASURE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let messages: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            format!(
                "Message-ID: <m{i}@t>\nSubject: message {i}\n\n{}\n",
                "body line\n".repeat(20)
            )
            .into_bytes()
        })
        .collect();
    let server = Popa3d::start(&messages);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let p = Popsync::new("");
        let maildir = p.path("Mail");
        p.write_config(&server.account_toml("acct", &format!("maildir = {maildir:?}\n")));
        let t = Instant::now();
        sync_expecting(&p, n, "popsync");
        ours.push(t.elapsed().as_secs_f64());

        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("mpop-mail");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(mail.join(sub)).unwrap();
        }
        let rc = dir.path().join("mpoprc");
        support::write_file_0600(
            &rc,
            format!(
                "account default\nhost {}\nport {}\ntls off\nauth user\nuser {}\npassword {}\n\
                 delivery maildir {}\nkeep on\nonly_new on\nuidls_file {}\n",
                server.host(),
                server.port(),
                server.user(),
                server.password(),
                mail.display(),
                dir.path().join("uidls").display()
            ),
        );
        let t = Instant::now();
        let out = std::process::Command::new("mpop")
            .arg(format!("--file={}", rc.display()))
            .arg("-q")
            .output()
            .expect("run mpop");
        theirs.push(t.elapsed().as_secs_f64());
        assert!(out.status.success(), "mpop: {out:?}");
        assert_eq!(std::fs::read_dir(mail.join("new")).unwrap().count(), n);
        println!(
            "round {round}: popsync {:.3} s, mpop {:.3} s, ratio {:.1}x",
            ours[round],
            theirs[round],
            theirs[round] / ours[round]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "{n} messages from popa3d (inetd-style, Nagle on): popsync {a:.3} s, mpop {b:.3} s (medians of 3), mpop/popsync {:.1}x",
        b / a
    );
}
