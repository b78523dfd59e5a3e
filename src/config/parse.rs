//! From TOML text to a validated [`Config`].
//!
//! Values are checked key by key by hand rather than through serde so every
//! error names the account and key, and none ever quotes a password.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

mod oauth2;

use super::units::{parse_duration, parse_fingerprint, parse_size};
use super::{
    Account, AuthMethod, Config, ConfigError, Secret, SecretSource, TargetConfig, TlsMode,
};

/// Environment lookup, injectable so tests need not mutate the process env.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

pub(super) fn real_env(key: &str) -> Option<OsString> {
    std::env::var_os(key)
}

const TOP_KEYS: &[&str] = &["state_dir", "state_busy_timeout", "defaults", "account"];
const ACCOUNT_KEYS: &[&str] = &[
    "host",
    "port",
    "tls",
    "ca_file",
    "fingerprint",
    "username",
    "password",
    "password_command",
    "auth",
    "allow_insecure_auth",
    "maildir",
    "mbox",
    "mda",
    "keep",
    "delete_after_days",
    "interval",
    "notify",
    "max_size",
    "received_header",
    "connect_timeout",
    "timeout",
    "mda_timeout",
    "utf8",
    "max_messages",
    "password_command_timeout",
];
fn is_account_key(key: &str) -> bool {
    ACCOUNT_KEYS.contains(&key) || oauth2::KEYS.contains(&key)
}

/// Keys that together make one setting: an account setting any of them
/// replaces all of them from `[defaults]`.
const TARGET_KEYS: &[&str] = &["maildir", "mbox", "mda"];
const SECRET_KEYS: &[&str] = &["password", "password_command", "oauth2"];

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MDA_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A listing longer than this is refused (hostile or misconfigured server).
pub const DEFAULT_MAX_MESSAGES: u32 = 1_000_000;
pub(super) const DEFAULT_PASSWORD_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses TOML syntax only. toml's own Display quotes the source line (maybe
/// a password), so we render message and position ourselves.
pub(super) fn parse_table(text: &str, path: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start),
            None => (0, 0),
        };
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim_end().to_string(),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Whether a `password` key appears anywhere (decides the permission check).
pub(super) fn has_password(table: &Table) -> bool {
    table
        .iter()
        .any(|(k, v)| k == "password" || k == "oauth2_client_secret" || value_has_password(v))
}

fn value_has_password(v: &Value) -> bool {
    match v {
        Value::Table(t) => has_password(t),
        Value::Array(a) => a.iter().any(value_has_password),
        _ => false,
    }
}

/// Where errors are reported: the file plus `account `x`: ` / `[defaults]: `.
struct Ctx<'a> {
    path: &'a Path,
    scope: String,
    env: Env<'a>,
}

