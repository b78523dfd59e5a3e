//! Load-time checks of values that parse but cannot work: a host with a port
//! or a scheme in it, a relative path, an account that cannot deliver.
//! Each error says what to write instead.
use std::net::IpAddr;
use std::path::Path;

use super::{Account, ConfigError};

/// `host` must be a host name or an IP literal: a port or a URL scheme in it
/// would otherwise fail only at connect time, as "try later".
pub fn host(s: &str) -> Result<(), String> {
    let shown = s.escape_debug();
    if let Some((scheme, rest)) = s.split_once("://") {
        let rest = rest.split(['/', '?']).next().unwrap_or_default();
        let tls_hint = if scheme.eq_ignore_ascii_case("pop3s") {
            " (pop3s means tls = \"implicit\", the default)"
        } else {
            ""
        };
        return Err(format!(
            "`host` = \"{shown}\" is a URL: drop the `{}://`{tls_hint} and write host = \"{}\"",
            scheme.escape_debug(),
            rest.escape_debug()
        ));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && inner.parse::<IpAddr>().is_ok()
    {
        return Err(format!(
            "`host` = \"{shown}\": write the IPv6 address without brackets: host = \"{}\"",
            inner.escape_debug()
        ));
    }
    if let Some((name, port)) = s.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        let name = name.trim_start_matches('[').trim_end_matches(']');
        return Err(format!(
            "`host` = \"{shown}\" includes a port: write host = \"{}\" and port = {port}",
            name.escape_debug()
        ));
    }
    if !is_host_name(s) {
        return Err(format!(
            "`host` = \"{shown}\" is not a host name or IP address: use letters, digits, `-` and `.` only, like \"pop.example.org\""
        ));
    }
    Ok(())
}

/// RFC 1123 host names (with `_`, which some internal names carry).
fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Paths are taken as written, so a relative one would follow the current
/// directory of whoever runs popsync (cron, systemd, a shell in /tmp):
/// refuse it and say how to write it.
pub(super) fn absolute(key: &str, written: &str, expanded: &Path) -> Result<(), String> {
    if expanded.is_absolute() {
        return Ok(());
    }
    Err(format!(
        "`{key}` = \"{}\" is a relative path, which would depend on the current directory: write an absolute path, or start it with `~/` for your home directory",
        written.escape_debug()
    ))
}

/// Commands that deliver (`sync`, `daemon`) need a target for every account
/// they run; checked before any connection, with the file and key named.
pub fn require_targets<'a>(
    config_path: &Path,
    accounts: impl IntoIterator<Item = &'a Account>,
) -> Result<(), ConfigError> {
    for account in accounts {
        if account.target.is_none() {
            return Err(ConfigError::Invalid {
                path: config_path.to_path_buf(),
                scope: format!("account `{}`: ", account.name),
                message: "no delivery target: set one of `maildir`, `mbox` or `mda` (e.g. maildir = \"~/Mail/INBOX\")".to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_ip_literals_pass() {
        for ok in [
            "pop.example.org",
            "localhost",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "mail_1.internal.",
        ] {
            assert_eq!(host(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_port_in_host_says_to_use_port() {
        let e = host("127.0.0.1:995").unwrap_err();
        assert!(
            e.contains("includes a port: write host = \"127.0.0.1\" and port = 995"),
            "{e}"
        );
        let e = host("[::1]:995").unwrap_err();
        assert!(e.contains("host = \"::1\" and port = 995"), "{e}");
    }

    #[test]
    fn a_scheme_in_host_says_to_drop_it() {
        let e = host("pop3://pop.example.org/").unwrap_err();
        assert!(
            e.contains("drop the `pop3://`") && e.contains("host = \"pop.example.org\""),
            "{e}"
        );
        let e = host("pop3s://pop.example.org:995").unwrap_err();
        assert!(e.contains("tls = \"implicit\""), "{e}");
    }

    #[test]
    fn brackets_and_junk_are_refused() {
        assert!(host("[::1]").unwrap_err().contains("without brackets"));
        assert!(host("pop example").unwrap_err().contains("not a host name"));
        assert!(host("-bad.example").is_err());
        assert!(host("a..b").is_err());
    }

    #[test]
    fn relative_paths_are_refused_with_the_fix() {
        assert!(absolute("maildir", "/m", Path::new("/m")).is_ok());
        let e = absolute("maildir", "Mail/alice", Path::new("Mail/alice")).unwrap_err();
        assert!(e.contains("relative path") && e.contains("`~/`"), "{e}");
    }
}
