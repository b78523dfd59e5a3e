//! Is every recorded delivery still where it was stored, byte for byte?
//!
//! Given delivery records from the state, checks each against its target:
//! a maildir file (followed from `new/` into `cur/`, flags and all) or an
//! mbox byte range, by size and SHA-256. Maildirs are listed once per
//! directory, not once per message; files are streamed and hashed on a
//! few threads, so 100,000 messages take seconds, not minutes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::deliver::maildir::{locate, sha256_stream};
use crate::deliver::{Location, StoredMessage};
use crate::store::{DeliveryRecord, TargetId};

/// What verification found for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Present with exactly the recorded size and SHA-256.
    Intact,
    /// Not where it was stored (file gone, mbox shorter than the range).
    Missing(String),
    /// Present, but its bytes differ from what was stored.
    Altered(String),
    /// Could not be read (permissions, I/O error): not proven intact.
    Unreadable(String),
    /// Handed to an MDA: nothing local to check.
    NotCheckable(String),
}

impl Finding {
    pub fn is_intact(&self) -> bool {
        matches!(self, Finding::Intact)
    }

    /// Missing, altered or unreadable: verification failed.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Finding::Missing(_) | Finding::Altered(_) | Finding::Unreadable(_)
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Intact => "intact",
            Finding::Missing(_) => "missing",
            Finding::Altered(_) => "altered",
            Finding::Unreadable(_) => "unreadable",
            Finding::NotCheckable(_) => "not checkable",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Finding::Intact => "",
            Finding::Missing(d)
            | Finding::Altered(d)
            | Finding::Unreadable(d)
            | Finding::NotCheckable(d) => d,
        }
    }
}

/// Where a record's bytes live, resolved before hashing.
enum Source {
    File(PathBuf),
    Range { file: usize, offset: u64 },
}

/// Checks every record; the result is in the records' order.
pub fn verify(records: &[DeliveryRecord]) -> Vec<Finding> {
    let mut findings: Vec<Option<Finding>> = vec![None; records.len()];
    let mut jobs: Vec<(usize, Source)> = Vec::new();
    let mut mboxes: Vec<File> = Vec::new();
    let mut mbox_index: HashMap<PathBuf, Result<(usize, u64), Finding>> = HashMap::new();

    // Maildirs: one directory listing per maildir, whatever the count.
    let mut by_maildir: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    for (i, rec) in records.iter().enumerate() {
        match (&rec.stored.location, &rec.target) {
            (Location::Mda, _) | (_, TargetId::Mda(_)) => {
                findings[i] = Some(Finding::NotCheckable(format!(
                    "handed to {}; nothing local to check",
                    rec.target
                )));
            }
            (Location::Maildir { .. }, TargetId::Maildir(root)) => {
                by_maildir.entry(root.clone()).or_default().push(i);
            }
            (Location::Mbox { offset, length }, TargetId::Mbox(path)) => {
                let opened = mbox_index.entry(path.clone()).or_insert_with(|| {
                    open_mbox(path).map(|(f, len)| {
                        mboxes.push(f);
                        (mboxes.len() - 1, len)
                    })
                });
                findings[i] = match opened {
                    Err(f) => Some(f.clone()),
                    Ok((_, len)) if offset + length > *len => Some(Finding::Missing(format!(
                        "{} ends at byte {len}, before the recorded range {offset}+{length}",
                        path.display()
                    ))),
                    Ok((file, _)) => {
                        jobs.push((
                            i,
                            Source::Range {
                                file: *file,
                                offset: *offset,
                            },
                        ));
                        None
                    }
                };
            }
            _ => {
                findings[i] = Some(Finding::Unreadable(format!(
                    "the state's target {} does not fit location {:?}",
                    rec.target, rec.stored.location
                )));
            }
        }
    }
    for (root, idxs) in by_maildir {
        let names: HashSet<&str> = idxs
            .iter()
            .filter_map(|&i| maildir_name(&records[i]))
            .collect();
        let found = match locate(&root, &names) {
            Ok(found) => found,
            Err(e) => {
                let f = if e.kind() == io::ErrorKind::NotFound {
                    Finding::Missing(format!("maildir {} is gone", root.display()))
                } else {
                    Finding::Unreadable(format!("cannot list maildir {}: {e}", root.display()))
                };
                for i in idxs {
                    findings[i] = Some(f.clone());
                }
                continue;
            }
        };
        for i in idxs {
            let name = maildir_name(&records[i]).unwrap_or_default();
            match found.get(name) {
                Some(p) => jobs.push((i, Source::File(p.clone()))),
                None => {
                    findings[i] = Some(Finding::Missing(format!(
                        "{name} is in neither new/ nor cur/ of {}",
                        root.display()
                    )))
                }
            }
        }
    }

    for (i, f) in hash_all(records, &jobs, &mboxes) {
        findings[i] = Some(f);
    }
    findings
        .into_iter()
        .map(|f| f.unwrap_or_else(|| Finding::Unreadable("not checked (bug)".into())))
        .collect()
}

