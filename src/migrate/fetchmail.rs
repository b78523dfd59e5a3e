//! fetchmail 6.4 `.fetchids`: one `REMOTEUSER@QUERYNAME UID` line per UID
//! fetchmail has seen with `keep` (uid.c writes `"%s@%s %s\n"`). The user
//! part may itself contain `@`, so the host is after the last one.

use super::{
    PeerEntry, PeerFile, PeerFileError, SkippedLine, check_uid, foreign_unless_any, lines,
};

const FORMAT: &str = "fetchmail";

pub fn parse(bytes: &[u8]) -> Result<PeerFile, PeerFileError> {
    let mut file = PeerFile::default();
    let mut shaped = 0;
    for (n, line) in lines(FORMAT, bytes)? {
        let skip = |reason: &str| SkippedLine {
            line: n,
            reason: reason.to_string(),
        };
        if line.is_empty() {
            file.skipped.push(skip("empty line"));
            continue;
        }
        let Some(space) = line.iter().position(|&b| b == b' ') else {
            file.skipped.push(skip("not `user@host UID`"));
            continue;
        };
        let (who, uid) = (&line[..space], &line[space + 1..]);
        let Some(at) = who.iter().rposition(|&b| b == b'@') else {
            file.skipped.push(skip("not `user@host UID`"));
            continue;
        };
        let (user, host) = (&who[..at], &who[at + 1..]);
        if user.is_empty() || host.is_empty() {
            file.skipped.push(skip("not `user@host UID`"));
            continue;
        }
        shaped += 1;
        match check_uid(uid) {
            Ok(uid) => file.entries.push(PeerEntry {
                line: n,
                host: Some(String::from_utf8_lossy(host).into_owned()),
                user: Some(String::from_utf8_lossy(user).into_owned()),
                uid,
            }),
            Err(reason) => file.skipped.push(skip(&reason)),
        }
    }
    foreign_unless_any(FORMAT, &file, shaped, "`user@host UID`")?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by fetchmail 6.4.37 (Debian 12) polling a test Dovecot.
    const REAL: &[u8] = include_bytes!("../../tests/data/peers/fetchids");

    #[test]
    fn reads_the_real_file() {
        let f = parse(REAL).unwrap();
        super::super::assert_real_sample(&f, true);
        assert_eq!(f.entries[2].line, 3);
    }

    #[test]
    fn user_with_at_sign_and_bad_lines() {
        let f = parse(b"a@b.org@pop.b.org u1\n\nnospace\nx@h \nnoat u2\nx@h bad\x7fuid\n").unwrap();
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.entries[0].user.as_deref(), Some("a@b.org"));
        assert_eq!(f.entries[0].host.as_deref(), Some("pop.b.org"));
        let reasons: Vec<(usize, &str)> = f
            .skipped
            .iter()
            .map(|s| (s.line, s.reason.as_str()))
            .collect();
        assert_eq!(reasons[0], (2, "empty line"));
        assert_eq!(reasons[1], (3, "not `user@host UID`"));
        assert!(reasons[2].1.starts_with("invalid UID"), "{reasons:?}");
        assert_eq!(reasons[3], (5, "not `user@host UID`"));
        assert!(reasons[4].1.starts_with("invalid UID"), "{reasons:?}");
    }

    #[test]
    fn foreign_and_truncated_files_are_refused() {
        let mpop = include_bytes!("../../tests/data/peers/mpop-uidls");
        assert!(matches!(parse(mpop), Err(PeerFileError::Foreign { .. })));
        assert!(matches!(
            parse(&REAL[..REAL.len() - 3]),
            Err(PeerFileError::Truncated { .. })
        ));
        assert_eq!(parse(b"").unwrap(), PeerFile::default());
    }
}
