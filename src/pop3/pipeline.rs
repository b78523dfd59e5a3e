//! Pairing queued commands with their replies (RFC 2449 PIPELINING).
//!
//! Pure: the caller tells [`ReplyPairing`] which commands went out, feeds it
//! the bytes that came back in chunks of any size, and gets typed events in
//! order. Whether a reply is one status line or a status line plus a
//! multi-line body follows from [`Command::has_multiline_reply`] and the
//! status (`-ERR` never has a body), so nobody pairs replies by hand.

use std::collections::VecDeque;

use super::{Command, MAX_STATUS_LINE, MultilineDecoder, ProtocolError, Status, StatusLine};
use super::{find_status_line, sanitize};

/// What a command's reply looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// One status line.
    Status,
    /// A status line; after `+OK`, a dot-terminated body.
    Multiline,
}

impl ReplyShape {
    pub fn of(cmd: &Command<'_>) -> ReplyShape {
        if cmd.has_multiline_reply() {
            ReplyShape::Multiline
        } else {
            ReplyShape::Status
        }
    }
}

/// One step of a reply, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The status line of the oldest command in flight. `body_follows`:
    /// `Body` events come next, before the next reply's status line.
    Status {
        line: StatusLine,
        body_follows: bool,
    },
    /// Body bytes were appended (un-stuffed, LF line ends) to the output;
    /// `lines` and `bytes` count the whole body so far; `done` at its end.
    Body { done: bool, lines: u64, bytes: u64 },
}

/// How far one [`ReplyPairing::step`] got. `event: None` means the input
/// holds no complete step: feed more bytes (after the `consumed` ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub event: Option<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    #[error("the server sent {0:?} while no command was awaiting a reply")]
    Unsolicited(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// The client side of a pipeline: commands in flight, oldest first, and the
/// body being decoded.
#[derive(Debug, Clone, Default)]
pub struct ReplyPairing {
    awaiting: VecDeque<ReplyShape>,
    body: Option<MultilineDecoder>,
}

impl ReplyPairing {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `cmd` was sent (or queued to be sent).
    pub fn expect(&mut self, cmd: &Command<'_>) {
        self.awaiting.push_back(ReplyShape::of(cmd));
    }

    /// Replies not yet complete, the one whose body is being read included.
    pub fn in_flight(&self) -> usize {
        self.awaiting.len() + usize::from(self.body.is_some())
    }

    /// A status line said a body follows and its end has not been seen.
    pub fn in_body(&self) -> bool {
        self.body.is_some()
    }

    /// Parses the next step from the start of `input`; body bytes go to
    /// `body_out`. Bytes after a reply's end are left for the next call.
    pub fn step(&mut self, input: &[u8], body_out: &mut Vec<u8>) -> Result<Step, PairingError> {
        if let Some(decoder) = &mut self.body {
            if input.is_empty() {
                return Ok(Step {
                    consumed: 0,
                    event: None,
                });
            }
            let decoded = decoder.decode(input, body_out);
            let event = Event::Body {
                done: decoded.done,
                lines: decoder.lines(),
                bytes: decoder.bytes_out(),
            };
            if decoded.done {
                self.body = None;
            }
            return Ok(Step {
                consumed: decoded.consumed,
                event: Some(event),
            });
        }
        let Some(len) = find_status_line(input, MAX_STATUS_LINE)? else {
            return Ok(Step {
                consumed: 0,
                event: None,
            });
        };
        let Some(&shape) = self.awaiting.front() else {
            return Err(PairingError::Unsolicited(sanitize(&input[..len], 80)));
        };
        let line = StatusLine::parse(&input[..len])?;
        self.awaiting.pop_front();
        let body_follows = shape == ReplyShape::Multiline && line.status == Status::Ok;
        if body_follows {
            self.body = Some(MultilineDecoder::new());
        }
        Ok(Step {
            consumed: len,
            event: Some(Event::Status { line, body_follows }),
        })
    }
}

/// A whole reply, for callers (and fuzzers) that hold all the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub line: StatusLine,
    pub body: Option<Vec<u8>>,
}