/// Which of `uids` may be deleted from the server because of their local
/// copy: the UID's recorded location is claimed by no other record (a forged
/// or confused state cannot make two UIDs rest on one file), and the copy
/// is there with the recorded size and SHA-256. `Err` says why not.
pub fn deletable<'a>(
    records: &[DeliveryRecord],
    uids: impl IntoIterator<Item = &'a str>,
) -> HashMap<String, Result<(), String>> {
    let mut claims: HashMap<(&TargetId, &Location), usize> = HashMap::new();
    let mut by_uid: HashMap<&str, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if r.stored.location != Location::Mda {
            *claims.entry((&r.target, &r.stored.location)).or_default() += 1;
        }
        by_uid.insert(r.uid.as_str(), i);
    }
    let mut out = HashMap::new();
    let mut to_check = Vec::new();
    for uid in uids {
        let verdict = match by_uid.get(uid).map(|&i| &records[i]) {
            None => Err("no delivery record".to_string()),
            Some(r) if r.stored.location == Location::Mda => Err(format!(
                "handed to {}; no local copy proves it was kept",
                r.target
            )),
            Some(r) => match claims[&(&r.target, &r.stored.location)] {
                1 => {
                    to_check.push(r.clone());
                    continue;
                }
                n => Err(format!("its stored location is recorded for {n} UIDs")),
            },
        };
        out.insert(uid.to_string(), verdict);
    }
    for (r, f) in to_check.iter().zip(verify(&to_check)) {
        let verdict = if f.is_intact() {
            Ok(())
        } else {
            Err(format!("stored copy {}: {}", f.kind(), f.detail()))
        };
        out.insert(r.uid.clone(), verdict);
    }
    out
}

/// The header sections (at most 16 KiB each) of stored copies, for listings
/// that show From and Subject; `None` where the copy cannot be read. One
/// directory listing per maildir, as in [`verify`].
pub fn stored_headers(records: &[&DeliveryRecord]) -> Vec<Option<Vec<u8>>> {
    const LIMIT: usize = 16 * 1024;
    let mut found: HashMap<PathBuf, HashMap<String, PathBuf>> = HashMap::new();
    for rec in records {
        if let (Location::Maildir { .. }, TargetId::Maildir(root)) =
            (&rec.stored.location, &rec.target)
            && !found.contains_key(root)
        {
            let names: HashSet<&str> = records
                .iter()
                .filter(|r| r.target == rec.target)
                .filter_map(|r| maildir_name(r))
                .collect();
            found.insert(root.clone(), locate(root, &names).unwrap_or_default());
        }
    }
    records
        .iter()
        .map(|rec| {
            let mut buf = vec![0u8; LIMIT];
            let n = match (&rec.stored.location, &rec.target) {
                (Location::Maildir { name }, TargetId::Maildir(root)) => {
                    let path = found.get(root)?.get(name.as_str())?;
                    let mut f = File::open(path).ok()?;
                    f.read(&mut buf).ok()?
                }
                (Location::Mbox { offset, length }, TargetId::Mbox(path)) => {
                    let want = (*length).min(LIMIT as u64) as usize;
                    File::open(path)
                        .ok()?
                        .read_at(&mut buf[..want], *offset)
                        .ok()?
                }
                _ => return None,
            };
            buf.truncate(n);
            if buf.starts_with(b"From ") {
                // An mbox separator line, not a header.
                let line_end = memchr::memchr(b'\n', &buf).map_or(buf.len(), |i| i + 1);
                buf.drain(..line_end);
            }
            if let Some(end) = memchr::memmem::find(&buf, b"\n\n") {
                buf.truncate(end + 1);
            }
            Some(buf)
        })
        .collect()
}

