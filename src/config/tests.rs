use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const PATH: &str = "/home/u/.config/popsync/config.toml";

fn fake_env(key: &str) -> Option<OsString> {
    match key {
        "HOME" => Some("/home/u".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, Path::new(PATH), &fake_env)
}

/// Parses, expecting an error, and returns its message.
fn err(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} should contain {p:?}");
    }
}

const MINIMAL: &str = r#"
[account.a]
host = "pop.example.org"
username = "a"
"#;

#[test]
fn full_example_round_trip() {
    let text = r#"
state_dir = "~/state"
[defaults]
interval = "10m"
[account.alice]
host = "pop.example.org"
port = 1995
tls = "starttls"
ca_file = "~/ca.pem"
fingerprint = "sha256:9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08"
username = "alice"
password = "hunter2"
auth = "apop"
allow_insecure_auth = true
maildir = "~/Maildir"
keep = false
delete_after_days = 30
interval = "1h30m"
notify = false
max_size = "10M"
received_header = true
connect_timeout = "15s"
timeout = 90
mda_timeout = "2m"
utf8 = false
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.path, Path::new(PATH));
    assert_eq!(c.state_dir, Path::new("/home/u/state"));
    assert_eq!(c.accounts.len(), 1);
    let a = &c.accounts[0];
    let fp =
        hex::decode("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").unwrap();
    let want = Account {
        name: "alice".into(),
        host: "pop.example.org".into(),
        port: 1995,
        tls: TlsMode::Starttls,
        ca_file: Some("/home/u/ca.pem".into()),
        fingerprint: Some(fp.try_into().unwrap()),
        username: "alice".into(),
        secret_source: SecretSource::Password(Secret::new("hunter2")),
        auth: AuthMethod::Apop,
        allow_insecure_auth: true,
        target: Some(TargetConfig::Maildir("/home/u/Maildir".into())),
        keep: false,
        delete_after_days: Some(30),
        interval: Duration::from_secs(5400),
        notify: false,
        max_size: Some(10 << 20),
        received_header: true,
        connect_timeout: Duration::from_secs(15),
        timeout: Duration::from_secs(90),
        mda_timeout: Duration::from_secs(120),
        utf8: false,
        max_messages: 1_000_000,
        password_command_timeout: Duration::from_secs(30),
    };
    assert_eq!(a, &want);
    assert_eq!(a.secret().unwrap().expose(), "hunter2");
    assert_eq!(
        a.target().unwrap(),
        &TargetConfig::Maildir("/home/u/Maildir".into())
    );
}

#[test]
fn built_in_defaults() {
    let c = parse(MINIMAL).unwrap();
    let a = c.account("a").unwrap();
    assert_eq!(a.port, 995);
    assert_eq!(a.tls, TlsMode::Implicit);
    assert_eq!(a.auth, AuthMethod::Auto);
    assert!(a.keep && a.notify);
    assert!(!a.allow_insecure_auth && !a.received_header);
    assert_eq!(a.interval, Duration::from_secs(300));
    assert_eq!(a.connect_timeout, Duration::from_secs(30));
    assert_eq!(a.timeout, Duration::from_secs(60));
    assert_eq!(a.mda_timeout, Duration::from_secs(300));
    assert_eq!(a.secret_source, SecretSource::Missing);
    assert_eq!(a.target, None);
    assert_eq!(
        (
            a.ca_file.as_ref(),
            a.fingerprint,
            a.max_size,
            a.delete_after_days
        ),
        (None, None, None, None)
    );
    assert_eq!(c.state_dir, Path::new("/home/u/.local/state/popsync"));
}

#[test]
fn port_defaults_by_tls() {
    for (tls, port) in [
        ("implicit", 995),
        ("starttls", 110),
        ("none", 110),
        ("STARTTLS", 110),
    ] {
        let c = parse(&format!("{MINIMAL}tls = \"{tls}\"\n")).unwrap();
        assert_eq!(c.accounts[0].port, port, "{tls}");
    }
    let c = parse(&format!("{MINIMAL}tls = \"none\"\nport = 2110\n")).unwrap();
    assert_eq!(c.accounts[0].port, 2110);
}

