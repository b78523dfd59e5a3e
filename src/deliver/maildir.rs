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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest, Sha256};

use super::util::io_err;
use super::{
    Batch, BatchToken, DeliverError, DurableBatch, Location, Message, MessageMeta, StoredMessage,
    Target,
};
use crate::ownership::{self, UnsafePath};

/// The kind of this target's batch tokens: `maildir:PREFIX`.
const TOKEN_KIND: &str = "maildir";

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
    /// Shared with the batches: a batch outlives its borrow of the target,
    /// so it can be closed on another thread while the next is written.
    dirs: Arc<Dirs>,
}

/// The maildir's paths and directory descriptors.
pub struct Dirs {
    root: PathBuf,
    tmp: PathBuf,
    new: PathBuf,
    cur: PathBuf,
    tmp_dir: OwnedFd,
    new_dir: OwnedFd,
    cur_dir: OwnedFd,
    host: String,
    /// `SECS.MUSECSPPID`, the first part of every file name this target
    /// (one run) writes: journaled as each batch's token, so recovery can
    /// tell them from anything else in `tmp/`. One for all of a run's
    /// batches, so a batch begun while the one before it is still closing
    /// journals the same mark.
    prefix: String,
}

impl std::ops::Deref for Maildir {
    type Target = Dirs;
    fn deref(&self) -> &Dirs {
        &self.dirs
    }
}

/// A batch in progress. Its files are named `PREFIX<n>.<host>`.
struct MaildirBatch {
    md: Arc<Dirs>,
    /// `tmp/` opened at the batch's start: `syncfs` reports writeback errors
    /// of the filesystem since this descriptor was opened (Linux >= 5.8).
    dir: OwnedFd,
    /// This batch's filesystem reports writeback errors to `syncfs`.
    syncfs: bool,
    files: TmpFiles,
}

/// The finished, unpublished messages of a batch: removed from `tmp/` when
/// dropped, unless `publish` took them.
struct TmpFiles {
    md: Arc<Dirs>,
    entries: Vec<Entry>,
}

struct Entry {
    name: String,
    /// Open until the file is durable, so fsync sees any writeback error;
    /// closed early once the batch is bound to end with one `syncfs`.
    file: Option<File>,
    needs_sync: bool,
}

/// A message being written into `tmp/`.
struct MaildirMessage<'b> {
    batch: &'b mut MaildirBatch,
    tmp: TmpFile,
    path: PathBuf,
    writer: BufWriter<File>,
    hasher: Sha256,
    size: u64,
}

/// The `tmp/` file of an unfinished message: removed when dropped, unless
/// kept.
struct TmpFile {
    md: Arc<Dirs>,
    /// Empty once kept.
    name: String,
}

impl TmpFile {
    fn keep(mut self) -> String {
        std::mem::take(&mut self.name)
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.name.is_empty()
            && let Err(e) = self.md.remove_tmp(&self.name)
        {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for TmpFiles {
    fn drop(&mut self) {
        for entry in self.entries.drain(..) {
            drop(entry.file);
            if let Err(e) = self.md.remove_tmp(&entry.name) {
                tracing::warn!("{e}");
            }
        }
    }
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
            dirs: Arc::new(Dirs {
                root: path.to_path_buf(),
                tmp: path.join("tmp"),
                new: path.join("new"),
                cur: path.join("cur"),
                tmp_dir,
                new_dir,
                cur_dir,
                host: sanitized_hostname(),
                prefix: Dirs::new_prefix(),
            }),
        })
    }
}

impl Dirs {
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
        format!("maildir {}", self.root.display())
    }

    /// See [`Dirs::prefix`].
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
        self.target()
    }

    fn recover(
        &mut self,
        token: Option<&BatchToken>,
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
        if let Some(prefix) = token.and_then(|t| t.value(TOKEN_KIND))
            && valid_name(prefix)
        {
            self.clean_batch_tmp(prefix, &names)?;
        }
        Ok(out)
    }

    fn batch(&mut self) -> Result<Box<dyn Batch<'_> + '_>, DeliverError> {
        let dir = rustix::fs::openat(&self.tmp_dir, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err(&self.target(), "open", &self.tmp, e.into()))?;
        Ok(Box::new(MaildirBatch {
            md: Arc::clone(&self.dirs),
            syncfs: syncfs_is_reliable(&dir),
            dir,
            files: TmpFiles {
                md: Arc::clone(&self.dirs),
                entries: Vec::new(),
            },
        }))
    }
}

impl<'a> Batch<'a> for MaildirBatch {
    fn token(&self) -> Option<BatchToken> {
        Some(BatchToken::new(TOKEN_KIND, &self.md.prefix))
    }

