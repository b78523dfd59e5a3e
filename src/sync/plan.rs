//! What one run must do, decided from the server's listings and the state.
//! Pure: no I/O, so every policy is unit-tested here.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::pop3::{ListEntry, UidList};
use crate::store::{KnownMessage, KnownSet, MessageState, SkipReason};

const DAY: i64 = 86_400;

/// Local policy from the account's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub keep: bool,
    pub delete_after_days: Option<u32>,
    pub max_size: Option<u64>,
    pub now: i64,
}

/// A message to download. Its UID is borrowed from the listing: a plan
/// of a million new messages holds no UID of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub msg: u32,
    /// `None` only on a server without UIDL (delete mode).
    pub uid: Option<&'a str>,
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

/// The plan borrows its UIDs from the listing and the known set it was
/// made from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    pub fetch: Vec<Wanted<'a>>,
    pub skip: Vec<Skip>,
    /// Messages stored in an earlier run that policy says to delete now.
    pub delete: Vec<(u32, &'a str)>,
    /// Live UIDs of the state that the complete listing no longer has as a
    /// valid, unique UID (empty without UIDL): they leave the seen set.
    pub gone: Vec<&'a str>,
    /// UIDs the state has not seen before, with LIST sizes.
    pub new_uids: Vec<(&'a str, u64)>,
}

impl Plan<'_> {
    /// Heap octets of the plan's own vectors (capacity; skip reasons not
    /// counted): what planning adds to the listing and the known set.
    pub fn heap_bytes(&self) -> usize {
        self.fetch.capacity() * size_of::<Wanted<'_>>()
            + self.skip.capacity() * size_of::<Skip>()
            + self.delete.capacity() * size_of::<(u32, &str)>()
            + self.gone.capacity() * size_of::<&str>()
            + self.new_uids.capacity() * size_of::<(&str, u64)>()
    }
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

pub fn plan<'a>(
    uidl: Option<&'a UidList>,
    list: &[ListEntry],
    known: &'a KnownSet,
    policy: Policy,
    accept_uid_change: bool,
) -> Result<Plan<'a>, PlanError> {
    let sizes = Sizes::new(list);
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

    let Matched {
        known_of,
        shared,
        gone,
        candidates,
    } = Matched::new(uidl, known);
    let overlap = known_of.iter().filter(|&&k| k != NOT_KNOWN).count();
    let unknown = candidates - overlap;
    // Only UIDs that should still be on the server are evidence of a
    // renumbering: not those popsync deleted, nor those it asked the server
    // to delete (a QUIT cut short may still have removed them). Otherwise
    // keep = false would call every fresh batch of mail a migration.
    let expected = known
        .iter()
        .filter(|(_, k)| {
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

    // Sized up front: a first sync of a million messages must not hold a
    // half-grown copy of either beside the full one while it reallocates.
    out.new_uids.reserve_exact(unknown);
    out.fetch.reserve_exact(unknown);
    // A message that failed before (truncated, endless) may break the
    // session again: fetch it after the rest, so it cannot starve them.
    let mut retry_last = Vec::new();
    for (i, entry) in uidl.iter().enumerate() {
        let uid = match entry.uid {
            Ok(uid) => uid,
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
        // Two messages sharing a UID cannot be told apart: leave both alone.
        if let Some(n) = shared.get(&i) {
            out.skip.push(Skip {
                msg: entry.msg,
                uid: Some(uid.to_string()),
                reason: SkipReason::SharedUid { count: *n },
                record: false,
            });
            continue;
        }
        let (msg, size) = (entry.msg, sizes.of(entry.msg));
        if known_of[i] == NOT_KNOWN {
            out.new_uids.push((uid, size));
            push_fetch_or_skip(&mut out, msg, Some(uid), size, policy);
            continue;
        }
        let (_, k) = known.at(known_of[i] as usize);
        let k = &k;
        match k.state {
            state if state.is_seen() => {
                if state == MessageState::Delivered && should_delete(k, policy) {
                    out.delete.push((msg, uid));
                }
            }
            MessageState::Skipped => retry_last.push((msg, uid, size)),
            _ => push_fetch_or_skip(&mut out, msg, Some(uid), size, policy),
        }
    }
    for (msg, uid, size) in retry_last {
        push_fetch_or_skip(&mut out, msg, Some(uid), size, policy);
    }
    out.gone = gone;
    Ok(out)
}

/// What `mark-seen` records: each valid UID listed once, with its LIST
/// size, in the server's order; and how many entries are left out
/// (invalid or shared UIDs). The same matching as [`plan`], with no state.
pub fn unique_uids<'a>(uidl: &'a UidList, list: &[ListEntry]) -> (Vec<(&'a str, u64)>, usize) {
    let none = KnownSet::default();
    let matched = Matched::new(uidl, &none);
    let sizes = Sizes::new(list);
    let mut unique = Vec::with_capacity(matched.candidates);
    for (i, e) in uidl.iter().enumerate() {
        if let Ok(uid) = e.uid
            && !matched.shared.contains_key(&i)
        {
            unique.push((uid, sizes.of(e.msg)));
        }
    }
    let left = uidl.len() - unique.len();
    (unique, left)
}

/// `known_of` for a listed UID the state does not know (or one that is
/// not a candidate: invalid or shared).
const NOT_KNOWN: u32 = u32::MAX;

/// The listing matched against the state by sorting the listing's valid
/// UIDs (indices only, four octets each) and walking them beside the
/// sorted known set: O(n log n), and no hash set of a million UIDs.
struct Matched<'a> {
    /// Per listing entry, the known row of its UID when it is listed once.
    known_of: Vec<u32>,
    /// Entries whose UID other entries share, with how many share it.
    shared: HashMap<usize, usize>,
    /// Known UIDs not listed exactly once with a valid UID.
    gone: Vec<&'a str>,
    /// How many entries have a valid UID no other entry has.
    candidates: usize,
}

impl<'a> Matched<'a> {
    fn new(uidl: &UidList, known: &'a KnownSet) -> Matched<'a> {
        let uid = |i: u32| uidl.valid_uid(i as usize).unwrap_or_default();
        // Sorted on the first 8 octets, big-endian and zero-padded (a UID
        // has no NUL), so most comparisons are of two integers; the whole
        // UID breaks ties. Indices fit u32: max_messages is one.
        let mut by_uid: Vec<(u64, u32)> = (0..uidl.len() as u32)
            .filter_map(|i| uidl.valid_uid(i as usize).map(|u| (prefix(u), i)))
            .collect();
        by_uid.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| uid(a.1).cmp(uid(b.1))));
        let mut out = Matched {
            known_of: vec![NOT_KNOWN; uidl.len()],
            shared: HashMap::new(),
            gone: Vec::new(),
            candidates: 0,
        };
        let mut k = 0;
        for run in by_uid.chunk_by(|a, b| a.0 == b.0 && uid(a.1) == uid(b.1)) {
            let listed = uid(run[0].1);
            while k < known.len() && known.uid(k) < listed {
                out.gone.push(known.uid(k));
                k += 1;
            }
            let known_here = k < known.len() && known.uid(k) == listed;
            if let [(_, once)] = run {
                out.candidates += 1;
                if known_here {
                    // Below u32::MAX: KnownSet::push_sorted.
                    out.known_of[*once as usize] = k as u32;
                }
            } else {
                out.shared
                    .extend(run.iter().map(|&(_, i)| (i as usize, run.len())));
                if known_here {
                    // A shared UID is not a valid listing of it.
                    out.gone.push(known.uid(k));
                }
            }
            if known_here {
                k += 1;
            }
        }
        out.gone.extend((k..known.len()).map(|k| known.uid(k)));
        out
    }
}

