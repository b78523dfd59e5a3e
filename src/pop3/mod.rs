//! The POP3 protocol core: commands, responses and the multi-line decoder.
//!
//! Pure code: nothing here does I/O. Parsers take bytes and say what they
//! found or that they need more; encoders append to a buffer. The session
//! layer owns sockets and feeds these parsers, and fuzz targets call them
//! directly.

pub mod apop;
pub mod command;
pub mod listing;
pub mod multiline;
pub mod pipeline;
pub mod response;
pub mod sasl;

pub use command::{Command, CommandError};
pub use listing::{
    Capabilities, ListEntry, Listing, Stat, Uid, UidError, UidList, UidText, UidlEntry, UidlRef,
};
pub use multiline::{Decoded, MultilineDecoder};
pub use pipeline::{Event, PairingError, ReplyPairing, ReplyShape};
pub use response::{
    MAX_STATUS_LINE, ResponseCode, Status, StatusLine, begins_with_status, find_status_line,
    looks_like_tls_record,
};

/// A malformed response from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("status line longer than {limit} octets without an end")]
    StatusLineTooLong { limit: usize },
    #[error("response is neither +OK nor -ERR: {0:?}")]
    NotAStatus(String),
    #[error("malformed {what} line: {line:?}")]
    Malformed { what: &'static str, line: String },
    #[error("{what} listing is larger than {limit} octets")]
    ListingTooLarge { what: &'static str, limit: usize },
}

/// Bidirectional overrides and zero-width characters: invisible, yet they
/// reorder or hide what a reader sees (U+202E turns `exe.txt` around).
pub fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Renders untrusted text (an MDA's stderr) for a log, an error, a state
/// row: control characters (terminal escapes) become `\u{..}`, invisible
/// format characters are dropped, and it is cut to `max` characters.
pub fn sanitize_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = s.trim().chars().filter(|&c| !is_invisible_format(c));
    for c in chars.by_ref().take(max) {
        match c {
            '\n' | '\t' => out.push(' '),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Renders untrusted server bytes for a log line or an error: control
/// characters and non-ASCII become escapes, and long text is cut.
pub fn sanitize(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 8);
    for &b in bytes.iter().take(max) {
        match b {
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod sanitize_tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_bidi_controls_are_neutralised() {
        let s = sanitize_text(
            "\x1b[2J\x1b]0;pwned\x07error: \u{202E}txt.exe\u{200B}\n",
            100,
        );
        assert!(!s.contains('\x1b') && !s.contains('\u{202E}') && !s.contains('\u{200B}'));
        assert_eq!(s, "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}error: txt.exe");
        assert_eq!(sanitize_text(&"x".repeat(1000), 300).chars().count(), 301);
    }
}