#[test]
fn defaults_inherited_and_overridden() {
    let text = r#"
[defaults]
interval = "1m"
username = "shared"
maildir = "/mail/default"
password_command = "pass show mail"
tls = "starttls"

[account.b]
host = "b.example"
interval = 120
mbox = "/mail/b.mbox"
password = "pw"

[account.a]
host = "a.example"
"#;
    let c = parse(text).unwrap();
    let names: Vec<&str> = c.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "sorted by name");
    let a = c.account("a").unwrap();
    assert_eq!(a.interval, Duration::from_secs(60));
    assert_eq!(a.username, "shared");
    assert_eq!(a.tls, TlsMode::Starttls);
    assert_eq!(a.port, 110);
    assert_eq!(
        a.target,
        Some(TargetConfig::Maildir("/mail/default".into()))
    );
    assert_eq!(
        a.secret_source,
        SecretSource::Command("pass show mail".into())
    );
    let b = c.account("b").unwrap();
    assert_eq!(b.interval, Duration::from_secs(120));
    // Setting one key of a one-of group replaces the inherited group.
    assert_eq!(b.target, Some(TargetConfig::Mbox("/mail/b.mbox".into())));
    assert_eq!(b.secret_source, SecretSource::Password(Secret::new("pw")));
}

#[test]
fn unknown_keys() {
    let m = err(&format!("{MINIMAL}hots = \"x\"\n"));
    assert_has(
        &m,
        &[
            PATH,
            "account `a`: unknown key `hots`",
            "did you mean `host`",
        ],
    );
    let m = err(&format!("[defaults]\nintervall = \"5m\"\n{MINIMAL}"));
    assert_has(&m, &["[defaults]: unknown key `intervall`", "`interval`"]);
    let m = err(&format!("statedir = \"/x\"\n{MINIMAL}"));
    assert_has(&m, &["unknown key `statedir`", "`state_dir`"]);
    let m = err("[accounts.a]\nhost = \"h\"\nusername = \"u\"\n");
    assert_has(&m, &["unknown key `accounts`", "did you mean `account`"]);
    let m = err(&format!("host = \"h\"\n{MINIMAL}"));
    assert_has(&m, &["unknown key `host` at top level", "[account.NAME]"]);
    let m = err(&format!("{MINIMAL}zzzzzz = 1\n"));
    assert!(!m.contains("did you mean"), "{m}");
}

#[test]
fn missing_required() {
    let m = err("[account.alice]\nusername = \"u\"\n");
    assert_has(&m, &["account `alice`: missing `host`"]);
    let m = err("[account.alice]\nhost = \"h\"\n");
    assert_has(&m, &["account `alice`: missing `username`"]);
    let m = err("[account.alice]\nhost = \"\"\nusername = \"u\"\n");
    assert_has(&m, &["account `alice`: `host` must not be empty"]);
}

#[test]
fn bad_values() {
    let cases: &[(&str, &[&str])] = &[
        (
            "tls = \"tsl\"",
            &["account `a`: `tls` must be one of implicit, starttls, none (got `tsl`)"],
        ),
        (
            "auth = \"kerberos\"",
            &[
                "`auth` must be one of auto, user, apop, plain, xoauth2, oauthbearer (got `kerberos`)",
            ],
        ),
        ("port = 0", &["`port` must be between 1 and 65535 (got 0)"]),
        (
            "port = 70000",
            &["`port` must be between 1 and 65535 (got 70000)"],
        ),
        (
            "port = \"995\"",
            &["`port` must be an integer (got a string)"],
        ),
        (
            "interval = \"5 minutes\"",
            &["account `a`: `interval`: invalid duration `5 minutes`"],
        ),
        ("interval = 0", &["`interval` must be greater than zero"]),
        (
            "interval = \"0s\"",
            &["`interval` must be greater than zero"],
        ),
        (
            "timeout = -5",
            &["`timeout` must be greater than zero (got -5)"],
        ),
        (
            "connect_timeout = true",
            &["`connect_timeout` must be a duration"],
        ),
        ("max_size = \"10T\"", &["`max_size`: invalid size `10T`"]),
        ("max_size = 0", &["`max_size` must be greater than zero"]),
        (
            "delete_after_days = -1",
            &["`delete_after_days` must be between 0"],
        ),
        (
            "keep = \"yes\"",
            &["`keep` must be true or false (got a string)"],
        ),
        (
            "fingerprint = \"sha256:AB:CD\"",
            &["account `a`: `fingerprint`", "32 bytes", "got 4 hex digits"],
        ),
        (
            "fingerprint = \"xyz\"",
            &["`fingerprint`", "not a hex digit"],
        ),
        ("mda = \"\"", &["`mda` must not be empty"]),
        (
            "maildir = \"~bob/Mail\"",
            &["`maildir`", "only `~/` is expanded"],
        ),
    ];
    for (line, parts) in cases {
        let m = err(&format!("{MINIMAL}{line}\n"));
        assert_has(&m, parts);
        assert!(m.starts_with(PATH), "{m}");
    }
    // Errors from a [defaults] value are blamed on [defaults].
    let m = err(&format!("[defaults]\ntls = \"tsl\"\n{MINIMAL}"));
    assert_has(&m, &["[defaults]: `tls` must be one of"]);
}

