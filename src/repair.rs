//! Moving a damaged stored copy out of the way before it is fetched again.
//!
//! Nothing is ever deleted. A maildir file is renamed into the maildir's
//! `popsync-damaged/` directory (not `new/` or `cur/`, so mail readers no
//! longer show it; not `tmp/`, which readers clean up). An mbox is never
//! rewritten: the damaged bytes stay where they are and the fresh copy is
//! appended, because cutting a message out of an mbox in place can lose
//! every message after it if anything goes wrong.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::deliver::Location;
use crate::deliver::maildir::locate;
use crate::store::{DeliveryRecord, TargetId};

/// Directory inside a maildir that receives damaged copies.
pub const DAMAGED_DIR: &str = "popsync-damaged";

/// What happened to the damaged copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aside {
    /// Renamed to this path.
    Moved(PathBuf),
    /// No file was there any more (the copy is missing).
    NothingThere,
    /// Left in place in this mbox (never rewritten); the new copy is appended.
    LeftInMbox(PathBuf),
    /// Handed to an MDA: nothing local.
    Mda,
}

impl std::fmt::Display for Aside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Aside::Moved(p) => write!(f, "damaged copy moved to {}", p.display()),
            Aside::NothingThere => f.write_str("no stored copy left to move"),
            Aside::LeftInMbox(p) => write!(
                f,
                "damaged copy left in place in {} (an mbox is never rewritten); the new copy is appended",
                p.display()
            ),
            Aside::Mda => f.write_str("delivered by the MDA; nothing local to move"),
        }
    }
}

/// Moves the record's stored copy aside (see the module comment).
pub fn move_aside(record: &DeliveryRecord) -> io::Result<Aside> {
    match (&record.stored.location, &record.target) {
        (Location::Maildir { name }, TargetId::Maildir(root)) => move_maildir_file(root, name),
        (Location::Mbox { .. }, TargetId::Mbox(path)) => Ok(Aside::LeftInMbox(path.clone())),
        (Location::Mda, _) | (_, TargetId::Mda(_)) => Ok(Aside::Mda),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the state's target {} does not fit location {:?}",
                record.target, record.stored.location
            ),
        )),
    }
}

fn move_maildir_file(root: &Path, name: &str) -> io::Result<Aside> {
    let names: HashSet<&str> = [name].into_iter().collect();
    let found = match locate(root, &names) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Aside::NothingThere),
        Err(e) => return Err(e),
    };
    let Some(src) = found.get(name) else {
        return Ok(Aside::NothingThere);
    };
    let dir = root.join(DAMAGED_DIR);
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&dir)?;
    let file_name = src
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut dest = dir.join(&file_name);
    let mut n = 1;
    while dest.symlink_metadata().is_ok() {
        let mut alt = file_name.clone();
        alt.push(format!(".{n}"));
        dest = dir.join(alt);
        n += 1;
    }
    fs::rename(src, &dest)?;
    // Both directory entries must be durable before the state says "refetch".
    File::open(&dir)?.sync_all()?;
    if let Some(parent) = src.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(Aside::Moved(dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::StoredMessage;

    fn record(target: TargetId, location: Location) -> DeliveryRecord {
        DeliveryRecord {
            uid: "u1".into(),
            target,
            stored: StoredMessage {
                location,
                size: 1,
                sha256: [0; 32],
            },
            delivered_at: 0,
            deleted_at: None,
            gone_at: None,
        }
    }

    #[test]
    fn a_maildir_copy_in_cur_is_renamed_into_the_damaged_dir_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("cur/123.M1P1Q1.host:2,S"), b"edited").unwrap();
        let rec = record(
            TargetId::Maildir(dir.path().into()),
            Location::Maildir {
                name: "123.M1P1Q1.host".into(),
            },
        );
        let moved = dir.path().join("popsync-damaged/123.M1P1Q1.host:2,S");
        assert_eq!(move_aside(&rec).unwrap(), Aside::Moved(moved.clone()));
        assert_eq!(fs::read(&moved).unwrap(), b"edited");
        assert!(
            fs::read_dir(dir.path().join("cur"))
                .unwrap()
                .next()
                .is_none()
        );
        // A second damaged copy of the same name does not overwrite the first.
        fs::write(dir.path().join("cur/123.M1P1Q1.host:2,S"), b"again").unwrap();
        let second = dir.path().join("popsync-damaged/123.M1P1Q1.host:2,S.1");
        assert_eq!(move_aside(&rec).unwrap(), Aside::Moved(second.clone()));
        assert_eq!(fs::read(&moved).unwrap(), b"edited");
        assert_eq!(move_aside(&rec).unwrap(), Aside::NothingThere);
    }

    #[test]
    fn an_mbox_is_left_alone() {
        let rec = record(
            TargetId::Mbox("/x/y.mbox".into()),
            Location::Mbox {
                offset: 0,
                length: 5,
            },
        );
        assert_eq!(
            move_aside(&rec).unwrap(),
            Aside::LeftInMbox(PathBuf::from("/x/y.mbox"))
        );
    }
}
