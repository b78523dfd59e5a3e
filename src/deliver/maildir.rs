//! Maildir delivery (cr.yp.to/proto/maildir.html), written to the spec:
//! write into `tmp/`, make the batch durable, link into `new/`, fsync `new/`.
//!
//! Every file operation runs relative to the directory descriptors opened
//! once in [`Maildir::open`] (`tmp/`, `new/`, `cur/` with `O_NOFOLLOW`), so a
//! directory swapped for a symlink later cannot redirect a write or an unlink.
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest, Sha256};

use super::util::io_err;
use super::{BatchMark, DeliverError, Location, MessageMeta, StoredMessage, Target};
use crate::ownership::{self, UnsafePath};

/// Per-process counter for the `Q<n>` part of unique names.
static DELIVERY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Above this many files a batch is made durable with one `syncfs`.
const SYNCFS_MIN_FILES: usize = 4;

/// Unsynced files whose descriptors we keep open when each file gets its own
/// fsync (so a writeback error is reported to us); beyond that, a file is
/// fsynced early and closed.
const MAX_OPEN_FILES: usize = 256;

const BUF_SIZE: usize = 64 * 1024;

/// A maildir delivery target.
pub struct Maildir {
    root: PathBuf,
    tmp: PathBuf,
    new: PathBuf,
    cur: PathBuf,
    tmp_dir: OwnedFd,
    new_dir: OwnedFd,
    cur_dir: OwnedFd,
    host: String,
    /// `tmp/` opened at `begin_batch`: `syncfs` reports writeback errors of
    /// the filesystem since this descriptor was opened (Linux >= 5.8).
    batch_dir: Option<OwnedFd>,
    /// This batch's filesystem reports writeback errors to `syncfs`.
    batch_syncfs: bool,
    /// The journaled prefix of this batch's file names.
    batch_prefix: Option<String>,
    batch: Vec<Entry>,
    current: Option<Current>,
    synced: bool,
}

struct Entry {
    name: String,
    /// Open until the file is durable, so fsync sees any writeback error;
    /// closed early once the batch is bound to end with one `syncfs`.
    file: Option<File>,
    needs_sync: bool,
    published: bool,
}

