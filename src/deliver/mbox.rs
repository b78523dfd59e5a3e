//! mbox delivery in the mboxrd format, locked the Debian way (fcntl lock,
//! then the `<mbox>.lock` dotlock), with truncate-back on failure.
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::util::{cvt_retry, io_err};
use super::{
    Batch, BatchToken, DeliverError, DurableBatch, Location, Message, MessageMeta, StoredMessage,
    Target,
};

/// The kind of this target's batch tokens: `mbox:LENGTH`.
const TOKEN_KIND: &str = "mbox";

/// Default time to wait for the locks before reporting `Locked`.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// A dotlock older than this is stale (liblockfile uses the same value).
const DOTLOCK_STALE: Duration = Duration::from_secs(5 * 60);
/// A dotlock without a pid in it is stale after this long.
const DOTLOCK_EMPTY_STALE: Duration = Duration::from_secs(60);
/// We refresh our dotlock's mtime this often so others never think it stale.
const DOTLOCK_TOUCH: Duration = Duration::from_secs(60);
/// Header bytes buffered to find `Return-Path:` before the `From ` line.
const HEADER_CAP: usize = 256 * 1024;
const BUF_SIZE: usize = 64 * 1024;
const FALLBACK_SENDER: &[u8] = b"MAILER-DAEMON";

/// An mboxrd mailbox file.
pub struct Mbox {
    /// As configured (the journal's target name).
    path: PathBuf,
    /// The file it names, resolved once at open: recovery files go beside it.
    real: PathBuf,
    lock_path: PathBuf,
    lock_timeout: Duration,
    /// The one descriptor for the file: fcntl locks are tied to it.
    file: File,
}

/// Both locks (fcntl lock and dotlock), released when dropped.
struct Locked<'a> {
    mbox: &'a Mbox,
    last_touch: Instant,
}

/// Cuts the mbox back to `length` when dropped, unless kept: a batch's or
/// a message's own bytes, never anything before them.
struct Truncate<'a> {
    mbox: &'a Mbox,
    length: u64,
}

/// A batch: the locks are held and the file's length before it is known.
struct MboxBatch<'a> {
    /// Declared before `lock`: the bytes are cut while still locked.
    undo: Truncate<'a>,
    lock: Locked<'a>,
    /// Offset where the next message starts.
    end: u64,
    /// Newlines to write before the first message so it starts a line
    /// after a blank line, when the file does not end that way.
    pad: &'static [u8],
}

/// A message being appended; its bytes are flushed as they come.
struct MboxMessage<'b, 'a> {
    batch: &'b mut MboxBatch<'a>,
    undo: Truncate<'a>,
    offset: u64,
    /// Offset after the last byte emitted (flushed or in `out`).
    end: u64,
    out: Vec<u8>,
    /// `Some` while the header section is being buffered.
    header: Option<Vec<u8>>,
    quoter: Quoter,
    hasher: Sha256,
}

impl Mbox {
    /// Opens the mbox, creating it (mode 0600) if missing, and its
    /// directory (0700) like a maildir's.
    ///
    /// The file must be owned by the running user (or root) and not writable
    /// by group or others, inside directories nobody else can change. A
    /// symlink is followed only to a file that passes the same checks;
    /// the file itself is opened with `O_NOFOLLOW`.
    pub fn open(path: &Path) -> Result<Mbox, DeliverError> {
        let target = format!("mbox {}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| io_err(&target, "create directory", parent, e))?;
        }
        let real = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match fs::canonicalize(path) {
                Ok(real) => real,
                Err(_) => {
                    return Err(crate::ownership::UnsafePath {
                        what: "mbox",
                        path: path.to_path_buf(),
                        problem: "is a symbolic link to nothing".into(),
                        fix: "remove the link or create the file it names".into(),
                    }
                    .into());
                }
            },
            _ => path.to_path_buf(),
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&real)
            .map_err(|e| io_err(&target, "open", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_err(&target, "stat", path, e))?;
        if !meta.is_file() {
            return Err(io_err(
                &target,
                "open",
                path,
                io::Error::other("not a regular file"),
            ));
        }
        crate::ownership::check_object("mbox", &real, &meta)?;
        let real = fs::canonicalize(&real).map_err(|e| io_err(&target, "resolve", path, e))?;
        crate::ownership::check_ancestors("mbox", &real)?;
        let mut lock = OsString::from(real.as_os_str());
        lock.push(".lock");
        Ok(Mbox {
            path: path.to_path_buf(),
            real,
            lock_path: PathBuf::from(lock),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            file,
        })
    }

