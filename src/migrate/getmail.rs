//! getmail6 `oldmail-SERVER-PORT-USERNAME`: one `UID\0TIMESTAMP` line per
//! message it has seen. The file name says whose it is (getmail replaces
//! `/ \ : ; < > |` there with `-`); getmail also stores `/` in UIDs as `-`.

use super::{
    PeerEntry, PeerFile, PeerFileError, SkippedLine, check_uid, foreign_unless_any, lines,
};

const FORMAT: &str = "getmail";

/// The name getmail6 gives the oldmail file of this account.
pub fn file_name(server: &str, port: u16, user: &str) -> String {
    format!("oldmail-{server}-{port}-{user}")
        .chars()
        .map(|c| if "/\\:;<>|".contains(c) { '-' } else { c })
        .collect()
}

/// How getmail6 records a server UID (it cannot store `/`).
pub fn stored_uid(server_uid: &str) -> String {
    server_uid.replace('/', "-")
}

pub fn parse(bytes: &[u8]) -> Result<PeerFile, PeerFileError> {
    let mut file = PeerFile::default();
    let mut shaped = 0;
    for (n, line) in lines(FORMAT, bytes)? {
        let skip = |reason: String| SkippedLine { line: n, reason };
        let Some(nul) = line.iter().position(|&b| b == 0) else {
            file.skipped
                .push(skip("no NUL between UID and timestamp".into()));
            continue;
        };
        let (uid, stamp) = (&line[..nul], &line[nul + 1..]);
        if stamp.is_empty() || !stamp.iter().all(u8::is_ascii_digit) {
            file.skipped.push(skip("timestamp is not a number".into()));
            continue;
        }
        shaped += 1;
        if uid.iter().filter(|&&b| b == b'/').count() == 2 {
            // getmail's pre-4.22 IMAP form `uidvalidity/mailbox/uid`.
            file.skipped.push(skip("an IMAP entry, not POP3".into()));
            continue;
        }
        match check_uid(uid) {
            Ok(uid) => file.entries.push(PeerEntry {
                line: n,
                host: None,
                user: None,
                uid,
            }),
            Err(reason) => file.skipped.push(skip(reason)),
        }
    }
    foreign_unless_any(FORMAT, &file, shaped, "`UID\\0timestamp`")?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by getmail 6.18.11 (Debian 12) polling a test Dovecot.
    const REAL: &[u8] = include_bytes!("../../tests/data/peers/oldmail-127.0.0.1-37789-alice");

    #[test]
    fn reads_the_real_file() {
        let f = parse(REAL).unwrap();
        super::super::assert_real_sample(&f, false);
        assert_eq!(
            file_name("127.0.0.1", 37789, "alice"),
            "oldmail-127.0.0.1-37789-alice"
        );
    }

    #[test]
    fn names_bad_lines_and_refuses_foreign_or_cut_files() {
        let f = parse(b"u1\x001\nnonul\nu2\x00x\na/b/c\x001\nu-3\x002\n").unwrap();
        let uids: Vec<&str> = f.entries.iter().map(|e| e.uid.as_str()).collect();
        assert_eq!(uids, ["u1", "u-3"]);
        let lines: Vec<usize> = f.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert_eq!(stored_uid("a/b"), "a-b");
        assert_eq!(file_name("h:1", 110, "a/b"), "oldmail-h-1-110-a-b");
        let mpop = include_bytes!("../../tests/data/peers/mpop-uidls");
        assert!(matches!(parse(mpop), Err(PeerFileError::Foreign { .. })));
        assert!(matches!(
            parse(&REAL[..REAL.len() - 1]),
            Err(PeerFileError::Truncated { .. })
        ));
    }
}
