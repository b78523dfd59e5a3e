//! Per-account polling schedule: when the next poll is due, back-off after
//! failures, `[LOGIN-DELAY]`, pausing after refused logins, and which
//! outcomes deserve a log line. Pure: the caller passes the time and the
//! random numbers, so every rule is tested without a server or a clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::sync::{FailureKind, SyncError};

/// Tunables of the schedule (the same for every account).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Back-off grows to this, or to the account's interval if longer.
    pub max_backoff: Duration,
    /// The first retry after a failure waits at most this long (or the
    /// interval, if shorter); each further failure doubles the wait.
    pub first_retry: Duration,
    /// Refused logins in a row before polling of the account stops.
    pub auth_failures_to_pause: u32,
    /// Up to this fraction of each wait is added at random, so accounts
    /// started together drift apart.
    pub jitter: f64,
    /// First polls are spread over this much time (or the interval).
    pub startup_spread: Duration,
    /// Wait after `[LOGIN-DELAY]` when the server did not say how long.
    pub default_login_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_backoff: Duration::from_secs(3600),
            first_retry: Duration::from_secs(60),
            auth_failures_to_pause: 3,
            jitter: 0.1,
            startup_spread: Duration::from_secs(3),
            default_login_delay: Duration::from_secs(300),
        }
    }
}

/// What a poll came to, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The network or the connection failed (connect, time-out, reset).
    Network,
    /// The server or a local reader said "not now": `[IN-USE]`,
    /// `[SYS/TEMP]`, a busy state database, a locked mbox.
    Busy,
    /// `[LOGIN-DELAY]`: too soon after the last login.
    LoginDelay,
    /// The server refused the credentials.
    Auth,
    /// Another popsync process is syncing this account.
    Locked,
    /// The OAuth2 tokens are missing, revoked or expired: only `popsync
    /// login` helps. Checked on the normal interval (a local file, no
    /// network: a refused refresh token is remembered), reported once.
    NeedsLogin,
    /// Anything else (TLS, protocol, delivery, config): needs a human.
    Failed,
}

impl Outcome {
    /// The schedule's view of the one failure classification.
    pub fn of(error: Option<&SyncError>) -> Outcome {
        error.map_or(Outcome::Ok, |e| Outcome::of_kind(e.kind()))
    }

    pub fn of_kind(kind: FailureKind) -> Outcome {
        match kind {
            FailureKind::Network => Outcome::Network,
            FailureKind::Busy => Outcome::Busy,
            FailureKind::LoginDelay => Outcome::LoginDelay,
            FailureKind::Auth => Outcome::Auth,
            FailureKind::NeedsLogin => Outcome::NeedsLogin,
            FailureKind::Locked => Outcome::Locked,
            FailureKind::Config
            | FailureKind::Tls
            | FailureKind::Protocol
            | FailureKind::Delivery => Outcome::Failed,
        }
    }

    /// Failures that usually go away by themselves: logged once per streak.
    fn is_transient(self) -> bool {
        matches!(
            self,
            Outcome::Network | Outcome::Busy | Outcome::LoginDelay | Outcome::Locked
        )
    }
}

/// How the caller should report a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A normal successful poll.
    Ok,
    /// Success after `failures` failed polls in a row.
    Recovered { failures: u32 },
    /// A failure worth a line: the first of a transient streak, or any
    /// failure that needs a human.
    Failed,
    /// One more failure of a transient streak already reported.
    Repeated { streak: u32 },
    /// Logins were refused too often: polling stopped until a reload.
    Paused { failures: u32 },
}

/// The result of recording a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// When to poll next; `None` once paused.
    pub next: Option<Instant>,
    pub note: Note,
}

/// One account's schedule.
#[derive(Debug, Clone)]
pub struct AccountSchedule {
    interval: Duration,
    next: Option<Instant>,
    /// `[LOGIN-DELAY]`: no login before this, not even on "poll now".
    not_before: Option<Instant>,
    /// Failed polls in a row (of any kind but `Locked`).
    failures: u32,
    /// Refused logins in a row.
    auth_failures: u32,
    /// The kind of the last failure, to tell a streak from a new problem.
    last: Option<Outcome>,
}

impl AccountSchedule {
    /// First poll soon after start-up: within the spread, at random
    /// (`rand` in `[0, 1)`).
    pub fn new(interval: Duration, policy: &Policy, now: Instant, rand: f64) -> Self {
        let interval = interval.max(Duration::from_secs(1));
        let spread = policy.startup_spread.min(interval);
        AccountSchedule {
            interval,
            next: Some(now + spread.mul_f64(rand.clamp(0.0, 1.0))),
            not_before: None,
            failures: 0,
            auth_failures: 0,
            last: None,
        }
    }

