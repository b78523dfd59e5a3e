//! Session errors, with predicates the engine and daemon decide on.

use std::time::Duration;

use crate::pop3::{CommandError, ProtocolError, ResponseCode, StatusLine};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} timed out after {}s", after.as_secs_f32())]
    Timeout { what: &'static str, after: Duration },
    /// Silence after connect on a port other than 995: a slow server, or
    /// an implicit-TLS port on an unusual number. Retried like a time-out.
    #[error(
        "no POP3 greeting from {addr} within {}s; if this port speaks TLS from the first byte, set tls = \"implicit\"",
        after.as_secs_f32()
    )]
    NoGreeting { addr: String, after: Duration },
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("TLS certificate of {host} rejected: {reason}")]
    Certificate { host: String, reason: String },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("TLS set-up: {0}")]
    TlsConfig(String),
    /// `tls = "implicit"` against a port that speaks plain POP3.
    #[error(
        "tls = \"implicit\" but {addr} answered in plain text (a POP3 greeting where a TLS ServerHello was expected): for this port set tls = \"starttls\", or set port = 995 (the implicit-TLS port)"
    )]
    PlainWhereTlsExpected { addr: String },
    /// `tls = "starttls"`/`"none"` against an implicit-TLS port.
    #[error(
        "{addr} {evidence}, so it is an implicit-TLS port: set tls = \"implicit\" for port {port}, or keep tls = \"{tls}\" and set port = 110"
    )]
    TlsWherePlainExpected {
        addr: String,
        port: u16,
        tls: &'static str,
        evidence: &'static str,
    },
    #[error("tls = \"starttls\" but the server does not offer STLS; no credential was sent")]
    StlsNotOffered,
    #[error("the server refused STLS ({}); no credential was sent", .0.describe())]
    StlsRefused(StatusLine),
    #[error(
        "the server sent data after accepting STLS and before the TLS handshake (injection?); no credential was sent"
    )]
    StlsInjection,
    #[error(
        "refusing to send {method} credentials over a connection without TLS; use tls = \"implicit\" or \"starttls\", or set allow_insecure_auth = true"
    )]
    InsecureAuth { method: &'static str },
    #[error("cannot authenticate: {0}")]
    NoAuthMethod(String),
    #[error("login refused ({method}): {}{}", line.describe(), refused_login_hint(line))]
    AuthFailed {
        method: &'static str,
        line: StatusLine,
    },
    #[error("{command} failed: {}", line.describe())]
    Command { command: String, line: StatusLine },
    #[error("the server's response is malformed: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("cannot encode command: {0}")]
    Encode(#[from] CommandError),
    #[error("multi-line response exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// What followed a message's terminator was not a status line: the
    /// server ended the message early (an unstuffed lone `.` line).
    #[error(
        "message {msg} (UID {uid}) looks truncated: after its end the server sent more data, not a status line (a lone \".\" line it did not stuff?); it was not stored and nothing was deleted"
    )]
    OutOfStep { msg: u32, uid: String },
    /// A listing or CAPA beyond popsync's bounds (hostile or misconfigured).
    #[error("the server's {what} response is too long: {detail}")]
    TooLong { what: &'static str, detail: String },
}

/// What to check when the server says the credentials are wrong; nothing
/// when it said "locked", "later" or "broken" (the password was not the issue).
fn refused_login_hint(line: &StatusLine) -> &'static str {
    match line.code {
        Some(
            ResponseCode::InUse
            | ResponseCode::LoginDelay
            | ResponseCode::SysTemp
            | ResponseCode::SysPerm,
        ) => "",
        _ => {
            "; check `username` (often the full address) and the password; providers with two-factor sign-in want an app password, some only OAuth2 (auth = \"xoauth2\")"
        }
    }
}

impl SessionError {
    /// The extended response code the server gave, if any.
    pub fn response_code(&self) -> Option<&ResponseCode> {
        match self {
            SessionError::AuthFailed { line, .. } | SessionError::Command { line, .. } => {
                line.code.as_ref()
            }
            _ => None,
        }
    }

    /// Worth retrying later with nothing changed: network trouble, time-outs,
    /// and the server's own "not now" codes.
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Connect { .. }
            | SessionError::Timeout { .. }
            | SessionError::NoGreeting { .. }
            | SessionError::Io(_)
            | SessionError::Closed => true,
            SessionError::AuthFailed { .. } | SessionError::Command { .. } => matches!(
                self.response_code(),
                Some(ResponseCode::InUse | ResponseCode::LoginDelay | ResponseCode::SysTemp)
            ),
            _ => false,
        }
    }

    /// The server said the credentials are wrong (not "locked", not "later",
    /// not "the server itself is broken": RFC 3206 [SYS/PERM]).
    pub fn is_auth(&self) -> bool {
        matches!(self, SessionError::AuthFailed { .. })
            && !self.is_transient()
            && self.response_code() != Some(&ResponseCode::SysPerm)
            || matches!(self, SessionError::NoAuthMethod(_))
    }

    /// A TLS or certificate failure, or a refusal to go on without TLS.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            SessionError::Certificate { .. }
                | SessionError::Tls { .. }
                | SessionError::TlsConfig(_)
                | SessionError::StlsNotOffered
                | SessionError::PlainWhereTlsExpected { .. }
                | SessionError::TlsWherePlainExpected { .. }
                | SessionError::StlsRefused(_)
                | SessionError::StlsInjection
                | SessionError::InsecureAuth { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_line(raw: &[u8]) -> StatusLine {
        StatusLine::parse(raw).unwrap()
    }

    #[test]
    fn in_use_is_transient_not_auth() {
        let e = SessionError::AuthFailed {
            method: "USER",
            line: err_line(b"-ERR [IN-USE] locked"),
        };
        assert!(e.is_transient());
        assert!(!e.is_auth());
        let e = SessionError::AuthFailed {
            method: "USER",
            line: err_line(b"-ERR [AUTH] bad"),
        };
        assert!(!e.is_transient());
        assert!(e.is_auth());
        let e = SessionError::AuthFailed {
            method: "USER",
            line: err_line(b"-ERR [SYS/PERM] gone"),
        };
        assert!(!e.is_transient());
        assert!(
            !e.is_auth(),
            "a permanent server failure is not bad credentials"
        );
    }

    #[test]
    fn network_trouble_is_transient() {
        assert!(SessionError::Closed.is_transient());
        assert!(
            SessionError::Timeout {
                what: "read",
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(SessionError::StlsNotOffered.is_tls());
        assert!(!SessionError::StlsNotOffered.is_transient());
    }
}
