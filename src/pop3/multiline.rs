//! Streaming decoder for multi-line responses (RFC 1939 §3).
//!
//! Fed the bytes after a `+OK` status line in chunks of any size, it removes
//! the byte-stuffing (`..` at a line start), turns CRLF into LF and stops at
//! the terminating `.` line. It keeps two bytes of state at most, so memory is
//! bounded by the chunk, not by the message. Bare LF line ends are accepted.

/// How far one call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used. Bytes after the terminator are not consumed: with
    /// pipelining they are the next response.
    pub consumed: usize,
    /// The terminating `.` line was seen.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// A line began with `.`; the next byte decides between stuffing and the end.
    Dot,
    /// Saw `.` CR at a line start.
    DotCr,
    /// Inside a line.
    InLine,
    /// Inside a line, a CR ended the previous chunk: held until we know whether LF follows.
    InLineCr,
    Done,
}

#[derive(Debug, Clone)]
pub struct MultilineDecoder {
    state: State,
    lines: u64,
    bytes_out: u64,
}

impl Default for MultilineDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MultilineDecoder {
    pub fn new() -> Self {
        MultilineDecoder {
            state: State::LineStart,
            lines: 0,
            bytes_out: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Lines decoded so far (the terminator not counted).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes appended to `out` so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Decodes from `input`, appending message bytes to `out` (at most
    /// `input.len() + 1` bytes per call).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let before = out.len();
        let result = self.decode_inner(input, out);
        self.bytes_out += (out.len() - before) as u64;
        result
    }

    fn decode_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::LineStart => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::Dot => match input[i] {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        self.state = State::Done;
                        i += 1;
                    }
                    // A stuffed line: the leading dot is dropped, the rest is data.
                    _ => self.state = State::InLine,
                },
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        i += 1;
                    } else {
                        // ".\rX": the dot was stuffing, the CR is data.
                        out.push(b'\r');
                        self.state = State::InLine;
                    }
                }
                State::InLineCr => {
                    if input[i] == b'\n' {
                        out.push(b'\n');
                        self.lines += 1;
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        out.push(b'\r');
                        self.state = State::InLine;
                    }
                }
                State::InLine => {
                    let rest = &input[i..];
                    match memchr::memchr(b'\n', rest) {
                        Some(nl) => {
                            let line = &rest[..nl];
                            out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                            out.push(b'\n');
                            self.lines += 1;
                            self.state = State::LineStart;
                            i += nl + 1;
                        }
                        None => {
                            if let Some(head) = rest.strip_suffix(b"\r") {
                                out.extend_from_slice(head);
                                self.state = State::InLineCr;
                            } else {
                                out.extend_from_slice(rest);
                            }
                            i = input.len();
                        }
                    }
                }
            }
        }
        Decoded {
            consumed: i,
            done: self.state == State::Done,
        }
    }
}

