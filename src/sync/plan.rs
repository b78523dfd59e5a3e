//! What one run must do, decided from the server's listings and the state.
//! Pure: no I/O, so every policy is unit-tested here.

use std::collections::HashMap;

use crate::pop3::{ListEntry, UidlEntry};
use crate::store::{KnownMessage, MessageState, SkipReason};

const DAY: i64 = 86_400;

/// Local policy from the account's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub keep: bool,
    pub delete_after_days: Option<u32>,
    pub max_size: Option<u64>,
    pub now: i64,
}

/// A message to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub msg: u32,
    /// `None` only on a server without UIDL (delete mode).
    pub uid: Option<String>,
    /// LIST's size: advisory, used for progress and truncation checks.
    pub size: u64,
}

/// A message left on the server on purpose, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub msg: u32,
    pub uid: Option<String>,
    pub reason: SkipReason,
    /// Whether the state should record it (it has a valid, unique UID).
    pub record: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub fetch: Vec<Wanted>,
    pub skip: Vec<Skip>,
    /// Messages stored in an earlier run that policy says to delete now.
    pub delete: Vec<(u32, String)>,
    /// Live UIDs of the state that the complete listing no longer has as a
    /// valid, unique UID (empty without UIDL): they leave the seen set.
    pub gone: Vec<String>,
    /// UIDs the state has not seen before, with LIST sizes.
    pub new_uids: Vec<(String, u64)>,
}

/// Why the run must not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the server does not support UIDL, so keep = true cannot tell new mail from old; set keep = false to fetch and delete"
    )]
    NoUidl,
    #[error(
        "none of the {known} UIDs popsync knows for this account are on the server, and {unknown} unknown messages are: the server seems to have renumbered its UIDs (a migration?). Refusing to download the whole mailbox again; if that is what you want, run `popsync sync --accept-uid-change`"
    )]
    UidsChanged { known: usize, unknown: usize },
}

/// A wholesale UID change is only suspected above this many known UIDs.
pub const UID_CHANGE_THRESHOLD: usize = 20;

pub fn plan(
    uidl: Option<&[UidlEntry]>,
    list: &[ListEntry],
    known: &HashMap<String, KnownMessage>,
    policy: Policy,
    accept_uid_change: bool,
) -> Result<Plan, PlanError> {
    let sizes: HashMap<u32, u64> = list.iter().map(|e| (e.msg, e.size)).collect();
    let size_of = |msg: u32| sizes.get(&msg).copied().unwrap_or(0);
    let mut out = Plan::default();

    let Some(uidl) = uidl else {
        if policy.keep {
            return Err(PlanError::NoUidl);
        }
        for entry in list {
            push_fetch_or_skip(&mut out, entry.msg, None, entry.size, policy);
        }
        return Ok(out);
    };

    // Two messages sharing a UID cannot be told apart: leave both alone.
    let mut count: HashMap<&str, usize> = HashMap::with_capacity(uidl.len());
    for entry in uidl {
        if let Ok(uid) = &entry.uid {
            *count.entry(uid.as_str()).or_default() += 1;
        }
    }

    let mut candidates = Vec::with_capacity(uidl.len());
    for entry in uidl {
        let uid = match &entry.uid {
            Ok(uid) => uid.as_str(),
            Err(e) => {
                out.skip.push(Skip {
                    msg: entry.msg,
                    uid: None,
                    reason: SkipReason::InvalidUid(e.to_string()),
                    record: false,
                });
                continue;
            }
        };
        if count[uid] > 1 {
            out.skip.push(Skip {
                msg: entry.msg,
                uid: Some(uid.to_string()),
                reason: SkipReason::SharedUid { count: count[uid] },
                record: false,
            });
            continue;
        }
        candidates.push((entry.msg, uid));
    }

    let overlap = candidates
        .iter()
        .filter(|(_, u)| known.contains_key(*u))
        .count();
    let unknown = candidates.len() - overlap;
    // Only UIDs that should still be on the server are evidence of a
    // renumbering: not those popsync deleted, nor those it asked the server
    // to delete (a QUIT cut short may still have removed them). Otherwise
    // keep = false would call every fresh batch of mail a migration.
    let expected = known
        .values()
        .filter(|k| {
            k.deleted_at.is_none()
                && !(k.state == MessageState::Delivered && should_delete(k, policy))
        })
        .count();
    if !accept_uid_change
        && expected >= UID_CHANGE_THRESHOLD
        && overlap == 0
        && unknown >= UID_CHANGE_THRESHOLD
    {
        return Err(PlanError::UidsChanged {
            known: expected,
            unknown,
        });
    }

    // A message that failed before (truncated, endless) may break the
    // session again: fetch it after the rest, so it cannot starve them.
    let mut retry_last = Vec::new();
    for (msg, uid) in candidates {
        let size = size_of(msg);
        match known.get(uid) {
            Some(k) if k.state.is_seen() => {
                if k.state == MessageState::Delivered && should_delete(k, policy) {
                    out.delete.push((msg, uid.to_string()));
                }
            }
            Some(k) if k.state == MessageState::Skipped => retry_last.push((msg, uid, size)),
            Some(_) => push_fetch_or_skip(&mut out, msg, Some(uid), size, policy),
            None => {
                out.new_uids.push((uid.to_string(), size));
                push_fetch_or_skip(&mut out, msg, Some(uid), size, policy);
            }
        }
    }
    for (msg, uid, size) in retry_last {
        push_fetch_or_skip(&mut out, msg, Some(uid), size, policy);
    }
    // Present = listed once with a valid UID; `count` says so without a
    // second set (a million UIDs cost ~100 MB per copy).
    out.gone = known
        .keys()
        .filter(|u| count.get(u.as_str()) != Some(&1))
        .cloned()
        .collect();
    Ok(out)
}