struct Current {
    name: String,
    path: PathBuf,
    writer: BufWriter<File>,
    hasher: Sha256,
    size: u64,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Maildir {
    /// Opens (creating if needed, mode 0700) a maildir and its `cur/ new/ tmp/`.
    ///
    /// The maildir must be owned by the running user (or root) and not
    /// writable by group or others, like its ancestors (see `ownership`);
    /// `tmp/ new/ cur/` must be real directories, not symlinks.
    pub fn open(path: &Path) -> Result<Maildir, DeliverError> {
        let target = format!("maildir {}", path.display());
        let mut created = false;
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io_err(
                    &target,
                    "open directory",
                    path,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| io_err(&target, "create directory", path, e))?;
                created = true;
            }
            Err(e) => return Err(io_err(&target, "stat", path, e)),
        }
        // The root may be a symlink the user made; what it leads to is checked.
        let root_dir = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&target, "open directory", path, e.into()))?;
        check_dir(&target, "maildir", path, &root_dir)?;
        let real = fs::canonicalize(path).map_err(|e| io_err(&target, "resolve", path, e))?;
        ownership::check_ancestors("maildir", &real)?;
        let mut open_sub = |name: &str| -> Result<OwnedFd, DeliverError> {
            let sub = path.join(name);
            let fd = match rustix::fs::openat(&root_dir, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&root_dir, name, Mode::RWXU)
                        .map_err(|e| io_err(&target, "create directory", &sub, e.into()))?;
                    created = true;
                    rustix::fs::openat(&root_dir, name, DIR_FLAGS, Mode::empty())
                        .map_err(|e| io_err(&target, "open directory", &sub, e.into()))?
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(UnsafePath {
                        what: "maildir directory",
                        path: sub.clone(),
                        problem: "is not a real directory (a symlink or a file)".into(),
                        fix: format!(
                            "replace it with a directory: `mkdir -m 700 {}`",
                            sub.display()
                        ),
                    }
                    .into());
                }
                Err(e) => return Err(io_err(&target, "open directory", &sub, e.into())),
            };
            check_dir(&target, "maildir directory", &sub, &fd)?;
            Ok(fd)
        };
        let cur_dir = open_sub("cur")?;
        let new_dir = open_sub("new")?;
        let tmp_dir = open_sub("tmp")?;
        for (dir, fd) in [(path.join("new"), &new_dir), (path.join("tmp"), &tmp_dir)] {
            rustix::fs::accessat(
                fd,
                ".",
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
                AtFlags::empty(),
            )
            .map_err(|e| io_err(&target, "check writable", &dir, e.into()))?;
        }
        if created {
            // Make the new subdirectories themselves durable before mail goes in.
            rustix::fs::fsync(&root_dir)
                .map_err(|e| io_err(&target, "fsync directory", path, e.into()))?;
        }
        Ok(Maildir {
            root: path.to_path_buf(),
            tmp: path.join("tmp"),
            new: path.join("new"),
            cur: path.join("cur"),
            tmp_dir,
            new_dir,
            cur_dir,
            host: sanitized_hostname(),
            batch_dir: None,
            batch_syncfs: false,
            batch_prefix: None,
            batch: Vec::new(),
            current: None,
            synced: true,
        })
    }

    /// Where the message `name` is now: `new/name`, or `cur/name` with or
    /// without a `:2,flags` suffix a mail reader added.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        if is_regular_at(&self.new_dir, name).ok()? {
            return Some(self.new.join(name));
        }
        let mut wanted = HashSet::new();
        wanted.insert(name);
        let found = scan_cur_at(&self.cur_dir, &wanted).ok()?;
        found
            .get(name)
            .and_then(|v| v.first())
            .map(|n| self.cur.join(n))
    }

    fn target(&self) -> String {
        self.describe()
    }

    /// `SECS.MUSECSPPID`: fixed per batch and journaled, so recovery can
    /// tell this batch's files from anything else in `tmp/`.
    fn new_prefix() -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id()
        )
    }

    fn next_name(&self) -> String {
        let prefix = match &self.batch_prefix {
            Some(p) => p.clone(),
            None => Self::new_prefix(),
        };
        let n = DELIVERY_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}Q{n}.{}", self.host)
    }

    fn fail_if_batch_open(&self) -> Result<(), DeliverError> {
        if self.current.is_some() || self.batch.iter().any(|e| !e.published) {
            return Err(DeliverError::Other(format!(
                "{}: begin_batch while a batch is still unpublished",
                self.target()
            )));
        }
        Ok(())
    }

    /// Makes every unsynced file of the batch durable.
    fn sync_files(&mut self) -> Result<(), DeliverError> {
        let target = self.target();
        let unsynced: Vec<usize> = (0..self.batch.len())
            .filter(|&i| self.batch[i].needs_sync)
            .collect();
        if unsynced.is_empty() {
            return Ok(());
        }
        if unsynced.len() > SYNCFS_MIN_FILES
            && self.batch_syncfs
            && let Some(dir) = &self.batch_dir
        {
            // One flush of the filesystem instead of one journal commit
            // per file; errors since `begin_batch` are reported here.
            rustix::fs::syncfs(dir).map_err(|e| io_err(&target, "syncfs", &self.tmp, e.into()))?;
            for &i in &unsynced {
                self.batch[i].file = None;
                self.batch[i].needs_sync = false;
            }
            return Ok(());
        }
        // Start writeback of all files first so the fsyncs below overlap.
        #[cfg(target_os = "linux")]
        for &i in &unsynced {
            if let Some(f) = &self.batch[i].file {
                start_writeback(f);
            }
        }
        for &i in &unsynced {
            let path = self.tmp.join(&self.batch[i].name);
            // Files are closed early only when the batch ends in a syncfs;
            // should one be closed anyway, reopening still flushes its pages.
            let f = match self.batch[i].file.take() {
                Some(f) => f,
                None => open_file_at(&self.tmp_dir, &self.batch[i].name)
                    .map_err(|e| io_err(&target, "open", &path, e))?,
            };
            f.sync_all()
                .map_err(|e| io_err(&target, "fsync", &path, e))?;
            self.batch[i].needs_sync = false;
        }
        Ok(())
    }

    fn remove_tmp(&self, name: &str) -> Result<(), DeliverError> {
        match rustix::fs::unlinkat(&self.tmp_dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(
                &self.target(),
                "remove",
                &self.tmp.join(name),
                e.into(),
            )),
        }
    }

    /// Links `tmp/name` to `new/name` without ever replacing an existing file.
    fn link_into_new(&self, name: &str) -> Result<(), DeliverError> {
        let to = self.new.join(name);
        match rustix::fs::linkat(&self.tmp_dir, name, &self.new_dir, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(e) if link_unsupported(e) => {
                rename_noreplace_at(&self.tmp_dir, &self.new_dir, name)
                    .map_err(|e| io_err(&self.target(), "rename into new/", &to, e))?
            }
            Err(e) => return Err(io_err(&self.target(), "link into new/", &to, e.into())),
        }
        // The message is visible now; a leftover tmp link is harmless (same inode).
        if let Err(e) = self.remove_tmp(name) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Removes the `tmp/` files an interrupted batch with `prefix` created
    /// (`PREFIX<n>.<host>`), except `keep`; only regular files, never a
    /// symlink's target, never anything by age.
    fn clean_batch_tmp(&self, prefix: &str, keep: &HashSet<&str>) -> Result<(), DeliverError> {
        let target = self.target();
        let names = list_names(&self.tmp_dir).map_err(|e| io_err(&target, "read", &self.tmp, e))?;
        for name in names {
            if keep.contains(name.as_str()) || !is_batch_name(&name, prefix) {
                continue;
            }
            if !is_regular_at(&self.tmp_dir, &name).unwrap_or(false) {
                continue;
            }
            self.remove_tmp(&name)?;
            tracing::info!("{target}: removed unfinished delivery tmp/{name}");
        }
        Ok(())
    }
}

