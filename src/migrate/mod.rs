//! Reading the UID state files of the tools popsync replaces, so a migration
//! does not fetch again what the old tool already fetched. Pure: bytes in,
//! entries and skipped lines (with reasons) out; no I/O.
//!
//! - [`fetchmail`]: fetchmail 6.4 `.fetchids` (`user@host UID` lines).
//! - [`mpop`]: mpop 1.4 `uidls_file` (` N host user` headers, then N UIDs).
//! - [`getmail`]: getmail6 `oldmail-HOST-PORT-USER` (`UID\0timestamp` lines).

pub mod fetchmail;
pub mod getmail;
pub mod mpop;

use crate::pop3::Uid;

/// Which tool wrote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerFormat {
    Fetchmail,
    Mpop,
    Getmail,
}

impl PeerFormat {
    pub fn name(self) -> &'static str {
        match self {
            PeerFormat::Fetchmail => "fetchmail",
            PeerFormat::Mpop => "mpop",
            PeerFormat::Getmail => "getmail",
        }
    }
}

/// One UID the peer recorded. `host`/`user` are `None` when the file itself
/// belongs to one account (getmail6: the file name says which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// 1-based line number in the file.
    pub line: usize,
    pub host: Option<String>,
    pub user: Option<String>,
    pub uid: String,
}

/// A line that contributes no UID, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFile {
    pub entries: Vec<PeerEntry>,
    pub skipped: Vec<SkippedLine>,
}

impl PeerFile {
    /// Entries of `user` on `host` (host compared without case); the rest
    /// become skipped lines naming whose they are.
    pub fn select(self, host: &str, user: &str) -> PeerFile {
        let mut out = PeerFile {
            entries: Vec::new(),
            skipped: self.skipped,
        };
        for e in self.entries {
            let host_ok = e
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host));
            let user_ok = e.user.as_deref().is_none_or(|u| u == user);
            if host_ok && user_ok {
                out.entries.push(e);
            } else {
                out.skipped.push(SkippedLine {
                    line: e.line,
                    reason: format!(
                        "belongs to another account ({}@{})",
                        e.user.as_deref().unwrap_or("?"),
                        e.host.as_deref().unwrap_or("?")
                    ),
                });
            }
        }
        out.skipped.sort_by_key(|s| s.line);
        out
    }
}

/// The whole file is unusable: nothing is imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFileError {
    #[error("this is not a {format} UID file: {detail}")]
    Foreign {
        format: &'static str,
        detail: String,
    },
    #[error("the {format} UID file looks truncated: {detail}; nothing was imported")]
    Truncated {
        format: &'static str,
        detail: String,
    },
}

pub fn parse(format: PeerFormat, bytes: &[u8]) -> Result<PeerFile, PeerFileError> {
    match format {
        PeerFormat::Fetchmail => fetchmail::parse(bytes),
        PeerFormat::Mpop => mpop::parse(bytes),
        PeerFormat::Getmail => getmail::parse(bytes),
    }
}

/// Splits into lines (1-based numbers), refusing a file whose last line has
/// no newline: every peer ends each line with one, so a missing newline
/// means the file was cut short and its last UID may be a mere prefix.
fn lines<'a>(
    format: &'static str,
    bytes: &'a [u8],
) -> Result<Vec<(usize, &'a [u8])>, PeerFileError> {
    if bytes.contains(&0) && format != "getmail" {
        return Err(PeerFileError::Foreign {
            format,
            detail: "it contains NUL bytes (binary data)".into(),
        });
    }
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let n = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(PeerFileError::Truncated {
            format,
            detail: format!("line {n}, the last, ends without a newline"),
        });
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() && bytes.len() <= 1 {
        return Ok(Vec::new());
    }
    Ok(body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect())
}

/// The UID as popsync will compare it with the server's, or why not.
fn check_uid(raw: &[u8]) -> Result<String, String> {
    Uid::parse(raw)
        .map(|u| u.as_str().to_string())
        .map_err(|e| format!("invalid UID ({e})"))
}

/// When no line at all had the format's shape, the file is someone else's.
fn foreign_unless_any(
    format: &'static str,
    file: &PeerFile,
    shaped: usize,
    expected: &str,
) -> Result<(), PeerFileError> {
    if shaped == 0 && !file.skipped.is_empty() {
        return Err(PeerFileError::Foreign {
            format,
            detail: format!(
                "none of its {} lines looks like {expected}",
                file.skipped.len()
            ),
        });
    }
    Ok(())
}

/// The three real samples under tests/data/peers/ hold the same UIDs of
/// alice@127.0.0.1: checks a parse of one of them.
#[cfg(test)]
fn assert_real_sample(f: &PeerFile, names_account: bool) {
    assert!(f.skipped.is_empty(), "{:?}", f.skipped);
    let mut uids: Vec<&str> = f.entries.iter().map(|e| e.uid.as_str()).collect();
    uids.sort();
    assert_eq!(
        uids,
        ["000000016b07c14d", "000000026b07c14d", "000000036b07c14d"]
    );
    let (host, user) = names_account.then_some(("127.0.0.1", "alice")).unzip();
    for e in &f.entries {
        assert_eq!((e.host.as_deref(), e.user.as_deref()), (host, user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_refuse_a_missing_final_newline() {
        assert!(lines("x", b"").unwrap().is_empty());
        assert_eq!(
            lines("x", b"a\r\nb\n").unwrap(),
            vec![(1, &b"a"[..]), (2, &b"b"[..])]
        );
        let e = lines("x", b"a\nb").unwrap_err();
        assert!(matches!(e, PeerFileError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(matches!(
            lines("x", b"a\0\n"),
            Err(PeerFileError::Foreign { .. })
        ));
    }

    #[test]
    fn select_keeps_only_the_account_and_says_whose_the_rest_are() {
        let e = |line, host: &str, user: &str| PeerEntry {
            line,
            host: Some(host.into()),
            user: Some(user.into()),
            uid: format!("u{line}"),
        };
        let file = PeerFile {
            entries: vec![
                e(1, "Pop.Example.org", "alice"),
                e(2, "pop.example.org", "bob"),
                e(3, "other", "alice"),
            ],
            skipped: vec![SkippedLine {
                line: 4,
                reason: "x".into(),
            }],
        };
        let sel = file.select("pop.example.org", "alice");
        assert_eq!(sel.entries.len(), 1);
        assert_eq!(sel.entries[0].uid, "u1");
        let lines: Vec<usize> = sel.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        assert!(sel.skipped[0].reason.contains("bob@pop.example.org"));
    }
}
