//! Which target a delivery went to, as the state records it.
//!
//! Written as `1:maildir:PATH`, `1:mbox:PATH` or `1:mda:COMMAND`: a version,
//! a kind, then the bytes with `%`, control characters and every byte that
//! is not valid UTF-8 written as `%XX`. So a path with non-UTF-8 bytes comes
//! back exactly, and no path can pass for another (unlike `Path::display`,
//! which turns every bad byte into U+FFFD). [`fmt::Display`] is for people.

use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::config::TargetConfig;

/// A delivery target's identity: the same for the same configured target,
/// whatever its description looks like.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetId {
    Maildir(PathBuf),
    Mbox(PathBuf),
    /// The MDA's shell command.
    Mda(String),
}

const VERSION: &str = "1:";

impl TargetId {
    pub fn of(config: &TargetConfig) -> TargetId {
        match config {
            TargetConfig::Maildir(p) => TargetId::Maildir(p.clone()),
            TargetConfig::Mbox(p) => TargetId::Mbox(p.clone()),
            TargetConfig::Mda(c) => TargetId::Mda(c.clone()),
        }
    }

    /// The text stored in the state's `target` columns.
    pub fn encode(&self) -> String {
        let (kind, bytes) = match self {
            TargetId::Maildir(p) => ("maildir", p.as_os_str().as_bytes()),
            TargetId::Mbox(p) => ("mbox", p.as_os_str().as_bytes()),
            TargetId::Mda(c) => ("mda", c.as_bytes()),
        };
        let mut out = format!("{VERSION}{kind}:");
        escape_into(bytes, &mut out);
        out
    }

    /// `None` for anything [`TargetId::encode`] cannot have written.
    pub fn decode(text: &str) -> Option<TargetId> {
        let (kind, escaped) = text.strip_prefix(VERSION)?.split_once(':')?;
        let bytes = unescape(escaped)?;
        if bytes.is_empty() || bytes.contains(&0) {
            return None;
        }
        let path = || PathBuf::from(std::ffi::OsString::from_vec(bytes.clone()));
        match kind {
            "maildir" => Some(TargetId::Maildir(path())),
            "mbox" => Some(TargetId::Mbox(path())),
            "mda" => String::from_utf8(bytes).ok().map(TargetId::Mda),
            _ => None,
        }
    }

    /// A `target` written before schema 4: the target's `describe()` text
    /// (`maildir PATH`, `mbox PATH`, ``mda `COMMAND` ``). Paths in it went
    /// through `Path::display`, so bytes that were not UTF-8 are already
    /// lost; the rest is taken as written.
    pub fn from_description(text: &str) -> Option<TargetId> {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        if let Some(p) = text.strip_prefix("maildir ") {
            nonempty(p).map(|p| TargetId::Maildir(p.into()))
        } else if let Some(p) = text.strip_prefix("mbox ") {
            nonempty(p).map(|p| TargetId::Mbox(p.into()))
        } else {
            let command = text.strip_prefix("mda `")?.strip_suffix('`')?;
            nonempty(command).map(TargetId::Mda)
        }
    }
}

/// As `Target::describe` shows it: `maildir /home/a/Mail`.
impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetId::Maildir(p) => write!(f, "maildir {}", p.display()),
            TargetId::Mbox(p) => write!(f, "mbox {}", p.display()),
            TargetId::Mda(c) => write!(f, "mda `{c}`"),
        }
    }
}

fn escape_into(bytes: &[u8], out: &mut String) {
    use std::fmt::Write;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' || c.is_control() {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Strict: a `%` must start two hex digits, and nothing `escape_into`
/// escapes may appear raw.
fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            out.push(b);
            rest = tail;
        }
    }
    let raw_control = text.chars().any(char::is_control);
    (!raw_control).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn non_utf8() -> PathBuf {
        PathBuf::from(std::ffi::OsString::from_vec(b"/m/caf\xe9/Mail".to_vec()))
    }

    #[test]
    fn round_trip_keeps_every_byte() {
        for id in [
            TargetId::Maildir("/home/a/Mail".into()),
            TargetId::Maildir(non_utf8()),
            TargetId::Maildir("/m/100%/x%41".into()),
            TargetId::Mbox("/m/new\nline:colon ü".into()),
            TargetId::Mda("procmail -d `whoami` 50%".into()),
        ] {
            let text = id.encode();
            assert!(!text.contains('\n'), "{text:?}");
            assert_eq!(TargetId::decode(&text), Some(id), "{text:?}");
        }
        assert_eq!(
            TargetId::Maildir(non_utf8()).encode(),
            "1:maildir:/m/caf%E9/Mail"
        );
        assert_eq!(
            TargetId::Maildir("/m/100%".into()).encode(),
            "1:maildir:/m/100%25"
        );
    }

    #[test]
    fn decode_refuses_what_encode_never_writes() {
        for bad in [
            "maildir /m",
            "2:maildir:/m",
            "1:tape:/m",
            "1:maildir:",
            "1:maildir:/m/%4",
            "1:maildir:/m/%G1",
            "1:maildir:/m/%00",
            "1:mbox:/m\n",
            "1:mda:%FF",
        ] {
            assert_eq!(TargetId::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn legacy_descriptions_convert() {
        assert_eq!(
            TargetId::from_description("maildir /home/a/Mail"),
            Some(TargetId::Maildir("/home/a/Mail".into()))
        );
        assert_eq!(
            TargetId::from_description("mbox /m b/x"),
            Some(TargetId::Mbox("/m b/x".into()))
        );
        assert_eq!(
            TargetId::from_description("mda `procmail -d u`"),
            Some(TargetId::Mda("procmail -d u".into()))
        );
        for bad in ["maildir ", "mda procmail", "tape /x", ""] {
            assert_eq!(TargetId::from_description(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn display_matches_the_old_description() {
        let id = TargetId::Mda("procmail".into());
        assert_eq!(TargetId::from_description(&id.to_string()), Some(id));
        assert_eq!(
            TargetId::Maildir("/m".into()).to_string(),
            "maildir /m".to_string()
        );
    }
}