    /// How long `batch`/`recover` wait for the locks (default 10 s).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Mbox {
        self.lock_timeout = timeout;
        self
    }

    fn target(&self) -> String {
        self.describe()
    }

    /// Takes the fcntl lock, then the dotlock, backing off until the timeout.
    fn lock(&self) -> Result<Locked<'_>, DeliverError> {
        let target = self.target();
        let deadline = Instant::now() + self.lock_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let detail = match fcntl_lock(&self.file, libc::F_WRLCK as libc::c_short) {
                Ok(true) => match self.try_dotlock() {
                    Ok(None) => {
                        return Ok(Locked {
                            mbox: self,
                            last_touch: Instant::now(),
                        });
                    }
                    Ok(Some(detail)) => {
                        let _ = fcntl_lock(&self.file, libc::F_UNLCK as libc::c_short);
                        detail
                    }
                    Err(e) => {
                        let _ = fcntl_lock(&self.file, libc::F_UNLCK as libc::c_short);
                        return Err(e);
                    }
                },
                Ok(false) => "fcntl lock held".to_string(),
                Err(e) => return Err(io_err(&target, "fcntl lock", &self.path, e)),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(DeliverError::Locked { target, detail });
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Creates the dotlock. `Ok(Some(why))` when someone else holds it.
    fn try_dotlock(&self) -> Result<Option<String>, DeliverError> {
        if self.create_dotlock()? {
            return Ok(None);
        }
        if let Some(why) = self.dotlock_stale() {
            // A small race remains against another program deciding
            // the same; the fcntl lock we hold excludes Debian ones.
            tracing::warn!(
                "{}: removing stale {} ({why})",
                self.target(),
                self.lock_path.display()
            );
            match fs::remove_file(&self.lock_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_err(&self.target(), "remove", &self.lock_path, e));
                }
            }
            if self.create_dotlock()? {
                return Ok(None);
            }
        }
        Ok(Some(format!("{} exists", self.lock_path.display())))
    }

    /// Puts the dotlock in place with our pid already in it: the pid goes
    /// into a private file first, which is then hard-linked to the lock name
    /// (as liblockfile does). Creating the lock and then writing the pid
    /// would leave an empty lock, one no later run can prove stale, whenever
    /// popsync is killed between the two steps. `Ok(false)`: it exists.
    fn create_dotlock(&self) -> Result<bool, DeliverError> {
        let mut tmp = self.lock_path.clone().into_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let fail = |e| io_err(&self.target(), "create dotlock", &tmp, e);
        let _ = fs::remove_file(&tmp); // our own pid's leftover, if any
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(fail)?;
        let linked = writeln!(f, "{}", std::process::id())
            .and_then(|()| fs::hard_link(&tmp, &self.lock_path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&self.target(), "create dotlock", &self.lock_path, e)),
        }
    }

    /// Why the existing dotlock is stale, if it is.
    fn dotlock_stale(&self) -> Option<String> {
        let meta = fs::metadata(&self.lock_path).ok()?;
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64
            - meta.mtime();
        if age > DOTLOCK_STALE.as_secs() as i64 {
            return Some(format!("{age} s old"));
        }
        let content = fs::read(&self.lock_path).ok()?;
        let Some(pid) = std::str::from_utf8(&content)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            // Holders write their pid at once; an empty lock this old is
            // what an older popsync killed between creating and writing
            // it left behind.
            return (age > DOTLOCK_EMPTY_STALE.as_secs() as i64)
                .then(|| format!("{age} s old and names no process"));
        };
        if let Some(pid) = rustix::process::Pid::from_raw(pid)
            && rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
        {
            return Some(format!("process {pid} is gone"));
        }
        None
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let mbox = self.mbox;
        if let Err(e) = fs::remove_file(&mbox.lock_path) {
            tracing::warn!(
                "{}: remove {}: {e}",
                mbox.target(),
                mbox.lock_path.display()
            );
        }
        if let Err(e) = fcntl_lock(&mbox.file, libc::F_UNLCK as libc::c_short) {
            tracing::warn!("{}: fcntl unlock: {e}", mbox.target());
        }
    }
}

impl Locked<'_> {
    /// Keeps our dotlock fresh during a long batch.
    fn touch(&mut self) {
        if self.last_touch.elapsed() < DOTLOCK_TOUCH {
            return;
        }
        self.last_touch = Instant::now();
        let now = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        };
        let times = rustix::fs::Timestamps {
            last_access: now,
            last_modification: now,
        };
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            &self.mbox.lock_path,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
    }
}

impl Truncate<'_> {
    fn keep(self) {
        // Two plain fields: forgetting frees nothing.
        std::mem::forget(self);
    }
}

