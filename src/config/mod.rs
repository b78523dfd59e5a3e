//! Configuration (TOML): `~/.config/popsync/config.toml`.
//!
//! One `[account.NAME]` table per mailbox; `[defaults]` holds keys every
//! account inherits. [`Config::load`] reads and validates the whole file up
//! front, so a typo fails at start-up with the account and key named, not in
//! the middle of a sync.
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod check;
mod error;
mod parse;
pub use parse::DEFAULT_MAX_MESSAGES;
mod units;

pub use check::{host as check_host, require_targets};
pub use error::ConfigError;
pub use units::{parse_duration, parse_fingerprint, parse_size};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (RFC 8314), port 995.
    #[default]
    Implicit,
    /// Plain connection upgraded with STLS (RFC 2595), port 110.
    Starttls,
    /// No TLS at all.
    None,
}

/// Which authentication mechanism to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    #[default]
    Auto,
    User,
    Apop,
    Plain,
    Xoauth2,
    /// RFC 7628 (the standard form of XOAUTH2).
    Oauthbearer,
}

/// A password or token. Its Debug and Display never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The value is wiped from memory when the last copy is dropped.
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole configuration file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// Where per-account state (journal, locks) lives.
    pub state_dir: PathBuf,
    /// How long to wait for state.db while another process holds it locked.
    pub state_busy_timeout: Duration,
    /// Sorted by name, so listings and "all accounts" runs are stable.
    pub accounts: Vec<Account>,
}

impl Config {
    /// Reads, checks permissions and parses `path`.
    ///
    /// A file holding a literal `password` must not be readable by group or
    /// others (unix): we refuse rather than silently use a leaked secret.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(read_err(e)),
        };
        // fstat of the file we read: its password_command and mda run as us.
        let meta = file.metadata().map_err(read_err)?;
        crate::ownership::check_object("config file", path, &meta)?;
        let real = std::fs::canonicalize(path).map_err(read_err)?;
        crate::ownership::check_ancestors("config file", &real)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_err)?;
        let table = parse::parse_table(&text, path)?;
        #[cfg(unix)]
        if parse::has_password(&table) {
            use std::os::unix::fs::PermissionsExt;
            // fstat of the file we read, not a second lookup by name.
            let mode = file.metadata().map_err(read_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ConfigError::Permissions {
                    path: path.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
        }
        parse::from_table(&table, path, &parse::real_env)
    }

    /// Parses and validates `text`; `path` is only used in messages and
    /// `Config::path`. Reads the environment ($HOME, $XDG_STATE_HOME) only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, path, &parse::real_env)
    }

    fn parse_with_env(text: &str, path: &Path, env: parse::Env) -> Result<Config, ConfigError> {
        let table = parse::parse_table(text, path)?;
        parse::from_table(&table, path, env)
    }

    /// `$XDG_CONFIG_HOME/popsync/config.toml`, else `~/.config/popsync/config.toml`.
    pub fn default_path() -> Result<PathBuf, ConfigError> {
        default_path_with_env(&parse::real_env)
    }

    /// The account called `name`; the error lists the known names.
    pub fn account(&self, name: &str) -> Result<&Account, ConfigError> {
        self.accounts
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ConfigError::UnknownAccount {
                name: name.to_string(),
                known: self.accounts.iter().map(|a| a.name.clone()).collect(),
            })
    }

    /// The named accounts in the order given (duplicates dropped), or all of
    /// them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Account>, ConfigError> {
        if names.is_empty() {
            return Ok(self.accounts.iter().collect());
        }
        let mut out: Vec<&Account> = Vec::with_capacity(names.len());
        for name in names {
            let account = self.account(name)?;
            if !out.iter().any(|a| a.name == account.name) {
                out.push(account);
            }
        }
        Ok(out)
    }
}

