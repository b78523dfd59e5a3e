//! APOP (RFC 1939 §7): an MD5 digest of the greeting's timestamp and the secret.
//!
//! APOP falls to an active attacker (CVE-2007-1558), so the session only uses
//! it where policy allows; here we at least insist on a well-formed
//! timestamp, as fetchmail and mpop do, so a server cannot feed us an
//! arbitrary chosen challenge.

use md5::{Digest, Md5};

/// Longest timestamp accepted, brackets included.
const MAX_TIMESTAMP: usize = 256;

/// Extracts the `<...@...>` timestamp from the greeting text, if it is a
/// valid msg-id: printable ASCII, no spaces, exactly one `@` with something
/// on both sides.
pub fn timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let ts = &greeting[start..=end];
    let inner = &ts[1..ts.len() - 1];
    let printable = inner
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'<');
    let mut parts = inner.split('@');
    let (left, right) = (parts.next()?, parts.next()?);
    let well_formed = printable && parts.next().is_none() && !left.is_empty() && !right.is_empty();
    (well_formed && ts.len() <= MAX_TIMESTAMP).then_some(ts)
}

/// Lowercase hex MD5 of timestamp + secret.
pub fn digest(timestamp: &str, secret: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret.as_bytes());
    hex::encode(md5.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1939_vector() {
        assert_eq!(
            digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn timestamp_extraction_and_validation() {
        assert_eq!(
            timestamp("POP3 server ready <1896.697170952@dbc.mtview.ca.us>"),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(
            timestamp("Dovecot (Debian) ready. <1af2.1.6b07af1a.FZPv9YkfLXUTBu+D6OF5dw==@vm>"),
            Some("<1af2.1.6b07af1a.FZPv9YkfLXUTBu+D6OF5dw==@vm>")
        );
        assert_eq!(timestamp("ready"), None);
        assert_eq!(timestamp("ready <no-at-sign>"), None);
        assert_eq!(timestamp("ready <a@b@c>"), None);
        assert_eq!(timestamp("ready <@host>"), None);
        assert_eq!(timestamp("ready <a b@host>"), None);
        assert_eq!(timestamp("ready <a@host"), None);
        let long = format!("<{}@h>", "a".repeat(300));
        assert_eq!(timestamp(&long), None);
    }
}
