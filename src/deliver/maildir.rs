//! Maildir delivery (cr.yp.to/proto/maildir.html), written to the spec:
//! write into `tmp/`, make the batch durable, link into `new/`, fsync `new/`.
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::util::{cvt_retry, io_err};
use super::{BatchMark, DeliverError, Location, MessageMeta, StoredMessage, Target};

/// Per-process counter for the `Q<n>` part of unique names.
static DELIVERY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Files in `tmp/` untouched for this long may be removed (maildir spec).
const TMP_MAX_AGE: Duration = Duration::from_secs(36 * 3600);

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
    host: String,
    /// `tmp/` opened at `begin_batch`: `syncfs` reports writeback errors of
    /// the filesystem since this descriptor was opened (Linux >= 5.8).
    batch_dir: Option<File>,
    /// This batch's filesystem reports writeback errors to `syncfs`.
    batch_syncfs: bool,
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

impl Maildir {
    /// Opens (creating if needed, mode 0700) a maildir and its `cur/ new/ tmp/`.
    pub fn open(path: &Path) -> Result<Maildir, DeliverError> {
        let target = format!("maildir {}", path.display());
        let mut created = false;
        for dir in [
            path.to_path_buf(),
            path.join("cur"),
            path.join("new"),
            path.join("tmp"),
        ] {
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io_err(
                        &target,
                        "open directory",
                        &dir,
                        io::Error::from_raw_os_error(libc::ENOTDIR),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dir)
                        .map_err(|e| io_err(&target, "create directory", &dir, e))?;
                    created = true;
                }
                Err(e) => return Err(io_err(&target, "stat", &dir, e)),
            }
        }
        for dir in [path.join("new"), path.join("tmp")] {
            check_writable(&dir).map_err(|e| io_err(&target, "check writable", &dir, e))?;
        }
        if created {
            // Make the new subdirectories themselves durable before mail goes in.
            fsync_dir(path).map_err(|e| io_err(&target, "fsync directory", path, e))?;
        }
        Ok(Maildir {
            root: path.to_path_buf(),
            tmp: path.join("tmp"),
            new: path.join("new"),
            cur: path.join("cur"),
            host: sanitized_hostname(),
            batch_dir: None,
            batch_syncfs: false,
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
        let p = self.new.join(name);
        if p.is_file() {
            return Some(p);
        }
        let mut wanted = HashSet::new();
        wanted.insert(name);
        let found = scan_cur(&self.cur, &wanted).ok()?;
        found.get(name).and_then(|v| v.first().cloned())
    }

    fn target(&self) -> String {
        self.describe()
    }

    fn next_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = DELIVERY_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            self.host
        )
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
            cvt_retry(|| unsafe { libc::syncfs(dir.as_raw_fd()) })
                .map_err(|e| io_err(&target, "syncfs", &self.tmp, e))?;
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
                unsafe {
                    libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                }
            }
        }
        for &i in &unsynced {
            let path = self.tmp.join(&self.batch[i].name);
            // Files are closed early only when the batch ends in a syncfs;
            // should one be closed anyway, reopening still flushes its pages.
            let f = match self.batch[i].file.take() {
                Some(f) => f,
                None => File::open(&path).map_err(|e| io_err(&target, "open", &path, e))?,
            };
            f.sync_all()
                .map_err(|e| io_err(&target, "fsync", &path, e))?;
            self.batch[i].needs_sync = false;
        }
        Ok(())
    }

    fn remove_tmp(&self, name: &str) -> Result<(), DeliverError> {
        let p = self.tmp.join(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.target(), "remove", &p, e)),
        }
    }

    /// Links `tmp/name` to `new/name` without ever replacing an existing file.
    fn link_into_new(&self, name: &str) -> Result<(), DeliverError> {
        let from = self.tmp.join(name);
        let to = self.new.join(name);
        match fs::hard_link(&from, &to) {
            Ok(()) => {}
            Err(e) if link_unsupported(&e) => rename_noreplace(&from, &to)
                .map_err(|e| io_err(&self.target(), "rename into new/", &to, e))?,
            Err(e) => return Err(io_err(&self.target(), "link into new/", &to, e)),
        }
        // The message is visible now; a leftover tmp link is harmless (same inode).
        if let Err(e) = self.remove_tmp(name) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Removes files in `tmp/` untouched for 36 hours, except `keep`.
    fn clean_tmp(&self, keep: &HashSet<&str>) {
        let Ok(rd) = fs::read_dir(&self.tmp) else {
            return;
        };
        let now = SystemTime::now();
        for ent in rd.flatten() {
            let fname = ent.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if keep.contains(fname) {
                continue;
            }
            let Ok(m) = ent.metadata() else { continue };
            if !m.is_file() {
                continue;
            }
            // Newest of atime/mtime: relatime/noatime can leave atime stale.
            let newest = m.atime().max(m.mtime());
            let age = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64 - newest;
            if age > TMP_MAX_AGE.as_secs() as i64 {
                let p = ent.path();
                match fs::remove_file(&p) {
                    Ok(()) => tracing::info!("{}: removed stale {}", self.target(), p.display()),
                    Err(e) => {
                        tracing::warn!("{}: remove stale {}: {e}", self.target(), p.display())
                    }
                }
            }
        }
    }
}

