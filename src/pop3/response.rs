//! Status lines (`+OK`, `-ERR`, SASL `+ `) and RFC 2449/3206 response codes.

use super::{ProtocolError, sanitize};

/// RFC 2449 §4 caps a status line at 512 octets; lax servers exceed it a
/// little, so we allow four times that before calling the line hostile.
pub const MAX_STATUS_LINE: usize = 2048;

/// Finds the end of the status line at the start of `buf`. Returns the
/// line's length including its LF, `None` if more bytes are needed, or an
/// error once `limit` octets have arrived without a line end.
pub fn find_status_line(buf: &[u8], limit: usize) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[..buf.len().min(limit)];
    match memchr::memchr(b'\n', window) {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= limit => Err(ProtocolError::StatusLineTooLong { limit }),
        None => Ok(None),
    }
}

/// Whether the bytes that follow a multi-line terminator begin with a
/// `+OK`/`-ERR` status line, i.e. whether the stream is still in step.
/// `None`: too few bytes to tell. A server that forgot to stuff a lone `.`
/// line shows itself here: the rest of the message arrives instead.
pub fn begins_with_status(buf: &[u8]) -> Option<bool> {
    let window = &buf[..buf.len().min(MAX_STATUS_LINE)];
    if let Some(i) = memchr::memchr(b'\n', window) {
        let in_step = StatusLine::parse(&window[..=i])
            .is_ok_and(|line| matches!(line.status, Status::Ok | Status::Err));
        return Some(in_step);
    }
    if buf.len() >= MAX_STATUS_LINE {
        return Some(false);
    }
    // Decide early when the start already cannot be a status keyword.
    let could_be = |keyword: &[u8]| {
        let n = buf.len().min(keyword.len());
        buf[..n].eq_ignore_ascii_case(&keyword[..n])
    };
    if could_be(b"+OK") || could_be(b"-ERR") {
        None
    } else {
        Some(false)
    }
}

/// Whether a server's first bytes are a TLS record (RFC 8446 §5.1: a
/// content type 20–23, then a legacy version 3.x), not a POP3 greeting:
/// the sign of an implicit-TLS port reached without TLS.
pub fn looks_like_tls_record(buf: &[u8]) -> bool {
    matches!(buf, [20..=23, 3, ..])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Err,
    /// `+ data`: a SASL server challenge (RFC 5034).
    Continue,
}

/// Extended response codes (RFC 2449 §8, RFC 3206).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCode {
    /// The maildrop is locked; the credentials were fine. Retry later.
    InUse,
    /// Logging in again this soon is not allowed. Back off.
    LoginDelay,
    /// A temporary server-side problem. Retry later.
    SysTemp,
    /// A permanent server-side problem. Stop.
    SysPerm,
    /// The credentials were wrong.
    Auth,
    /// Any other code, kept verbatim (e.g. `UTF8`).
    Other(String),
}