impl Target for Maildir {
    fn describe(&self) -> String {
        format!("maildir {}", self.root.display())
    }

    fn recover(
        &mut self,
        mark: Option<BatchMark>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError> {
        let target = self.target();
        let names: HashSet<&str> = pending
            .iter()
            .filter_map(|m| match &m.location {
                Location::Maildir { name } if valid_name(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let in_cur = if names.is_empty() {
            HashMap::new()
        } else {
            scan_cur_at(&self.cur_dir, &names).map_err(|e| io_err(&target, "read", &self.cur, e))?
        };
        let mut out = Vec::with_capacity(pending.len());
        let mut published_any = false;
        for msg in pending {
            let name = match &msg.location {
                Location::Maildir { name } if valid_name(name) => name,
                other => {
                    tracing::warn!("{target}: recover: not a maildir location: {other:?}");
                    out.push(false);
                    continue;
                }
            };
            let mut candidates: Vec<(&OwnedFd, PathBuf, String)> =
                vec![(&self.new_dir, self.new.clone(), name.clone())];
            if let Some(v) = in_cur.get(name.as_str()) {
                candidates.extend(
                    v.iter()
                        .map(|n| (&self.cur_dir, self.cur.clone(), n.clone())),
                );
            }
            let mut intact: Option<(&OwnedFd, String)> = None;
            let mut seen_elsewhere = false;
            for (dir, dir_path, entry) in &candidates {
                match file_matches_at(dir, entry, msg) {
                    Ok(true) => {
                        intact = Some((dir, entry.clone()));
                        break;
                    }
                    Ok(false) => {
                        seen_elsewhere = true;
                        tracing::warn!(
                            "{target}: {} differs from what was delivered; keeping it, not counting it",
                            dir_path.join(entry).display()
                        );
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&target, "verify", &dir_path.join(entry), e)),
                }
            }
            let tmp_path = self.tmp.join(name);
            let tmp_stat =
                match rustix::fs::statat(&self.tmp_dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => Some(st),
                    Err(rustix::io::Errno::NOENT) => None,
                    Err(e) => return Err(io_err(&target, "stat", &tmp_path, e.into())),
                };
            if let Some((dir, entry)) = intact {
                // A tmp link left by an interrupted publish: drop it only if
                // it is the very same inode.
                if let (Some(tm), Ok(fm)) = (
                    &tmp_stat,
                    rustix::fs::statat(dir, entry.as_str(), AtFlags::SYMLINK_NOFOLLOW),
                ) && tm.st_dev == fm.st_dev
                    && tm.st_ino == fm.st_ino
                {
                    self.remove_tmp(name)?;
                }
                out.push(true);
                continue;
            }
            if tmp_stat.is_none() || seen_elsewhere {
                out.push(false);
                continue;
            }
            // Only in tmp/: it was synced before being journaled. If it is
            // intact, finishing the publication loses nothing; a re-download
            // may not be possible (servers that hide already-fetched mail).
            match file_matches_at(&self.tmp_dir, name, msg) {
                Ok(true) => {
                    self.link_into_new(name)?;
                    published_any = true;
                    out.push(true);
                }
                Ok(false) => {
                    tracing::warn!(
                        "{target}: removing damaged partial delivery {}",
                        tmp_path.display()
                    );
                    self.remove_tmp(name)?;
                    out.push(false);
                }
                // A symlink named like our file: not ours to judge or remove.
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => out.push(false),
                Err(e) => return Err(io_err(&target, "verify", &tmp_path, e)),
            }
        }
        if published_any {
            rustix::fs::fsync(&self.new_dir)
                .map_err(|e| io_err(&target, "fsync directory", &self.new, e.into()))?;
        }
        if let Some(prefix) = mark.and_then(|m| m.tmp_prefix)
            && valid_name(&prefix)
        {
            self.clean_batch_tmp(&prefix, &names)?;
        }
        Ok(out)
    }

    fn begin_batch(&mut self) -> Result<BatchMark, DeliverError> {
        self.fail_if_batch_open()?;
        self.batch.clear();
        let dir = rustix::fs::openat(&self.tmp_dir, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err(&self.target(), "open", &self.tmp, e.into()))?;
        self.batch_syncfs = syncfs_is_reliable(&dir);
        self.batch_dir = Some(dir);
        self.synced = true;
        let prefix = Self::new_prefix();
        self.batch_prefix = Some(prefix.clone());
        Ok(BatchMark {
            mbox_length: None,
            tmp_prefix: Some(prefix),
        })
    }

    fn begin_message(&mut self, meta: &MessageMeta) -> Result<(), DeliverError> {
        if self.current.is_some() {
            self.abort_message();
        }
        let name = self.next_name();
        let path = self.tmp.join(&name);
        let fd = rustix::fs::openat(
            &self.tmp_dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| io_err(&self.target(), "create", &path, e.into()))?;
        self.synced = false;
        self.current = Some(Current {
            name,
            path,
            writer: BufWriter::with_capacity(BUF_SIZE, File::from(fd)),
            hasher: Sha256::new(),
            size: 0,
        });
        if let Some(h) = &meta.received_header {
            self.write(h)?;
        }
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<(), DeliverError> {
        let target = self.target();
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| DeliverError::Other(format!("{target}: write without begin_message")))?;
        match cur.writer.write_all(chunk) {
            Ok(()) => {
                cur.hasher.update(chunk);
                cur.size += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                let err = io_err(&target, "write", &cur.path, e);
                self.abort_message();
                Err(err)
            }
        }
    }

    fn end_message(&mut self) -> Result<StoredMessage, DeliverError> {
        let target = self.target();
        let cur = self.current.take().ok_or_else(|| {
            DeliverError::Other(format!("{target}: end_message without begin_message"))
        })?;
        let Current {
            name,
            path,
            writer,
            hasher,
            size,
        } = cur;
        let file = match writer.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let err = io_err(&target, "write", &path, e.into_error());
                let _ = self.remove_tmp(&name);
                return Err(err);
            }
        };
        let mut entry = Entry {
            name: name.clone(),
            file: Some(file),
            needs_sync: true,
            published: false,
        };
        let unsynced = self.batch.iter().filter(|e| e.needs_sync).count();
        if self.batch_syncfs && unsynced >= SYNCFS_MIN_FILES {
            // The batch now ends in one syncfs, which reports writeback
            // errors through the `tmp/` descriptor opened at begin_batch:
            // no need to hold (or fsync) this file.
            entry.file = None;
        } else if unsynced >= MAX_OPEN_FILES
            && let Some(f) = entry.file.take()
        {
            if let Err(e) = f.sync_all() {
                let _ = self.remove_tmp(&name);
                return Err(io_err(&target, "fsync", &path, e));
            }
            entry.needs_sync = false;
        }
        self.batch.push(entry);
        Ok(StoredMessage {
            location: Location::Maildir { name },
            size,
            sha256: hasher.finalize().into(),
        })
    }

    fn abort_message(&mut self) {
        if let Some(cur) = self.current.take() {
            drop(cur.writer);
            if let Err(e) = self.remove_tmp(&cur.name) {
                tracing::warn!("{e}");
            }
        }
    }

    fn sync_batch(&mut self) -> Result<(), DeliverError> {
        if self.current.is_some() {
            return Err(DeliverError::Other(format!(
                "{}: sync_batch with a message still open",
                self.target()
            )));
        }
        self.sync_files()?;
        self.synced = true;
        Ok(())
    }

    fn publish_batch(&mut self) -> Result<(), DeliverError> {
        if !self.synced {
            // Never make a message visible before it is durable.
            self.sync_batch()?;
        }
        let mut first_err = None;
        let mut linked = false;
        for i in 0..self.batch.len() {
            if self.batch[i].published {
                continue;
            }
            match self.link_into_new(&self.batch[i].name) {
                Ok(()) => {
                    self.batch[i].published = true;
                    linked = true;
                }
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        // Even after a failure, make the links already done durable.
        if linked {
            rustix::fs::fsync(&self.new_dir)
                .map_err(|e| io_err(&self.target(), "fsync directory", &self.new, e.into()))?;
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.batch.clear();
        self.batch_dir = None;
        self.batch_prefix = None;
        Ok(())
    }

    fn abort_batch(&mut self) -> Result<(), DeliverError> {
        self.abort_message();
        let mut first_err = None;
        for e in std::mem::take(&mut self.batch) {
            if e.published {
                continue;
            }
            drop(e.file);
            if let Err(err) = self.remove_tmp(&e.name) {
                first_err.get_or_insert(err);
            }
        }
        self.batch_dir = None;
        self.batch_prefix = None;
        self.batch_syncfs = false;
        self.synced = true;
        first_err.map_or(Ok(()), Err)
    }
}

/// A name from the journal must be one plain file name.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// `PREFIX` `Q` digits `.` host: a file name this batch gave out.
fn is_batch_name(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('Q')) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with('.') && rest.len() > digits + 1
}

/// fstat of an opened directory, judged like any object popsync trusts.
fn check_dir(
    target: &str,
    what: &'static str,
    path: &Path,
    fd: &OwnedFd,
) -> Result<(), DeliverError> {
    let file = File::from(
        fd.try_clone()
            .map_err(|e| io_err(target, "stat", path, e))?,
    );
    let meta = file
        .metadata()
        .map_err(|e| io_err(target, "stat", path, e))?;
    ownership::check_object(what, path, &meta)?;
    Ok(())
}

/// Opens `dir/name` for reading, never through a symlink.
fn open_file_at(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn is_regular_at(dir: &OwnedFd, name: &str) -> io::Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        ),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The entry names of an opened directory (without `.` and `..`).
fn list_names(dir: &OwnedFd) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let bytes = ent.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if let Some(name) = OsStr::from_bytes(bytes).to_str() {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Maps each wanted base name to the `cur/` entries for it (`NAME`, `NAME:2,FLAGS`).
fn scan_cur_at(cur: &OwnedFd, wanted: &HashSet<&str>) -> io::Result<HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for fname in list_names(cur)? {
        let base = fname.split_once(':').map_or(fname.as_str(), |(b, _)| b);
        if wanted.contains(base) {
            out.entry(base.to_string()).or_default().push(fname.clone());
        }
    }
    Ok(out)
}

/// Maps each wanted base name to the `cur/` entries for it (`NAME`, `NAME:2,FLAGS`).
fn scan_cur(cur: &Path, wanted: &HashSet<&str>) -> io::Result<HashMap<String, Vec<PathBuf>>> {
    let mut out: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for ent in fs::read_dir(cur)? {
        let ent = ent?;
        let fname = ent.file_name();
        let Some(fname) = fname.to_str() else {
            continue;
        };
        let base = fname.split_once(':').map_or(fname, |(b, _)| b);
        if wanted.contains(base) {
            out.entry(base.to_string()).or_default().push(ent.path());
        }
    }
    Ok(out)
}

/// True if `dir/name` (never followed if a symlink) has exactly the size
/// and SHA-256 recorded.
fn file_matches_at(dir: &OwnedFd, name: &str, msg: &StoredMessage) -> io::Result<bool> {
    let mut f = open_file_at(dir, name)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() != msg.size {
        return Ok(false);
    }
    let (total, sha) = sha256_stream(&mut f)?;
    Ok(total == msg.size && sha == msg.sha256)
}

/// Length and SHA-256 of everything `r` yields, read in 64 KiB pieces.
pub fn sha256_stream(r: &mut impl Read) -> io::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, h.finalize().into()))
}