impl Ctx<'_> {
    fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            scope: self.scope.clone(),
            message: message.into(),
        }
    }

    fn unknown(&self, key: &str, known: &[&'static str]) -> ConfigError {
        ConfigError::UnknownKey {
            path: self.path.to_path_buf(),
            scope: self.scope.clone(),
            key: key.to_string(),
            suggestion: closest(key, known),
        }
    }

    fn wrong_type(&self, key: &str, want: &str, v: &Value) -> ConfigError {
        self.invalid(format!("`{key}` must be {want} (got {})", describe(v)))
    }

    fn string<'v>(&self, key: &str, v: &'v Value) -> Result<&'v str, ConfigError> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Ok(s),
            Value::String(_) => Err(self.invalid(format!("`{key}` must not be empty"))),
            _ => Err(self.wrong_type(key, "a string", v)),
        }
    }

    fn bool(&self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| self.wrong_type(key, "true or false", v))
    }

    fn int(&self, key: &str, v: &Value, min: i64, max: i64) -> Result<i64, ConfigError> {
        let n = v
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        if n < min || n > max {
            return Err(self.invalid(format!("`{key}` must be between {min} and {max} (got {n})")));
        }
        Ok(n)
    }

    fn path(&self, key: &str, v: &Value) -> Result<PathBuf, ConfigError> {
        let s = self.string(key, v)?;
        let p = expand_tilde(s, self.env).map_err(|m| self.invalid(format!("`{key}`: {m}")))?;
        super::check::absolute(key, s, &p).map_err(|m| self.invalid(m))?;
        Ok(p)
    }

    /// A positive duration: a string like `5m` or an integer of seconds.
    fn duration(&self, key: &str, v: &Value) -> Result<Duration, ConfigError> {
        let d = match v {
            Value::String(s) => {
                parse_duration(s).map_err(|m| self.invalid(format!("`{key}`: {m}")))?
            }
            Value::Integer(n) if *n >= 0 => Duration::from_secs(*n as u64),
            Value::Integer(n) => {
                return Err(self.invalid(format!("`{key}` must be greater than zero (got {n})")));
            }
            _ => return Err(self.wrong_type(key, "a duration like \"5m\" or seconds", v)),
        };
        if d.is_zero() {
            return Err(self.invalid(format!("`{key}` must be greater than zero")));
        }
        Ok(d)
    }

    fn size(&self, key: &str, v: &Value) -> Result<u64, ConfigError> {
        let n = match v {
            Value::String(s) => parse_size(s).map_err(|m| self.invalid(format!("`{key}`: {m}")))?,
            Value::Integer(n) if *n >= 0 => *n as u64,
            Value::Integer(n) => {
                return Err(self.invalid(format!("`{key}` must be greater than zero (got {n})")));
            }
            _ => return Err(self.wrong_type(key, "a size like \"10M\" or bytes", v)),
        };
        if n == 0 {
            return Err(self.invalid(format!("`{key}` must be greater than zero")));
        }
        Ok(n)
    }

    /// A lowercase keyword from `choices` (matched case-insensitively).
    fn choice<T: Copy>(
        &self,
        key: &str,
        v: &Value,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let want = format!("one of {}", names.join(", "));
        let s = v.as_str().ok_or_else(|| self.wrong_type(key, &want, v))?;
        choices
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
            .map(|(_, t)| *t)
            .ok_or_else(|| self.invalid(format!("`{key}` must be {want} (got `{s}`)")))
    }
}

/// The TOML type of a value, never the value itself (it may be a password).
fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Expands a leading `~/` (or a lone `~`) with $HOME.
fn expand_tilde(s: &str, env: Env) -> Result<PathBuf, String> {
    let rest = match s.strip_prefix('~') {
        None => return Ok(PathBuf::from(s)),
        Some("") => "",
        Some(r) if r.starts_with('/') => r.trim_start_matches('/'),
        Some(_) => return Err(format!("`{s}`: only `~/` is expanded, not `~user`")),
    };
    let home = home(env).ok_or_else(|| format!("cannot expand `{s}`: $HOME is not set"))?;
    Ok(if rest.is_empty() {
        home
    } else {
        home.join(rest)
    })
}

pub(super) fn home(env: Env) -> Option<PathBuf> {
    env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// An XDG base directory: `$var` if absolute (per the spec), else `~/fallback`.
pub(super) fn xdg_dir(
    env: Env,
    var: &'static str,
    fallback: &str,
    what: &'static str,
) -> Result<PathBuf, ConfigError> {
    if let Some(v) = env(var) {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            return Ok(p);
        }
    }
    home(env)
        .map(|h| h.join(fallback))
        .ok_or(ConfigError::NoHome { what, var })
}