#[test]
fn conflicting_keys() {
    let m = err(&format!("{MINIMAL}maildir = \"/m\"\nmbox = \"/b\"\n"));
    assert_has(
        &m,
        &["account `a`: `maildir` and `mbox` are both set; choose one delivery target"],
    );
    let m = err(&format!("{MINIMAL}mbox = \"/b\"\nmda = \"procmail\"\n"));
    assert_has(&m, &["`mbox` and `mda` are both set"]);
    let m = err(&format!(
        "{MINIMAL}password = \"p\"\npassword_command = \"c\"\n"
    ));
    assert_has(
        &m,
        &["account `a`: `password` and `password_command` are both set"],
    );
    let m = err(&format!(
        "[defaults]\nmaildir = \"/m\"\nmda = \"x\"\n{MINIMAL}"
    ));
    assert_has(&m, &["[defaults]: `maildir` and `mda` are both set"]);
}

#[test]
fn no_accounts() {
    for text in [
        "",
        "state_dir = \"/s\"\n",
        "[account]\n",
        "[defaults]\ninterval = 5\n",
    ] {
        let m = err(text);
        assert_eq!(m, format!("no [account.NAME] table in {PATH}"), "{text:?}");
    }
    let m = err("account = 5\n");
    assert_has(&m, &["`account` must be a set of [account.NAME] tables"]);
    let m = err("[account]\nhost = \"h\"\n");
    assert_has(&m, &["`account.host` must be a table"]);
}

#[test]
fn account_names() {
    for bad in ["\"\"", "\"a b\"", "\"a/b\"", "\"..\"", "\"é\""] {
        let m = err(&format!(
            "[account.{bad}]\nhost = \"h\"\nusername = \"u\"\n"
        ));
        assert_has(&m, &["invalid account name"]);
    }
    let c = parse("[account.\"Work-1.main_x\"]\nhost = \"h\"\nusername = \"u\"\n").unwrap();
    assert_eq!(c.accounts[0].name, "Work-1.main_x");
}

#[test]
fn syntax_error_has_position_and_no_secret() {
    let text = "[account.a]\nhost = \"h\"\npassword = \"s3cr3t\n";
    let e = parse(text).unwrap_err();
    let m = e.to_string();
    assert!(e.is_invalid());
    assert_has(&m, &[PATH, ":3:", "TOML syntax error"]);
    assert!(!m.contains("s3cr3t"), "{m}");
    let m = err("[account.a]\nport = = 3\n");
    assert_has(&m, &[&format!("{PATH}:2:")]);
}

#[test]
fn no_password_leak() {
    let c = parse(&format!("{MINIMAL}password = \"s3cr3t\"\n")).unwrap();
    let dbg = format!("{c:?} {:#?}", c.accounts[0]);
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
    // A wrongly typed password is described by type, not echoed.
    let m = err(&format!("{MINIMAL}password = 123456789\n"));
    assert_has(&m, &["`password` must be a string (got an integer)"]);
    assert!(!m.contains("123456789"), "{m}");
    let m = err(&format!("{MINIMAL}password = [\"s3cr3t\"]\n"));
    assert!(!m.contains("s3cr3t"), "{m}");
}