    fn message(&mut self, meta: &MessageMeta) -> Result<Box<dyn Message + '_>, DeliverError> {
        let md = Arc::clone(&self.md);
        let n = DELIVERY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}Q{n}.{}", md.prefix, md.host);
        let path = md.tmp.join(&name);
        let fd = rustix::fs::openat(
            &md.tmp_dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| io_err(&md.target(), "create", &path, e.into()))?;
        let mut message = MaildirMessage {
            batch: self,
            tmp: TmpFile { md, name },
            path,
            writer: BufWriter::with_capacity(BUF_SIZE, File::from(fd)),
            hasher: Sha256::new(),
            size: 0,
        };
        if let Some(h) = &meta.received_header {
            message.write_all(h).map_err(DeliverError::from_write)?;
        }
        Ok(Box::new(message))
    }

    fn sync(mut self: Box<Self>) -> Result<Box<dyn DurableBatch + 'a>, DeliverError> {
        self.sync_files()?;
        Ok(self)
    }

    fn detach(self: Box<Self>) -> Result<Box<dyn Batch<'static> + Send>, Box<dyn Batch<'a> + 'a>> {
        Ok(self)
    }
}

impl DurableBatch for MaildirBatch {
    fn publish(mut self: Box<Self>) -> Result<(), DeliverError> {
        // Journaled now: what is not published stays for recovery.
        let entries = std::mem::take(&mut self.files.entries);
        let md = &*self.md;
        let mut first_err = None;
        let mut linked = false;
        for entry in &entries {
            match md.link_into_new(&entry.name) {
                Ok(()) => linked = true,
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        // Even after a failure, make the links already done durable.
        if linked {
            rustix::fs::fsync(&md.new_dir)
                .map_err(|e| io_err(&md.target(), "fsync directory", &md.new, e.into()))?;
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl MaildirBatch {
    /// Makes every unsynced file of the batch durable.
    fn sync_files(&mut self) -> Result<(), DeliverError> {
        let md = &*self.md;
        let target = md.target();
        let entries = &mut self.files.entries;
        let unsynced: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].needs_sync)
            .collect();
        if unsynced.is_empty() {
            return Ok(());
        }
        if unsynced.len() > SYNCFS_MIN_FILES && self.syncfs {
            // One flush of the filesystem instead of one journal commit
            // per file; errors since the batch began are reported here.
            rustix::fs::syncfs(&self.dir)
                .map_err(|e| io_err(&target, "syncfs", &md.tmp, e.into()))?;
            for &i in &unsynced {
                entries[i].file = None;
                entries[i].needs_sync = false;
            }
            return Ok(());
        }
        // Start writeback of all files first so the fsyncs below overlap.
        #[cfg(target_os = "linux")]
        for &i in &unsynced {
            if let Some(f) = &entries[i].file {
                start_writeback(f);
            }
        }
        for &i in &unsynced {
            let path = md.tmp.join(&entries[i].name);
            // Files are closed early only when the batch ends in a syncfs;
            // should one be closed anyway, reopening still flushes its pages.
            let f = match entries[i].file.take() {
                Some(f) => f,
                None => open_file_at(&md.tmp_dir, &entries[i].name)
                    .map_err(|e| io_err(&target, "open", &path, e))?,
            };
            f.sync_all()
                .map_err(|e| io_err(&target, "fsync", &path, e))?;
            entries[i].needs_sync = false;
        }
        Ok(())
    }
}

impl Write for MaildirMessage<'_> {
    fn write(&mut self, chunk: &[u8]) -> io::Result<usize> {
        self.writer
            .write_all(chunk)
            .map_err(|e| io_err(&self.batch.md.target(), "write", &self.path, e).into_io())?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(chunk.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer
            .flush()
            .map_err(|e| io_err(&self.batch.md.target(), "write", &self.path, e).into_io())
    }
}

impl Message for MaildirMessage<'_> {
    fn finish(self: Box<Self>) -> Result<StoredMessage, DeliverError> {
        // On an early return `tmp` is dropped: the file is removed.
        let MaildirMessage {
            batch,
            tmp,
            path,
            writer,
            hasher,
            size,
        } = *self;
        let target = batch.md.target();
        let file = writer
            .into_inner()
            .map_err(|e| io_err(&target, "write", &path, e.into_error()))?;
        let mut entry = Entry {
            name: String::new(),
            file: Some(file),
            needs_sync: true,
        };
        let unsynced = batch.files.entries.iter().filter(|e| e.needs_sync).count();
        if batch.syncfs && unsynced >= SYNCFS_MIN_FILES {
            // The batch now ends in one syncfs, which reports writeback
            // errors through the `tmp/` descriptor opened at its start:
            // no need to hold (or fsync) this file.
            entry.file = None;
        } else if unsynced >= MAX_OPEN_FILES
            && let Some(f) = entry.file.take()
        {
            f.sync_all()
                .map_err(|e| io_err(&target, "fsync", &path, e))?;
            entry.needs_sync = false;
        }
        entry.name = tmp.keep();
        let name = entry.name.clone();
        batch.files.entries.push(entry);
        Ok(StoredMessage {
            location: Location::Maildir { name },
            size,
            sha256: hasher.finalize().into(),
        })
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

    fn deliver(batch: &mut dyn Batch<'_>, msgs: &[&[u8]]) -> Vec<StoredMessage> {
        msgs.iter()
            .map(|m| {
                let mut message = batch.message(&MessageMeta::default()).unwrap();
                for c in m.chunks(3) {
                    message.write_all(c).unwrap();
                }
                message.finish().unwrap()
            })
            .collect()
    }

    /// A crash: the batch's Drop never runs.
    fn crash<T>(batch: T) {
        std::mem::forget(batch);
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
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
        let mut batch = md.batch().unwrap();
        let token = batch.token().unwrap();
        let prefix = token.value(TOKEN_KIND).unwrap().to_string();
        let mut message = batch
            .message(&MessageMeta {
                received_header: Some(b"Received: by popsync\n".to_vec()),
            })
            .unwrap();
        message.write_all(b"X: y\n\nhi\n").unwrap();
        let first = message.finish().unwrap();
        assert_eq!(first.sha256, sha(b"Received: by popsync\nX: y\n\nhi\n"));
        let mut stored = vec![first];
        stored.extend(deliver(batch.as_mut(), &refs));
        let batch = batch.sync().unwrap();
        assert_eq!(count(&root.join("new")), 0, "invisible before publish");
        assert_eq!(count(&root.join("tmp")), 7);
        batch.publish().unwrap();
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
        let mut batch = md.batch().unwrap();
        let s = deliver(batch.as_mut(), &[b"one\n"]);
        batch.sync().unwrap().publish().unwrap();
        assert_eq!(
            fs::read(root.join("new").join(name_of(&s[0]))).unwrap(),
            b"one\n"
        );
    }

    #[test]
    fn a_dropped_message_leaves_no_tmp_file() {
        let td = tempfile::tempdir().unwrap();
        let mut md = Maildir::open(td.path()).unwrap();
        let mut batch = md.batch().unwrap();
        let kept = deliver(batch.as_mut(), &[b"a\n"]);
        let mut message = batch.message(&MessageMeta::default()).unwrap();
        message.write_all(&vec![b'x'; 3 * BUF_SIZE]).unwrap(); // partly on disk
        assert_eq!(count(&td.path().join("tmp")), 2);
        drop(message);
        assert_eq!(names_in(&td.path().join("tmp")), [name_of(&kept[0])]);
        // The batch goes on without it.
        let more = deliver(batch.as_mut(), &[b"b\n"]);
        batch.sync().unwrap().publish().unwrap();
        let mut want = vec![name_of(&kept[0]), name_of(&more[0])];
        want.sort();
        assert_eq!(names_in(&td.path().join("new")), want);
        assert_eq!(count(&td.path().join("tmp")), 0);
    }

    #[test]
    fn a_dropped_batch_removes_its_files_and_nothing_else() {
        let td = tempfile::tempdir().unwrap();
        let mut md = Maildir::open(td.path()).unwrap();
        let tmp = td.path().join("tmp");
        // Another deliverer's file in tmp/, and one named like ours.
        fs::write(tmp.join("1.M1P1Q1.other"), b"not ours").unwrap();
        let mut batch = md.batch().unwrap();
        deliver(batch.as_mut(), &[b"a\n", b"b\n"]);
        let mut open = batch.message(&MessageMeta::default()).unwrap();
        open.write_all(b"half").unwrap();
        drop(open);
        deliver(batch.as_mut(), &[b"c\n"]);
        assert_eq!(count(&tmp), 4);
        drop(batch);
        assert_eq!(names_in(&tmp), ["1.M1P1Q1.other"]);
        for d in ["cur", "new"] {
            assert_eq!(count(&td.path().join(d)), 0, "{d}");
        }
        // A durable batch dropped unpublished is undone the same way.
        let mut batch = md.batch().unwrap();
        deliver(batch.as_mut(), &[b"d\n"]);
        drop(batch.sync().unwrap());
        assert_eq!(names_in(&tmp), ["1.M1P1Q1.other"]);
        assert_eq!(count(&td.path().join("new")), 0);
        // The target is usable again.
        let mut batch = md.batch().unwrap();
        deliver(batch.as_mut(), &[b"e\n"]);
        batch.sync().unwrap().publish().unwrap();
        assert_eq!(count(&td.path().join("new")), 1);
    }

    #[test]
    fn the_token_names_the_prefix_and_a_foreign_token_is_ignored() {
        let td = tempfile::tempdir().unwrap();
        let mut md = Maildir::open(td.path()).unwrap();
        let batch = md.batch().unwrap();
        let token = batch.token().unwrap();
        assert!(token.as_str().starts_with("maildir:"), "{token:?}");
        crash(batch);
        fs::write(td.path().join("tmp/x"), b"x").unwrap();
        let foreign = BatchToken::from_journal("mbox:12".into());
        assert_eq!(md.recover(Some(&foreign), &[]).unwrap(), Vec::<bool>::new());
        let escape = BatchToken::from_journal("maildir:../x".into());
        md.recover(Some(&escape), &[]).unwrap();
        assert!(td.path().join("tmp/x").exists());
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

    /// The batches of one run share their token, and a batch detached from
    /// the target is made durable and published on another thread while
    /// the next one is written. A crash with the first journaled and the
    /// second in tmp/ under the same token: recovery keeps the first and
    /// removes only the second's files.
    #[test]
    fn a_detached_batch_closes_on_another_thread_while_the_next_is_written() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let mut md = Maildir::open(root).unwrap();
        let mut first = md.batch().unwrap();
        let token = first.token();
        let s = deliver(first.as_mut(), &[b"first\n"]);
        let Ok(first) = first.detach() else {
            panic!("a maildir batch detaches");
        };
        let mut second = md.batch().unwrap();
        // Durable (then, in the engine, journaled) on its own thread; the
        // crash comes before it is published.
        let closing = std::thread::spawn(move || crash(first.sync().unwrap()));
        assert_eq!(second.token(), token, "one token for the run's batches");
        let t = deliver(second.as_mut(), &[b"second\n"]);
        closing.join().unwrap();
        crash(second);
        drop(md);
        let mut md = Maildir::open(root).unwrap();
        let intact = md.recover(token.as_ref(), &s).unwrap();
        assert_eq!(intact, [true]);
        assert!(root.join("new").join(name_of(&s[0])).exists());
        assert!(!root.join("tmp").join(name_of(&t[0])).exists());
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn recover_cases() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let mut md = Maildir::open(root).unwrap();
        let mut batch = md.batch().unwrap();
        let s = deliver(
            batch.as_mut(),
            &[b"published\n", b"moved\n", b"altered\n", b"moved2\n"],
        );
        batch.sync().unwrap().publish().unwrap();
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
        let mut batch = md.batch().unwrap();
        let token = batch.token();
        let t = deliver(
            batch.as_mut(),
            &[b"intact in tmp\n", b"torn in tmp\n", b"unjournaled\n"],
        );
        crash(batch.sync().unwrap());
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
        let r = md.recover(token.as_ref(), &pending).unwrap();
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
        let mut batch = md.batch().unwrap();
        let s = deliver(batch.as_mut(), &[b"m\n"]);
        crash(batch.sync().unwrap());
        let n = name_of(&s[0]);
        fs::hard_link(root.join("tmp").join(&n), root.join("new").join(&n)).unwrap();
        assert_eq!(md.recover(None, &s).unwrap(), vec![true]);
        assert!(!root.join("tmp").join(&n).exists());
        assert_eq!(fs::read(root.join("new").join(&n)).unwrap(), b"m\n");
    }

    #[test]
    fn publish_never_overwrites() {
        let td = tempfile::tempdir().unwrap();
        let root = td.path();
        let mut md = Maildir::open(root).unwrap();
        let mut batch = md.batch().unwrap();
        let s = deliver(batch.as_mut(), &[b"mine\n"]);
        let batch = batch.sync().unwrap();
        let n = name_of(&s[0]);
        fs::write(root.join("new").join(&n), b"someone else\n").unwrap();
        let err = batch.publish().unwrap_err().to_string();
        assert!(err.contains("link into new/"), "{err}");
        // Journaled by then: ours stays in tmp/ for recovery to judge.
        assert_eq!(fs::read(root.join("tmp").join(&n)).unwrap(), b"mine\n");
        assert_eq!(
            fs::read(root.join("new").join(&n)).unwrap(),
            b"someone else\n"
        );
    }
}
