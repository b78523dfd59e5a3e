//! The configuration error type. Every message names the file, the account
//! (or `[defaults]`) and the key, so a user can fix the file without guessing.
use std::path::PathBuf;

/// Why a configuration could not be loaded or used.
///
/// No variant ever carries a password or the output of `password_command`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "config file {} not found: create it with `popsync init EMAIL`, or write it by hand (see README: Configuration), or name another with -c FILE",
        .path.display()
    )]
    NotFound { path: PathBuf },

    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Our own rendering of toml's error: toml's Display quotes the offending
    /// line, which may be a password.
    #[error("{}:{line}:{column}: TOML syntax error: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "{} contains a password and is readable by others (mode {mode:04o}); run: chmod 600 {}",
        .path.display(), .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },

    /// Owned by another user, writable by group or others, or inside such a
    /// directory: anyone who can change it can run commands as this user.
    #[error("{0}")]
    Unsafe(#[from] crate::ownership::UnsafePath),

    #[error("no [account.NAME] table in {}", .path.display())]
    NoAccounts { path: PathBuf },

    /// `scope` is `account `x`: `, `[defaults]: ` or empty (top level).
    #[error("{}: {scope}unknown key `{key}`{}", .path.display(), suggestion_text(.suggestion))]
    UnknownKey {
        path: PathBuf,
        scope: String,
        key: String,
        suggestion: Option<&'static str>,
    },

    /// A missing, ill-typed, out-of-range or conflicting value.
    #[error("{}: {scope}{message}", .path.display())]
    Invalid {
        path: PathBuf,
        scope: String,
        message: String,
    },

    #[error("unknown account `{name}`; known accounts: {}", .known.join(", "))]
    UnknownAccount { name: String, known: Vec<String> },

    // No account in the text: every caller names it once, in front.
    #[error("no delivery target: set one of maildir, mbox, mda")]
    NoTarget { account: String },

    #[error("no password: set `password` or `password_command` in the account's table")]
    MissingSecret { account: String },

    /// The reason is the exit status or spawn error, never the output.
    #[error("password_command failed: {reason}; run it by hand to see why")]
    SecretCommand { account: String, reason: String },

    #[error("cannot find the {what}: neither ${var} nor $HOME is set")]
    NoHome {
        what: &'static str,
        var: &'static str,
    },
}

fn suggestion_text(s: &Option<&'static str>) -> String {
    match s {
        Some(k) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The config file does not exist (the CLI may offer to create one).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfigError::NotFound { .. })
    }

    /// The file holds a password but is group/world readable.
    pub fn is_permissions(&self) -> bool {
        matches!(self, ConfigError::Permissions { .. })
    }

    /// A problem with the file's contents (syntax, keys, values).
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            ConfigError::Syntax { .. }
                | ConfigError::NoAccounts { .. }
                | ConfigError::UnknownKey { .. }
                | ConfigError::Invalid { .. }
        )
    }

    /// The secret could not be obtained (missing or the command failed).
    pub fn is_secret(&self) -> bool {
        matches!(
            self,
            ConfigError::MissingSecret { .. } | ConfigError::SecretCommand { .. }
        )
    }
}