impl Target for Maildir {
    fn describe(&self) -> String {
        format!("maildir {}", self.root.display())
    }

    fn recover(
        &mut self,
        _mark: Option<BatchMark>,
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
            scan_cur(&self.cur, &names).map_err(|e| io_err(&target, "read", &self.cur, e))?
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
            let mut candidates = vec![self.new.join(name)];
            if let Some(v) = in_cur.get(name.as_str()) {
                candidates.extend(v.iter().cloned());
            }
            let mut intact: Option<PathBuf> = None;
            let mut seen_elsewhere = false;
            for c in &candidates {
                match file_matches(c, msg) {
                    Ok(true) => {
                        intact = Some(c.clone());
                        break;
                    }
                    Ok(false) => {
                        seen_elsewhere = true;
                        tracing::warn!(
                            "{target}: {} differs from what was delivered; keeping it, not counting it",
                            c.display()
                        );
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&target, "verify", c, e)),
                }
            }
            let tmp_path = self.tmp.join(name);
            let tmp_meta = match fs::symlink_metadata(&tmp_path) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(&target, "stat", &tmp_path, e)),
            };
            if let Some(found) = intact {
                // A tmp link left by an interrupted publish: drop it only if
                // it is the very same inode.
                if let (Some(tm), Ok(fm)) = (&tmp_meta, fs::metadata(&found))
                    && tm.dev() == fm.dev()
                    && tm.ino() == fm.ino()
                {
                    self.remove_tmp(name)?;
                }
                out.push(true);
                continue;
            }
            if tmp_meta.is_none() || seen_elsewhere {
                out.push(false);
                continue;
            }
            // Only in tmp/: it was synced before being journaled. If it is
            // intact, finishing the publication loses nothing; a re-download
            // may not be possible (servers that hide already-fetched mail).
            match file_matches(&tmp_path, msg) {
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
                Err(e) => return Err(io_err(&target, "verify", &tmp_path, e)),
            }
        }
        if published_any {
            fsync_dir(&self.new).map_err(|e| io_err(&target, "fsync directory", &self.new, e))?;
        }
        self.clean_tmp(&names);
        Ok(out)
    }

    fn begin_batch(&mut self) -> Result<BatchMark, DeliverError> {
        self.fail_if_batch_open()?;
        self.batch.clear();
        let dir =
            File::open(&self.tmp).map_err(|e| io_err(&self.target(), "open", &self.tmp, e))?;
        self.batch_syncfs = syncfs_is_reliable(&dir);
        self.batch_dir = Some(dir);
        self.synced = true;
        Ok(BatchMark { mbox_length: None })
    }

    fn begin_message(&mut self, meta: &MessageMeta) -> Result<(), DeliverError> {
        if self.current.is_some() {
            self.abort_message();
        }
        let name = self.next_name();
        let path = self.tmp.join(&name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&self.target(), "create", &path, e))?;
        self.synced = false;
        self.current = Some(Current {
            name,
            path,
            writer: BufWriter::with_capacity(BUF_SIZE, file),
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
                let _ = fs::remove_file(&path);
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
                let _ = fs::remove_file(&path);
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
            if let Err(e) = fs::remove_file(&cur.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!("{}: remove {}: {e}", self.target(), cur.path.display());
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
            fsync_dir(&self.new)
                .map_err(|e| io_err(&self.target(), "fsync directory", &self.new, e))?;
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.batch.clear();
        self.batch_dir = None;
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
        self.batch_syncfs = false;
        self.synced = true;
        first_err.map_or(Ok(()), Err)
    }
}

/// A name from the journal must be one plain file name.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
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

/// True if the file has exactly the size and SHA-256 recorded.
fn file_matches(path: &Path, msg: &StoredMessage) -> io::Result<bool> {
    let mut f = File::open(path)?;
    if f.metadata()?.len() != msg.size {
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

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn check_writable(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    cvt_retry(|| unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) }).map(|_| ())
}

/// Host part of unique names: `/` and `:` are escaped as the spec says.
fn sanitized_hostname() -> String {
    let h = gethostname::gethostname();
    let h = h.to_string_lossy();
    let h = if h.is_empty() { "localhost".into() } else { h };
    h.replace('/', "\\057").replace(':', "\\072")
}

/// Filesystems where link(2) is not available (vfat, some FUSE mounts).
fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) | Some(libc::EMLINK)
    )
}

