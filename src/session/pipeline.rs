//! `Session::pipeline`: a bounded window of commands in flight, replies
//! yielded in order. The pairing itself is the pure
//! [`ReplyPairing`](crate::pop3::ReplyPairing); this drives it over the
//! socket with the session's time-outs.

use std::convert::Infallible;

use tokio::time::Instant;

use super::connection::MIN_PROGRESS;
use super::{BodyError, BodyStats, Session, SessionError};
use crate::pop3::{Command, Event, PairingError, ProtocolError, ReplyPairing, StatusLine};

/// A reply's status line; `body_follows`: read the body (with
/// [`Pipeline::read_body`] or one of its siblings) before the next status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub line: StatusLine,
    pub body_follows: bool,
}

/// Commands in flight on one session, at most `window` of them. With a
/// window of 1 it is lock-step: each command goes out alone and its reply
/// is read before the next is sent, the same bytes as without a pipeline.
///
/// Dropping a pipeline with replies outstanding leaves the session out of
/// step: end it only after an error (which ends the session too) or once
/// [`Pipeline::in_flight`] is 0.
pub struct Pipeline<'s> {
    session: &'s mut Session,
    pairing: ReplyPairing,
    window: usize,
    scratch: Vec<u8>,
}

impl Session {
    /// A pipeline of at most `window` commands in flight (at least 1).
    pub fn pipeline(&mut self, window: usize) -> Pipeline<'_> {
        Pipeline {
            session: self,
            pairing: ReplyPairing::new(),
            window: window.max(1),
            scratch: Vec::new(),
        }
    }

    /// [`Session::pipeline`] `window` deep when the server advertises
    /// PIPELINING, lock-step otherwise.
    pub fn pipeline_if_offered(&mut self, window: usize) -> Pipeline<'_> {
        let window = if self.can_pipeline() { window } else { 1 };
        self.pipeline(window)
    }

    /// Sends one command and reads its status line (lock-step), whatever it
    /// says. For commands without a multi-line reply.
    pub(crate) async fn exchange(&mut self, cmd: &Command<'_>) -> Result<StatusLine, SessionError> {
        let mut p = self.pipeline(1);
        p.send(cmd)?;
        Ok(p.next_reply().await?.line)
    }
}

fn pairing_error(e: PairingError) -> SessionError {
    match e {
        PairingError::Protocol(e) => SessionError::Protocol(e),
        PairingError::Unsolicited(line) => SessionError::Protocol(ProtocolError::Malformed {
            what: "unsolicited reply",
            line,
        }),
    }
}

