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
        Uid::check(raw).map(|uid| Uid(uid.to_string()))
    }

    /// Validates a UID without copying it.
    pub fn check(raw: &[u8]) -> Result<&str, UidError> {
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
        // Checked above: printable ASCII, so valid UTF-8.
        std::str::from_utf8(raw).map_err(|_| UidError::BadByte {
            shown: sanitize(raw, 80),
        })
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
        let (msg, uid) = parse_uidl_line(line)?;
        Ok(UidlEntry {
            msg,
            uid: uid.map(|u| Uid(u.to_string())),
        })
    }
}

/// A UIDL line's message number and UID, borrowed from the line.
fn parse_uidl_line(line: &[u8]) -> Result<(u32, Result<&str, UidError>), ProtocolError> {
    let (msg, rest) = split_msg_number(line).ok_or_else(|| malformed("UIDL", line))?;
    // The UID is the rest of the line; anything after a space makes it invalid.
    Ok((msg, Uid::check(super::response::strip_line_end(rest))))
}

/// Many UIDs in one buffer: a million 40-octet UIDs cost ~44 MB here, about
/// half of what a `String` each costs (24 octets of header plus an
/// allocation rounded up to 48).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UidText {
    text: String,
    /// Where UID `i` ends in `text`; it starts where UID `i - 1` ends.
    ends: Vec<u32>,
}

impl UidText {
    /// Appends `uid`; `false` (nothing appended) when the buffer would pass
    /// 4 GiB, which no listing popsync accepts comes near.
    #[must_use]
    pub fn push(&mut self, uid: &str) -> bool {
        let Ok(end) = u32::try_from(self.text.len() + uid.len()) else {
            return false;
        };
        self.text.push_str(uid);
        self.ends.push(end);
        true
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// UID `i`; panics past the end, like slice indexing.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// Heap octets held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * size_of::<u32>()
    }
}

impl fmt::Debug for UidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A whole UIDL reply, compact: the UIDs in one [`UidText`], message
/// numbers beside them, and the (rare) invalid UIDs' errors on the side.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UidList {
    msgs: Vec<u32>,
    /// Entry `i`'s UID; the empty string for an invalid one (a valid UID is
    /// never empty), whose error is in `invalid`.
    uids: UidText,
    invalid: Vec<(u32, UidError)>,
}

/// One entry of a [`UidList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidlRef<'a> {
    pub msg: u32,
    pub uid: Result<&'a str, &'a UidError>,
}

