//! Typed CAPA, STAT, LIST and UIDL replies, and UID validation.

use std::fmt;

use super::{ProtocolError, sanitize};

/// A unique-id as RFC 1939 §7 defines it: 1 to 70 octets in 0x21..=0x7E.
/// Never used as a file name: `/`, `.` and `:` are legal in it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

/// Why a UID from the server was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("empty UID")]
    Empty,
    #[error("UID of {len} octets exceeds 70: {shown}")]
    TooLong { len: usize, shown: String },
    #[error("UID has a byte outside 0x21..0x7E: {shown}")]
    BadByte { shown: String },
}

impl Uid {
    pub const MAX_LEN: usize = 70;

    pub fn parse(raw: &[u8]) -> Result<Uid, UidError> {
        if raw.is_empty() {
            return Err(UidError::Empty);
        }
        if let Some(_bad) = raw.iter().find(|&&b| !(0x21..=0x7e).contains(&b)) {
            return Err(UidError::BadByte {
                shown: sanitize(raw, 80),
            });
        }
        if raw.len() > Self::MAX_LEN {
            return Err(UidError::TooLong {
                len: raw.len(),
                shown: sanitize(raw, 80),
            });
        }
        // Checked above: printable ASCII only.
        Ok(Uid(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.0)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `+OK count size` from STAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub count: u64,
    pub size: u64,
}

impl Stat {
    pub fn parse(text: &str) -> Result<Stat, ProtocolError> {
        let mut it = text.split_ascii_whitespace();
        let parsed = (|| {
            let count = it.next()?.parse().ok()?;
            let size = it.next()?.parse().ok()?;
            Some(Stat { count, size })
        })();
        parsed.ok_or_else(|| malformed("STAT", text.as_bytes()))
    }
}

/// One line of a LIST reply. Sizes are advisory: servers often count LF ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry {
    pub msg: u32,
    pub size: u64,
}

impl ListEntry {
    /// Parses `msg size` (a LIST body line or the text of `+OK` to `LIST n`).
    pub fn parse(line: &[u8]) -> Result<ListEntry, ProtocolError> {
        let (msg, rest) = split_msg_number(line).ok_or_else(|| malformed("LIST", line))?;
        let size = std::str::from_utf8(first_word(rest))
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("LIST", line))?;
        Ok(ListEntry { msg, size })
    }
}

/// One line of a UIDL reply. A UID that breaks the RFC is kept as an error
/// so the engine can report it and leave that message alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlEntry {
    pub msg: u32,
    pub uid: Result<Uid, UidError>,
}

impl UidlEntry {
    pub fn parse(line: &[u8]) -> Result<UidlEntry, ProtocolError> {
        let (msg, rest) = split_msg_number(line).ok_or_else(|| malformed("UIDL", line))?;
        // The UID is the rest of the line; anything after a space makes it invalid.
        let rest = super::response::strip_line_end(rest);
        Ok(UidlEntry {
            msg,
            uid: Uid::parse(rest),
        })
    }
}

/// Parses every line of a multi-line body with `parse_line`.
pub fn parse_lines<T>(
    body: &[u8],
    parse_line: impl Fn(&[u8]) -> Result<T, ProtocolError>,
) -> Result<Vec<T>, ProtocolError> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

/// The capabilities from CAPA (RFC 2449).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Each capability line, sanitised, in the server's order.
    pub lines: Vec<String>,
}

impl Capabilities {
    pub fn parse(body: &[u8]) -> Capabilities {
        Capabilities {
            lines: body
                .split(|&b| b == b'\n')
                .map(|l| sanitize(super::response::strip_line_end(l), 512))
                .filter(|l| !l.is_empty())
                .collect(),
        }
    }