impl ResponseCode {
    fn parse(code: &str) -> ResponseCode {
        match code.to_ascii_uppercase().as_str() {
            "IN-USE" => ResponseCode::InUse,
            "LOGIN-DELAY" => ResponseCode::LoginDelay,
            "SYS/TEMP" => ResponseCode::SysTemp,
            "SYS/PERM" => ResponseCode::SysPerm,
            "AUTH" => ResponseCode::Auth,
            _ => ResponseCode::Other(code.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub status: Status,
    pub code: Option<ResponseCode>,
    /// The human-readable text after the status and code, sanitised.
    pub text: String,
}

impl StatusLine {
    /// Parses one line (with or without its CRLF/LF).
    pub fn parse(line: &[u8]) -> Result<StatusLine, ProtocolError> {
        let line = strip_line_end(line);
        let (status, rest) = if let Some(rest) = strip_prefix_ci(line, b"+OK") {
            (Status::Ok, rest)
        } else if let Some(rest) = strip_prefix_ci(line, b"-ERR") {
            (Status::Err, rest)
        } else if line == b"+" || line.starts_with(b"+ ") {
            let data = line.get(2..).unwrap_or_default();
            return Ok(StatusLine {
                status: Status::Continue,
                code: None,
                text: sanitize(data, MAX_STATUS_LINE),
            });
        } else {
            return Err(ProtocolError::NotAStatus(sanitize(line, 80)));
        };
        // The keyword must stand alone: "+OKAY" is not "+OK".
        let rest = match rest.first() {
            None => rest,
            Some(b' ') | Some(b'\t') => &rest[1..],
            Some(_) => return Err(ProtocolError::NotAStatus(sanitize(line, 80))),
        };
        let (code, text) = split_code(rest);
        Ok(StatusLine {
            status,
            code,
            text: sanitize(text, MAX_STATUS_LINE),
        })
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// The text with the code in brackets, as the server said it.
    pub fn describe(&self) -> String {
        match &self.code {
            Some(code) => format!("[{}] {}", code_name(code), self.text),
            None => self.text.clone(),
        }
    }
}

fn code_name(code: &ResponseCode) -> &str {
    match code {
        ResponseCode::InUse => "IN-USE",
        ResponseCode::LoginDelay => "LOGIN-DELAY",
        ResponseCode::SysTemp => "SYS/TEMP",
        ResponseCode::SysPerm => "SYS/PERM",
        ResponseCode::Auth => "AUTH",
        ResponseCode::Other(s) => s,
    }
}

fn split_code(rest: &[u8]) -> (Option<ResponseCode>, &[u8]) {
    if rest.first() != Some(&b'[') {
        return (None, rest);
    }
    let Some(end) = memchr::memchr(b']', rest) else {
        return (None, rest);
    };
    let inner = &rest[1..end];
    let valid = !inner.is_empty()
        && inner
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-/_.".contains(&b));
    if !valid {
        return (None, rest);
    }
    let code = ResponseCode::parse(std::str::from_utf8(inner).unwrap_or_default());
    let text = &rest[end + 1..];
    let text = text.strip_prefix(b" ").unwrap_or(text);
    (Some(code), text)
}

pub(crate) fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn strip_prefix_ci<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &line[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records_are_told_from_greetings() {
        assert!(looks_like_tls_record(&[
            0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32
        ]));
        assert!(looks_like_tls_record(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls_record(b"+OK ready\r\n"));
        assert!(!looks_like_tls_record(b"-ERR"));
        assert!(!looks_like_tls_record(&[0x16]));
        assert!(!looks_like_tls_record(b""));
    }

    #[test]
    fn in_step_means_a_status_line_follows() {
        assert_eq!(begins_with_status(b"+OK 2 octets\r\n"), Some(true));
        assert_eq!(
            begins_with_status(b"-ERR no such message\r\nrest"),
            Some(true)
        );
        assert_eq!(begins_with_status(b"+ok\r\n"), Some(true));
        assert_eq!(begins_with_status(b""), None);
        assert_eq!(begins_with_status(b"+O"), None);
        assert_eq!(begins_with_status(b"-ERR partial"), None);
        // The rest of a message cut short by an unstuffed lone dot.
        assert_eq!(begins_with_status(b"after the dot\r\n"), Some(false));
        assert_eq!(begins_with_status(b"\r\n"), Some(false));
        assert_eq!(begins_with_status(b"a"), Some(false));
        assert_eq!(begins_with_status(b"+OKAY\r\n"), Some(false));
        // A SASL continuation is no answer to RETR or NOOP.
        assert_eq!(begins_with_status(b"+ \r\n"), Some(false));
        assert_eq!(begins_with_status(&[b'-'; MAX_STATUS_LINE]), Some(false));
    }

    #[test]
    fn ok_and_err_with_and_without_text() {
        let l = StatusLine::parse(b"+OK 2 320\r\n").unwrap();
        assert_eq!(
            (l.status, l.code, l.text.as_str()),
            (Status::Ok, None, "2 320")
        );
        let l = StatusLine::parse(b"+OK\r\n").unwrap();
        assert_eq!((l.status, l.text.as_str()), (Status::Ok, ""));
        let l = StatusLine::parse(b"-ERR no such message\n").unwrap();
        assert_eq!(
            (l.status, l.text.as_str()),
            (Status::Err, "no such message")
        );
        assert!(StatusLine::parse(b"+OKAY\r\n").is_err());
        assert!(StatusLine::parse(b"HELLO\r\n").is_err());
        assert!(StatusLine::parse(b"").is_err());
    }

    #[test]
    fn response_codes_are_typed() {
        let cases: [(&[u8], ResponseCode); 6] = [
            (b"-ERR [IN-USE] locked", ResponseCode::InUse),
            (b"-ERR [LOGIN-DELAY] wait", ResponseCode::LoginDelay),
            (b"-ERR [SYS/TEMP] try later", ResponseCode::SysTemp),
            (b"-ERR [SYS/PERM] gone", ResponseCode::SysPerm),
            (b"-ERR [AUTH] Authentication failed.", ResponseCode::Auth),
            (b"+OK [UTF8] fine", ResponseCode::Other("UTF8".into())),
        ];
        for (line, code) in cases {
            let l = StatusLine::parse(line).unwrap();
            assert_eq!(l.code, Some(code), "{}", String::from_utf8_lossy(line));
            assert!(!l.text.starts_with('['));
        }
        let l = StatusLine::parse(b"-ERR [not a code here").unwrap();
        assert_eq!(l.code, None);
        assert_eq!(l.text, "[not a code here");
    }

    #[test]
    fn sasl_continuation() {
        let l = StatusLine::parse(b"+ dGVzdA==\r\n").unwrap();
        assert_eq!((l.status, l.text.as_str()), (Status::Continue, "dGVzdA=="));
        let l = StatusLine::parse(b"+\r\n").unwrap();
        assert_eq!((l.status, l.text.as_str()), (Status::Continue, ""));
    }

    #[test]
    fn control_characters_are_escaped() {
        let l = StatusLine::parse(b"-ERR evil\x1b[2Jtext\r\n").unwrap();
        assert_eq!(l.text, "evil\\x1b[2Jtext");
    }

    #[test]
    fn status_line_framing_is_bounded() {
        assert_eq!(find_status_line(b"+OK", 512), Ok(None));
        assert_eq!(find_status_line(b"+OK\r\nrest", 512), Ok(Some(5)));
        assert_eq!(find_status_line(b"+OK\nrest", 512), Ok(Some(4)));
        let long = vec![b'a'; 600];
        assert_eq!(
            find_status_line(&long, 512),
            Err(ProtocolError::StatusLineTooLong { limit: 512 })
        );
        assert_eq!(find_status_line(&long[..511], 512), Ok(None));
    }
}
