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
pub mod response;
pub mod sasl;

pub use command::{Command, CommandError};
pub use listing::{Capabilities, ListEntry, Stat, Uid, UidError, UidlEntry};
pub use multiline::{Decoded, MultilineDecoder};
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