impl Drop for Truncate<'_> {
    fn drop(&mut self) {
        let mbox = self.mbox;
        let res = mbox.file.metadata().and_then(|m| {
            if m.len() > self.length {
                mbox.file.set_len(self.length)?;
                mbox.file.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = res {
            tracing::warn!("{}", io_err(&mbox.target(), "truncate", &mbox.path, e));
        }
    }
}

impl Target for Mbox {
    fn describe(&self) -> String {
        format!("mbox {}", self.path.display())
    }

    fn recover(
        &mut self,
        token: Option<&BatchToken>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError> {
        let mark = token.and_then(|t| {
            let length = t.value(TOKEN_KIND).and_then(|v| v.parse::<u64>().ok());
            if length.is_none() {
                tracing::warn!(
                    "{}: ignoring a batch mark that is no mbox length: {:?}",
                    self.target(),
                    t.as_str()
                );
            }
            length
        });
        if mark.is_none() && pending.is_empty() {
            return Ok(Vec::new());
        }
        let _locked = self.lock()?;
        self.recover_locked(mark, pending)
    }

    fn batch(&mut self) -> Result<Box<dyn Batch<'_> + '_>, DeliverError> {
        let lock = self.lock()?;
        let target = self.target();
        let len = self
            .file
            .metadata()
            .map_err(|e| io_err(&target, "stat", &self.path, e))?
            .len();
        let mut tail = [0u8; 2];
        let n = len.min(2) as usize;
        self.file
            .read_exact_at(&mut tail[..n], len - n as u64)
            .map_err(|e| io_err(&target, "read", &self.path, e))?;
        let pad: &[u8] = match (n, tail) {
            (0, _) => b"",
            (_, _) if tail[n - 1] != b'\n' => b"\n\n",
            (1, _) => b"\n",
            (_, [a, _]) if a != b'\n' => b"\n",
            _ => b"",
        };
        Ok(Box::new(MboxBatch {
            undo: Truncate {
                mbox: self,
                length: len,
            },
            lock,
            end: len,
            pad,
        }))
    }
}

impl<'a> Batch<'a> for MboxBatch<'a> {
    fn token(&self) -> Option<BatchToken> {
        Some(BatchToken::new(TOKEN_KIND, self.undo.length))
    }

    fn message(&mut self, meta: &MessageMeta) -> Result<Box<dyn Message + '_>, DeliverError> {
        let mbox = self.lock.mbox;
        if !self.pad.is_empty() {
            (&mbox.file)
                .write_all(self.pad)
                .map_err(|e| io_err(&mbox.target(), "write", &mbox.path, e))?;
            self.end += self.pad.len() as u64;
            self.pad = b"";
        }
        let offset = self.end;
        let mut message = MboxMessage {
            batch: self,
            undo: Truncate {
                mbox,
                length: offset,
            },
            offset,
            end: offset,
            out: Vec::with_capacity(BUF_SIZE),
            header: Some(Vec::new()),
            quoter: Quoter::default(),
            hasher: Sha256::new(),
        };
        if let Some(h) = &meta.received_header {
            message.feed(h)?;
        }
        Ok(Box::new(message))
    }

    fn sync(self: Box<Self>) -> Result<Box<dyn DurableBatch + 'a>, DeliverError> {
        let mbox = self.lock.mbox;
        mbox.file
            .sync_all()
            .map_err(|e| io_err(&mbox.target(), "fsync", &mbox.path, e))?;
        Ok(self)
    }

    fn detach(self: Box<Self>) -> Result<Box<dyn Batch<'static> + Send>, Box<dyn Batch<'a> + 'a>> {
        Err(self)
    }
}

impl DurableBatch for MboxBatch<'_> {
    fn publish(self: Box<Self>) -> Result<(), DeliverError> {
        let MboxBatch { undo, lock, .. } = *self;
        undo.keep();
        drop(lock);
        Ok(())
    }
}