/// The known key nearest to a typo, if it is close enough to be a likely one.
fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One table's keys, checked but not yet defaulted (used for `[defaults]`
/// alone, to blame it for its own errors, and for each merged account).
#[derive(Default)]
struct Fields {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<TlsMode>,
    ca_file: Option<PathBuf>,
    fingerprint: Option<[u8; 32]>,
    username: Option<String>,
    password: Option<Secret>,
    password_command: Option<String>,
    auth: Option<AuthMethod>,
    allow_insecure_auth: Option<bool>,
    maildir: Option<PathBuf>,
    mbox: Option<PathBuf>,
    mda: Option<String>,
    keep: Option<bool>,
    delete_after_days: Option<u32>,
    interval: Option<Duration>,
    notify: Option<bool>,
    max_size: Option<u64>,
    received_header: Option<bool>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    mda_timeout: Option<Duration>,
    utf8: Option<bool>,
    max_messages: Option<u32>,
    password_command_timeout: Option<Duration>,
    oauth2: oauth2::OAuth2Fields,
}

fn parse_fields(table: &Table, ctx: &Ctx) -> Result<Fields, ConfigError> {
    // Typos first: they are the likeliest mistake and explain later ones.
    if let Some(key) = table.keys().find(|k| !is_account_key(k)) {
        let known: Vec<&'static str> = ACCOUNT_KEYS.iter().chain(oauth2::KEYS).copied().collect();
        return Err(ctx.unknown(key, &known));
    }
    let mut f = Fields::default();
    for (key, v) in table {
        let k = key.as_str();
        match k {
            "host" => {
                let host = ctx.string(k, v)?.trim();
                super::check::host(host).map_err(|m| ctx.invalid(m))?;
                f.host = Some(host.to_string());
            }
            "port" => f.port = Some(ctx.int(k, v, 1, 65535)? as u16),
            "tls" => {
                let choices = [
                    ("implicit", TlsMode::Implicit),
                    ("starttls", TlsMode::Starttls),
                    ("none", TlsMode::None),
                ];
                f.tls = Some(ctx.choice(k, v, &choices)?);
            }
            "ca_file" => f.ca_file = Some(ctx.path(k, v)?),
            "fingerprint" => {
                let s = ctx.string(k, v)?;
                let fp = parse_fingerprint(s).map_err(|m| ctx.invalid(format!("`{k}`: {m}")))?;
                f.fingerprint = Some(fp);
            }
            "username" => f.username = Some(ctx.string(k, v)?.to_string()),
            "password" => match v {
                // An empty password is unusual but legal; never echo it.
                Value::String(s) => f.password = Some(Secret::new(s.clone())),
                _ => return Err(ctx.wrong_type(k, "a string", v)),
            },
            "password_command" => f.password_command = Some(ctx.string(k, v)?.to_string()),
            "auth" => {
                let choices = [
                    ("auto", AuthMethod::Auto),
                    ("user", AuthMethod::User),
                    ("apop", AuthMethod::Apop),
                    ("plain", AuthMethod::Plain),
                    ("xoauth2", AuthMethod::Xoauth2),
                    ("oauthbearer", AuthMethod::Oauthbearer),
                ];
                f.auth = Some(ctx.choice(k, v, &choices)?);
            }
            "allow_insecure_auth" => f.allow_insecure_auth = Some(ctx.bool(k, v)?),
            "maildir" => f.maildir = Some(ctx.path(k, v)?),
            "mbox" => f.mbox = Some(ctx.path(k, v)?),
            "mda" => f.mda = Some(ctx.string(k, v)?.to_string()),
            "keep" => f.keep = Some(ctx.bool(k, v)?),
            "delete_after_days" => {
                f.delete_after_days = Some(ctx.int(k, v, 0, i64::from(u32::MAX))? as u32)
            }
            "interval" => f.interval = Some(ctx.duration(k, v)?),
            "notify" => f.notify = Some(ctx.bool(k, v)?),
            "max_size" => f.max_size = Some(ctx.size(k, v)?),
            "received_header" => f.received_header = Some(ctx.bool(k, v)?),
            "connect_timeout" => f.connect_timeout = Some(ctx.duration(k, v)?),
            "timeout" => f.timeout = Some(ctx.duration(k, v)?),
            "mda_timeout" => f.mda_timeout = Some(ctx.duration(k, v)?),
            "utf8" => f.utf8 = Some(ctx.bool(k, v)?),
            "max_messages" => f.max_messages = Some(ctx.int(k, v, 1, i64::from(u32::MAX))? as u32),
            "password_command_timeout" => f.password_command_timeout = Some(ctx.duration(k, v)?),
            k if oauth2::KEYS.contains(&k) => f.oauth2.set(k, v, ctx)?,
            _ => unreachable!("checked with is_account_key above"),
        }
    }
    check_conflicts(&f, ctx)?;
    Ok(f)
}