/// `$XDG_STATE_HOME/popsync`, else `~/.local/state/popsync`: where state
/// lives unless the config sets `state_dir`.
pub fn default_state_dir() -> Result<PathBuf, ConfigError> {
    let dir = parse::xdg_dir(
        &parse::real_env,
        "XDG_STATE_HOME",
        ".local/state",
        "state directory",
    )?;
    Ok(dir.join("popsync"))
}

fn default_path_with_env(env: parse::Env) -> Result<PathBuf, ConfigError> {
    let dir = parse::xdg_dir(env, "XDG_CONFIG_HOME", ".config", "config directory")?;
    Ok(dir.join("popsync").join("config.toml"))
}

/// One `[account.NAME]` table with `[defaults]` and built-in defaults applied.
#[derive(Clone, PartialEq)]
pub struct Account {
    pub name: String,
    pub host: String,
    /// 995 for implicit TLS, 110 otherwise, unless set.
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's leaf certificate, when pinned.
    pub fingerprint: Option<[u8; 32]>,
    pub username: String,
    pub secret_source: SecretSource,
    pub auth: AuthMethod,
    pub allow_insecure_auth: bool,
    /// `None` is allowed at load time (e.g. for `check` commands); use
    /// [`Account::target`] where delivery needs one.
    pub target: Option<TargetConfig>,
    pub keep: bool,
    pub delete_after_days: Option<u32>,
    pub interval: Duration,
    pub notify: bool,
    pub max_size: Option<u64>,
    pub received_header: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub mda_timeout: Duration,
    /// Send `UTF8` (RFC 6856) when the server offers it, so that it serves
    /// the original message, not a down-converted wrapper.
    pub utf8: bool,
    /// More messages than this in a listing is refused (default 1,000,000).
    pub max_messages: u32,
    /// `password_command` is killed (its process group) after this long.
    pub password_command_timeout: Duration,
}

/// Where the password or token comes from.
#[derive(Clone, PartialEq)]
pub enum SecretSource {
    Password(Secret),
    /// A shell command printing the secret on its first line.
    Command(String),
    /// Neither was configured; asked for only when needed.
    Missing,
    /// OAuth2 tokens popsync obtains (`popsync login`) and refreshes itself.
    OAuth2(Box<crate::oauth2::OAuth2Settings>),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Password(_) => f.write_str("Password(<redacted>)"),
            SecretSource::Command(c) => f.debug_tuple("Command").field(c).finish(),
            SecretSource::Missing => f.write_str("Missing"),
            SecretSource::OAuth2(s) => f.debug_tuple("OAuth2").field(s).finish(),
        }
    }
}

/// Where fetched mail is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetConfig {
    Maildir(PathBuf),
    Mbox(PathBuf),
    /// A shell command fed one message on stdin.
    Mda(String),
}

/// Written by hand so a future field cannot leak a secret by derive.
impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("fingerprint", &self.fingerprint.map(hex::encode))
            .field("username", &self.username)
            .field("secret_source", &self.secret_source)
            .field("auth", &self.auth)
            .field("allow_insecure_auth", &self.allow_insecure_auth)
            .field("target", &self.target)
            .field("keep", &self.keep)
            .field("delete_after_days", &self.delete_after_days)
            .field("interval", &self.interval)
            .field("notify", &self.notify)
            .field("max_size", &self.max_size)
            .field("received_header", &self.received_header)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("mda_timeout", &self.mda_timeout)
            .field("utf8", &self.utf8)
            .field("max_messages", &self.max_messages)
            .field("password_command_timeout", &self.password_command_timeout)
            .finish()
    }
}

