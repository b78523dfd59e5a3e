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

/// OAUTHBEARER (RFC 7628 §3.1): a GS2 header naming the user, then the
/// `auth` key/value pair ended by ^A ^A (`host` and `port` are optional;
/// Gmail documents this minimal form).
pub fn oauthbearer(user: &str, token: &str) -> String {
    STANDARD.encode(format!(
        "n,a={},\x01auth=Bearer {token}\x01\x01",
        gs2_saslname(user)
    ))
}

/// The reply to an OAUTHBEARER error challenge (RFC 7628 §3.2.3): one ^A,
/// after which the server sends its final -ERR.
pub const OAUTHBEARER_ABORT: &str = "AQ==";

/// RFC 5801 §4: `,` and `=` in a GS2 authzid are written `=2C` and `=3D`.
fn gs2_saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
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
    fn oauthbearer_matches_rfc7628_example() {
        // RFC 7628 §4.1's token, without the optional host and port.
        let decoded = STANDARD
            .decode(oauthbearer(
                "user@example.com",
                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
            ))
            .unwrap();
        assert_eq!(
            decoded,
            b"n,a=user@example.com,\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
        );
        let odd = STANDARD.decode(oauthbearer("a=b,c", "t")).unwrap();
        assert!(odd.starts_with(b"n,a=a=3Db=2Cc,\x01"));
        assert_eq!(STANDARD.decode(OAUTHBEARER_ABORT).unwrap(), b"\x01");
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
