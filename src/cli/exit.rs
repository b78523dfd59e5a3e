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
            FailureKind::Auth | FailureKind::NeedsLogin => Exit::Auth,
            FailureKind::Network | FailureKind::Busy | FailureKind::LoginDelay => Exit::Temporary,
            FailureKind::Protocol => Exit::Protocol,
            FailureKind::Delivery => Exit::Delivery,
            FailureKind::Locked => Exit::Locked,
        }
    }

    pub fn for_store(err: &crate::store::StoreError) -> Exit {
        Exit::for_kind(FailureKind::of_store(err))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::Outcome;
    use crate::deliver::DeliverError;
    use crate::pop3::StatusLine;
    use crate::store::StoreError;
    use crate::sync::{LockError, SyncError};

    fn session(raw: &[u8]) -> SyncError {
        SyncError::Session(SessionError::AuthFailed {
            method: "USER",
            line: StatusLine::parse(raw).unwrap(),
        })
    }

    /// One error, three readings: the exit code, the `run` table's word and
    /// the daemon's schedule must tell the same story.
    #[test]
    fn exit_code_outcome_word_and_schedule_come_from_one_kind() {
        let cases: Vec<(SyncError, Exit, &str, Outcome)> = vec![
            (
                session(b"-ERR [IN-USE] busy"),
                Exit::Temporary,
                "temporary",
                Outcome::Busy,
            ),
            (
                session(b"-ERR [LOGIN-DELAY] wait"),
                Exit::Temporary,
                "temporary",
                Outcome::LoginDelay,
            ),
            (
                session(b"-ERR [AUTH] wrong"),
                Exit::Auth,
                "auth",
                Outcome::Auth,
            ),
            (
                session(b"-ERR [SYS/PERM] gone"),
                Exit::Protocol,
                "protocol",
                Outcome::Failed,
            ),
            (
                SyncError::Session(SessionError::Closed),
                Exit::Temporary,
                "temporary",
                Outcome::Network,
            ),
            (
                SyncError::Session(SessionError::StlsNotOffered),
                Exit::Tls,
                "tls",
                Outcome::Failed,
            ),
            (
                SyncError::Store(StoreError::Busy { path: "/s".into() }),
                Exit::Temporary,
                "temporary",
                Outcome::Busy,
            ),
            (
                SyncError::Deliver(DeliverError::Locked {
                    target: "mbox /m".into(),
                    detail: "fcntl".into(),
                }),
                Exit::Temporary,
                "temporary",
                Outcome::Busy,
            ),
            (
                SyncError::Deliver(DeliverError::Other("disk full".into())),
                Exit::Delivery,
                "delivery",
                Outcome::Failed,
            ),
            (
                SyncError::Lock(LockError::Held {
                    account: "a".into(),
                    path: "/x".into(),
                }),
                Exit::Locked,
                "locked",
                Outcome::Locked,
            ),
            (
                SyncError::OAuth2(crate::oauth2::OAuth2Error::Revoked {
                    account: "a".into(),
                    detail: "invalid_grant".into(),
                }),
                Exit::Auth,
                "auth",
                Outcome::NeedsLogin,
            ),
        ];
        for (err, exit, word, outcome) in cases {
            let kind = err.kind();
            assert_eq!(Exit::for_kind(kind), exit, "{err}");
            assert_eq!(err.outcome(), word, "{err}");
            assert_eq!(Outcome::of(Some(&err)), outcome, "{err}");
            assert_eq!(
                err.is_transient(),
                matches!(exit, Exit::Temporary | Exit::Locked),
                "{err}: retried quietly exactly when the exit code says try later"
            );
        }
    }
}