/// Where each of `names` is now under `root`, in one pass over `new/` and
/// `cur/` (a mail reader moves messages to `cur/` and appends `:2,FLAGS`).
/// Names not found are absent from the map.
pub fn locate(root: &Path, names: &HashSet<&str>) -> io::Result<HashMap<String, PathBuf>> {
    let mut out: HashMap<String, PathBuf> = HashMap::new();
    for ent in fs::read_dir(root.join("new"))? {
        let ent = ent?;
        if let Some(name) = ent.file_name().to_str()
            && names.contains(name)
        {
            out.insert(name.to_string(), ent.path());
        }
    }
    for (name, paths) in scan_cur(&root.join("cur"), names)? {
        if let Some(p) = paths.into_iter().next() {
            out.entry(name).or_insert(p);
        }
    }
    Ok(out)
}

/// Host part of unique names: `/` and `:` are escaped as the spec says.
fn sanitized_hostname() -> String {
    let h = gethostname::gethostname();
    let h = h.to_string_lossy();
    let h = if h.is_empty() { "localhost".into() } else { h };
    h.replace('/', "\\057").replace(':', "\\072")
}

/// Filesystems where link(2) is not available (vfat, some FUSE mounts).
fn link_unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(
        e,
        Errno::PERM | Errno::NOSYS | Errno::OPNOTSUPP | Errno::MLINK
    )
}

