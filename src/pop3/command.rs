//! Commands the client sends, serialised exactly as RFC 1939/2449/5034 say.

use std::fmt;

/// RFC 2449 §4: a command line is at most 255 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 255;

#[derive(Clone, PartialEq, Eq)]
pub enum Command<'a> {
    User(&'a str),
    Pass(&'a str),
    /// `APOP name digest`, the digest being lowercase hex MD5.
    Apop {
        user: &'a str,
        digest: &'a str,
    },
    /// `AUTH mechanism [initial-response]`.
    Auth {
        mechanism: &'a str,
        initial: Option<&'a str>,
    },
    /// A SASL continuation line: base64, possibly empty.
    AuthResponse(&'a str),
    /// `*` cancels a SASL exchange.
    AuthCancel,
    Stls,
    Capa,
    Stat,
    List(Option<u32>),
    Uidl(Option<u32>),
    Retr(u32),
    Top(u32, u32),
    Dele(u32),
    Noop,
    Rset,
    /// RFC 6856: UTF-8 mode, before authenticating.
    Utf8,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("a command argument contains a line break or NUL")]
    ForbiddenByte,
    #[error("a command line would be {0} octets, over the limit of {MAX_COMMAND_LINE}")]
    TooLong(usize),
    #[error("a command argument is empty or contains a space")]
    BadArgument,
}

impl Command<'_> {
    /// True when a `+OK` reply to this command is followed by a multi-line
    /// body ending in `.`.
    pub fn has_multiline_reply(&self) -> bool {
        matches!(
            self,
            Command::Capa
                | Command::List(None)
                | Command::Uidl(None)
                | Command::Retr(_)
                | Command::Top(_, _)
        )
    }

    /// True when the line carries a secret (password, digest, SASL data).
    pub fn is_sensitive(&self) -> bool {
        matches!(
            self,
            Command::Pass(_)
                | Command::Apop { .. }
                | Command::AuthResponse(_)
                | Command::Auth {
                    initial: Some(_),
                    ..
                }
        )
    }

    /// Appends the command line, CRLF included, to `buf`. On error `buf` is
    /// left as it was.
    pub fn encode(&self, buf: &mut Vec<u8>) -> Result<(), CommandError> {
        let start = buf.len();
        let result = self.encode_unchecked(buf).and_then(|()| {
            let line = &buf[start..];
            if line.len() + 2 > MAX_COMMAND_LINE {
                return Err(CommandError::TooLong(line.len() + 2));
            }
            if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(CommandError::ForbiddenByte);
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                buf.extend_from_slice(b"\r\n");
                Ok(())
            }
            Err(e) => {
                buf.truncate(start);
                Err(e)
            }
        }
    }

    fn encode_unchecked(&self, buf: &mut Vec<u8>) -> Result<(), CommandError> {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let w = buf;
        match self {
            Command::User(name) => {
                word(name)?;
                let _ = write!(w, "USER {name}");
            }
            // RFC 1939 allows spaces in the PASS argument; it is the rest of the line.
            Command::Pass(pw) => {
                if pw.is_empty() {
                    return Err(CommandError::BadArgument);
                }
                let _ = write!(w, "PASS {pw}");
            }
            Command::Apop { user, digest } => {
                word(user)?;
                word(digest)?;
                let _ = write!(w, "APOP {user} {digest}");
            }
            Command::Auth { mechanism, initial } => {
                word(mechanism)?;
                let _ = write!(w, "AUTH {mechanism}");
                if let Some(ir) = initial {
                    // RFC 5034: an empty initial response is sent as "=".
                    let ir = if ir.is_empty() { "=" } else { ir };
                    word(ir)?;
                    let _ = write!(w, " {ir}");
                }
            }
            Command::AuthResponse(data) => {
                if data.contains(' ') {
                    return Err(CommandError::BadArgument);
                }
                w.extend_from_slice(data.as_bytes());
            }
            Command::AuthCancel => w.push(b'*'),
            Command::Stls => w.extend_from_slice(b"STLS"),
            Command::Capa => w.extend_from_slice(b"CAPA"),
            Command::Stat => w.extend_from_slice(b"STAT"),
            Command::List(None) => w.extend_from_slice(b"LIST"),
            Command::List(Some(n)) => {
                let _ = write!(w, "LIST {n}");
            }
            Command::Uidl(None) => w.extend_from_slice(b"UIDL"),
            Command::Uidl(Some(n)) => {
                let _ = write!(w, "UIDL {n}");
            }
            Command::Retr(n) => {
                let _ = write!(w, "RETR {n}");
            }
            Command::Top(n, lines) => {
                let _ = write!(w, "TOP {n} {lines}");
            }
            Command::Dele(n) => {
                let _ = write!(w, "DELE {n}");
            }
            Command::Noop => w.extend_from_slice(b"NOOP"),
            Command::Utf8 => w.extend_from_slice(b"UTF8"),
            Command::Rset => w.extend_from_slice(b"RSET"),
            Command::Quit => w.extend_from_slice(b"QUIT"),
        }
        Ok(())
    }
}