/// Encodes `message` (LF or CRLF line ends) as a server would send it after
/// `+OK`: CRLF line ends, stuffed dots, and the terminator. Used by tests and
/// the demo server.
pub fn encode_multiline(message: &[u8], out: &mut Vec<u8>) {
    for line in message.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(wire: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in wire.chunks(chunk) {
            let r = d.decode(piece, &mut out);
            used += r.consumed;
            if r.done {
                return (out, used);
            }
            assert_eq!(r.consumed, piece.len());
        }
        panic!("no terminator seen");
    }

    fn all_chunkings(wire: &[u8]) -> Vec<u8> {
        let (first, used) = decode_in_chunks(wire, wire.len());
        for chunk in 1..=wire.len().min(9) {
            assert_eq!(
                decode_in_chunks(wire, chunk),
                (first.clone(), used),
                "chunk {chunk}"
            );
        }
        first
    }

    #[test]
    fn unstuffs_and_normalises_line_ends() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n...\r\n..\r\nplain\r\n.\r\n";
        assert_eq!(
            all_chunkings(wire),
            b"Subject: x\n\n.leading dot\n..\n.\nplain\n"
        );
    }

    #[test]
    fn empty_message() {
        assert_eq!(all_chunkings(b".\r\n"), b"");
    }

    #[test]
    fn bare_lf_is_tolerated() {
        assert_eq!(all_chunkings(b"a\n..b\n\n.\n"), b"a\n.b\n\n");
    }

    #[test]
    fn lone_cr_and_dot_cr_stay_data() {
        assert_eq!(
            all_chunkings(b"a\rb\r\n.\rx\r\n\r\r\n.\r\n"),
            b"a\rb\n\rx\n\r\n"
        );
    }

    #[test]
    fn binary_bytes_survive() {
        let wire = b"\x00\xff\xfe 8bit \xe9\r\n.\r\n";
        assert_eq!(all_chunkings(wire), b"\x00\xff\xfe 8bit \xe9\n");
    }

    #[test]
    fn stops_at_terminator_and_leaves_the_rest() {
        let wire = b"one\r\n.\r\n+OK next\r\n";
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        let r = d.decode(wire, &mut out);
        assert!(r.done);
        assert_eq!(&wire[r.consumed..], b"+OK next\r\n");
        assert_eq!(out, b"one\n");
        assert_eq!(d.lines(), 1);
        // Once done, further input is not touched.
        assert_eq!(d.decode(b"more", &mut out).consumed, 0);
    }

    #[test]
    fn output_is_bounded_by_the_chunk() {
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        for piece in [&b"abc\r"[..], b"\r", b"\n", b".", b"\r"] {
            out.clear();
            d.decode(piece, &mut out);
            assert!(out.len() <= piece.len() + 1);
        }
        assert!(!d.is_done());
    }

    #[test]
    fn encode_round_trips() {
        let msg = b"From: a\n\n.\n..x\n.y\nend without newline";
        let mut wire = Vec::new();
        encode_multiline(msg, &mut wire);
        assert_eq!(
            all_chunkings(&wire),
            b"From: a\n\n.\n..x\n.y\nend without newline\n"
        );
    }
}

/// Property tests: dot-stuffing round trips for arbitrary bytes, split at
/// arbitrary points.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// What a client must store for `message`: each line's LF or CRLF end
    /// (and a CR before the end of input) becomes LF, as the encoder sends
    /// every line with CRLF.
    fn expected(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            out.extend_from_slice(body.strip_suffix(b"\r").unwrap_or(body));
            out.push(b'\n');
        }
        out
    }

    /// Bytes with the troublemakers (`.`, CR, LF) much more common than in
    /// uniform noise.
    fn mail_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => Just(b'.'),
            2 => Just(b'\r'),
            3 => Just(b'\n'),
            4 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..600)
    }

    proptest! {
        #[test]
        fn stuffing_round_trips(
            message in mail_bytes(),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let mut wire = Vec::new();
            encode_multiline(&message, &mut wire);
            let body_len = wire.len();
            wire.extend_from_slice(b"+OK next response\r\n");
            let mut d = MultilineDecoder::new();
            let mut out = Vec::new();
            let (mut pos, mut k) = (0, 0);
            while !d.is_done() {
                prop_assert!(pos < wire.len(), "terminator not found");
                let size = cuts.get(k).copied().unwrap_or(wire.len());
                k += 1;
                let end = wire.len().min(pos + size);
                pos += d.decode(&wire[pos..end], &mut out).consumed;
            }
            prop_assert_eq!(pos, body_len, "must not eat the next response");
            prop_assert_eq!(out, expected(&message));
        }

        #[test]
        fn lf_text_round_trips_exactly(lines in proptest::collection::vec("[.]{0,3}[ -~]{0,20}", 0..30)) {
            let message: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let mut wire = Vec::new();
            encode_multiline(&message, &mut wire);
            let mut out = Vec::new();
            let r = MultilineDecoder::new().decode(&wire, &mut out);
            prop_assert!(r.done);
            prop_assert_eq!(out, message);
        }
    }
}