/// Hashes the jobs on up to 8 threads (I/O and SHA-256 overlap).
fn hash_all(
    records: &[DeliveryRecord],
    jobs: &[(usize, Source)],
    mboxes: &[File],
) -> Vec<(usize, Finding)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(jobs.len().max(1));
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some((i, source)) = jobs.get(j) else {
                            break;
                        };
                        out.push((*i, check(&records[*i].stored, source, mboxes)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|_| vec![]))
            .collect()
    })
}

fn check(stored: &StoredMessage, source: &Source, mboxes: &[File]) -> Finding {
    let result = match source {
        Source::File(path) => File::open(path).and_then(|mut f| {
            let len = f.metadata()?.len();
            if len != stored.size {
                return Ok(Err(format!(
                    "{} has {len} bytes, {} were stored",
                    path.display(),
                    stored.size
                )));
            }
            sha256_stream(&mut f)
                .map(|(n, sha)| compare(stored, n, sha, &path.display().to_string()))
        }),
        Source::Range { file, offset } => {
            let mut reader = RangeReader {
                file: &mboxes[*file],
                pos: *offset,
                end: offset + stored.size,
            };
            sha256_stream(&mut reader).map(|(n, sha)| {
                compare(
                    stored,
                    n,
                    sha,
                    &format!("mbox range {offset}+{}", stored.size),
                )
            })
        }
    };
    match result {
        Ok(Ok(())) => Finding::Intact,
        Ok(Err(detail)) => Finding::Altered(detail),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Finding::Missing(format!("removed while verifying: {e}"))
        }
        Err(e) => Finding::Unreadable(e.to_string()),
    }
}

fn compare(stored: &StoredMessage, n: u64, sha: [u8; 32], what: &str) -> Result<(), String> {
    if n != stored.size {
        Err(format!(
            "{what}: read {n} bytes, {} were stored",
            stored.size
        ))
    } else if sha != stored.sha256 {
        Err(format!(
            "{what}: content differs (SHA-256 {})",
            hex::encode(sha)
        ))
    } else {
        Ok(())
    }
}

/// `read` over a byte range of a shared file (positioned reads, no seek).
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn open_mbox(path: &Path) -> Result<(File, u64), Finding> {
    let opened = File::open(path).and_then(|f| {
        let len = f.metadata()?.len();
        Ok((f, len))
    });
    opened.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Finding::Missing(format!("mbox {} is gone", path.display()))
        } else {
            Finding::Unreadable(format!("cannot open mbox {}: {e}", path.display()))
        }
    })
}