    /// When the next poll is due; `None` while paused.
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    pub fn is_paused(&self) -> bool {
        self.next.is_none()
    }

    /// The last poll found no usable OAuth2 login (a reload polls it at once).
    pub fn waits_for_login(&self) -> bool {
        self.last == Some(Outcome::NeedsLogin)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Poll as soon as allowed (`SIGUSR1`). A paused account stays paused;
    /// a `[LOGIN-DELAY]` is still honoured. Returns false when paused.
    pub fn poll_now(&mut self, now: Instant) -> bool {
        if self.next.is_none() {
            return false;
        }
        let at = self.not_before.map_or(now, |nb| nb.max(now));
        self.next = Some(at);
        true
    }

    /// Records a poll that ended at `now`. `login_delay` is the server's
    /// LOGIN-DELAY capability, if announced; `rand` is in `[0, 1)`.
    pub fn record(
        &mut self,
        outcome: Outcome,
        login_delay: Option<Duration>,
        policy: &Policy,
        now: Instant,
        rand: f64,
    ) -> Decision {
        let jittered =
            |wait: Duration| now + wait + wait.mul_f64(policy.jitter * rand.clamp(0.0, 1.0));
        if outcome == Outcome::Ok {
            let failures = std::mem::take(&mut self.failures);
            self.auth_failures = 0;
            self.last = None;
            // RFC 2449: LOGIN-DELAY is the least time between logins.
            let wait = self.interval.max(login_delay.unwrap_or_default());
            self.not_before = login_delay.map(|d| now + d);
            self.next = Some(jittered(wait));
            let note = if failures > 0 {
                Note::Recovered { failures }
            } else {
                Note::Ok
            };
            return Decision {
                next: self.next,
                note,
            };
        }
        if outcome == Outcome::NeedsLogin {
            // Only a login helps; until then each check is a local file
            // read, so the normal interval costs nothing (no backoff).
            let note = self.streak_note(outcome);
            self.failures += 1;
            self.next = Some(jittered(self.interval));
            return Decision {
                next: self.next,
                note,
            };
        }
        if outcome == Outcome::Locked {
            // Not this daemon's failure: try again on the normal schedule.
            let note = self.streak_note(outcome);
            self.next = Some(jittered(self.interval));
            return Decision {
                next: self.next,
                note,
            };
        }
        let note = self.streak_note(outcome);
        self.failures += 1;
        if outcome == Outcome::Auth {
            self.auth_failures += 1;
            if self.auth_failures >= policy.auth_failures_to_pause {
                self.next = None;
                return Decision {
                    next: None,
                    note: Note::Paused {
                        failures: self.auth_failures,
                    },
                };
            }
        } else {
            self.auth_failures = 0;
        }
        let mut wait = self.backoff(policy);
        if outcome == Outcome::LoginDelay {
            let delay = login_delay.unwrap_or(policy.default_login_delay);
            self.not_before = Some(now + delay);
            wait = wait.max(delay);
        }
        self.next = Some(jittered(wait));
        Decision {
            next: self.next,
            note,
        }
    }

    /// `first_retry` (or the interval, if shorter), doubled per further
    /// failure, capped at `max_backoff` (or the interval, if longer).
    fn backoff(&self, policy: &Policy) -> Duration {
        let base = policy.first_retry.min(self.interval);
        let cap = policy.max_backoff.max(self.interval);
        let doublings = self.failures.saturating_sub(1).min(30);
        base.saturating_mul(1u32 << doublings).min(cap)
    }

    fn streak_note(&mut self, outcome: Outcome) -> Note {
        let once_per_streak = outcome.is_transient() || outcome == Outcome::NeedsLogin;
        let repeated = once_per_streak && self.last == Some(outcome);
        self.last = Some(outcome);
        if repeated {
            Note::Repeated {
                streak: self.failures + 1,
            }
        } else {
            Note::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::StatusLine;
    use crate::session::SessionError;
    use crate::sync::LockError;

    const MIN: Duration = Duration::from_secs(60);

    fn session_err(line: &[u8]) -> SyncError {
        SyncError::Session(SessionError::AuthFailed {
            method: "USER",
            line: StatusLine::parse(line).unwrap(),
        })
    }

    fn fresh(interval: Duration) -> (AccountSchedule, Policy, Instant) {
        let policy = Policy::default();
        let now = Instant::now();
        (
            AccountSchedule::new(interval, &policy, now, 0.0),
            policy,
            now,
        )
    }

    #[test]
    fn classifies_server_answers() {
        assert_eq!(Outcome::of(None), Outcome::Ok);
        assert_eq!(
            Outcome::of(Some(&session_err(b"-ERR [IN-USE] locked"))),
            Outcome::Busy
        );
        assert_eq!(
            Outcome::of(Some(&session_err(b"-ERR [SYS/TEMP] later"))),
            Outcome::Busy
        );
        assert_eq!(
            Outcome::of(Some(&session_err(b"-ERR [LOGIN-DELAY] wait"))),
            Outcome::LoginDelay
        );
        assert_eq!(
            Outcome::of(Some(&session_err(b"-ERR [AUTH] bad password"))),
            Outcome::Auth
        );
        assert_eq!(
            Outcome::of(Some(&session_err(b"-ERR no such user"))),
            Outcome::Auth
        );
        assert_eq!(
            Outcome::of(Some(&session_err(b"-ERR [SYS/PERM] gone"))),
            Outcome::Failed,
            "a permanent server failure is not bad credentials: backed off, not paused"
        );
        assert_eq!(
            Outcome::of(Some(&SyncError::Session(SessionError::Closed))),
            Outcome::Network
        );
        assert_eq!(
            Outcome::of(Some(&SyncError::Session(SessionError::StlsNotOffered))),
            Outcome::Failed
        );
        let held = SyncError::Lock(LockError::Held {
            account: "a".into(),
            path: "/x".into(),
        });
        assert_eq!(Outcome::of(Some(&held)), Outcome::Locked);
    }

    #[tokio::test(start_paused = true)]
    async fn first_polls_are_spread_and_then_follow_the_interval() {
        let policy = Policy::default();
        let now = Instant::now();
        let early = AccountSchedule::new(5 * MIN, &policy, now, 0.0);
        let late = AccountSchedule::new(5 * MIN, &policy, now, 0.99);
        assert_eq!(early.next(), Some(now));
        let spread = late.next().unwrap() - now;
        assert!(spread > Duration::from_secs(2) && spread < policy.startup_spread);
        // A 1 s interval never waits longer than 1 s for its first poll.
        let fast = AccountSchedule::new(Duration::from_secs(1), &policy, now, 0.99);
        assert!(fast.next().unwrap() - now < Duration::from_secs(1));

        let mut s = early;
        tokio::time::advance(Duration::from_secs(2)).await;
        let t = Instant::now();
        let d = s.record(Outcome::Ok, None, &policy, t, 0.0);
        assert_eq!(
            d,
            Decision {
                next: Some(t + 5 * MIN),
                note: Note::Ok
            }
        );
        // Jitter adds at most 10 % of the wait.
        let d = s.record(Outcome::Ok, None, &policy, t, 0.999);
        let wait = d.next.unwrap() - t;
        assert!(wait > 5 * MIN && wait < 5 * MIN + 31 * Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let (mut s, policy, now) = fresh(5 * MIN);
        let waits: Vec<u64> = (0..9)
            .map(|_| {
                let d = s.record(Outcome::Network, None, &policy, now, 0.0);
                (d.next.unwrap() - now).as_secs() / 60
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let d = s.record(Outcome::Ok, None, &policy, now, 0.0);
        assert_eq!(d.note, Note::Recovered { failures: 9 });
        assert_eq!(d.next, Some(now + 5 * MIN));
        let d = s.record(Outcome::Network, None, &policy, now, 0.0);
        assert_eq!(d.next, Some(now + MIN), "back-off starts over");
    }

    #[test]
    fn short_and_long_intervals_bound_the_backoff() {
        let (mut s, policy, now) = fresh(Duration::from_secs(1));
        let waits: Vec<u64> = (0..5)
            .map(|_| {
                (s.record(Outcome::Failed, None, &policy, now, 0.0)
                    .next
                    .unwrap()
                    - now)
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        let (mut s, policy, now) = fresh(Duration::from_secs(6 * 3600));
        for _ in 0..20 {
            s.record(Outcome::Network, None, &policy, now, 0.0);
        }
        let d = s.record(Outcome::Network, None, &policy, now, 0.0);
        assert_eq!(d.next, Some(now + Duration::from_secs(6 * 3600)));
    }

    #[test]
    fn network_streak_is_reported_once() {
        let (mut s, policy, now) = fresh(MIN);
        let notes: Vec<Note> = (0..4)
            .map(|_| s.record(Outcome::Network, None, &policy, now, 0.0).note)
            .collect();
        assert_eq!(
            notes,
            [
                Note::Failed,
                Note::Repeated { streak: 2 },
                Note::Repeated { streak: 3 },
                Note::Repeated { streak: 4 }
            ]
        );
        // A different problem is news again; failures that need a human are
        // reported every time.
        assert_eq!(
            s.record(Outcome::Busy, None, &policy, now, 0.0).note,
            Note::Failed
        );
        assert_eq!(
            s.record(Outcome::Failed, None, &policy, now, 0.0).note,
            Note::Failed
        );
        assert_eq!(
            s.record(Outcome::Failed, None, &policy, now, 0.0).note,
            Note::Failed
        );
    }

    #[test]
    fn refused_logins_pause_until_a_new_schedule() {
        let (mut s, policy, now) = fresh(MIN);
        assert_eq!(
            s.record(Outcome::Auth, None, &policy, now, 0.0).note,
            Note::Failed
        );
        // In-use in between is not a refusal and breaks the streak.
        s.record(Outcome::Busy, None, &policy, now, 0.0);
        assert_eq!(
            s.record(Outcome::Auth, None, &policy, now, 0.0).note,
            Note::Failed
        );
        assert!(
            s.record(Outcome::Auth, None, &policy, now, 0.0)
                .next
                .is_some()
        );
        let d = s.record(Outcome::Auth, None, &policy, now, 0.0);
        assert_eq!(
            d,
            Decision {
                next: None,
                note: Note::Paused { failures: 3 }
            }
        );
        assert!(s.is_paused());
        assert!(
            !s.poll_now(now),
            "poll-now does not resume a paused account"
        );
        assert!(s.next().is_none());
    }

    #[test]
    fn a_needed_oauth2_login_keeps_the_interval_and_is_reported_once() {
        let (mut s, policy, now) = fresh(5 * MIN);
        let revoked = SyncError::OAuth2(crate::oauth2::OAuth2Error::Revoked {
            account: "a".into(),
            detail: "invalid_grant".into(),
        });
        let outcome = Outcome::of(Some(&revoked));
        assert_eq!(outcome, Outcome::NeedsLogin);
        for round in 0..5 {
            let d = s.record(outcome, None, &policy, now, 0.0);
            assert_eq!(
                d.next,
                Some(now + 5 * MIN),
                "never paused for good, never backed off"
            );
            let expected = if round == 0 {
                Note::Failed
            } else {
                Note::Repeated { streak: round + 1 }
            };
            assert_eq!(d.note, expected);
            assert!(s.waits_for_login());
        }
        assert_eq!(
            s.record(Outcome::Ok, None, &policy, now, 0.0).note,
            Note::Recovered { failures: 5 }
        );
        assert!(!s.waits_for_login());
    }

    #[tokio::test(start_paused = true)]
    async fn login_delay_is_honoured_even_by_poll_now() {
        let (mut s, policy, now) = fresh(MIN);
        // Announced as a capability: the interval is stretched to it.
        let d = s.record(Outcome::Ok, Some(15 * MIN), &policy, now, 0.0);
        assert_eq!(d.next, Some(now + 15 * MIN));
        tokio::time::advance(MIN).await;
        assert!(s.poll_now(Instant::now()));
        assert_eq!(s.next(), Some(now + 15 * MIN));
        // Refused with [LOGIN-DELAY] and no capability: the default wait.
        let t = Instant::now();
        let d = s.record(Outcome::LoginDelay, None, &policy, t, 0.0);
        assert_eq!(d.next, Some(t + policy.default_login_delay));
        tokio::time::advance(policy.default_login_delay).await;
        assert!(s.poll_now(Instant::now()));
        assert_eq!(s.next(), Some(Instant::now()));
    }

    #[test]
    fn locked_by_another_process_keeps_the_interval() {
        let (mut s, policy, now) = fresh(5 * MIN);
        let d = s.record(Outcome::Locked, None, &policy, now, 0.0);
        assert_eq!(
            d,
            Decision {
                next: Some(now + 5 * MIN),
                note: Note::Failed
            }
        );
        let d = s.record(Outcome::Locked, None, &policy, now, 0.0);
        assert_eq!(d.note, Note::Repeated { streak: 1 });
        assert_eq!(s.failures(), 0);
    }
}
