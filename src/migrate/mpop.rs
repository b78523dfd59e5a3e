//! mpop 1.4 `uidls_file`: `#` comment lines, then per account a line
//! ` COUNT HOST USER` (leading space) followed by COUNT UID lines.

use super::{PeerEntry, PeerFile, PeerFileError, SkippedLine, check_uid, lines};

const FORMAT: &str = "mpop";

pub fn parse(bytes: &[u8]) -> Result<PeerFile, PeerFileError> {
    let mut file = PeerFile::default();
    let mut lists = 0;
    // (host, user, UIDs still expected, header line)
    let mut current: Option<(String, String, usize, usize)> = None;
    for (n, line) in lines(FORMAT, bytes)? {
        if let Some((host, user, left, _)) = current.as_mut().filter(|c| c.2 > 0) {
            *left -= 1;
            match check_uid(line) {
                Ok(uid) => file.entries.push(PeerEntry {
                    line: n,
                    host: Some(host.clone()),
                    user: Some(user.clone()),
                    uid,
                }),
                Err(reason) => file.skipped.push(SkippedLine { line: n, reason }),
            }
            continue;
        }
        if line.starts_with(b"#") {
            continue;
        }
        let header = line
            .strip_prefix(b" ")
            .and_then(|rest| std::str::from_utf8(rest).ok())
            .and_then(|rest| {
                let mut parts = rest.splitn(3, ' ');
                let count: usize = parts.next()?.parse().ok()?;
                let host = parts.next().filter(|h| !h.is_empty())?;
                let user = parts.next().filter(|u| !u.is_empty())?;
                Some((count, host.to_string(), user.to_string()))
            });
        match header {
            Some((count, host, user)) => {
                lists += 1;
                current = Some((host, user, count, n));
            }
            None if lists == 0 => {
                return Err(PeerFileError::Foreign {
                    format: FORMAT,
                    detail: format!(
                        "line {n} is neither a `#` comment nor a ` COUNT HOST USER` list header"
                    ),
                });
            }
            None => file.skipped.push(SkippedLine {
                line: n,
                reason: "not a list header, and the previous list is complete".into(),
            }),
        }
    }
    if let Some((host, user, left, header)) = current.filter(|c| c.2 > 0) {
        return Err(PeerFileError::Truncated {
            format: FORMAT,
            detail: format!("the list of {user}@{host} (line {header}) lacks its last {left} UIDs"),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by mpop 1.4.18 (Debian 12) polling a test Dovecot.
    const REAL: &[u8] = include_bytes!("../../tests/data/peers/mpop-uidls");

    #[test]
    fn reads_the_real_file() {
        let f = parse(REAL).unwrap();
        super::super::assert_real_sample(&f, true);
        assert_eq!(f.entries[0].line, 8);
    }

    #[test]
    fn several_accounts_and_empty_lists() {
        let f = parse(b"# c\n 0 h1 bob\n 2 h2 alice smith\nu1\nu2\n 1 h1 carol\nu3\n").unwrap();
        let got: Vec<(&str, &str)> = f
            .entries
            .iter()
            .map(|e| (e.user.as_deref().unwrap(), e.uid.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("alice smith", "u1"),
                ("alice smith", "u2"),
                ("carol", "u3")
            ]
        );
        assert_eq!(f.entries[2].host.as_deref(), Some("h1"));
    }

    #[test]
    fn truncated_foreign_and_stray_lines() {
        // A list that promises more UIDs than the file holds.
        let cut = &REAL[..REAL.len() - "000000036b07c14d\n".len()];
        let e = parse(cut).unwrap_err();
        assert!(matches!(e, PeerFileError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("last 1 UIDs"), "{e}");
        let fetchids = include_bytes!("../../tests/data/peers/fetchids");
        assert!(matches!(
            parse(fetchids),
            Err(PeerFileError::Foreign { .. })
        ));
        let f = parse(b" 1 h u\nu1\nstray\n").unwrap();
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.skipped.len(), 1);
        assert_eq!(f.skipped[0].line, 3);
    }
}
