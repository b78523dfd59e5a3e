//! Client messages of the SASL mechanisms popsync speaks (RFC 5034).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`, base64, empty authzid.
pub fn plain(user: &str, password: &str) -> String {
    STANDARD.encode(format!("\0{user}\0{password}"))
}

/// XOAUTH2 (Google/Microsoft): `user=U ^A auth=Bearer T ^A ^A`, base64.
pub fn xoauth2(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// Decodes a server challenge for display (e.g. XOAUTH2's JSON error).
pub fn decode_challenge(data: &str) -> Option<Vec<u8>> {
    STANDARD.decode(data.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_matches_rfc4616() {
        assert_eq!(
            plain("tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }

    #[test]
    fn xoauth2_layout() {
        let decoded = STANDARD
            .decode(xoauth2("someuser@example.com", "ya29.vF9dft4"))
            .unwrap();
        assert_eq!(
            decoded,
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4\x01\x01"
        );
    }
}