#[test]
fn account_lookup_and_select() {
    let text = format!("{MINIMAL}[account.b]\nhost = \"h\"\nusername = \"u\"\n");
    let c = parse(&text).unwrap();
    let m = c.account("zz").unwrap_err().to_string();
    assert_eq!(m, "unknown account `zz`; known accounts: a, b");
    let all: Vec<&str> = c
        .select(&[])
        .unwrap()
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(all, ["a", "b"]);
    let picked = c.select(&["b".into(), "a".into(), "b".into()]).unwrap();
    let picked: Vec<&str> = picked.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(picked, ["b", "a"]);
    assert!(c.select(&["a".into(), "nope".into()]).is_err());
}

#[test]
fn target_required_only_when_asked() {
    let c = parse(MINIMAL).unwrap();
    let m = c.accounts[0].target().unwrap_err().to_string();
    assert_eq!(m, "no delivery target: set one of maildir, mbox, mda");
    let c = parse(&format!("{MINIMAL}mda = \"procmail -d u\"\n")).unwrap();
    assert_eq!(
        c.accounts[0].target().unwrap(),
        &TargetConfig::Mda("procmail -d u".into())
    );
}

fn with_secret(source: SecretSource) -> Account {
    let mut a = parse(MINIMAL).unwrap().accounts.remove(0);
    a.secret_source = source;
    a
}

#[test]
fn secret_from_command() {
    let a = with_secret(SecretSource::Command("printf 'tok\\n'".into()));
    assert_eq!(a.secret().unwrap().expose(), "tok");
    let a = with_secret(SecretSource::Command(
        "printf 'tok\\r\\nsecond line\\n'".into(),
    ));
    assert_eq!(a.secret().unwrap().expose(), "tok");
    let a = with_secret(SecretSource::Command("printf 'leaked'; exit 3".into()));
    let e = a.secret().unwrap_err();
    assert!(e.is_secret());
    let m = e.to_string();
    // The account is named by the caller, once (no "account `a`: account `a`").
    assert_has(&m, &["exit", "status 3", "run it by hand"]);
    assert!(!m.contains("account"), "{m}");
    assert!(!m.contains("leaked"), "{m}");
    let a = with_secret(SecretSource::Command("true".into()));
    assert_has(&a.secret().unwrap_err().to_string(), &["printed nothing"]);
    let a = with_secret(SecretSource::Missing);
    let m = a.secret().unwrap_err().to_string();
    assert_has(&m, &["`password` or `password_command`"]);
}

#[test]
fn paths_and_default_locations() {
    let env = |k: &str| -> Option<OsString> {
        match k {
            "HOME" => Some("/h".into()),
            "XDG_STATE_HOME" => Some("/xdg/state".into()),
            "XDG_CONFIG_HOME" => Some("relative/ignored".into()),
            _ => None,
        }
    };
    let c = Config::parse_with_env(MINIMAL, Path::new("c.toml"), &env).unwrap();
    assert_eq!(c.state_dir, Path::new("/xdg/state/popsync"));
    assert_eq!(
        default_path_with_env(&env).unwrap(),
        Path::new("/h/.config/popsync/config.toml")
    );
    let xdg = |k: &str| (k == "XDG_CONFIG_HOME").then(|| OsString::from("/cfg"));
    assert_eq!(
        default_path_with_env(&xdg).unwrap(),
        Path::new("/cfg/popsync/config.toml")
    );
    let none = |_: &str| None;
    assert!(default_path_with_env(&none).is_err());
    let m = Config::parse_with_env(MINIMAL, Path::new("c.toml"), &none)
        .unwrap_err()
        .to_string();
    assert_has(&m, &["state directory", "$HOME"]);
    let text = format!("state_dir = \"/s\"\n{MINIMAL}mbox = \"~\"\nca_file = \"/etc/ca.pem\"\n");
    let c = Config::parse_with_env(&text, Path::new("c.toml"), &env).unwrap();
    assert_eq!(
        c.accounts[0].target,
        Some(TargetConfig::Mbox(PathBuf::from("/h")))
    );
    assert_eq!(c.accounts[0].ca_file, Some(PathBuf::from("/etc/ca.pem")));
}