    fn find(&self, name: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| {
            let (head, rest) = l.split_once(' ').unwrap_or((l, ""));
            head.eq_ignore_ascii_case(name).then_some(rest)
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    pub fn stls(&self) -> bool {
        self.has("STLS")
    }

    /// RFC 6856 UTF-8 mode (`UTF8`, perhaps with `USER` after it).
    pub fn utf8(&self) -> bool {
        self.has("UTF8")
    }

    pub fn uidl(&self) -> bool {
        self.has("UIDL")
    }

    pub fn user(&self) -> bool {
        self.has("USER")
    }

    /// SASL mechanisms, upper-cased.
    pub fn sasl(&self) -> Vec<String> {
        self.find("SASL")
            .map(|rest| {
                rest.split_ascii_whitespace()
                    .map(|m| m.to_ascii_uppercase())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn has_sasl(&self, mechanism: &str) -> bool {
        self.sasl().iter().any(|m| m == mechanism)
    }

    /// `LOGIN-DELAY n`: the minimum seconds between logins.
    pub fn login_delay(&self) -> Option<u64> {
        self.find("LOGIN-DELAY")?
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

fn split_msg_number(line: &[u8]) -> Option<(u32, &[u8])> {
    let line = super::response::strip_line_end(line);
    let sp = memchr::memchr(b' ', line)?;
    let msg: u32 = std::str::from_utf8(&line[..sp]).ok()?.parse().ok()?;
    if msg == 0 {
        return None;
    }
    let rest = &line[sp + 1..];
    // Tolerate several spaces between the fields.
    let skip = rest.iter().take_while(|&&b| b == b' ').count();
    Some((msg, &rest[skip..]))
}

fn first_word(s: &[u8]) -> &[u8] {
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    &s[..end]
}

fn malformed(what: &'static str, line: &[u8]) -> ProtocolError {
    ProtocolError::Malformed {
        what,
        line: sanitize(line, 80),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert_eq!(Uid::parse(b"00000001abc").unwrap().as_str(), "00000001abc");
        assert!(
            Uid::parse(b"../../etc/passwd").is_ok(),
            "legal, never a path"
        );
        assert_eq!(Uid::parse(b""), Err(UidError::Empty));
        assert!(matches!(
            Uid::parse(&[b'a'; 71]),
            Err(UidError::TooLong { len: 71, .. })
        ));
        assert!(Uid::parse(&[b'a'; 70]).is_ok());
        assert!(matches!(Uid::parse(b"a b"), Err(UidError::BadByte { .. })));
        assert!(matches!(
            Uid::parse(b"a\x7f"),
            Err(UidError::BadByte { .. })
        ));
        assert!(matches!(
            Uid::parse(b"\xc3\xa9"),
            Err(UidError::BadByte { .. })
        ));
    }

    #[test]
    fn uidl_listing() {
        let body = b"1 whqtswO00WBw418f9t5JxYwZ\n2 QhdPYR:00WBw1Ph7x7\n3 has space\n";
        let entries = parse_lines(body, UidlEntry::parse).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].msg, 2);
        assert_eq!(
            entries[1].uid.as_ref().unwrap().as_str(),
            "QhdPYR:00WBw1Ph7x7"
        );
        assert!(entries[2].uid.is_err());
        assert!(parse_lines(b"x abc\n", UidlEntry::parse).is_err());
        assert!(parse_lines(b"0 abc\n", UidlEntry::parse).is_err());
        assert!(parse_lines(b"99999999999 abc\n", UidlEntry::parse).is_err());
        assert!(UidlEntry::parse(b"4").is_err());
    }

    #[test]
    fn list_and_stat() {
        let e = parse_lines(b"1 120\n2 200\n", ListEntry::parse).unwrap();
        assert_eq!(e[1], ListEntry { msg: 2, size: 200 });
        assert_eq!(ListEntry::parse(b"3 45 extra").unwrap().size, 45);
        assert!(ListEntry::parse(b"3 -4").is_err());
        assert_eq!(
            Stat::parse("2 320").unwrap(),
            Stat {
                count: 2,
                size: 320
            }
        );
        assert_eq!(Stat::parse("1000000000 5").unwrap().count, 1_000_000_000);
        assert!(Stat::parse("two").is_err());
    }

    #[test]
    fn capabilities() {
        let caps = Capabilities::parse(
            b"TOP\nUIDL\nRESP-CODES\nPIPELINING\nSTLS\nUSER\nSASL PLAIN login CRAM-MD5\nLOGIN-DELAY 900\n",
        );
        assert!(caps.pipelining() && caps.stls() && caps.uidl() && caps.user());
        assert_eq!(caps.sasl(), ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert!(caps.has_sasl("LOGIN"));
        assert!(!caps.has_sasl("XOAUTH2"));
        assert_eq!(caps.login_delay(), Some(900));
        assert!(!Capabilities::default().pipelining());
    }
}