impl Pipeline<'_> {
    pub fn window(&self) -> usize {
        self.window
    }

    /// Replies not yet read to their end.
    pub fn in_flight(&self) -> usize {
        self.pairing.in_flight()
    }

    /// Whether another command fits in the window.
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.window
    }

    /// Queues `cmd`; it goes out with the next read (or [`Pipeline::flush`]).
    /// Call only when [`Pipeline::has_room`]: a full window is the caller's
    /// cue to read a reply first.
    pub fn send(&mut self, cmd: &Command<'_>) -> Result<(), SessionError> {
        debug_assert!(self.has_room(), "pipeline window of {} full", self.window);
        // Dovecot answers a QUIT as soon as its output buffer is nearly
        // empty and drops what the client has not read yet.
        debug_assert!(
            !matches!(cmd, Command::Quit) || self.in_flight() == 0,
            "QUIT behind {} unread replies",
            self.in_flight()
        );
        self.session.conn.queue(cmd)?;
        self.pairing.expect(cmd);
        Ok(())
    }

    /// Sends what was queued.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.session.conn.flush().await
    }

    /// Sends what was queued, then reads the status line of the oldest
    /// command in flight (the whole line within the I/O time-out). A body
    /// left unread before it is read and dropped.
    pub async fn next_reply(&mut self) -> Result<Reply, SessionError> {
        if self.pairing.in_body() {
            self.read_body(u64::MAX, |_| Ok::<(), Infallible>(()))
                .await
                .map_err(never_sink)?;
        }
        self.flush().await?;
        let conn = &mut self.session.conn;
        let deadline = Instant::now() + conn.io_timeout;
        loop {
            match conn
                .pair_step(&mut self.pairing, &mut self.scratch)
                .map_err(pairing_error)?
            {
                Some(Event::Status { line, body_follows }) => {
                    conn.trace.server(&line);
                    return Ok(Reply { line, body_follows });
                }
                Some(Event::Body { .. }) => unreachable!("bodies are read above"),
                None => {
                    conn.fill(deadline, "reading a status line (in total)")
                        .await?;
                }
            }
        }
    }

    /// [`Pipeline::next_reply`], with `-ERR` turned into an error naming the command.
    pub async fn expect_ok(&mut self, cmd: &Command<'_>) -> Result<Reply, SessionError> {
        let reply = self.next_reply().await?;
        if reply.line.is_ok() {
            Ok(reply)
        } else {
            Err(SessionError::Command {
                command: format!("{cmd:?}"),
                line: reply.line,
            })
        }
    }

    /// After a body read to its end: whether the next reply has begun with
    /// a status line (the stream in step), without consuming it. LIST sizes
    /// are advisory, so this is what says a message really ended at its
    /// terminator. A command must be in flight.
    pub async fn next_is_status(&mut self) -> Result<bool, SessionError> {
        debug_assert!(!self.pairing.in_body() && self.in_flight() > 0);
        self.flush().await?;
        self.session.conn.next_is_status().await
    }

    /// Reads the body announced by the last status line, handing un-stuffed
    /// LF-ended chunks to `sink`. More than `limit` bytes is an error (the
    /// session is then out of step). Each I/O time-out must bring
    /// [`MIN_PROGRESS`] bytes or the body's end. A sink error is returned
    /// after the body was read to its end, so the pipeline stays in step.
    pub async fn read_body<E>(
        &mut self,
        limit: u64,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<BodyStats, BodyError<E>> {
        if !self.pairing.in_body() {
            return Ok(BodyStats::default());
        }
        let conn = &mut self.session.conn;
        let mut sink_error = None;
        let mut window_end = Instant::now() + conn.io_timeout;
        let mut window_bytes = 0;
        loop {
            self.scratch.clear();
            match conn
                .pair_step(&mut self.pairing, &mut self.scratch)
                .map_err(pairing_error)?
            {
                Some(Event::Body { done, lines, bytes }) => {
                    if bytes > limit {
                        return Err(SessionError::BodyTooLarge { limit }.into());
                    }
                    if sink_error.is_none()
                        && !self.scratch.is_empty()
                        && let Err(e) = sink(&self.scratch)
                    {
                        sink_error = Some(e);
                    }
                    if done {
                        conn.trace.body(lines, bytes);
                        return match sink_error {
                            Some(e) => Err(BodyError::Sink(e)),
                            None => Ok(BodyStats { lines, bytes }),
                        };
                    }
                }
                Some(Event::Status { .. }) => unreachable!("in a body until its end"),
                None => {
                    window_bytes += conn
                        .fill(
                            window_end,
                            "a multi-line response (less than 1 KiB per timeout)",
                        )
                        .await?;
                    if window_bytes >= MIN_PROGRESS {
                        window_end = Instant::now() + conn.io_timeout;
                        window_bytes = 0;
                    }
                }
            }
        }
    }

    /// Reads the whole body (at most `limit` bytes, else an error) and keeps
    /// its first `keep` bytes: e.g. the header section of a TOP.
    pub async fn read_body_prefix(
        &mut self,
        limit: u64,
        keep: usize,
    ) -> Result<Vec<u8>, SessionError> {
        let mut kept = Vec::new();
        self.read_body(limit, |chunk| {
            let room = keep.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            Ok::<(), Infallible>(())
        })
        .await
        .map_err(never_sink)?;
        Ok(kept)
    }

    /// Reads the whole body into memory, for listings (CAPA) whose size
    /// `limit` bounds.
    pub async fn read_body_to_vec(&mut self, limit: u64) -> Result<Vec<u8>, SessionError> {
        let mut body = Vec::new();
        self.read_body(limit, |chunk| {
            body.extend_from_slice(chunk);
            Ok::<(), Infallible>(())
        })
        .await
        .map_err(never_sink)?;
        Ok(body)
    }
}

fn never_sink(e: BodyError<Infallible>) -> SessionError {
    match e {
        BodyError::Session(e) => e,
        BodyError::Sink(never) => match never {},
    }
}