fn word(s: &str) -> Result<(), CommandError> {
    if s.is_empty() || s.contains(' ') {
        Err(CommandError::BadArgument)
    } else {
        Ok(())
    }
}

/// Shows the command as a transcript line with every secret replaced.
impl fmt::Debug for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Pass(_) => f.write_str("PASS <redacted>"),
            Command::Apop { user, .. } => write!(f, "APOP {user} <redacted>"),
            Command::Auth {
                mechanism,
                initial: Some(_),
            } => write!(f, "AUTH {mechanism} <redacted>"),
            Command::AuthResponse(_) => f.write_str("<redacted SASL response>"),
            other => {
                let mut buf = Vec::new();
                match other.encode(&mut buf) {
                    Ok(()) => f.write_str(String::from_utf8_lossy(&buf).trim_end()),
                    Err(e) => write!(f, "<unencodable command: {e}>"),
                }
            }
        }
    }
}

impl fmt::Display for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command) -> String {
        let mut b = Vec::new();
        c.encode(&mut b).unwrap();
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn every_command_serialises_exactly() {
        assert_eq!(enc(Command::User("alice")), "USER alice\r\n");
        assert_eq!(enc(Command::Pass("se cret")), "PASS se cret\r\n");
        assert_eq!(
            enc(Command::Apop {
                user: "mrose",
                digest: "c4c9334bac560ecc979e58001b3e22fb"
            }),
            "APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"
        );
        assert_eq!(
            enc(Command::Auth {
                mechanism: "PLAIN",
                initial: Some("AGEAYg==")
            }),
            "AUTH PLAIN AGEAYg==\r\n"
        );
        assert_eq!(
            enc(Command::Auth {
                mechanism: "XOAUTH2",
                initial: None
            }),
            "AUTH XOAUTH2\r\n"
        );
        assert_eq!(
            enc(Command::Auth {
                mechanism: "EXTERNAL",
                initial: Some("")
            }),
            "AUTH EXTERNAL =\r\n"
        );
        assert_eq!(enc(Command::AuthResponse("dG9r")), "dG9r\r\n");
        assert_eq!(enc(Command::AuthResponse("")), "\r\n");
        assert_eq!(enc(Command::AuthCancel), "*\r\n");
        assert_eq!(enc(Command::Stls), "STLS\r\n");
        assert_eq!(enc(Command::Capa), "CAPA\r\n");
        assert_eq!(enc(Command::Stat), "STAT\r\n");
        assert_eq!(enc(Command::List(None)), "LIST\r\n");
        assert_eq!(enc(Command::List(Some(7))), "LIST 7\r\n");
        assert_eq!(enc(Command::Uidl(None)), "UIDL\r\n");
        assert_eq!(enc(Command::Uidl(Some(2))), "UIDL 2\r\n");
        assert_eq!(enc(Command::Retr(12)), "RETR 12\r\n");
        assert_eq!(enc(Command::Top(3, 0)), "TOP 3 0\r\n");
        assert_eq!(enc(Command::Dele(4)), "DELE 4\r\n");
        assert_eq!(enc(Command::Noop), "NOOP\r\n");
        assert_eq!(enc(Command::Utf8), "UTF8\r\n");
        assert_eq!(enc(Command::Rset), "RSET\r\n");
        assert_eq!(enc(Command::Quit), "QUIT\r\n");
    }

    #[test]
    fn injection_and_overlong_lines_are_refused() {
        let mut b = b"keep".to_vec();
        assert_eq!(
            Command::User("a\r\nDELE 1").encode(&mut b),
            Err(CommandError::BadArgument)
        );
        assert_eq!(
            Command::Pass("x\r\nDELE 1").encode(&mut b),
            Err(CommandError::ForbiddenByte)
        );
        assert_eq!(
            Command::Pass("x\0").encode(&mut b),
            Err(CommandError::ForbiddenByte)
        );
        let long = "a".repeat(300);
        assert!(matches!(
            Command::Pass(&long).encode(&mut b),
            Err(CommandError::TooLong(_))
        ));
        assert_eq!(b, b"keep", "a failed encode leaves the buffer untouched");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let shown = format!(
            "{:?} {:?} {:?} {}",
            Command::Pass("hunter2"),
            Command::Apop {
                user: "u",
                digest: "abcdef"
            },
            Command::Auth {
                mechanism: "PLAIN",
                initial: Some("c2VjcmV0")
            },
            Command::AuthResponse("c2VjcmV0")
        );
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("abcdef"));
        assert!(!shown.contains("c2VjcmV0"));
        assert_eq!(format!("{:?}", Command::Retr(5)), "RETR 5");
    }

    #[test]
    fn multiline_replies_are_known() {
        assert!(Command::Retr(1).has_multiline_reply());
        assert!(Command::List(None).has_multiline_reply());
        assert!(!Command::List(Some(1)).has_multiline_reply());
        assert!(!Command::Dele(1).has_multiline_reply());
    }
}
