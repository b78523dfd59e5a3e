//! Who may change the files popsync trusts: config, state, maildir, mbox.
//!
//! ssh-style: the object itself must be owned by the running user (or root)
//! and not writable by group or others. Each ancestor directory must be
//! owned by root or the user and not writable by others, except a sticky
//! directory owned by root (like `/tmp`): there nobody else can rename or
//! remove our entries. A group-writable ancestor owned by root is accepted
//! (e.g. `/var/mail`, root:mail 2775: that group is the system's own).
use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const S_ISVTX: u32 = 0o1000;

/// A path popsync refuses to trust, with the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {path} {problem}; {fix}")]
pub struct UnsafePath {
    pub what: &'static str,
    pub path: PathBuf,
    pub problem: String,
    pub fix: String,
}

/// The running user's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// For `OpenOptions::custom_flags`: never open through a symlink.
pub const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// Checks an object popsync reads or writes (`meta` from fstat/lstat of it).
pub fn check_object(what: &'static str, path: &Path, meta: &Metadata) -> Result<(), UnsafePath> {
    check_with(what, path, meta, euid())
}

fn check_with(what: &'static str, path: &Path, meta: &Metadata, me: u32) -> Result<(), UnsafePath> {
    let fail = |problem: String, fix: String| UnsafePath {
        what,
        path: path.to_path_buf(),
        problem,
        fix,
    };
    let shown = Shown(path);
    if meta.file_type().is_symlink() {
        return Err(fail(
            "is a symbolic link".into(),
            format!("point the configuration at the real path instead of {shown}"),
        ));
    }
    let owner = meta.uid();
    if owner != me && owner != 0 {
        return Err(fail(
            format!(
                "is owned by {}, not by you ({})",
                user_name(owner),
                user_name(me)
            ),
            format!(
                "check who changed it, then `chown {} {shown}`",
                user_name(me)
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(fail(
            format!("is writable by group or others (mode {mode:04o})"),
            format!("`chmod go-w {shown}`"),
        ));
    }
    Ok(())
}

/// Checks each existing ancestor directory of `path` (not `path` itself).
pub fn check_ancestors(what: &'static str, path: &Path) -> Result<(), UnsafePath> {
    ancestors_with(what, path, euid())
}

fn ancestors_with(what: &'static str, path: &Path, me: u32) -> Result<(), UnsafePath> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    for dir in abs.ancestors().skip(1) {
        // stat, not lstat: a symlinked ancestor is judged by where it leads
        // (and that directory's own ancestors are the ones listed here).
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let owner = meta.uid();
        let mode = meta.mode() & 0o7777;
        let fail = |problem: String, fix: String| UnsafePath {
            what,
            path: path.to_path_buf(),
            problem: format!("is inside {}, which {problem}", Shown(dir)),
            fix,
        };
        if owner != me && owner != 0 {
            return Err(fail(
                format!("is owned by {}", user_name(owner)),
                format!(
                    "move it to a directory of yours, or `chown {} {}`",
                    user_name(me),
                    Shown(dir)
                ),
            ));
        }
        let sticky_root = mode & S_ISVTX != 0 && owner == 0;
        if mode & 0o002 != 0 && !sticky_root {
            return Err(fail(
                format!("is writable by others (mode {mode:04o})"),
                format!("`chmod o-w {}`", Shown(dir)),
            ));
        }
        if mode & 0o020 != 0 && owner != 0 {
            return Err(fail(
                format!("is writable by its group (mode {mode:04o})"),
                format!("`chmod g-w {}`", Shown(dir)),
            ));
        }
    }
    Ok(())
}

/// Why a private file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenRefused {
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Opens (creating it 0600 if `create`) a file popsync owns, read-write,
/// never through a symbolic link, and checks the opened file itself.
pub fn open_private_file(
    what: &'static str,
    path: &Path,
    create: bool,
) -> Result<std::fs::File, OpenRefused> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(O_NOFOLLOW | rustix::fs::OFlags::CLOEXEC.bits() as i32)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            let meta = std::fs::symlink_metadata(path).map_err(|source| OpenRefused::Io {
                what,
                path: path.to_path_buf(),
                source,
            })?;
            check_object(what, path, &meta)?;
            return Err(OpenRefused::Io {
                what,
                path: path.to_path_buf(),
                source: e,
            });
        }
        Err(source) => {
            return Err(OpenRefused::Io {
                what,
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| OpenRefused::Io {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(UnsafePath {
            what,
            path: path.to_path_buf(),
            problem: "is not a regular file".into(),
            fix: "remove it or point the configuration elsewhere".into(),
        }
        .into());
    }
    check_object(what, path, &meta)?;
    Ok(file)
}

/// Checks a directory popsync keeps private data in (following a symlink
/// to it: the directory reached is what is checked, with its ancestors).
pub fn check_private_dir(what: &'static str, dir: &Path) -> Result<(), OpenRefused> {
    let real = std::fs::canonicalize(dir).map_err(|source| OpenRefused::Io {
        what,
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&real).map_err(|source| OpenRefused::Io {
        what,
        path: dir.to_path_buf(),
        source,
    })?;
    check_object(what, dir, &meta)?;
    check_ancestors(what, &real)?;
    Ok(())
}

/// `NAME (uid N)`, or `uid N` when the passwd database does not know it.
fn user_name(uid: u32) -> String {
    passwd_name(uid).map_or_else(|| format!("uid {uid}"), |n| format!("{n} (uid {uid})"))
}

fn passwd_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// A path as shown in a fix command: quoted when the shell would split it.
struct Shown<'a>(&'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.display().to_string();
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,@%=~".contains(c))
        {
            f.write_str(&s)
        } else {
            write!(f, "'{}'", s.replace('\'', "'\\''"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mode_and_owner_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let me = euid();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(check_with("file", &p, &m, me).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let e = check_with("file", &p, &m, me).unwrap_err();
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.uid() != 0 {
            // Owned by someone who is neither "me" nor root.
            let e = check_with("file", &p, &m, m.uid() + 1).unwrap_err();
            assert!(e.to_string().contains("chown"), "{e}");
        }
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        let m = std::fs::symlink_metadata(&l).unwrap();
        assert!(
            check_with("file", &l, &m, me)
                .unwrap_err()
                .problem
                .contains("symbolic link")
        );
    }

    #[test]
    fn sticky_root_parent_is_fine_but_world_writable_is_not() {
        // /tmp is root-owned 1777 here; tempdir lives in it.
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        assert!(check_ancestors("maildir", &inner).is_ok());
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let e = check_ancestors("maildir", &inner).unwrap_err();
        assert!(e.to_string().contains("chmod o-w"), "{e}");
        std::fs::set_permissions(
            dir.path().join("a"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        // Sticky but owned by the test user, not root: only root's sticky dirs count.
        let m = std::fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(check_ancestors("maildir", &inner).is_ok(), m.uid() == 0);
    }

    #[test]
    fn fix_commands_quote_paths() {
        assert_eq!(Shown(Path::new("/a b/c")).to_string(), "'/a b/c'");
        assert_eq!(Shown(Path::new("/home/a/Mail")).to_string(), "/home/a/Mail");
    }
}