impl MboxMessage<'_, '_> {
    /// Feeds message bytes through header buffering and quoting.
    fn feed(&mut self, data: &[u8]) -> Result<(), DeliverError> {
        let mut em = Emitter {
            out: &mut self.out,
            hasher: &mut self.hasher,
            end: &mut self.end,
        };
        if let Some(h) = self.header.as_mut() {
            let search_from = h.len().saturating_sub(1);
            h.extend_from_slice(data);
            let done = header_end(h, search_from).is_some() || h.len() > HEADER_CAP;
            if done {
                let h = self.header.take().unwrap_or_default();
                let sender = if h.len() > HEADER_CAP && header_end(&h, 0).is_none() {
                    FALLBACK_SENDER.to_vec()
                } else {
                    return_path(&h)
                };
                em.put(&from_line(&sender, SystemTime::now()));
                self.quoter.feed(&h, &mut em);
            }
        } else {
            self.quoter.feed(data, &mut em);
        }
        if self.out.len() >= BUF_SIZE {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<(), DeliverError> {
        if !self.out.is_empty() {
            let mbox = self.undo.mbox;
            (&mbox.file)
                .write_all(&self.out)
                .map_err(|e| io_err(&mbox.target(), "write", &mbox.path, e))?;
            self.out.clear();
        }
        Ok(())
    }
}

impl Write for MboxMessage<'_, '_> {
    fn write(&mut self, chunk: &[u8]) -> io::Result<usize> {
        self.batch.lock.touch();
        self.feed(chunk).map_err(DeliverError::into_io)?;
        Ok(chunk.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_out().map_err(DeliverError::into_io)
    }
}

impl Message for MboxMessage<'_, '_> {
    fn finish(mut self: Box<Self>) -> Result<StoredMessage, DeliverError> {
        let mut em = Emitter {
            out: &mut self.out,
            hasher: &mut self.hasher,
            end: &mut self.end,
        };
        if let Some(h) = self.header.take() {
            let sender = return_path(&h);
            em.put(&from_line(&sender, SystemTime::now()));
            self.quoter.feed(&h, &mut em);
        }
        self.quoter.finish(&mut em);
        // Every message ends with a newline, then one blank separator line.
        if self.quoter.last.is_some_and(|b| b != b'\n') {
            em.put(b"\n");
        }
        em.put(b"\n");
        // On an error `self` is dropped: the message's bytes are cut.
        self.flush_out()?;
        let MboxMessage {
            batch,
            undo,
            offset,
            end,
            hasher,
            ..
        } = *self;
        undo.keep();
        batch.end = end;
        let length = end - offset;
        Ok(StoredMessage {
            location: Location::Mbox { offset, length },
            size: length,
            sha256: hasher.finalize().into(),
        })
    }
}

impl Mbox {
    fn recover_locked(
        &self,
        mark: Option<u64>,
        pending: &[StoredMessage],
    ) -> Result<Vec<bool>, DeliverError> {
        let target = self.target();
        let len = self
            .file
            .metadata()
            .map_err(|e| io_err(&target, "stat", &self.path, e))?
            .len();
        if let Some(m) = mark
            && len < m
        {
            tracing::warn!(
                "{target}: file is shorter ({len}) than before the interrupted batch ({m}); \
                     it was rewritten by another program, nothing to recover"
            );
            return Ok(vec![false; pending.len()]);
        }
        let mut good = Vec::with_capacity(pending.len());
        for msg in pending {
            good.push(self.verify(msg, len)?);
        }
        let Some(mark) = mark else {
            return Ok(good);
        };
        // The good messages contiguous from the mark (a little newline
        // padding may precede the first one).
        let mut good_end = mark;
        let mut prefix = 0;
        for (msg, &ok) in pending.iter().zip(&good) {
            let Location::Mbox { offset, length } = msg.location else {
                break;
            };
            let contiguous = if prefix == 0 {
                offset >= mark && offset - mark <= 2 && self.only_newlines(mark, offset)?
            } else {
                offset == good_end
            };
            if !ok || !contiguous {
                break;
            }
            good_end = offset + length;
            prefix += 1;
        }
        let all_good = !pending.is_empty() && prefix == pending.len();
        // After a complete, journaled batch nothing of ours follows it: bytes
        // there were appended by someone else later and stay where they are.
        if len == good_end || all_good {
            return Ok(good);
        }
        if !self.looks_like_ours(good_end, len)? {
            tracing::warn!(
                "{target}: bytes {good_end}..{len} do not look like popsync's torn write; left in place"
            );
            return Ok(good);
        }
        let saved = self.save_tail(good_end, len)?;
        self.file
            .set_len(good_end)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io_err(&target, "truncate", &self.path, e))?;
        tracing::warn!(
            "{target}: moved the torn tail of an interrupted batch ({} bytes) to {}",
            len - good_end,
            saved.display()
        );
        Ok(good
            .iter()
            .enumerate()
            .map(|(i, &ok)| ok && i < prefix)
            .collect())
    }

    /// True if the range recorded for `msg` holds exactly its bytes.
    fn verify(&self, msg: &StoredMessage, len: u64) -> Result<bool, DeliverError> {
        let Location::Mbox { offset, length } = msg.location else {
            tracing::warn!("{}: recover: not an mbox location", self.target());
            return Ok(false);
        };
        if length != msg.size || offset.checked_add(length).is_none_or(|e| e > len) {
            return Ok(false);
        }
        let mut h = Sha256::new();
        self.read_range(offset, offset + length, |b| h.update(b))?;
        Ok(<[u8; 32]>::from(h.finalize()) == msg.sha256)
    }

    /// Reads `start..end` through our own descriptor (closing another one
    /// would drop a classic fcntl lock).
    fn read_range(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), DeliverError> {
        let mut buf = vec![0u8; BUF_SIZE];
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], pos)
                .map_err(|e| io_err(&self.target(), "read", &self.path, e))?;
            f(&buf[..n]);
            pos += n as u64;
        }
        Ok(())
    }

    fn only_newlines(&self, start: u64, end: u64) -> Result<bool, DeliverError> {
        let mut ok = true;
        self.read_range(start, end, |b| ok &= b.iter().all(|&c| c == b'\n'))?;
        Ok(ok)
    }

    /// Our batch starts with up to two padding newlines and a `From ` line;
    /// a crash may also leave zero-filled blocks (XFS).
    fn looks_like_ours(&self, start: u64, len: u64) -> Result<bool, DeliverError> {
        let mut head = Vec::new();
        self.read_range(start, len.min(start + 7), |b| head.extend_from_slice(b))?;
        if head.first() == Some(&0) {
            return Ok(true);
        }
        let nl = head.iter().take(2).take_while(|&&c| c == b'\n').count();
        let rest = &head[nl..];
        Ok(rest.is_empty() || b"From ".starts_with(rest) || rest.starts_with(b"From "))
    }

    /// Copies `start..end` into a new recovery file and makes it durable.
    fn save_tail(&self, start: u64, end: u64) -> Result<PathBuf, DeliverError> {
        let target = self.target();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut n = 0u32;
        let (path, mut out) = loop {
            let mut name = OsString::from(self.real.as_os_str());
            name.push(format!(".popsync-recovered-{now}"));
            if n > 0 {
                name.push(format!("-{n}"));
            }
            let path = PathBuf::from(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(io_err(&target, "create", &path, e)),
            }
        };
        let mut werr = None;
        self.read_range(start, end, |b| {
            if werr.is_none() {
                werr = out.write_all(b).err();
            }
        })?;
        if let Some(e) = werr {
            return Err(io_err(&target, "write", &path, e));
        }
        out.sync_all()
            .map_err(|e| io_err(&target, "fsync", &path, e))?;
        // The recovery file's name must be durable before we truncate.
        let dir = match self.real.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&target, "fsync directory", dir, e))?;
        Ok(path)
    }
}

/// Output sink: buffer, hash and position advance together.
struct Emitter<'a> {
    out: &'a mut Vec<u8>,
    hasher: &'a mut Sha256,
    end: &'a mut u64,
}

impl Emitter<'_> {
    fn put(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
        self.hasher.update(b);
        *self.end += b.len() as u64;
    }
}

