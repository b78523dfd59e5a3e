//! Exit codes: distinct per kind of failure, so scripts and systemd can act.

use crate::session::SessionError;
use crate::sync::FailureKind;

/// Documented in README ("Exit codes"). Never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    /// A bug or an unexpected local error.
    Internal = 1,
    /// Command-line usage (clap uses 2 as well).
    Usage = 2,
    Config = 3,
    /// The server refused the credentials.
    Auth = 4,
    /// TLS or certificate failure, or a refusal to send credentials in clear.
    Tls = 5,
    /// Network trouble or a temporary server condition: retry later.
    Temporary = 6,
    /// Local delivery or state failure (disk full, unwritable maildir, …).
    Delivery = 7,
    /// Another popsync holds the account's lock.
    Locked = 8,
    /// The server broke the protocol or failed permanently.
    Protocol = 9,
    /// `verify`: a stored message is missing, altered or unreadable.
    Verify = 10,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// How a session failure maps to an exit code.
    pub fn for_session(err: &SessionError) -> Exit {
        Exit::for_kind(FailureKind::of_session(err))
    }

    pub fn for_kind(kind: FailureKind) -> Exit {
        match kind {
            FailureKind::Config => Exit::Config,
            FailureKind::Tls => Exit::Tls,
            FailureKind::Auth => Exit::Auth,
            FailureKind::Temporary => Exit::Temporary,
            FailureKind::Protocol => Exit::Protocol,
            FailureKind::Delivery => Exit::Delivery,
            FailureKind::Locked => Exit::Locked,
        }
    }

    /// A state database held by another process is worth retrying; any
    /// other state failure is local trouble.
    pub fn for_store(err: &crate::store::StoreError) -> Exit {
        match err {
            crate::store::StoreError::Busy { .. } => Exit::Temporary,
            _ => Exit::Delivery,
        }
    }

    /// When several accounts fail differently, the most actionable wins.
    pub fn severity(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Temporary => 1,
            Exit::Locked => 2,
            Exit::Protocol => 3,
            Exit::Verify => 4,
            Exit::Delivery => 5,
            Exit::Tls => 6,
            Exit::Auth => 7,
            Exit::Config => 8,
            Exit::Usage => 9,
            Exit::Internal => 10,
        }
    }

    pub fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// An error on its way to the user: a message and the code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure::new(Exit::for_store(&e), e.to_string())
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Self {
        Failure::new(Exit::Config, e.to_string())
    }
}

/// Credentials (password_command, OAuth2 tokens) fail before any session.
impl From<crate::sync::SyncError> for Failure {
    fn from(e: crate::sync::SyncError) -> Self {
        Failure::new(Exit::for_kind(e.kind()), e.to_string())
    }
}