/// The first 8 octets of `uid` as a number that sorts as they do.
fn prefix(uid: &str) -> u64 {
    let mut key = [0u8; 8];
    let head = &uid.as_bytes()[..uid.len().min(8)];
    key[..head.len()].copy_from_slice(head);
    u64::from_be_bytes(key)
}

/// LIST's sizes by message number: binary search in LIST itself when it
/// is in order (as servers send it), else in a sorted copy.
struct Sizes<'l>(Cow<'l, [ListEntry]>);

impl<'l> Sizes<'l> {
    fn new(list: &'l [ListEntry]) -> Sizes<'l> {
        if list.is_sorted_by_key(|e| e.msg) {
            return Sizes(Cow::Borrowed(list));
        }
        let mut sorted = list.to_vec();
        sorted.sort_by_key(|e| e.msg);
        Sizes(Cow::Owned(sorted))
    }

    fn of(&self, msg: u32) -> u64 {
        self.0
            .binary_search_by_key(&msg, |e| e.msg)
            .map_or(0, |i| self.0[i].size)
    }
}

fn push_fetch_or_skip<'a>(
    out: &mut Plan<'a>,
    msg: u32,
    uid: Option<&'a str>,
    size: u64,
    policy: Policy,
) {
    match policy.max_size {
        Some(max) if size > max => out.skip.push(Skip {
            msg,
            uid: uid.map(str::to_string),
            reason: SkipReason::TooLarge { size, max },
            record: uid.is_some(),
        }),
        _ => out.fetch.push(Wanted { msg, uid, size }),
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
    use crate::pop3::{Uid, UidlEntry};

    fn uidl(entries: &[(u32, &str)]) -> UidList {
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

    fn known(entries: &[(&str, MessageState, i64)]) -> KnownSet {
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
        assert_eq!(p.new_uids, [("c", 300)]);
        assert!(p.delete.is_empty());
        assert!(p.gone.is_empty());
        let u = uidl(&[(2, "b"), (3, "c")]);
        let p = plan(Some(&u), &list(3), &k, KEEP, false).unwrap();
        assert_eq!(p.gone, ["a"]);
    }

    #[test]
    fn invalid_and_duplicate_uids_are_left_alone() {
        let none = KnownSet::default();
        let u = uidl(&[(1, "dup"), (2, "dup"), (3, "has space"), (4, "ok")]);
        let p = plan(Some(&u), &list(4), &none, KEEP, false).unwrap();
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
        let none = KnownSet::default();
        let u = uidl(&[(1, "a"), (2, "b")]);
        let policy = Policy {
            max_size: Some(150),
            ..KEEP
        };
        let p = plan(Some(&u), &list(2), &none, policy, false).unwrap();
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
        assert_eq!(p.delete, [(1, "a")]);
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
        assert_eq!(p.delete, [(1, "old")]);
    }

    #[test]
    fn no_uidl_refuses_keep_but_allows_delete_mode() {
        let none = KnownSet::default();
        assert_eq!(
            plan(None, &list(2), &none, KEEP, false),
            Err(PlanError::NoUidl)
        );
        let policy = Policy {
            keep: false,
            ..KEEP
        };
        let p = plan(None, &list(2), &none, policy, false).unwrap();
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
        let gone: KnownSet = k
            .iter()
            .map(|(u, m)| {
                let deleted = KnownMessage {
                    deleted_at: Some(1),
                    ..m
                };
                (u.to_string(), deleted)
            })
            .collect();
        assert_eq!(
            plan(Some(&u), &list(30), &gone, KEEP, false)
                .unwrap()
                .fetch
                .len(),
            30
        );
    }

    #[test]
    fn gone_is_every_known_uid_not_listed_once() {
        let u = uidl(&[
            (1, "m"),
            (2, "c"),
            (3, "x"),
            (4, "x"),
            (5, "q"),
            (6, "bad uid"),
        ]);
        let k = known(&[
            ("a", MessageState::Delivered, 0),
            ("c", MessageState::Delivered, 0),
            ("e", MessageState::Marked, 0),
            ("q", MessageState::Pending, 0),
            ("x", MessageState::Delivered, 0),
            ("z", MessageState::Skipped, 0),
        ]);
        let p = plan(Some(&u), &list(6), &k, KEEP, false).unwrap();
        assert_eq!(p.gone, ["a", "e", "x", "z"]);
        assert_eq!(p.new_uids, [("m", 100)]);
        let fetched: Vec<u32> = p.fetch.iter().map(|w| w.msg).collect();
        assert_eq!(fetched, [1, 5]);
        let reasons: Vec<(u32, &SkipReason)> = p.skip.iter().map(|s| (s.msg, &s.reason)).collect();
        let shared = SkipReason::SharedUid { count: 2 };
        assert_eq!(reasons[..2], [(3, &shared), (4, &shared)]);
        assert!(matches!(reasons[2], (6, SkipReason::InvalidUid(_))));
    }

    #[test]
    fn sizes_come_from_list_in_any_order() {
        let u = uidl(&[(1, "a"), (2, "b"), (3, "c")]);
        let mut l = list(3);
        l.reverse();
        let none = KnownSet::default();
        let p = plan(Some(&u), &l, &none, KEEP, false).unwrap();
        let sizes: Vec<u64> = p.fetch.iter().map(|w| w.size).collect();
        assert_eq!(sizes, [100, 200, 300]);
        let p = plan(Some(&u), &l[1..], &none, KEEP, false).unwrap();
        assert_eq!(p.fetch[2].size, 0, "not in LIST: size unknown");
    }

    /// The plan of a first sync holds no UID of its own: 32 octets per
    /// message to fetch and 24 per new UID, borrowed from the listing
    /// (a `String` each cost ~70 more, twice). bench/uidl-rss measures
    /// the whole process.
    #[test]
    fn a_first_sync_plan_borrows_its_uids() {
        let n = 100_000u32;
        let names: Vec<String> = (1..=n)
            .map(|i| format!("{:040x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15))
            .collect();
        let pairs: Vec<(u32, &str)> = names
            .iter()
            .zip(1..)
            .map(|(u, i)| (i, u.as_str()))
            .collect();
        let u = uidl(&pairs);
        let none = KnownSet::default();
        let p = plan(Some(&u), &list(n), &none, KEEP, false).unwrap();
        assert_eq!((p.fetch.len(), p.new_uids.len()), (n as usize, n as usize));
        let per_message = p.heap_bytes() / n as usize;
        assert!(per_message <= 56, "{per_message} heap octets per message");
        let listed = u.get(41_999).uid.unwrap();
        assert!(
            std::ptr::eq(p.fetch[41_999].uid.unwrap(), listed),
            "borrowed, not copied"
        );
    }

    #[test]
    fn unique_uids_leave_out_invalid_and_shared_ones() {
        let u = uidl(&[(1, "b"), (2, "x"), (3, "a"), (4, "x"), (5, "bad uid")]);
        let (unique, left) = unique_uids(&u, &list(5));
        assert_eq!(unique, [("b", 100), ("a", 300)]);
        assert_eq!(left, 3);
    }
}
