//! What every fuzz target asserts, shared by `fuzz/fuzz_targets/*` (cargo
//! fuzz) and `tests/fuzz_corpus_replay.rs` (the normal test suite replays
//! the checked-in corpora through the same checks).

use popsync::pop3::listing::parse_lines;
use popsync::pop3::pipeline::{Reply, pair_replies};
use popsync::pop3::{
    Capabilities, Command, Event, ListEntry, MAX_STATUS_LINE, MultilineDecoder, ReplyPairing, Stat,
    StatusLine, Uid, UidList, UidlEntry, find_status_line,
};

/// No control characters may reach a log line or a notification.
fn assert_printable(s: &str) {
    assert!(
        !s.chars().any(|c| c.is_control()),
        "unsanitised text: {s:?}"
    );
}

/// Decodes `wire` in chunks whose sizes come from `sizes` (cycled).
fn decode_chunked(wire: &[u8], sizes: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut d = MultilineDecoder::new();
    let mut out = Vec::new();
    let (mut pos, mut k) = (0, 0);
    while pos < wire.len() {
        let size = match sizes {
            [] => wire.len(),
            s => usize::from(s[k % s.len()]).max(1),
        };
        k += 1;
        let piece = &wire[pos..wire.len().min(pos + size)];
        let before = out.len();
        let r = d.decode(piece, &mut out);
        assert!(r.consumed <= piece.len());
        assert!(out.len() - before <= piece.len() + 1, "output per call");
        pos += r.consumed;
        if r.done {
            assert!(d.is_done());
            return (out, pos, true);
        }
        assert_eq!(r.consumed, piece.len(), "stopped early without the end");
    }
    (out, pos, false)
}

/// The first byte says how many chunk-size bytes follow; the rest is the
/// wire. Any chunking gives the same result as one call; never more bytes
/// out than in.
pub fn multiline_decoder(data: &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 16);
    let (sizes, wire) = data
        .get(1..)
        .unwrap_or(&[])
        .split_at(n.min(data.len().saturating_sub(1)));
    let whole = decode_chunked(wire, &[]);
    let chunked = decode_chunked(wire, sizes);
    assert_eq!(whole, chunked, "chunking changed the result");
    assert!(whole.0.len() <= whole.1, "output larger than input used");
}

pub fn status_line(data: &[u8]) {
    match find_status_line(data, MAX_STATUS_LINE) {
        Ok(Some(len)) => {
            assert!(len <= MAX_STATUS_LINE && len <= data.len());
            assert_eq!(data[len - 1], b'\n');
            if let Ok(line) = StatusLine::parse(&data[..len]) {
                assert_printable(&line.describe());
            }
        }
        Ok(None) => assert!(data.len() < MAX_STATUS_LINE),
        Err(_) => assert!(data.len() >= MAX_STATUS_LINE),
    }
    if let Ok(line) = StatusLine::parse(data) {
        assert_printable(&line.describe());
    }
    // The in-step check after a message: once it decides, more bytes never
    // change its mind (it may be asked before the whole line has arrived).
    let full = popsync::pop3::begins_with_status(data);
    assert!(full.is_some() || data.len() < MAX_STATUS_LINE);
    for end in 0..data.len().min(80) {
        if let Some(early) = popsync::pop3::begins_with_status(&data[..end]) {
            assert_eq!(Some(early), full, "decided {early} after {end} bytes");
        }
    }
}