fn push_fetch_or_skip(out: &mut Plan, msg: u32, uid: Option<&str>, size: u64, policy: Policy) {
    match policy.max_size {
        Some(max) if size > max => out.skip.push(Skip {
            msg,
            uid: uid.map(str::to_string),
            reason: SkipReason::TooLarge { size, max },
            record: uid.is_some(),
        }),
        _ => out.fetch.push(Wanted {
            msg,
            uid: uid.map(str::to_string),
            size,
        }),
    }
}

/// Only messages popsync itself stored are ever deleted: never one that was
/// merely marked as seen, skipped, or is in doubt.
fn should_delete(k: &KnownMessage, policy: Policy) -> bool {
    if !policy.keep {
        return true;
    }
    match policy.delete_after_days {
        Some(days) => k.first_seen <= policy.now - i64::from(days) * DAY,
        None => false,
    }
}

/// Whether a message should be deleted right after it is committed.
pub fn delete_after_commit(policy: Policy) -> bool {
    !policy.keep || policy.delete_after_days == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::Uid;

    fn uidl(entries: &[(u32, &str)]) -> Vec<UidlEntry> {
        entries
            .iter()
            .map(|(msg, uid)| UidlEntry {
                msg: *msg,
                uid: Uid::parse(uid.as_bytes()),
            })
            .collect()
    }

    fn list(n: u32) -> Vec<ListEntry> {
        (1..=n)
            .map(|msg| ListEntry {
                msg,
                size: 100 * msg as u64,
            })
            .collect()
    }

    fn known(entries: &[(&str, MessageState, i64)]) -> HashMap<String, KnownMessage> {
        entries
            .iter()
            .map(|(uid, state, first_seen)| {
                (
                    uid.to_string(),
                    KnownMessage {
                        state: *state,
                        first_seen: *first_seen,
                        deleted_at: None,
                    },
                )
            })
            .collect()
    }

    const KEEP: Policy = Policy {
        keep: true,
        delete_after_days: None,
        max_size: None,
        now: 1_000_000,
    };

    #[test]
    fn messages_that_failed_before_are_fetched_last() {
        let u = uidl(&[(1, "bad"), (2, "b"), (3, "c")]);
        let k = known(&[("bad", MessageState::Skipped, 0)]);
        let p = plan(Some(&u), &list(3), &k, KEEP, false).unwrap();
        let fetched: Vec<u32> = p.fetch.iter().map(|w| w.msg).collect();
        assert_eq!(fetched, [2, 3, 1]);
    }

    #[test]
    fn new_messages_are_fetched_seen_ones_not() {
        let u = uidl(&[(1, "a"), (2, "b"), (3, "c")]);
        let k = known(&[
            ("a", MessageState::Delivered, 0),
            ("b", MessageState::Pending, 0),
        ]);
        let p = plan(Some(&u), &list(3), &k, KEEP, false).unwrap();
        let fetched: Vec<u32> = p.fetch.iter().map(|w| w.msg).collect();
        assert_eq!(fetched, [2, 3]);
        assert_eq!(p.new_uids, [("c".to_string(), 300)]);
        assert!(p.delete.is_empty());
        assert!(p.gone.is_empty());
        let p = plan(Some(&u[1..]), &list(3), &k, KEEP, false).unwrap();
        assert_eq!(p.gone, ["a"]);
    }

    #[test]
    fn invalid_and_duplicate_uids_are_left_alone() {
        let u = uidl(&[(1, "dup"), (2, "dup"), (3, "has space"), (4, "ok")]);
        let p = plan(Some(&u), &list(4), &HashMap::new(), KEEP, false).unwrap();
        assert_eq!(p.fetch.len(), 1);
        assert_eq!(p.fetch[0].msg, 4);
        assert_eq!(p.skip.len(), 3);
        assert!(p.skip.iter().all(|s| !s.record));
        let k = known(&[("dup", MessageState::Delivered, 0)]);
        let p = plan(Some(&u), &list(4), &k, KEEP, false).unwrap();
        assert_eq!(p.gone, ["dup"], "a shared UID is not a valid listing of it");
    }

    #[test]
    fn max_size_skips_with_a_reason() {
        let u = uidl(&[(1, "a"), (2, "b")]);
        let policy = Policy {
            max_size: Some(150),
            ..KEEP
        };
        let p = plan(Some(&u), &list(2), &HashMap::new(), policy, false).unwrap();
        assert_eq!(p.fetch.len(), 1);
        assert_eq!(
            p.skip[0].reason,
            SkipReason::TooLarge {
                size: 200,
                max: 150
            }
        );
        assert!(p.skip[0].record);
    }

    #[test]
    fn keep_false_deletes_only_delivered() {
        let u = uidl(&[(1, "a"), (2, "m"), (3, "s")]);
        let k = known(&[
            ("a", MessageState::Delivered, 0),
            ("m", MessageState::Marked, 0),
            ("s", MessageState::Skipped, 0),
        ]);
        let policy = Policy {
            keep: false,
            ..KEEP
        };
        let p = plan(Some(&u), &list(3), &k, policy, false).unwrap();
        assert_eq!(p.delete, [(1, "a".to_string())]);
    }

    #[test]
    fn delete_after_days_uses_first_seen() {
        let u = uidl(&[(1, "old"), (2, "young")]);
        let now = KEEP.now;
        let k = known(&[
            ("old", MessageState::Delivered, now - 31 * DAY),
            ("young", MessageState::Delivered, now - 29 * DAY),
        ]);
        let policy = Policy {
            delete_after_days: Some(30),
            ..KEEP
        };
        let p = plan(Some(&u), &list(2), &k, policy, false).unwrap();
        assert_eq!(p.delete, [(1, "old".to_string())]);
    }

    #[test]
    fn no_uidl_refuses_keep_but_allows_delete_mode() {
        assert_eq!(
            plan(None, &list(2), &HashMap::new(), KEEP, false),
            Err(PlanError::NoUidl)
        );
        let policy = Policy {
            keep: false,
            ..KEEP
        };
        let p = plan(None, &list(2), &HashMap::new(), policy, false).unwrap();
        assert_eq!(p.fetch.len(), 2);
        assert!(p.fetch.iter().all(|w| w.uid.is_none()));
    }

    #[test]
    fn wholesale_uid_change_is_refused_unless_accepted() {
        let names: Vec<String> = (0..30).map(|i| format!("old{i}")).collect();
        let entries: Vec<(&str, MessageState, i64)> = names
            .iter()
            .map(|n| (n.as_str(), MessageState::Delivered, 0))
            .collect();
        let k = known(&entries);
        let new_names: Vec<String> = (0..30).map(|i| format!("new{i}")).collect();
        let pairs: Vec<(u32, &str)> = new_names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32 + 1, n.as_str()))
            .collect();
        let u = uidl(&pairs);
        assert!(matches!(
            plan(Some(&u), &list(30), &k, KEEP, false),
            Err(PlanError::UidsChanged {
                known: 30,
                unknown: 30
            })
        ));
        assert_eq!(
            plan(Some(&u), &list(30), &k, KEEP, true)
                .unwrap()
                .fetch
                .len(),
            30
        );
        // keep = false: the known UIDs were (or were being) deleted by
        // popsync itself, so new mail is just new mail.
        let delete = Policy {
            keep: false,
            ..KEEP
        };
        assert_eq!(
            plan(Some(&u), &list(30), &k, delete, false)
                .unwrap()
                .fetch
                .len(),
            30
        );
        let mut gone = k.clone();
        gone.values_mut().for_each(|m| m.deleted_at = Some(1));
        assert_eq!(
            plan(Some(&u), &list(30), &gone, KEEP, false)
                .unwrap()
                .fetch
                .len(),
            30
        );
    }
}