#[test]
fn relative_paths_are_refused_naming_the_key() {
    for (key, line) in [
        ("maildir", "maildir = \"Mail/alice\""),
        ("mbox", "mbox = \"alice.mbox\""),
        ("ca_file", "ca_file = \"rel/ca.pem\""),
    ] {
        let text = format!("state_dir = \"/s\"\n{MINIMAL}{line}\n");
        let m = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert_has(&m, &["c.toml", "account `a`", key, "relative path", "`~/`"]);
    }
    let m = Config::parse(
        &format!("state_dir = \"state\"\n{MINIMAL}"),
        Path::new("c.toml"),
    )
    .unwrap_err()
    .to_string();
    assert_has(&m, &["`state_dir`", "relative path"]);
}

#[test]
fn host_with_a_port_or_scheme_is_refused_at_load() {
    let text = "[account.a]\nhost = \"127.0.0.1:995\"\nusername = \"u\"\n";
    let m = Config::parse(text, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert_has(
        &m,
        &[
            "c.toml",
            "account `a`",
            "host = \"127.0.0.1\" and port = 995",
        ],
    );
    let text = "[account.a]\nhost = \"pop3://pop.example.org\"\nusername = \"u\"\n";
    let m = Config::parse(text, Path::new("c.toml"))
        .unwrap_err()
        .to_string();
    assert_has(&m, &["drop the `pop3://`"]);
}

#[cfg(unix)]
#[test]
fn load_checks_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let set_mode =
        |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();

    let m = Config::load(&path).unwrap_err();
    assert!(m.is_not_found());
    assert_eq!(
        m.to_string(),
        format!(
            "config file {} not found: create it with `popsync init EMAIL`, or write it by hand (see README: Configuration), or name another with -c FILE",
            path.display()
        )
    );

    std::fs::write(
        &path,
        format!("state_dir = \"/s\"\n{MINIMAL}password = \"pw\"\n"),
    )
    .unwrap();
    set_mode(0o644);
    let e = Config::load(&path).unwrap_err();
    assert!(e.is_permissions());
    let p = path.display();
    assert_eq!(
        e.to_string(),
        format!(
            "{p} contains a password and is readable by others (mode 0644); run: chmod 600 {p}"
        )
    );
    set_mode(0o640);
    assert!(Config::load(&path).unwrap_err().is_permissions());
    set_mode(0o600);
    let c = Config::load(&path).unwrap();
    assert_eq!(c.path, path);
    assert_eq!(c.accounts[0].secret().unwrap().expose(), "pw");

    // A password only in [defaults] counts too.
    std::fs::write(
        &path,
        format!("state_dir = \"/s\"\n[defaults]\npassword = \"pw\"\n{MINIMAL}"),
    )
    .unwrap();
    set_mode(0o604);
    assert!(Config::load(&path).unwrap_err().is_permissions());

    // No literal password: a readable file is fine.
    std::fs::write(
        &path,
        format!("state_dir = \"/s\"\n{MINIMAL}password_command = \"pass x\"\n"),
    )
    .unwrap();
    set_mode(0o644);
    Config::load(&path).unwrap();
}