pub fn listing(data: &[u8]) {
    if let Ok(entries) = parse_lines(data, UidlEntry::parse) {
        for e in entries {
            match e.uid {
                Ok(uid) => {
                    let s = uid.as_str();
                    assert!((1..=Uid::MAX_LEN).contains(&s.len()));
                    assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                }
                Err(err) => assert_printable(&err.to_string()),
            }
        }
    }
    // The compact listing the engine keeps agrees with the per-line parser.
    let mut compact = UidList::default();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match (UidlEntry::parse(line), compact.push_line(line)) {
            (Ok(e), Ok(())) => {
                let got = compact.get(compact.len() - 1);
                assert_eq!(got.msg, e.msg);
                assert_eq!(got.uid.ok(), e.uid.as_ref().ok().map(Uid::as_str));
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("UidlEntry::parse {a:?} but UidList::push_line {b:?}"),
        }
    }
    match parse_lines(data, ListEntry::parse) {
        Ok(_) => {}
        Err(err) => assert_printable(&err.to_string()),
    }
    let caps = Capabilities::parse(data);
    for l in &caps.lines {
        assert_printable(l);
    }
    let _ = caps.login_delay();
    let _ = caps.sasl();
    let _ = Stat::parse(&String::from_utf8_lossy(data));
}

pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = popsync::config::Config::parse(&text, std::path::Path::new("fuzz.toml"));
}

/// Feeds `wire` to a [`ReplyPairing`] as a socket would: `chunk` bytes
/// more each time it asks for more.
fn pair_chunked(commands: &[Command<'_>], wire: &[u8], chunk: usize) -> PairResult {
    let mut pairing = ReplyPairing::new();
    for cmd in commands {
        pairing.expect(cmd);
    }
    let (mut pos, mut filled, mut used) = (0, 0, 0);
    let (mut replies, mut current, mut body) = (Vec::new(), None, Vec::new());
    while pairing.in_flight() > 0 {
        let before = body.len();
        let step = pairing.step(&wire[pos..filled], &mut body)?;
        assert!(step.consumed <= filled - pos);
        assert!(
            body.len() - before <= step.consumed + 1,
            "body output per step"
        );
        pos += step.consumed;
        match step.event {
            None if filled == wire.len() => break,
            None => filled = wire.len().min(filled + chunk),
            Some(Event::Status { line, body_follows }) => {
                assert_printable(&line.describe());
                let reply = Reply { line, body: None };
                if body_follows {
                    current = Some(reply);
                } else {
                    replies.push(reply);
                    used = pos;
                }
            }
            Some(Event::Body { done, .. }) => {
                if done {
                    let mut reply: Reply = current.take().expect("a body after a status");
                    reply.body = Some(std::mem::take(&mut body));
                    replies.push(reply);
                    used = pos;
                }
            }
        }
    }
    Ok((replies, used))
}

type PairResult = Result<(Vec<Reply>, usize), popsync::pop3::PairingError>;

/// First byte: how many command bytes follow (each picks a command); then
/// one chunk-size byte; the rest is what the server sent back. Fed whole or
/// in chunks, the replies are the same, in order, one per command at most.
pub fn reply_pairing(data: &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0) % 16);
    let rest = data.get(1..).unwrap_or(&[]);
    let (picks, rest) = rest.split_at(n.min(rest.len()));
    let chunk = rest.first().map_or(1, |&b| usize::from(b).max(1));
    let wire = rest.get(1..).unwrap_or(&[]);
    let commands: Vec<Command> = picks
        .iter()
        .map(|&b| match b % 6 {
            0 => Command::Stat,
            1 => Command::Retr(1),
            2 => Command::Dele(1),
            3 => Command::Top(1, 0),
            4 => Command::Uidl(None),
            _ => Command::Auth {
                mechanism: "XOAUTH2",
                initial: None,
            },
        })
        .collect();
    let whole = pair_replies(&commands, wire);
    let chunked = pair_chunked(&commands, wire, chunk);
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "chunking changed the replies");
            let (replies, used) = a;
            assert!(*used <= wire.len() && replies.len() <= commands.len());
            for (reply, cmd) in replies.iter().zip(&commands) {
                assert!(reply.body.is_none() || cmd.has_multiline_reply());
                assert!(reply.body.as_ref().is_none_or(|b| b.len() <= *used));
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "chunking changed the error"),
        _ => panic!("whole {whole:?} but chunked {chunked:?}"),
    }
}