impl Account {
    /// The password or token: the literal, or the first line of
    /// `sh -c password_command`'s stdout (trailing CR stripped).
    ///
    /// Run on demand, not at load time, so a locked keyring only matters for
    /// accounts actually synced. The command's stderr goes to ours (pass/gpg
    /// diagnostics); its stdout never appears in an error.
    pub fn secret(&self) -> Result<Secret, ConfigError> {
        match &self.secret_source {
            SecretSource::Password(s) => Ok(s.clone()),
            SecretSource::Missing => Err(ConfigError::MissingSecret {
                account: self.name.clone(),
            }),
            SecretSource::Command(cmd) => {
                run_password_command(&self.name, cmd, self.password_command_timeout)
            }
            // Tokens come from crate::oauth2::access_token (async, networked).
            SecretSource::OAuth2(_) => Err(ConfigError::MissingSecret {
                account: self.name.clone(),
            }),
        }
    }

    /// The delivery target, or an error naming the keys to set.
    /// The OAuth2 settings, when the account logs in with popsync's own tokens.
    pub fn oauth2(&self) -> Option<&crate::oauth2::OAuth2Settings> {
        match &self.secret_source {
            SecretSource::OAuth2(s) => Some(s),
            _ => None,
        }
    }

    pub fn target(&self) -> Result<&TargetConfig, ConfigError> {
        self.target.as_ref().ok_or_else(|| ConfigError::NoTarget {
            account: self.name.clone(),
        })
    }
}

/// Whether `name` can be an `[account.NAME]` (it names lock and log files).
pub fn is_valid_account_name(name: &str) -> bool {
    parse::valid_account_name(name)
}

/// Runs a `password_command` that is not in a config yet (`popsync init`).
pub fn run_secret_command(account: &str, cmd: &str) -> Result<Secret, ConfigError> {
    run_password_command(account, cmd, parse::DEFAULT_PASSWORD_COMMAND_TIMEOUT)
}

/// More output than this from `password_command` is refused (`yes` would
/// otherwise fill the memory).
const MAX_SECRET_OUTPUT: usize = 64 * 1024;

fn run_password_command(
    account: &str,
    cmd: &str,
    timeout: std::time::Duration,
) -> Result<Secret, ConfigError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let fail = |reason: String| ConfigError::SecretCommand {
        account: account.to_string(),
        reason,
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0) // a timeout kills everything it started
        .spawn()
        .map_err(|e| fail(format!("cannot run `sh`: {e}")))?;
    let group = crate::helpers::GroupGuard::new(child.id());
    let deadline = std::time::Instant::now() + timeout;
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = zeroize::Zeroizing::new(Vec::new());
        let res = (&mut stdout)
            .take(MAX_SECRET_OUTPUT as u64 + 1)
            .read_to_end(&mut out);
        let _ = tx.send(res.map(|_| out));
    });
    let give_up = |child: &mut std::process::Child, reason: String| {
        group.kill();
        let _ = child.wait();
        fail(reason)
    };
    let output = match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(give_up(&mut child, format!("reading its output: {e}"))),
        Err(_) => {
            return Err(give_up(
                &mut child,
                format!(
                    "it did not finish within {}s; killed (raise password_command_timeout if it needs longer)",
                    timeout.as_secs_f32()
                ),
            ));
        }
    };
    if output.len() > MAX_SECRET_OUTPUT {
        return Err(give_up(
            &mut child,
            format!(
                "it printed more than {} KiB; killed",
                MAX_SECRET_OUTPUT / 1024
            ),
        ));
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => {
                return Err(give_up(
                    &mut child,
                    format!("it did not exit within {}s; killed", timeout.as_secs_f32()),
                ));
            }
            Err(e) => return Err(give_up(&mut child, format!("waiting for it: {e}"))),
        }
    };
    if !status.success() {
        return Err(fail(describe_status(status)));
    }
    let first = output.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    if first.is_empty() {
        return Err(fail("it printed nothing on its first line".to_string()));
    }
    let line =
        std::str::from_utf8(first).map_err(|_| fail("its output is not UTF-8".to_string()))?;
    Ok(Secret::new(line))
}

fn describe_status(status: std::process::ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    format!("{status}")
}

#[cfg(test)]
mod tests;