fn check_conflicts(f: &Fields, ctx: &Ctx) -> Result<(), ConfigError> {
    if f.password.is_some() && f.password_command.is_some() {
        return Err(ctx.invalid("`password` and `password_command` are both set; choose one"));
    }
    if f.oauth2.is_set() && (f.password.is_some() || f.password_command.is_some()) {
        return Err(ctx.invalid(
            "`oauth2` and a `password`/`password_command` are both set; choose one (oauth2 gets its tokens itself)",
        ));
    }
    let set: Vec<&str> = [
        ("maildir", f.maildir.is_some()),
        ("mbox", f.mbox.is_some()),
        ("mda", f.mda.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| *k)
    .collect();
    if set.len() > 1 {
        let names: Vec<String> = set.iter().map(|k| format!("`{k}`")).collect();
        return Err(ctx.invalid(format!(
            "{} are both set; choose one delivery target",
            names.join(" and ")
        )));
    }
    Ok(())
}

/// `[defaults]` under the account: account keys win, and an account that sets
/// any key of a one-of group (target, secret) drops the whole group inherited.
fn merge(defaults: &Table, account: &Table) -> Table {
    let mut merged = defaults.clone();
    for group in [TARGET_KEYS, SECRET_KEYS] {
        if group.iter().any(|k| account.contains_key(*k)) {
            for k in group {
                merged.remove(*k);
            }
        }
    }
    for (k, v) in account {
        merged.insert(k.clone(), v.clone());
    }
    merged
}

fn build_account(name: &str, f: Fields, ctx: &Ctx) -> Result<Account, ConfigError> {
    let host = f.host.ok_or_else(|| ctx.invalid("missing `host`"))?;
    let username = f
        .username
        .ok_or_else(|| ctx.invalid("missing `username`"))?;
    let tls = f.tls.unwrap_or_default();
    let port = f.port.unwrap_or(match tls {
        TlsMode::Implicit => 995,
        TlsMode::Starttls | TlsMode::None => 110,
    });
    let oauth2 = f.oauth2.build(ctx)?;
    let auth = match (f.auth, oauth2.is_some()) {
        (None | Some(AuthMethod::Auto), true) => AuthMethod::Xoauth2,
        (Some(m @ (AuthMethod::Xoauth2 | AuthMethod::Oauthbearer)), true) => m,
        (Some(_), true) => {
            return Err(ctx.invalid(
                "`oauth2` gives a token, not a password: set `auth = \"xoauth2\"` or `auth = \"oauthbearer\"`",
            ));
        }
        (m, false) => m.unwrap_or_default(),
    };
    let secret_source = match (f.password, f.password_command, oauth2) {
        (_, _, Some(settings)) => SecretSource::OAuth2(Box::new(settings)),
        (Some(p), _, None) => SecretSource::Password(p),
        (None, Some(c), None) => SecretSource::Command(c),
        (None, None, None) => SecretSource::Missing,
    };
    let target = match (f.maildir, f.mbox, f.mda) {
        (Some(p), _, _) => Some(TargetConfig::Maildir(p)),
        (None, Some(p), _) => Some(TargetConfig::Mbox(p)),
        (None, None, Some(c)) => Some(TargetConfig::Mda(c)),
        (None, None, None) => None,
    };
    Ok(Account {
        name: name.to_string(),
        host,
        port,
        tls,
        ca_file: f.ca_file,
        fingerprint: f.fingerprint,
        username,
        secret_source,
        auth,
        allow_insecure_auth: f.allow_insecure_auth.unwrap_or(false),
        target,
        keep: f.keep.unwrap_or(true),
        delete_after_days: f.delete_after_days,
        interval: f.interval.unwrap_or(DEFAULT_INTERVAL),
        notify: f.notify.unwrap_or(true),
        max_size: f.max_size,
        received_header: f.received_header.unwrap_or(false),
        connect_timeout: f.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        timeout: f.timeout.unwrap_or(DEFAULT_TIMEOUT),
        mda_timeout: f.mda_timeout.unwrap_or(DEFAULT_MDA_TIMEOUT),
        utf8: f.utf8.unwrap_or(true),
        max_messages: f.max_messages.unwrap_or(DEFAULT_MAX_MESSAGES),
        password_command_timeout: f
            .password_command_timeout
            .unwrap_or(DEFAULT_PASSWORD_COMMAND_TIMEOUT),
    })
}

/// Account names become parts of lock and log file names.
pub(super) fn valid_account_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn from_table(table: &Table, path: &Path, env: Env) -> Result<Config, ConfigError> {
    let top = Ctx {
        path,
        scope: String::new(),
        env,
    };
    if let Some(key) = table.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
        if is_account_key(key) {
            // Most likely a missing table header above it.
            return Err(top.invalid(format!(
                "unknown key `{key}` at top level; it is an account key: put it under [account.NAME] or [defaults]"
            )));
        }
        return Err(top.unknown(key, TOP_KEYS));
    }
    let state_dir = match table.get("state_dir") {
        Some(v) => top.path("state_dir", v)?,
        None => xdg_dir(env, "XDG_STATE_HOME", ".local/state", "state directory")?.join("popsync"),
    };
    let state_busy_timeout = match table.get("state_busy_timeout") {
        Some(v) => top.duration("state_busy_timeout", v)?,
        None => crate::store::DEFAULT_BUSY_TIMEOUT,
    };
    let empty = Table::new();
    let defaults = match table.get("defaults") {
        None => &empty,
        Some(Value::Table(t)) => t,
        Some(v) => return Err(top.wrong_type("defaults", "a [defaults] table", v)),
    };
    let dctx = Ctx {
        path,
        scope: "[defaults]: ".to_string(),
        env,
    };
    parse_fields(defaults, &dctx)?;

    let no_accounts = || ConfigError::NoAccounts {
        path: path.to_path_buf(),
    };
    let account_tables = match table.get("account") {
        None => return Err(no_accounts()),
        Some(Value::Table(t)) => t,
        Some(v) => {
            return Err(top.wrong_type("account", "a set of [account.NAME] tables", v));
        }
    };
    if account_tables.is_empty() {
        return Err(no_accounts());
    }
    let mut accounts = Vec::with_capacity(account_tables.len());
    for (name, v) in account_tables {
        if !valid_account_name(name) {
            return Err(top.invalid(format!(
                "invalid account name `{name}`: use only letters, digits, `.`, `_` and `-`"
            )));
        }
        let Value::Table(t) = v else {
            return Err(top.invalid(format!(
                "`account.{name}` must be a table: put each account's keys under [account.NAME]"
            )));
        };
        let ctx = Ctx {
            path,
            scope: format!("account `{name}`: "),
            env,
        };
        let fields = parse_fields(&merge(defaults, t), &ctx)?;
        let mut account = build_account(name, fields, &ctx)?;
        if let SecretSource::OAuth2(settings) = &mut account.secret_source {
            settings.token_dir = state_dir.join("oauth2");
        }
        accounts.push(account);
    }
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Config {
        path: path.to_path_buf(),
        state_dir,
        state_busy_timeout,
        accounts,
    })
}
