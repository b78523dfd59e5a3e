//! One fault-server case driven through the real binary, with the checks
//! every fault test ends with: nothing lost, nothing stored twice.

use std::path::PathBuf;

use super::fault_server::{FaultMessage, FaultServer, Faults};
use super::popsync::{Popsync, Run, maildir_messages};

pub struct Case {
    pub server: FaultServer,
    pub popsync: Popsync,
    pub maildir: PathBuf,
    pub original: Vec<FaultMessage>,
}

impl Case {
    /// `extra`: more account keys (TOML lines), e.g. `keep = false`.
    pub fn new(original: Vec<FaultMessage>, faults: Faults, extra: &str) -> Case {
        let server = FaultServer::start(original.clone(), faults);
        let popsync = Popsync::new("");
        let maildir = popsync.path("Mail");
        let extra = format!("maildir = {maildir:?}\n{extra}");
        popsync.write_config(&server.account_toml("acct", &extra));
        Case {
            server,
            popsync,
            maildir,
            original,
        }
    }

    pub fn sync(&self) -> Run {
        self.popsync.run(&["sync"])
    }

    pub fn stored(&self) -> Vec<Vec<u8>> {
        maildir_messages(&self.maildir)
    }

    /// Every original message is stored at most once and is stored or still
    /// on the server; nothing the client did not store left the server; no
    /// half-written file is visible.
    pub fn assert_nothing_lost(&self) {
        let stored = self.stored();
        let on_server = self.server.mailbox();
        for m in &self.original {
            let copies = stored.iter().filter(|s| **s == m.body).count();
            assert!(copies <= 1, "UID {} stored {copies} times", m.uid);
            let kept = on_server.iter().any(|s| s.body == m.body);
            assert!(copies == 1 || kept, "UID {} lost", m.uid);
        }
        for s in &stored {
            assert!(
                self.original.iter().any(|m| m.body == *s),
                "stored a message the server never served: {:?}",
                String::from_utf8_lossy(&s[..s.len().min(200)])
            );
        }
        let tmp = self.maildir.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            assert_eq!(entries.count(), 0, "leftovers in {}", tmp.display());
        }
    }

    /// After the fault is gone: a clean run stores everything exactly once.
    pub fn heal_and_check_all_stored(&self) {
        self.server.set_faults(Faults::default());
        self.sync().expect_code(0);
        self.assert_nothing_lost();
        assert_eq!(self.stored().len(), self.original.len(), "all stored");
    }
}

pub fn keep_false() -> &'static str {
    "keep = false"
}

pub fn assert_mentions(run: &Run, words: &[&str]) {
    let all = format!("{}\n{}", run.stdout(), run.stderr()).to_lowercase();
    for w in words {
        assert!(
            all.contains(&w.to_lowercase()),
            "expected {w:?} in the output:\n{all}"
        );
    }
}