#[test]
fn state_busy_timeout_is_top_level_with_a_default() {
    assert_eq!(
        parse(MINIMAL).unwrap().state_busy_timeout,
        crate::store::DEFAULT_BUSY_TIMEOUT
    );
    let c = parse(&format!("state_busy_timeout = \"2s\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.state_busy_timeout, Duration::from_secs(2));
    assert_has(
        &err(&format!("state_busy_timeout = \"0s\"\n{MINIMAL}")),
        &["`state_busy_timeout` must be greater than zero"],
    );
}

#[test]
fn oauth2_microsoft_in_four_lines() {
    let c = parse(
        r#"
[account.work]
host = "outlook.office365.com"
username = "me@example.com"
oauth2 = "microsoft"
oauth2_client_id = "00000000-1111-2222-3333-444444444444"
"#,
    )
    .unwrap();
    let a = c.account("work").unwrap();
    assert_eq!(
        a.auth,
        AuthMethod::Xoauth2,
        "oauth2 implies a token mechanism"
    );
    let s = a.oauth2().expect("oauth2 settings");
    assert!(!s.keyring, "the token file unless asked");
    assert_eq!(s.preset, crate::oauth2::Preset::Microsoft);
    assert_eq!(s.tenant, "common");
    assert_eq!(
        s.scopes,
        [
            "https://outlook.office.com/POP.AccessAsUser.All",
            "offline_access"
        ]
    );
    assert_eq!(
        s.token_dir,
        PathBuf::from("/home/u/.local/state/popsync/oauth2")
    );
}

#[test]
fn oauth2_inherits_from_defaults_and_a_password_account_drops_it() {
    let c = parse(
        r#"
[defaults]
oauth2 = "google"
oauth2_client_id = "x.apps.googleusercontent.com"
oauth2_client_secret = "not-really-secret"
auth = "oauthbearer"
[account.g]
host = "pop.gmail.com"
username = "me@gmail.com"
[account.old]
host = "pop.example.org"
username = "old"
auth = "user"
password_command = "pass show old"
"#,
    )
    .unwrap();
    let g = c.account("g").unwrap();
    assert_eq!(g.auth, AuthMethod::Oauthbearer);
    assert_eq!(g.oauth2().unwrap().scopes, ["https://mail.google.com/"]);
    let dbg = format!("{g:?}");
    assert!(!dbg.contains("not-really-secret"), "{dbg}");
    let old = c.account("old").unwrap();
    assert!(old.oauth2().is_none());
    assert!(matches!(old.secret_source, SecretSource::Command(_)));
}

#[test]
fn oauth2_errors_name_the_key_and_the_fix() {
    let base = "[account.a]\nhost = \"h\"\nusername = \"u\"\n";
    let cases: &[(&str, &[&str])] = &[
        ("oauth2 = \"microsoft\"", &["needs `oauth2_client_id`"]),
        (
            "oauth2 = \"yahoo\"",
            &["`oauth2` must be one of microsoft, google, custom"],
        ),
        (
            "oauth2 = \"custom\"\noauth2_client_id = \"c\"\noauth2_scopes = [\"pop\"]",
            &["needs `oauth2_issuer`"],
        ),
        (
            "oauth2 = \"custom\"\noauth2_client_id = \"c\"\noauth2_issuer = \"http://idp.example.com\"",
            &["`oauth2_issuer`", "use https"],
        ),
        (
            "oauth2 = \"custom\"\noauth2_client_id = \"c\"\noauth2_issuer = \"https://idp.example.com\"",
            &["needs `oauth2_scopes`"],
        ),
        (
            "oauth2 = \"microsoft\"\noauth2_client_id = \"c\"\noauth2_tenant = \"../evil\"",
            &["`oauth2_tenant` must be"],
        ),
        (
            "oauth2 = \"microsoft\"\noauth2_client_id = \"c\"\nauth = \"plain\"",
            &["gives a token, not a password", "oauthbearer"],
        ),
        (
            "oauth2 = \"microsoft\"\noauth2_client_id = \"c\"\npassword_command = \"x\"",
            &["choose one"],
        ),
        (
            "oauth2 = \"google\"\noauth2_client_id = \"c\"\noauth2_scopes = [\"a b\"]",
            &["give each scope as its own string"],
        ),
        (
            "oauth2_client_ids = \"c\"",
            &["did you mean `oauth2_client_id`"],
        ),
        (
            "oauth2 = \"google\"\noauth2_client_id = \"c\"\noauth2_keyring = \"yes\"",
            &["`oauth2_keyring` must be true or false"],
        ),
    ];
    for (extra, parts) in cases {
        let msg = err(&format!("{base}{extra}\n"));
        assert_has(&msg, parts);
        assert_has(&msg, &["account `a`"]);
    }
    // A loopback http issuer is fine (test providers).
    parse(&format!(
        "{base}oauth2 = \"custom\"\noauth2_client_id = \"c\"\noauth2_issuer = \"http://127.0.0.1:8080\"\noauth2_scopes = [\"offline_access\", \"pop\"]\n"
    ))
    .unwrap();
}

#[test]
fn an_oauth2_client_secret_makes_the_file_private_like_a_password() {
    let with = parse::parse_table(
        "[account.a]\noauth2_client_secret = \"s\"\n",
        Path::new(PATH),
    )
    .unwrap();
    assert!(parse::has_password(&with));
    let without =
        parse::parse_table("[account.a]\noauth2_client_id = \"c\"\n", Path::new(PATH)).unwrap();
    assert!(!parse::has_password(&without));
}