/// mboxrd quoting as a byte-level state machine: `^>*From ` gets one more
/// `>`. Inserting it just before `From` is the same as at the line start
/// (only `>` precede), so only a partial `From ` (< 5 bytes) is ever held.
#[derive(Default)]
struct Quoter {
    state: QState,
    /// Last input byte, to know whether the message ended with a newline.
    last: Option<u8>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum QState {
    /// At a line start, or after only `>` since it.
    #[default]
    LineStart,
    /// Matched this many bytes of `From ` after the `>`s.
    Match(usize),
    /// Elsewhere in a line.
    Mid,
}

const FROM_: &[u8] = b"From ";

impl Quoter {
    fn feed(&mut self, mut data: &[u8], em: &mut Emitter<'_>) {
        if let Some(&b) = data.last() {
            self.last = Some(b);
        }
        while !data.is_empty() {
            match self.state {
                QState::Mid => match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        em.put(&data[..=i]);
                        data = &data[i + 1..];
                        self.state = QState::LineStart;
                    }
                    None => {
                        em.put(data);
                        data = &[];
                    }
                },
                QState::LineStart => {
                    let n = data.iter().take_while(|&&c| c == b'>').count();
                    if n > 0 {
                        em.put(&data[..n]);
                        data = &data[n..];
                    } else {
                        self.state = QState::Match(0);
                    }
                }
                QState::Match(k) => {
                    if data[0] == FROM_[k] {
                        data = &data[1..];
                        if k + 1 == FROM_.len() {
                            em.put(b">From ");
                            self.state = QState::Mid;
                        } else {
                            self.state = QState::Match(k + 1);
                        }
                    } else {
                        em.put(&FROM_[..k]);
                        self.state = QState::Mid;
                    }
                }
            }
        }
    }

    /// Emits a partial `From` held at the end of the message.
    fn finish(&mut self, em: &mut Emitter<'_>) {
        if let QState::Match(k) = self.state {
            em.put(&FROM_[..k]);
        }
        self.state = QState::LineStart;
    }
}

/// Offset of the blank line ending the header section, searching from `from`.
fn header_end(h: &[u8], from: usize) -> Option<usize> {
    if h.first() == Some(&b'\n') {
        return Some(0);
    }
    memchr::memmem::find(&h[from..], b"\n\n").map(|i| from + i)
}

/// The address of the first `Return-Path:` header, or `MAILER-DAEMON`.
fn return_path(h: &[u8]) -> Vec<u8> {
    let head = &h[..header_end(h, 0).unwrap_or(h.len())];
    let mut lines = head.split(|&c| c == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.len() < 12 || !line[..12].eq_ignore_ascii_case(b"return-path:") {
            continue;
        }
        let mut value = line[12..].to_vec();
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|&c| c == b' ' || c == b'\t'))
        {
            value.extend_from_slice(next);
        }
        let addr: &[u8] = match memchr::memchr(b'<', &value) {
            Some(i) => {
                let rest = &value[i + 1..];
                &rest[..memchr::memchr(b'>', rest).unwrap_or(rest.len())]
            }
            None => &value,
        };
        // A From line is split on spaces: drop whitespace and controls.
        let addr: Vec<u8> = addr
            .iter()
            .copied()
            .filter(|&c| c > b' ' && c != 0x7f)
            .collect();
        return if addr.is_empty() {
            FALLBACK_SENDER.to_vec()
        } else {
            addr
        };
    }
    FALLBACK_SENDER.to_vec()
}

/// `From sender Thu Nov 26 04:55:21 2026\n` (asctime form, UTC).
fn from_line(sender: &[u8], when: SystemTime) -> Vec<u8> {
    let mut l = b"From ".to_vec();
    l.extend_from_slice(sender);
    l.push(b' ');
    l.extend_from_slice(asctime_utc(when).as_bytes());
    l.push(b'\n');
    l
}

fn asctime_utc(when: SystemTime) -> String {
    let secs = when
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    crate::datetime::Civil::from_unix(secs).asctime()
}

/// Whole-file write lock or unlock. Open-file-description locks on Linux:
/// they conflict with classic fcntl locks of other programs, but also with
/// a second descriptor in this process, and closing some other descriptor
/// of the file does not drop them. `Ok(false)` if another holder has it.
// Stays unsafe: rustix 1.1's fcntl_lock issues classic F_SETLK/F_SETLKW
// (process-associated: a second target on the same mbox in this process,
// e.g. two daemon accounts, would get the lock too, and closing any other
// descriptor of the file would drop it), and rustix has no F_OFD_SETLK.
// OFD locks still conflict with the classic fcntl/lockf locks of mutt and
// procmail (`locked_by_other_process` below holds one from python's lockf).
fn fcntl_lock(file: &File, kind: libc::c_short) -> io::Result<bool> {
    // SAFETY: `flock` is plain data; all-zero is a valid value of it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    #[cfg(target_os = "linux")]
    let cmd = libc::F_OFD_SETLK;
    #[cfg(not(target_os = "linux"))]
    let cmd = libc::F_SETLK;
    // SAFETY: a descriptor `file` keeps open, and a pointer to a live
    // `flock` that F_(OFD_)SETLK only reads.
    match cvt_retry(|| unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) }) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Splits mboxrd bytes into messages: a line starting `From ` opens one,