/// rename(2) of `from_dir/name` to `to_dir/name` that fails with EEXIST
/// instead of replacing the target.
fn rename_noreplace_at(from_dir: &OwnedFd, to_dir: &OwnedFd, name: &str) -> io::Result<()> {
    use rustix::io::Errno;
    match rustix::fs::renameat_with(
        from_dir,
        name,
        to_dir,
        name,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => return Ok(()),
        Err(Errno::INVAL | Errno::NOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    // No atomic no-replace rename here: check first (names are unique, so
    // the window only matters against a misbehaving writer).
    if rustix::fs::statat(to_dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    rustix::fs::renameat(from_dir, name, to_dir, name).map_err(Into::into)
}

/// Starts writeback of a file's dirty pages without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // rustix has no sync_file_range wrapper; this stays unsafe.
    // SAFETY: a valid descriptor we own; the call only reads its arguments.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Linux >= 5.8; the kernel does not change under us, so ask once.
#[cfg(target_os = "linux")]
fn kernel_reports_syncfs_errors() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let uts = rustix::system::uname();
        let rel = uts.release().to_string_lossy();
        let mut parts = rel.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (major, minor) >= (5, 8)
    })
}

/// `syncfs` flushes a whole filesystem once, but it only reports writeback
/// errors since Linux 5.8, and only filesystems with a real `sync_fs` make
/// the data durable; elsewhere we fsync file by file.
fn syncfs_is_reliable(dir: &impl AsFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        if !kernel_reports_syncfs_errors() {
            return false;
        }
        let Ok(st) = rustix::fs::fstatfs(dir) else {
            return false;
        };
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        const BTRFS: i64 = 0x9123_683E;
        const F2FS: i64 = 0xF2F5_2010;
        #[allow(clippy::unnecessary_cast)]
        let magic = st.f_type as i64;
        matches!(magic, EXT4 | XFS | BTRFS | F2FS)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    fn deliver(md: &mut Maildir, msgs: &[&[u8]]) -> Vec<StoredMessage> {
        msgs.iter()
            .map(|m| {
                md.begin_message(&MessageMeta::default()).unwrap();
                for c in m.chunks(3) {
                    md.write(c).unwrap();
                }
                md.end_message().unwrap()
            })
            .collect()
    }

    fn name_of(s: &StoredMessage) -> String {
        match &s.location {
            Location::Maildir { name } => name.clone(),
            l => panic!("{l:?}"),
        }
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn batch_round_trip() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("Mail");
        let mut md = Maildir::open(&root).unwrap();
        for d in ["", "cur", "new", "tmp"] {
            let m = fs::metadata(root.join(d)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d}");
        }
        // 6 messages: the syncfs path on ext4/xfs, per-file fsync elsewhere.
        let msgs: Vec<Vec<u8>> = (0..6)
            .map(|i| [format!("Subject: {i}\n\nbody \0").as_bytes(), b"\xff\n"].concat())
            .collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let mark = md.begin_batch().unwrap();
        assert_eq!(mark.mbox_length, None);
        let prefix = mark.tmp_prefix.unwrap();
        md.begin_message(&MessageMeta {
            received_header: Some(b"Received: by popsync\n".to_vec()),
        })
        .unwrap();
        md.write(b"X: y\n\nhi\n").unwrap();
        let first = md.end_message().unwrap();
        assert_eq!(first.sha256, sha(b"Received: by popsync\nX: y\n\nhi\n"));
        let mut stored = vec![first];
        stored.extend(deliver(&mut md, &refs));
        md.sync_batch().unwrap();
        assert_eq!(count(&root.join("new")), 0, "invisible before publish");
        assert_eq!(count(&root.join("tmp")), 7);
        md.publish_batch().unwrap();
        assert_eq!(count(&root.join("tmp")), 0);
        assert_eq!(count(&root.join("new")), 7);
        let mut names = HashSet::new();
        for (s, m) in stored[1..].iter().zip(&msgs) {
            let name = name_of(s);
            assert!(names.insert(name.clone()));
            assert!(
                name.contains(&format!("P{}Q", std::process::id())),
                "{name}"
            );
            assert!(is_batch_name(&name, &prefix), "{name} {prefix}");
            let p = root.join("new").join(&name);
            assert_eq!(&fs::read(&p).unwrap(), m);
            assert_eq!(s.size, m.len() as u64);
            assert_eq!(s.sha256, sha(m));
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            assert_eq!(md.find(&name), Some(p));
        }
        // A small batch takes the per-file fsync path.
        md.begin_batch().unwrap();
        let s = deliver(&mut md, &[b"one\n"]);
        md.sync_batch().unwrap();
        md.publish_batch().unwrap();
        assert_eq!(
            fs::read(root.join("new").join(name_of(&s[0]))).unwrap(),
            b"one\n"
        );
    }

    #[test]
    fn abort_leaves_no_trace() {
        let td = tempfile::tempdir().unwrap();
        let mut md = Maildir::open(td.path()).unwrap();
        md.begin_batch().unwrap();
        deliver(&mut md, &[b"a\n", b"b\n"]);
        md.begin_message(&MessageMeta::default()).unwrap();
        md.write(b"half").unwrap();
        md.abort_message();
        md.begin_message(&MessageMeta::default()).unwrap();
        md.write(b"half again").unwrap();
        md.sync_batch().unwrap_err(); // a message is still open
        md.abort_batch().unwrap();
        for d in ["cur", "new", "tmp"] {
            assert_eq!(count(&td.path().join(d)), 0, "{d}");
        }
        // The target is usable again.
        md.begin_batch().unwrap();
        md.abort_batch().unwrap();
    }

    #[test]
    fn open_errors_name_the_path() {
        let td = tempfile::tempdir().unwrap();
        let file = td.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = Maildir::open(&file).err().unwrap().to_string();
        assert!(err.contains("plain"), "{err}");
        let ro = td.path().join("ro");
        Maildir::open(&ro).unwrap();
        fs::set_permissions(ro.join("new"), fs::Permissions::from_mode(0o500)).unwrap();
        let res = Maildir::open(&ro);
        fs::set_permissions(ro.join("new"), fs::Permissions::from_mode(0o700)).unwrap();
        if crate::ownership::euid() != 0 {
            let err = res.err().unwrap().to_string();
            assert!(err.contains("new"), "{err}");
        }
    }

    #[test]
    fn recover_cases() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let mut md = Maildir::open(root).unwrap();
        md.begin_batch().unwrap();
        let s = deliver(
            &mut md,
            &[b"published\n", b"moved\n", b"altered\n", b"moved2\n"],
        );
        md.sync_batch().unwrap();
        md.publish_batch().unwrap();
        // A reader moved two to cur/, one with flags, one without info.
        let n1 = name_of(&s[1]);
        fs::rename(
            root.join("new").join(&n1),
            root.join("cur").join(format!("{n1}:2,RS")),
        )
        .unwrap();
        let n3 = name_of(&s[3]);
        fs::rename(root.join("new").join(&n3), root.join("cur").join(&n3)).unwrap();
        fs::write(root.join("new").join(name_of(&s[2])), b"altered!\n").unwrap();

        // A batch interrupted before publish: one intact, one torn in tmp/,
        // one written but not yet journaled (crash before the intent rows).
        let mark = md.begin_batch().unwrap();
        let t = deliver(
            &mut md,
            &[b"intact in tmp\n", b"torn in tmp\n", b"unjournaled\n"],
        );
        md.sync_batch().unwrap();
        md.batch.clear(); // simulate the crash: forget the batch
        let torn = root.join("tmp").join(name_of(&t[1]));
        fs::write(&torn, b"torn").unwrap();
        let unjournaled = root.join("tmp").join(name_of(&t[2]));
        // Files popsync did not write stay, however old: never "stale".
        let old = root.join("tmp").join("old-junk");
        fs::write(&old, b"x").unwrap();
        let times = [rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            },
        }];
        rustix::fs::utimensat(rustix::fs::CWD, &old, &times[0], AtFlags::empty()).unwrap();
        fs::write(root.join("tmp").join("fresh"), b"x").unwrap();
        let t = t[..2].to_vec();

        let mut pending = s.clone();
        pending.extend(t.clone());
        pending.push(StoredMessage {
            location: Location::Maildir {
                name: "../escape".into(),
            },
            size: 0,
            sha256: sha(b""),
        });
        let r = md.recover(Some(mark), &pending).unwrap();
        assert_eq!(r, vec![true, true, false, true, true, false, false]);
        assert!(
            !unjournaled.exists(),
            "the batch's own unjournaled file is removed"
        );
        // Altered file is kept, never deleted.
        assert_eq!(
            fs::read(root.join("new").join(name_of(&s[2]))).unwrap(),
            b"altered!\n"
        );
        // The intact tmp file was published, the torn one removed.
        assert_eq!(
            fs::read(root.join("new").join(name_of(&t[0]))).unwrap(),
            b"intact in tmp\n"
        );
        assert!(!torn.exists());
        assert!(!root.join("tmp").join(name_of(&t[0])).exists());
        assert!(
            old.exists(),
            "a file popsync did not write is never removed"
        );
        assert!(root.join("tmp").join("fresh").exists());
        assert!(md.find(&n1).unwrap().ends_with(format!("{n1}:2,RS")));
        assert!(md.find("nope").is_none());
    }

    #[test]
    fn recover_after_interrupted_publish() {
        // link done, unlink of tmp/ lost: tmp/NAME is the same inode.
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let mut md = Maildir::open(root).unwrap();
        md.begin_batch().unwrap();
        let s = deliver(&mut md, &[b"m\n"]);
        md.sync_batch().unwrap();
        let n = name_of(&s[0]);
        fs::hard_link(root.join("tmp").join(&n), root.join("new").join(&n)).unwrap();
        md.batch.clear();
        assert_eq!(md.recover(None, &s).unwrap(), vec![true]);
        assert!(!root.join("tmp").join(&n).exists());
        assert_eq!(fs::read(root.join("new").join(&n)).unwrap(), b"m\n");
    }

    #[test]
    fn publish_never_overwrites() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let mut md = Maildir::open(root).unwrap();
        md.begin_batch().unwrap();
        let s = deliver(&mut md, &[b"mine\n"]);
        md.sync_batch().unwrap();
        let n = name_of(&s[0]);
        fs::write(root.join("new").join(&n), b"someone else\n").unwrap();
        let err = md.publish_batch().unwrap_err().to_string();
        assert!(err.contains("link into new/"), "{err}");
        assert_eq!(
            fs::read(root.join("new").join(&n)).unwrap(),
            b"someone else\n"
        );
        md.abort_batch().unwrap();
        assert_eq!(
            fs::read(root.join("new").join(&n)).unwrap(),
            b"someone else\n"
        );
    }
}