/// rename(2) that fails with EEXIST instead of replacing the target.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let f = CString::new(from.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let t = CString::new(to.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    #[cfg(target_os = "linux")]
    {
        let r = cvt_retry(|| unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        });
        match r {
            Ok(_) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {}
            Err(e) => return Err(e),
        }
    }
    // No atomic no-replace rename here: check first (names are unique, so
    // the window only matters against a misbehaving writer).
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    cvt_retry(|| unsafe { libc::rename(f.as_ptr(), t.as_ptr()) }).map(|_| ())
}

/// Linux >= 5.8; the kernel does not change under us, so ask once.
#[cfg(target_os = "linux")]
fn kernel_reports_syncfs_errors() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        if unsafe { libc::uname(&mut uts) } != 0 {
            return false;
        }
        let rel: Vec<u8> = uts
            .release
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let rel = String::from_utf8_lossy(&rel);
        let mut parts = rel.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (major, minor) >= (5, 8)
    })
}

/// `syncfs` flushes a whole filesystem once, but it only reports writeback
/// errors since Linux 5.8, and only filesystems with a real `sync_fs` make
/// the data durable; elsewhere we fsync file by file.
fn syncfs_is_reliable(dir: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        if !kernel_reports_syncfs_errors() {
            return false;
        }
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut st) } != 0 {
            return false;
        }
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
        assert_eq!(md.begin_batch().unwrap(), BatchMark { mbox_length: None });
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
        if unsafe { libc::geteuid() } != 0 {
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

        // A batch interrupted before publish: one intact, one torn in tmp/.
        md.begin_batch().unwrap();
        let t = deliver(&mut md, &[b"intact in tmp\n", b"torn in tmp\n"]);
        md.sync_batch().unwrap();
        md.batch.clear(); // simulate the crash: forget the batch
        let torn = root.join("tmp").join(name_of(&t[1]));
        fs::write(&torn, b"torn").unwrap();
        // Stale junk and a fresh foreign file in tmp/.
        let old = root.join("tmp").join("old-junk");
        fs::write(&old, b"x").unwrap();
        let c = CString::new(old.as_os_str().as_bytes()).unwrap();
        let times = [libc::timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        }; 2];
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
            0
        );
        fs::write(root.join("tmp").join("fresh"), b"x").unwrap();

        let mut pending = s.clone();
        pending.extend(t.clone());
        pending.push(StoredMessage {
            location: Location::Maildir {
                name: "../escape".into(),
            },
            size: 0,
            sha256: sha(b""),
        });
        let r = md.recover(None, &pending).unwrap();
        assert_eq!(r, vec![true, true, false, true, true, false, false]);
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
        assert!(!old.exists(), "36 h old tmp file is cleaned");
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
