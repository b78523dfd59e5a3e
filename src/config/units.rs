//! Parsers for the human-friendly value forms: durations, sizes, fingerprints.
//! They return plain `String` errors so the CLI can reuse them; the config
//! parser prefixes the account and key.
use std::time::Duration;

const DURATION_HINT: &str = "use a number with a unit s, m, h or d, like `30s`, `5m` or `1h30m`, or a plain number of seconds";

/// Parses `30s`, `5m`, `1h`, `1d`, combinations like `1h30m` (spaces between
/// parts allowed), or a bare number of seconds. Zero is accepted here; callers
/// that need a positive duration check it themselves.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = || format!("invalid duration `{s}`: {DURATION_HINT}");
    if text.is_empty() {
        return Err(bad());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration `{s}` is too large"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{s}` is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{s}` is too large"))?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(Duration::from_secs(total))
}

/// Parses a byte count: `10000000`, `512k`, `10M`, `1G` (powers of 1024;
/// case-insensitive, an optional `B`/`iB` suffix is tolerated).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let bad = || {
        format!(
            "invalid size `{s}`: use a number of bytes, optionally with k, M or G (like `512k`, `10M`)"
        )
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("size `{s}` is too large"))?;
    let factor: u64 = match text[digits..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Parses a SHA-256 certificate pin: optional `sha256:` prefix (any case),
/// 64 hex digits in any case, `:` separators optional.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let text = s.trim();
    let body = match text.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => &text[7..],
        _ => text,
    };
    let hex_digits: String = body.chars().filter(|&c| c != ':').collect();
    if let Some(c) = hex_digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid fingerprint: `{c}` is not a hex digit; expected the SHA-256 of the certificate as 64 hex digits"
        ));
    }
    if hex_digits.len() != 64 {
        return Err(format!(
            "expected a SHA-256 digest: 32 bytes (64 hex digits), got {} hex digits",
            hex_digits.len()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex_digits, &mut out).map_err(|e| format!("invalid fingerprint: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Result<Duration, String> {
        Ok(Duration::from_secs(n))
    }

    #[test]
    fn durations_good() {
        assert_eq!(parse_duration("30s"), secs(30));
        assert_eq!(parse_duration("5m"), secs(300));
        assert_eq!(parse_duration("1h"), secs(3600));
        assert_eq!(parse_duration("1d"), secs(86400));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration("1d 2h 3m 4s"), secs(93784));
        assert_eq!(parse_duration("90"), secs(90));
        assert_eq!(parse_duration(" 45 "), secs(45));
        assert_eq!(parse_duration("0s"), secs(0));
    }

    #[test]
    fn durations_bad() {
        for bad in [
            "", "  ", "5x", "m", "1h30", "5 m", "-5s", "1.5h", "5mm", "h1",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad:?}: {e}");
        }
        assert!(
            parse_duration("99999999999999999999d")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_duration("999999999999999999d")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10000000"), Ok(10_000_000));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("10M"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1 g"), Ok(1 << 30));
        for bad in ["", "M", "10T", "1.5M", "-1", "10 MBs"] {
            assert!(
                parse_size(bad).unwrap_err().contains("invalid size"),
                "{bad:?}"
            );
        }
        assert!(
            parse_size("99999999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn fingerprints() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let want: [u8; 32] = hex::decode(hex).unwrap().try_into().unwrap();
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        for form in [
            hex.to_string(),
            hex.to_ascii_uppercase(),
            format!("sha256:{hex}"),
            format!("SHA256:{colons}"),
            colons.clone(),
        ] {
            assert_eq!(parse_fingerprint(&form), Ok(want), "{form}");
        }
        let short = parse_fingerprint("sha256:9F:86:D0").unwrap_err();
        assert!(
            short.contains("32 bytes") && short.contains("got 6"),
            "{short}"
        );
        let nonhex = parse_fingerprint(&format!("{}zz", &hex[..62])).unwrap_err();
        assert!(nonhex.contains("`z` is not a hex digit"), "{nonhex}");
        assert!(parse_fingerprint("sha1:00").is_err());
    }
}
