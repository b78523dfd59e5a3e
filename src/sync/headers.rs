//! A bounded capture of the header sections of the newest delivered
//! messages, so the daemon can say who wrote and about what without ever
//! holding whole messages (memory stays flat for 10,000 new messages).

use std::collections::VecDeque;

/// At most this much of a message's start is kept: enough for any sane
/// header section, small enough to keep for a few messages per account.
pub const HEADER_CAPTURE_LIMIT: usize = 16 * 1024;
/// How many of the newest messages' headers a report keeps.
pub const NEWEST_KEPT: usize = 3;

/// Collects the header section (up to and including the blank line) of one
/// message from the LF-ended chunks the decoder hands out.
#[derive(Debug, Default)]
pub(crate) struct HeaderCapture {
    buf: Vec<u8>,
    done: bool,
}

impl HeaderCapture {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        // The blank line may straddle two chunks: look back one byte.
        let start = self.buf.len().saturating_sub(1);
        let room = HEADER_CAPTURE_LIMIT - self.buf.len();
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if let Some(i) = memchr::memmem::find(&self.buf[start..], b"\n\n") {
            self.buf.truncate(start + i + 2);
            self.done = true;
        } else if self.buf.len() >= HEADER_CAPTURE_LIMIT {
            self.done = true;
        }
    }

    pub fn take(&mut self) -> Vec<u8> {
        self.done = false;
        std::mem::take(&mut self.buf)
    }
}

/// Appends `item`, dropping the oldest beyond [`NEWEST_KEPT`].
pub(crate) fn keep_newest(ring: &mut VecDeque<Vec<u8>>, item: Vec<u8>) {
    if ring.len() == NEWEST_KEPT {
        ring.pop_front();
    }
    ring.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_blank_line_even_across_chunks() {
        let mut c = HeaderCapture::default();
        c.feed(b"Subject: hi\nFrom: a@b\n");
        c.feed(b"\nbody line\n");
        c.feed(b"more\n");
        assert_eq!(c.take(), b"Subject: hi\nFrom: a@b\n\n");
    }

    #[test]
    fn bounded_for_a_message_without_blank_line() {
        let mut c = HeaderCapture::default();
        let line = vec![b'x'; 1000];
        for _ in 0..100 {
            c.feed(&line);
        }
        assert_eq!(c.take().len(), HEADER_CAPTURE_LIMIT);
    }

    #[test]
    fn ring_keeps_the_newest_three() {
        let mut ring = VecDeque::new();
        for i in 0..10u8 {
            keep_newest(&mut ring, vec![i]);
        }
        assert_eq!(ring, [vec![7], vec![8], vec![9]]);
    }
}
