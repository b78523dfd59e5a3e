//! The optional `Received:` trace line (`received_header = true`).

use crate::datetime::Civil;

/// One header line, LF-terminated. Every part is printable ASCII already
/// (host and user from the config, the UID validated), but we still strip
/// anything that could break the header.
pub fn header(host: &str, user: &str, uid: &str, now: i64) -> Vec<u8> {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_graphic())
            .take(200)
            .collect()
    };
    // Asked once per process, not once per message.
    static LOCAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let local = LOCAL.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned());
    format!(
        "Received: from {} by {} with POP3 (popsync {}) id {} for <{}>; {}\n",
        clean(host),
        clean(local),
        env!("CARGO_PKG_VERSION"),
        clean(uid),
        clean(user),
        Civil::from_unix(now).rfc5322()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_clean_line() {
        let h = super::header("pop.example.org", "al\nice", "UID:1", 0);
        let text = String::from_utf8(h).unwrap();
        assert!(text.starts_with("Received: from pop.example.org by "));
        assert!(text.contains("id UID:1 for <alice>; Thu, 1 Jan 1970 00:00:00 +0000"));
        assert_eq!(text.matches('\n').count(), 1);
    }
}