/// `>From `-quoted lines lose one `>`, the blank separator line is dropped.
pub fn parse_mboxrd(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let close = |m: Option<Vec<u8>>, msgs: &mut Vec<Vec<u8>>| {
        if let Some(mut m) = m {
            if m == b"\n" || m.ends_with(b"\n\n") {
                m.pop();
            }
            msgs.push(m);
        }
    };
    for line in bytes.split_inclusive(|&c| c == b'\n') {
        if line.starts_with(FROM_) {
            close(cur.take(), &mut msgs);
            cur = Some(Vec::new());
            continue;
        }
        let Some(m) = cur.as_mut() else { continue };
        let n = line.iter().take_while(|&&c| c == b'>').count();
        if n > 0 && line[n..].starts_with(FROM_) {
            m.extend_from_slice(&line[1..]);
        } else {
            m.extend_from_slice(line);
        }
    }
    close(cur, &mut msgs);
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    fn open(path: &Path) -> Mbox {
        Mbox::open(path)
            .unwrap()
            .with_lock_timeout(Duration::from_millis(300))
    }

    fn deliver(batch: &mut dyn Batch<'_>, msgs: &[&[u8]], chunk: usize) -> Vec<StoredMessage> {
        msgs.iter()
            .map(|m| {
                let mut message = batch.message(&MessageMeta::default()).unwrap();
                for c in m.chunks(chunk) {
                    message.write_all(c).unwrap();
                }
                message.finish().unwrap()
            })
            .collect()
    }

    fn length_of(token: Option<BatchToken>) -> u64 {
        token.unwrap().value(TOKEN_KIND).unwrap().parse().unwrap()
    }

    fn tricky() -> Vec<Vec<u8>> {
        vec![
            b"Return-Path: <a@b.example>\nSubject: x\n\nFrom x\n>From x\n>>From y\nFrom\nFro\n>Fro\n>From\n"
                .to_vec(),
            b"From me\nSubject: header From line\n\n From not at start\nFrom ".to_vec(),
            b"Subject: no final newline\n\nlast line".to_vec(),
            Vec::new(),
            b"\n".to_vec(),
            b"X: \xff\0\n\n\0\0From \xfe\n\n\n".to_vec(),
            [b"Subject: long\n\n".as_slice(), &[b'>'; 70_000], b"From z\n"].concat(),
        ]
    }

    fn range(bytes: &[u8], s: &StoredMessage) -> Vec<u8> {
        let Location::Mbox { offset, length } = s.location else {
            panic!()
        };
        bytes[offset as usize..(offset + length) as usize].to_vec()
    }

    #[test]
    fn round_trip_tricky_content() {
        for chunk in [1, 7, 100_000] {
            let td = tempfile::tempdir().unwrap();
            let path = td.path().join("mbox");
            let mut mb = open(&path);
            let msgs = tricky();
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let mut batch = mb.batch().unwrap();
            assert_eq!(length_of(batch.token()), 0);
            let stored = deliver(batch.as_mut(), &refs, chunk);
            batch.sync().unwrap().publish().unwrap();
            assert!(!td.path().join("mbox.lock").exists());
            let bytes = fs::read(&path).unwrap();
            let mut expected = msgs.clone();
            // A final newline is added to messages without one.
            expected[1].push(b'\n');
            expected[2].push(b'\n');
            let got = parse_mboxrd(&bytes);
            assert_eq!(got.len(), expected.len(), "chunk {chunk}");
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                let show = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
                assert!(
                    g == e,
                    "chunk {chunk} msg {i}: {:?} != {:?}",
                    show(g),
                    show(e)
                );
            }
            let mut end = 0;
            for s in &stored {
                let r = range(&bytes, s);
                assert_eq!(s.size, r.len() as u64);
                assert_eq!(s.sha256, <[u8; 32]>::from(Sha256::digest(&r)));
                assert!(r.starts_with(b"From ") && r.ends_with(b"\n\n") || r.ends_with(b"\n"));
                let Location::Mbox { offset, length } = s.location else {
                    panic!()
                };
                assert_eq!(offset, end);
                end = offset + length;
            }
            assert_eq!(end, bytes.len() as u64);
            assert!(range(&bytes, &stored[0]).starts_with(b"From a@b.example "));
            assert!(range(&bytes, &stored[1]).starts_with(b"From MAILER-DAEMON "));
            let has = |pat: &[u8]| bytes.windows(pat.len()).any(|w| w == pat);
            assert!(has(
                b"\n\n>From x\n>>From x\n>>>From y\nFrom\nFro\n>Fro\n>From\n"
            ));
            let mode = fs::metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn received_header_and_padding() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        fs::write(&path, b"From old x\n\nno final newline").unwrap();
        let mut mb = open(&path);
        let mut batch = mb.batch().unwrap();
        assert_eq!(length_of(batch.token()), 28);
        let mut message = batch
            .message(&MessageMeta {
                received_header: Some(b"Received: by popsync\n".to_vec()),
            })
            .unwrap();
        message.write_all(b"Return-Path: <>\n\nbody\n").unwrap();
        let s = message.finish().unwrap();
        batch.sync().unwrap().publish().unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(
            parse_mboxrd(&bytes),
            vec![
                b"\nno final newline\n".to_vec(),
                b"Received: by popsync\nReturn-Path: <>\n\nbody\n".to_vec()
            ]
        );
        assert!(range(&bytes, &s).starts_with(b"From MAILER-DAEMON "));
    }

    #[test]
    fn a_token_that_is_no_mbox_length_is_ignored_not_trusted() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        fs::write(&path, b"From a x\n\nhello\n\nFrom b x\n\ntorn").unwrap();
        let before = fs::read(&path).unwrap();
        let mut mb = open(&path);
        for text in ["maildir:1.M2P3", "mbox:-1", "mbox:", "5"] {
            let token = BatchToken::from_journal(text.into());
            assert_eq!(mb.recover(Some(&token), &[]).unwrap(), Vec::<bool>::new());
            assert_eq!(fs::read(&path).unwrap(), before, "{text}");
        }
        // The form schema 5 migrated old marks into is understood.
        let token = BatchToken::from_journal("mbox:17".into());
        mb.recover(Some(&token), &[]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), &before[..17]);
    }

    #[test]
    fn return_path_extraction() {
        assert_eq!(return_path(b"Return-Path: <a@b>\n\n"), b"a@b");
        assert_eq!(return_path(b"X: 1\nreturn-path:\n <c@d>\n\n"), b"c@d");
        assert_eq!(
            return_path(b"Return-Path: e@f\nReturn-Path: <g@h>\n\n"),
            b"e@f"
        );
        assert_eq!(return_path(b"Return-Path: <>\n\n"), b"MAILER-DAEMON");
        assert_eq!(
            return_path(b"Subject: x\n\nReturn-Path: <a@b>\n"),
            b"MAILER-DAEMON"
        );
        assert_eq!(return_path(b"Return-Path: <a b@c>"), b"ab@c");
        assert_eq!(return_path(b""), b"MAILER-DAEMON");
    }

    #[test]
    fn asctime_form() {
        let t = |s| asctime_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(1_795_582_521), "Wed Nov 25 04:55:21 2026");
        assert_eq!(t(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(t(0), "Thu Jan  1 00:00:00 1970");
    }

    #[test]
    fn header_cap_falls_back() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let mut mb = open(&path);
        let mut batch = mb.batch().unwrap();
        let mut m = b"X-Junk: ".to_vec();
        m.extend(std::iter::repeat_n(b'a', 2 * HEADER_CAP));
        m.extend_from_slice(b"\nReturn-Path: <late@x>\n\nbody\n");
        let s = deliver(batch.as_mut(), &[&m], 4096);
        batch.sync().unwrap().publish().unwrap();
        let bytes = fs::read(&path).unwrap();
        assert!(range(&bytes, &s[0]).starts_with(b"From MAILER-DAEMON "));
        assert_eq!(parse_mboxrd(&bytes), vec![m]);
    }

    #[test]
    fn abort_truncates_back() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let orig = b"From a x\n\nhello\n\n".to_vec();
        fs::write(&path, &orig).unwrap();
        let mut mb = open(&path);
        let mut batch = mb.batch().unwrap();
        deliver(batch.as_mut(), &[b"one\n"], 3);
        let after_one = fs::read(&path).unwrap();
        let mut message = batch.message(&MessageMeta::default()).unwrap();
        message.write_all(b"Subject: big\n\n").unwrap();
        message.write_all(&vec![b'x'; 200_000]).unwrap(); // partly flushed already
        assert!(fs::metadata(&path).unwrap().len() > after_one.len() as u64);
        drop(message);
        assert_eq!(fs::read(&path).unwrap(), after_one);
        assert_eq!(parse_mboxrd(&after_one).len(), 2);
        // The batch goes on after a dropped message.
        deliver(batch.as_mut(), &[b"three\n"], 3);
        let mut message = batch.message(&MessageMeta::default()).unwrap();
        message.write_all(&vec![b'y'; 200_000]).unwrap();
        drop(message);
        drop(batch);
        assert_eq!(fs::read(&path).unwrap(), orig);
        assert!(!td.path().join("mbox.lock").exists());
        // A durable batch dropped unpublished is cut back too.
        let mut batch = mb.batch().unwrap();
        deliver(batch.as_mut(), &[b"four\n"], 3);
        drop(batch.sync().unwrap());
        assert_eq!(fs::read(&path).unwrap(), orig);
        assert!(!td.path().join("mbox.lock").exists());
        // Usable again.
        let mut batch = mb.batch().unwrap();
        deliver(batch.as_mut(), &[b"two\n"], 3);
        batch.sync().unwrap().publish().unwrap();
        assert_eq!(parse_mboxrd(&fs::read(&path).unwrap()).len(), 2);
    }

    fn batch(path: &Path, msgs: &[&[u8]]) -> (BatchToken, Vec<StoredMessage>) {
        let mut mb = open(path);
        let mut batch = mb.batch().unwrap();
        let token = batch.token().unwrap();
        let s = deliver(batch.as_mut(), msgs, 5);
        batch.sync().unwrap().publish().unwrap();
        (token, s)
    }

    fn recovery_files(dir: &Path) -> Vec<Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains("popsync-recovered-")
            })
            .map(|e| fs::read(e.path()).unwrap())
            .collect()
    }

    #[test]
    fn recover_torn_tail_mid_batch() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        batch(&path, &[b"kept\n"]);
        let before = fs::read(&path).unwrap();
        // Crash while the batch was written: nothing journaled but the mark.
        let (mark, _) = batch(&path, &[b"a\n", b"torn"]);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(f.metadata().unwrap().len() - 3).unwrap();
        let torn = fs::read(&path).unwrap()[before.len()..].to_vec();
        let mut mb = open(&path);
        assert_eq!(mb.recover(Some(&mark), &[]).unwrap(), Vec::<bool>::new());
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(recovery_files(td.path()), vec![torn]);
    }

    #[test]
    fn recover_journaled_batch() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        batch(&path, &[b"kept\n"]);
        let (mark, s) = batch(&path, &[b"good\n", b"torn message\n"]);
        let full = fs::read(&path).unwrap();
        let Location::Mbox { offset, .. } = s[1].location else {
            panic!()
        };
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(offset + 10).unwrap();
        let mut mb = open(&path);
        assert_eq!(mb.recover(Some(&mark), &s).unwrap(), vec![true, false]);
        assert_eq!(fs::read(&path).unwrap(), &full[..offset as usize]);
        assert_eq!(
            recovery_files(td.path()),
            vec![full[offset as usize..offset as usize + 10].to_vec()]
        );
        drop(mb);
        // An intact batch followed by another program's mail: nothing moves.
        let (mark, s) = batch(&path, &[b"x\n", b"y\n"]);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"From other x\n\nforeign\n\n").unwrap();
        let now = fs::read(&path).unwrap();
        let mut mb = open(&path);
        assert_eq!(mb.recover(Some(&mark), &s).unwrap(), vec![true, true]);
        assert_eq!(fs::read(&path).unwrap(), now);
        // Rewritten shorter by a mail reader: nothing is ours any more.
        fs::write(&path, b"From a x\n\nb\n\n").unwrap();
        assert_eq!(mb.recover(Some(&mark), &s).unwrap(), vec![false, false]);
        assert_eq!(fs::read(&path).unwrap(), b"From a x\n\nb\n\n");
        assert_eq!(recovery_files(td.path()).len(), 1);
    }

    #[test]
    fn locked_by_other_process() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let mut mb = open(&path);
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.lockf(f,fcntl.LOCK_EX)\n\
                 print('locked',flush=True)\ntime.sleep(30)",
            )
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        let t = Instant::now();
        let err = mb.batch().err().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(err, DeliverError::Locked { .. }), "{err}");
        assert!(err.is_transient());
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(!td.path().join("mbox.lock").exists());
        drop(mb.batch().unwrap());
    }

    /// Sets a file's access and modification time (Unix seconds).
    fn set_mtime(path: &Path, secs: i64) {
        let at = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: at,
            last_modification: at,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty()).unwrap();
    }

    #[test]
    fn an_empty_dotlock_is_stale_after_a_minute_and_ours_always_names_us() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let lock = td.path().join("mbox.lock");
        let mut b = open(&path);
        // What a popsync killed between creating and writing its lock left.
        fs::write(&lock, "").unwrap();
        assert!(
            matches!(b.batch().err(), Some(DeliverError::Locked { .. })),
            "a fresh empty lock may be someone's, just created"
        );
        let then = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 90;
        set_mtime(&lock, then);
        let batch = b.batch().unwrap();
        // The lock in place names this process, and no helper file is left.
        let text = fs::read_to_string(&lock).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let names: Vec<_> = fs::read_dir(td.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".tmp")),
            "left behind: {names:?}"
        );
        drop(batch);
        assert!(!lock.exists());
    }

    #[test]
    fn locked_in_same_process_and_dotlocks() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let lock = td.path().join("mbox.lock");
        let mut a = open(&path);
        let mut b = open(&path);
        let held = a.batch().unwrap();
        assert!(lock.exists());
        assert!(matches!(b.batch().err(), Some(DeliverError::Locked { .. })));
        drop(held);
        // A live holder's dotlock is respected...
        fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
        assert!(matches!(b.batch().err(), Some(DeliverError::Locked { .. })));
        // ...a dead holder's or an old one is stale.
        fs::write(&lock, "999999999\n").unwrap();
        drop(b.batch().unwrap());
        fs::write(&lock, "").unwrap();
        set_mtime(&lock, 1000);
        drop(b.batch().unwrap());
        assert!(!lock.exists());
    }

    #[test]
    fn symlinked_mbox_is_refused_unless_its_target_is_safe() {
        use std::os::unix::fs::PermissionsExt;
        let td = tempfile::tempdir().unwrap();
        // A link to nothing: never created through the link.
        let dangling = td.path().join("dangling.mbox");
        let victim = td.path().join("profile");
        std::os::unix::fs::symlink(&victim, &dangling).unwrap();
        let err = Mbox::open(&dangling).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!victim.exists());
        // A link to a file others may write (a shared start-up file).
        fs::write(&victim, b"echo hi\n").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o666)).unwrap();
        let link = td.path().join("link.mbox");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = Mbox::open(&link).err().unwrap().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"echo hi\n");
        // A link to a private mbox of ours is fine; recovery files go beside it.
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let mut mb = Mbox::open(&link).unwrap();
        assert_eq!(mb.real, victim);
        drop(mb.batch().unwrap());
    }

    #[test]
    fn open_errors() {
        let td = tempfile::tempdir().unwrap();
        fs::write(td.path().join("file"), b"").unwrap();
        let under_a_file = td.path().join("file/dir/mbox");
        let err = Mbox::open(&under_a_file).err().unwrap().to_string();
        assert!(
            err.contains("file/dir") && err.contains("create directory"),
            "{err}"
        );
        let err = Mbox::open(td.path()).err().unwrap().to_string();
        assert!(err.contains(&td.path().display().to_string()), "{err}");
    }

    #[test]
    fn open_creates_a_missing_directory_private() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("Mail/sub/alice.mbox");
        Mbox::open(&path).unwrap();
        assert!(path.is_file());
        let mode = fs::metadata(td.path().join("Mail/sub")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    /// Why the lock is an OFD lock: a second descriptor in this process is
    /// refused, and closing some other descriptor of the file keeps it.
    #[test]
    fn the_fcntl_lock_belongs_to_its_descriptor() {
        let td = tempfile::tempdir().unwrap();
        let path = td.path().join("mbox");
        let first = File::create(&path).unwrap();
        let second = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let (lock, unlock) = (
            libc::F_WRLCK as libc::c_short,
            libc::F_UNLCK as libc::c_short,
        );
        assert!(fcntl_lock(&first, lock).unwrap());
        assert!(!fcntl_lock(&second, lock).unwrap());
        drop(File::open(&path).unwrap());
        assert!(!fcntl_lock(&second, lock).unwrap(), "still held");
        assert!(fcntl_lock(&first, unlock).unwrap());
        assert!(fcntl_lock(&second, lock).unwrap());
    }
}