impl UidList {
    /// Parses and appends one body line of a UIDL reply.
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), ProtocolError> {
        let (msg, uid) = parse_uidl_line(line)?;
        self.push(msg, uid)
            .then_some(())
            .ok_or_else(|| malformed("UIDL (over 4 GiB of UIDs)", line))
    }

    /// Appends an entry; `false` when the UIDs would pass 4 GiB.
    #[must_use]
    pub fn push(&mut self, msg: u32, uid: Result<&str, UidError>) -> bool {
        if !self.uids.push(uid.as_ref().unwrap_or(&"")) {
            return false;
        }
        if let Err(e) = uid {
            self.invalid.push((self.msgs.len() as u32, e));
        }
        self.msgs.push(msg);
        true
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Entry `i`, in the server's order; panics past the end.
    pub fn get(&self, i: usize) -> UidlRef<'_> {
        let uid = self.uids.get(i);
        let uid = if uid.is_empty() {
            let at = self
                .invalid
                .binary_search_by_key(&(i as u32), |(j, _)| *j)
                .expect("an empty UID is an invalid one");
            Err(&self.invalid[at].1)
        } else {
            Ok(uid)
        };
        UidlRef {
            msg: self.msgs[i],
            uid,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = UidlRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Entry `i`'s UID if it is valid: for sorting and matching by UID.
    pub fn valid_uid(&self, i: usize) -> Option<&str> {
        Some(self.uids.get(i)).filter(|u| !u.is_empty())
    }

    pub fn shrink_to_fit(&mut self) {
        self.msgs.shrink_to_fit();
        self.uids.shrink_to_fit();
        self.invalid.shrink_to_fit();
    }

    /// Heap octets held (capacity, not length); an invalid entry's error
    /// text is not counted.
    pub fn heap_bytes(&self) -> usize {
        self.msgs.capacity() * size_of::<u32>()
            + self.uids.heap_bytes()
            + self.invalid.capacity() * size_of::<(u32, UidError)>()
    }
}

impl fmt::Debug for UidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a UidList {
    type Item = UidlRef<'a>;
    type IntoIter = Box<dyn ExactSizeIterator<Item = UidlRef<'a>> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<UidlEntry> for UidList {
    fn from_iter<I: IntoIterator<Item = UidlEntry>>(entries: I) -> UidList {
        let mut out = UidList::default();
        for e in entries {
            let pushed = out.push(e.msg, e.uid.as_ref().map(Uid::as_str).map_err(Clone::clone));
            assert!(pushed, "test-sized listing");
        }
        out
    }
}

/// A listing read line by line as it arrives ([`UidList`] for UIDL, a
/// `Vec<ListEntry>` for LIST).
pub trait Listing: Default {
    /// Entries so far.
    fn entries(&self) -> usize;
    fn push_line(&mut self, line: &[u8]) -> Result<(), ProtocolError>;
    fn shrink_to_fit(&mut self);
}

impl Listing for UidList {
    fn entries(&self) -> usize {
        UidList::len(self)
    }
    fn push_line(&mut self, line: &[u8]) -> Result<(), ProtocolError> {
        UidList::push_line(self, line)
    }
    fn shrink_to_fit(&mut self) {
        UidList::shrink_to_fit(self)
    }
}

impl Listing for Vec<ListEntry> {
    fn entries(&self) -> usize {
        <[ListEntry]>::len(self)
    }
    fn push_line(&mut self, line: &[u8]) -> Result<(), ProtocolError> {
        self.push(ListEntry::parse(line)?);
        Ok(())
    }
    fn shrink_to_fit(&mut self) {
        Vec::shrink_to_fit(self)
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

    #[test]
    fn uid_list_keeps_the_servers_order_and_invalid_uids() {
        let mut l = UidList::default();
        for line in [&b"1 abc\r\n"[..], b"2 has space", b"3 def", b"4 ", b"5 ghi"] {
            l.push_line(line).unwrap();
        }
        assert!(l.push_line(b"x abc").is_err());
        let got: Vec<(u32, Result<&str, bool>)> = l
            .iter()
            .map(|e| (e.msg, e.uid.map_err(|_| false)))
            .collect();
        assert_eq!(
            got,
            [
                (1, Ok("abc")),
                (2, Err(false)),
                (3, Ok("def")),
                (4, Err(false)),
                (5, Ok("ghi"))
            ]
        );
        assert!(matches!(l.get(1).uid, Err(UidError::BadByte { .. })));
        assert_eq!(l.get(3).uid, Err(&UidError::Empty));
        assert_eq!(l.valid_uid(2), Some("def"));
        assert_eq!(l.valid_uid(3), None);
        let from_entries: UidList = parse_lines(b"1 abc\n2 has space\n", UidlEntry::parse)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(from_entries.get(0).uid, Ok("abc"));
        assert!(from_entries.get(1).uid.is_err());
    }

    /// The bound behind "a 1,000,000-entry UIDL in 200 MiB": a UIDL entry
    /// costs its UID's octets plus 8 (offset and message number), where a
    /// `String` each cost 24 plus an allocation. bench/uidl-rss measures
    /// the whole process.
    #[test]
    fn a_uid_list_costs_its_uid_octets_plus_eight_per_entry() {
        let mut l = UidList::default();
        for i in 1..=100_000u32 {
            let line = format!("{i} {:040x}\r\n", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
            l.push_line(line.as_bytes()).unwrap();
        }
        l.shrink_to_fit();
        let per_entry = l.heap_bytes() / l.len();
        assert!(per_entry <= 48, "{per_entry} heap octets per UIDL entry");
        assert_eq!(l.get(41_999).msg, 42_000);
        assert_eq!(
            l.get(41_999).uid.unwrap(),
            format!("{:040x}", 42_000u128 * 0x9e37_79b9_7f4a_7c15)
        );
    }
}
