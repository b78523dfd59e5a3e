//! The live UIDs of an account, compact and sorted, for planning a sync:
//! a million 40-octet UIDs cost ~61 MB here against ~170 MB as a
//! `HashMap<String, KnownMessage>`.

use crate::pop3::UidText;

use super::{KnownMessage, MessageState};

/// Live UIDs (on the server at the last complete listing) with their rows,
/// sorted by UID octets, so lookups are binary searches and a sorted
/// listing is matched against it in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownSet {
    uids: UidText,
    /// Row `i`'s fields, column by column: 17 octets a row, not 32.
    states: Vec<MessageState>,
    first_seen: Vec<i64>,
    /// `NOT_DELETED` for none.
    deleted_at: Vec<i64>,
}

const NOT_DELETED: i64 = i64::MIN;

impl KnownSet {
    /// From rows in any order; a UID given twice keeps its first row (the
    /// state's index makes live UIDs unique per account). `None` past 4 GiB
    /// of UIDs.
    pub fn from_rows(mut rows: Vec<(String, KnownMessage)>) -> Option<KnownSet> {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|later, first| later.0 == first.0);
        let mut set = KnownSet::default();
        for (uid, message) in rows {
            if !set.push_sorted(&uid, message) {
                return None;
            }
        }
        set.shrink_to_fit();
        Some(set)
    }

    /// Appends a row that sorts after every row so far. Returns `false`
    /// (nothing appended) when it does not, or the UIDs would pass 4 GiB
    /// (an index is always below `u32::MAX`).
    #[must_use]
    pub fn push_sorted(&mut self, uid: &str, message: KnownMessage) -> bool {
        let after_last = self.uids.is_empty() || self.uids.get(self.uids.len() - 1) < uid;
        let room = self.len() < u32::MAX as usize;
        if !after_last || !room || !self.uids.push(uid) {
            return false;
        }
        self.states.push(message.state);
        self.first_seen.push(message.first_seen);
        // A deletion stamped at i64::MIN is not one popsync made.
        self.deleted_at
            .push(message.deleted_at.unwrap_or(NOT_DELETED));
        true
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Where `uid` is in the sort order.
    pub fn position(&self, uid: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.uids.get(mid).cmp(uid) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn get(&self, uid: &str) -> Option<KnownMessage> {
        self.position(uid).map(|i| self.message(i))
    }

    fn message(&self, i: usize) -> KnownMessage {
        KnownMessage {
            state: self.states[i],
            first_seen: self.first_seen[i],
            deleted_at: Some(self.deleted_at[i]).filter(|&d| d != NOT_DELETED),
        }
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.position(uid).is_some()
    }

    /// Row `i` in the sort order; panics past the end.
    pub fn at(&self, i: usize) -> (&str, KnownMessage) {
        (self.uids.get(i), self.message(i))
    }

    /// Row `i`'s UID; panics past the end.
    pub fn uid(&self, i: usize) -> &str {
        self.uids.get(i)
    }

    /// Every row, sorted by UID.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, KnownMessage)> + '_ {
        (0..self.len()).map(|i| self.at(i))
    }

    pub fn shrink_to_fit(&mut self) {
        self.uids.shrink_to_fit();
        self.states.shrink_to_fit();
        self.first_seen.shrink_to_fit();
        self.deleted_at.shrink_to_fit();
    }

    /// Heap octets held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.uids.heap_bytes()
            + self.states.capacity() * size_of::<MessageState>()
            + (self.first_seen.capacity() + self.deleted_at.capacity()) * size_of::<i64>()
    }
}

impl<S: Into<String>> FromIterator<(S, KnownMessage)> for KnownSet {
    fn from_iter<I: IntoIterator<Item = (S, KnownMessage)>>(rows: I) -> KnownSet {
        KnownSet::from_rows(rows.into_iter().map(|(u, m)| (u.into(), m)).collect())
            .expect("test-sized rows")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MessageState;

    fn row(first_seen: i64) -> KnownMessage {
        KnownMessage {
            state: MessageState::Delivered,
            first_seen,
            deleted_at: None,
        }
    }

    #[test]
    fn rows_in_any_order_are_found_by_uid() {
        let set: KnownSet = [("b", row(2)), ("a", row(1)), ("c", row(3)), ("a", row(9))]
            .into_iter()
            .collect();
        assert_eq!(set.len(), 3);
        let uids: Vec<&str> = set.iter().map(|(u, _)| u).collect();
        assert_eq!(uids, ["a", "b", "c"]);
        assert_eq!(set.get("a").unwrap().first_seen, 1, "the first row wins");
        let deleted = KnownMessage {
            deleted_at: Some(7),
            ..row(5)
        };
        let set2: KnownSet = [("x", deleted)].into_iter().collect();
        assert_eq!(set2.get("x"), Some(deleted));
        assert_eq!(set.get("c").unwrap().first_seen, 3);
        assert!(set.get("d").is_none() && !set.contains("") && !set.contains("aa"));
        assert!(KnownSet::default().get("a").is_none());
    }

    #[test]
    fn push_sorted_refuses_rows_out_of_order() {
        let mut set = KnownSet::default();
        assert!(set.push_sorted("m", row(1)));
        assert!(!set.push_sorted("a", row(2)));
        assert!(!set.push_sorted("m", row(3)), "no duplicates");
        assert!(set.push_sorted("z", row(4)));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn known_uids_cost_their_octets_plus_21() {
        let mut set = KnownSet::default();
        for i in 0..100_000u32 {
            assert!(set.push_sorted(&format!("{i:040}"), row(i.into())));
        }
        set.shrink_to_fit();
        // 40 octets of UID, 4 of offset, 1 of state, 16 of times.
        let per_entry = set.heap_bytes() / set.len();
        assert!(per_entry <= 61, "{per_entry} heap octets per known UID");
        assert_eq!(set.position(&format!("{:040}", 76_543)), Some(76_543));
    }
}