/// Pairs `commands` with the replies in `wire`: the complete replies, in
/// order, and the bytes used. Stops early at a reply not yet complete.
pub fn pair_replies(
    commands: &[Command<'_>],
    wire: &[u8],
) -> Result<(Vec<Reply>, usize), PairingError> {
    let mut pairing = ReplyPairing::new();
    for cmd in commands {
        pairing.expect(cmd);
    }
    let (mut replies, mut pos, mut used) = (Vec::new(), 0, 0);
    let mut current: Option<Reply> = None;
    let mut body = Vec::new();
    while pairing.in_flight() > 0 {
        let step = pairing.step(&wire[pos..], &mut body)?;
        pos += step.consumed;
        match step.event {
            None => break,
            Some(Event::Status { line, body_follows }) => {
                let reply = Reply { line, body: None };
                if body_follows {
                    current = Some(reply);
                } else {
                    replies.push(reply);
                    used = pos;
                }
            }
            Some(Event::Body { done: false, .. }) => {}
            Some(Event::Body { done: true, .. }) => {
                if let Some(mut reply) = current.take() {
                    reply.body = Some(std::mem::take(&mut body));
                    replies.push(reply);
                    used = pos;
                }
            }
        }
    }
    Ok((replies, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(step: &Step) -> (&str, bool) {
        match &step.event {
            Some(Event::Status { line, body_follows }) => (line.text.as_str(), *body_follows),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn shapes_follow_the_command() {
        assert_eq!(ReplyShape::of(&Command::Retr(1)), ReplyShape::Multiline);
        assert_eq!(ReplyShape::of(&Command::Uidl(None)), ReplyShape::Multiline);
        assert_eq!(ReplyShape::of(&Command::Uidl(Some(1))), ReplyShape::Status);
        assert_eq!(ReplyShape::of(&Command::Dele(1)), ReplyShape::Status);
    }

    #[test]
    fn replies_pair_in_order_with_bodies_only_after_ok() {
        let cmds = [
            Command::Stat,
            Command::Retr(1),
            Command::Retr(2),
            Command::Dele(1),
            Command::List(None),
        ];
        let wire = b"+OK 2 10\r\n+OK\r\nhi\r\n..dot\r\n.\r\n-ERR no such message\r\n+OK deleted\r\n+OK\r\n1 5\r\n.\r\n";
        let (replies, used) = pair_replies(&cmds, wire).unwrap();
        assert_eq!(used, wire.len());
        let shown: Vec<_> = replies
            .iter()
            .map(|r| (r.line.status, r.line.text.as_str(), r.body.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                (Status::Ok, "2 10", None),
                (Status::Ok, "", Some(&b"hi\n.dot\n"[..])),
                (Status::Err, "no such message", None),
                (Status::Ok, "deleted", None),
                (Status::Ok, "", Some(&b"1 5\n"[..])),
            ]
        );
    }

    #[test]
    fn partial_input_asks_for_more_bytes() {
        let mut p = ReplyPairing::new();
        p.expect(&Command::Dele(1));
        p.expect(&Command::Top(1, 0));
        let mut out = Vec::new();
        // Half a status line: nothing consumed, need more.
        let s = p.step(b"+OK del", &mut out).unwrap();
        assert_eq!((s.consumed, s.event), (0, None));
        let s = p.step(b"+OK deleted\r\n+OK", &mut out).unwrap();
        assert_eq!((s.consumed, status(&s)), (13, ("deleted", false)));
        let s = p.step(b"+OK", &mut out).unwrap();
        assert_eq!((s.consumed, s.event), (0, None));
        let s = p.step(b"+OK top\r\nSubj", &mut out).unwrap();
        assert_eq!((s.consumed, status(&s)), (9, ("top", true)));
        assert!(p.in_body());
        // Empty input mid-body: need more.
        assert_eq!(p.step(b"", &mut out).unwrap().event, None);
        let s = p.step(b"Subj", &mut out).unwrap();
        assert_eq!(s.consumed, 4);
        assert!(matches!(s.event, Some(Event::Body { done: false, .. })));
        let s = p.step(b"ect: x\r\n.\r", &mut out).unwrap();
        assert!(matches!(s.event, Some(Event::Body { done: false, .. })));
        let s = p.step(b"\n+OK next", &mut out).unwrap();
        assert_eq!(s.consumed, 1, "the next reply's bytes stay unread");
        assert_eq!(
            s.event,
            Some(Event::Body {
                done: true,
                lines: 1,
                bytes: 11
            })
        );
        assert_eq!(out, b"Subject: x\n");
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn incomplete_replies_are_not_returned() {
        let cmds = [Command::Noop, Command::Retr(1)];
        let wire = b"+OK\r\n+OK\r\nbody not ended\r\n";
        let (replies, used) = pair_replies(&cmds, wire).unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(used, 5);
    }

    #[test]
    fn a_reply_nobody_asked_for_is_an_error() {
        let mut p = ReplyPairing::new();
        let err = p.step(b"+OK surprise\r\n", &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PairingError::Unsolicited(_)), "{err}");
        // Nothing awaited and nothing complete yet: just need more.
        assert_eq!(p.step(b"+OK", &mut Vec::new()).unwrap().event, None);
    }

    #[test]
    fn garbage_and_endless_lines_are_protocol_errors() {
        let mut p = ReplyPairing::new();
        p.expect(&Command::Stat);
        assert!(matches!(
            p.step(b"HELLO\r\n", &mut Vec::new()),
            Err(PairingError::Protocol(ProtocolError::NotAStatus(_)))
        ));
        let mut p = ReplyPairing::new();
        p.expect(&Command::Stat);
        assert!(matches!(
            p.step(&[b'+'; MAX_STATUS_LINE], &mut Vec::new()),
            Err(PairingError::Protocol(
                ProtocolError::StatusLineTooLong { .. }
            ))
        ));
    }

    #[test]
    fn a_sasl_continuation_pairs_as_a_status_line() {
        let (replies, _) = pair_replies(
            &[Command::Auth {
                mechanism: "XOAUTH2",
                initial: None,
            }],
            b"+ \r\n",
        )
        .unwrap();
        assert_eq!(replies[0].line.status, Status::Continue);
    }
}