fn maildir_name(rec: &DeliveryRecord) -> Option<&str> {
    match &rec.stored.location {
        Location::Maildir { name } => Some(name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{MessageMeta, Target, maildir::Maildir, mbox::Mbox};

    fn deliver(target: &mut dyn Target, id: TargetId, msgs: &[&[u8]]) -> Vec<DeliveryRecord> {
        let mut batch = target.batch().unwrap();
        let mut out = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let mut message = batch.message(&MessageMeta::default()).unwrap();
            std::io::Write::write_all(&mut message, m).unwrap();
            out.push(DeliveryRecord {
                uid: format!("u{i}"),
                target: id.clone(),
                stored: message.finish().unwrap(),
                delivered_at: 1,
                deleted_at: None,
                gone_at: None,
            });
        }
        batch.sync().unwrap().publish().unwrap();
        out
    }

    fn path_of(dir: &Path, rec: &DeliveryRecord) -> PathBuf {
        let Location::Maildir { name } = &rec.stored.location else {
            panic!()
        };
        dir.join("new").join(name)
    }

    #[test]
    fn maildir_follows_moves_and_reports_missing_and_altered() {
        let td = tempfile::tempdir().unwrap();
        let mut md = Maildir::open(td.path()).unwrap();
        let recs = deliver(
            &mut md,
            TargetId::Maildir(td.path().into()),
            &[b"one\n", b"two\n", b"three\n", b"four\n"],
        );
        // A mail reader moved 0 to cur/ with flags; 1 is deleted; 2 edited
        // (same size); 3 untouched.
        let p0 = path_of(td.path(), &recs[0]);
        let name0 = p0.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::rename(&p0, td.path().join("cur").join(format!("{name0}:2,S"))).unwrap();
        std::fs::remove_file(path_of(td.path(), &recs[1])).unwrap();
        std::fs::write(path_of(td.path(), &recs[2]), b"thref\n").unwrap();
        let f = verify(&recs);
        assert_eq!(f[0], Finding::Intact);
        assert!(
            matches!(&f[1], Finding::Missing(d) if d.contains("neither")),
            "{f:?}"
        );
        assert!(
            matches!(&f[2], Finding::Altered(d) if d.contains("content differs")),
            "{f:?}"
        );
        assert_eq!(f[3], Finding::Intact);
        std::fs::write(path_of(td.path(), &recs[3]), b"four + more\n").unwrap();
        assert!(matches!(&verify(&recs)[3], Finding::Altered(d) if d.contains("bytes")));
    }

    #[test]
    fn mbox_ranges_truncation_and_mda() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let mut mb = Mbox::open(&path).unwrap();
        let mut recs = deliver(
            &mut mb,
            TargetId::Mbox(path.clone()),
            &[b"From: a\n\none\n", b"From: b\n\ntwo\n"],
        );
        drop(mb);
        assert!(verify(&recs).iter().all(Finding::is_intact));
        // Flip one byte of the first message; cut into the second.
        let mut bytes = std::fs::read(&path).unwrap();
        let Location::Mbox { offset, length } = recs[0].stored.location else {
            panic!()
        };
        bytes[(offset + length - 3) as usize] ^= 1;
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).unwrap();
        let f = verify(&recs);
        assert!(matches!(&f[0], Finding::Altered(_)), "{f:?}");
        assert!(
            matches!(&f[1], Finding::Missing(d) if d.contains("ends at byte")),
            "{f:?}"
        );
        recs[1].target = TargetId::Mda("procmail".into());
        recs[1].stored.location = Location::Mda;
        assert!(matches!(&verify(&recs)[1], Finding::NotCheckable(_)));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(&verify(&recs)[0], Finding::Missing(d) if d.contains("gone")));
    }

    #[test]
    fn many_messages_on_several_threads() {
        let td = tempfile::tempdir().unwrap();
        let mut md = Maildir::open(td.path()).unwrap();
        let msgs: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("m {i}\n").repeat(i + 1).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let recs = deliver(&mut md, TargetId::Maildir(td.path().into()), &refs);
        std::fs::remove_file(path_of(td.path(), &recs[123])).unwrap();
        let f = verify(&recs);
        let bad: Vec<usize> = (0..f.len()).filter(|&i| !f[i].is_intact()).collect();
        assert_eq!(bad, vec![123]);
    }
}
