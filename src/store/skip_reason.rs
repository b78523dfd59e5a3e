//! Why a message was left on the server, as the plan, the state and
//! `status` see it.
//!
//! The state stores a stable code (`message.skip_reason`) and the variant's
//! data (`message.skip_detail`), never the text [`fmt::Display`] writes for
//! people: so `status` groups by what the reason is, and rewording a message
//! changes no stored row.

use std::fmt;

/// A message left on the server on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// LIST announced more than the account's `max_size`.
    TooLarge { size: u64, max: u64 },
    /// The body ran past `limit` although LIST announced `listed` bytes:
    /// reading stopped there.
    LongerThanListed { limit: u64, listed: u64 },
    /// Data followed the message's terminator: the server sent a lone "."
    /// unstuffed, so what came before it is a torn copy.
    Desynced,
    /// UIDL gave the message no valid UID (the parse error). Never stored:
    /// without a UID there is no row.
    InvalidUid(String),
    /// `count` messages on the server share the UID. Never stored: the UID
    /// names no single message.
    SharedUid { count: usize },
    /// A reason written before schema 5 that is none of the above, or a
    /// code this program does not know: shown as it is, never interpreted.
    Other(String),
}

/// A [`SkipReason`] without its per-message data: what `status` counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    TooLarge,
    LongerThanListed,
    Desynced,
    InvalidUid,
    SharedUid,
    Other,
}

const KINDS: [SkipKind; 6] = [
    SkipKind::TooLarge,
    SkipKind::LongerThanListed,
    SkipKind::Desynced,
    SkipKind::InvalidUid,
    SkipKind::SharedUid,
    SkipKind::Other,
];

impl SkipKind {
    /// The code stored in `message.skip_reason`; stable across versions.
    pub fn code(self) -> &'static str {
        match self {
            SkipKind::TooLarge => "too_large",
            SkipKind::LongerThanListed => "longer_than_listed",
            SkipKind::Desynced => "desynced",
            SkipKind::InvalidUid => "invalid_uid",
            SkipKind::SharedUid => "shared_uid",
            SkipKind::Other => "other",
        }
    }

    /// `None` for a code this program never writes.
    pub fn from_code(code: &str) -> Option<SkipKind> {
        KINDS.into_iter().find(|k| k.code() == code)
    }

    /// A few words for the `status` table.
    pub fn label(self) -> &'static str {
        match self {
            SkipKind::TooLarge => "too large",
            SkipKind::LongerThanListed => "longer than listed",
            SkipKind::Desynced => "truncated",
            SkipKind::InvalidUid => "invalid UID",
            SkipKind::SharedUid => "shared UID",
            SkipKind::Other => "other",
        }
    }
}

impl SkipReason {
    pub fn kind(&self) -> SkipKind {
        match self {
            SkipReason::TooLarge { .. } => SkipKind::TooLarge,
            SkipReason::LongerThanListed { .. } => SkipKind::LongerThanListed,
            SkipReason::Desynced => SkipKind::Desynced,
            SkipReason::InvalidUid(_) => SkipKind::InvalidUid,
            SkipReason::SharedUid { .. } => SkipKind::SharedUid,
            SkipReason::Other(_) => SkipKind::Other,
        }
    }

    /// The `(skip_reason, skip_detail)` columns.
    pub fn encode(&self) -> (&'static str, Option<String>) {
        let detail = match self {
            SkipReason::TooLarge { size, max } => Some(format!("{size} {max}")),
            SkipReason::LongerThanListed { limit, listed } => Some(format!("{limit} {listed}")),
            SkipReason::Desynced => None,
            SkipReason::InvalidUid(e) | SkipReason::Other(e) => Some(e.clone()),
            SkipReason::SharedUid { count } => Some(count.to_string()),
        };
        (self.kind().code(), detail)
    }

    /// The columns back. A code or detail [`SkipReason::encode`] cannot have
    /// written becomes [`SkipReason::Other`] with the raw columns: `status`
    /// still works on a state a newer popsync wrote.
    pub fn decode(code: &str, detail: Option<&str>) -> SkipReason {
        let pair = || {
            let (a, b) = detail?.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let decoded = match SkipKind::from_code(code) {
            Some(SkipKind::TooLarge) => {
                pair().map(|(size, max)| SkipReason::TooLarge { size, max })
            }
            Some(SkipKind::LongerThanListed) => {
                pair().map(|(limit, listed)| SkipReason::LongerThanListed { limit, listed })
            }
            Some(SkipKind::Desynced) => detail.is_none().then_some(SkipReason::Desynced),
            Some(SkipKind::InvalidUid) => detail.map(|e| SkipReason::InvalidUid(e.to_string())),
            Some(SkipKind::SharedUid) => detail
                .and_then(|n| n.parse().ok())
                .map(|count| SkipReason::SharedUid { count }),
            Some(SkipKind::Other) => detail.map(|t| SkipReason::Other(t.to_string())),
            None => None,
        };
        decoded.unwrap_or_else(|| match detail {
            Some(d) => SkipReason::Other(format!("{code}: {d}")),
            None => SkipReason::Other(code.to_string()),
        })
    }

    /// A `skip_reason` written before schema 5, when the column held the
    /// display text. Only for such rows (the schema-5 migration, and a
    /// read-only look at an older state): the texts are the exact ones
    /// earlier versions wrote; anything else is kept as [`SkipReason::Other`].
    pub fn from_legacy_text(text: &str) -> SkipReason {
        let numbers = |s: &str, sep: &str| -> Option<(u64, u64)> {
            let (a, b) = s.split_once(sep)?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let too_large = || {
            let inner = text
                .strip_prefix("larger than max_size (")?
                .strip_suffix(" bytes)")?;
            numbers(inner, " > ").map(|(size, max)| SkipReason::TooLarge { size, max })
        };
        let longer = || {
            let inner = text
                .strip_prefix("exceeds ")?
                .strip_suffix(": stopped reading it")?;
            numbers(inner, " bytes although LIST announced ")
                .map(|(limit, listed)| SkipReason::LongerThanListed { limit, listed })
        };
        if text == LEGACY_DESYNCED {
            return SkipReason::Desynced;
        }
        too_large()
            .or_else(longer)
            .unwrap_or_else(|| SkipReason::Other(text.to_string()))
    }
}

/// What versions before schema 5 stored for [`SkipReason::Desynced`].
const LEGACY_DESYNCED: &str =
    "truncated by the server: data followed its end (an unstuffed lone \".\"?)";

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::TooLarge { size, max } => {
                write!(f, "larger than max_size ({size} > {max} bytes)")
            }
            SkipReason::LongerThanListed { limit, listed } => write!(
                f,
                "exceeds {limit} bytes although LIST announced {listed}: stopped reading it"
            ),
            SkipReason::Desynced => f.write_str(LEGACY_DESYNCED),
            SkipReason::InvalidUid(e) => write!(f, "invalid UID ({e})"),
            SkipReason::SharedUid { count } => {
                write!(f, "UID shared by {count} messages on the server")
            }
            SkipReason::Other(text) if text.is_empty() => f.write_str("no reason recorded"),
            SkipReason::Other(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_variant() -> Vec<SkipReason> {
        vec![
            SkipReason::TooLarge {
                size: 10_000,
                max: 1_000,
            },
            SkipReason::LongerThanListed {
                limit: 70_000,
                listed: 5,
            },
            SkipReason::Desynced,
            SkipReason::InvalidUid("contains a space".into()),
            SkipReason::SharedUid { count: 3 },
            SkipReason::Other("received 3 of the 9 bytes LIST announced".into()),
            SkipReason::Other(String::new()),
        ]
    }

    #[test]
    fn every_reason_survives_the_columns() {
        for reason in every_variant() {
            let (code, detail) = reason.encode();
            assert_eq!(SkipKind::from_code(code), Some(reason.kind()), "{reason:?}");
            assert_eq!(SkipReason::decode(code, detail.as_deref()), reason);
        }
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let codes: std::collections::HashSet<_> = KINDS.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), KINDS.len());
        for k in KINDS {
            assert_eq!(SkipKind::from_code(k.code()), Some(k));
        }
    }

    #[test]
    fn unknown_or_damaged_columns_are_only_shown() {
        assert_eq!(
            SkipReason::decode("from_the_future", Some("x")),
            SkipReason::Other("from_the_future: x".into())
        );
        assert_eq!(
            SkipReason::decode("too_large", Some("12")),
            SkipReason::Other("too_large: 12".into())
        );
        assert_eq!(
            SkipReason::decode("too_large", None),
            SkipReason::Other("too_large".into())
        );
    }

    /// The texts earlier versions stored map to what they meant, and the
    /// display text is what those versions showed, word for word.
    #[test]
    fn old_texts_map_to_their_variants() {
        for reason in [
            SkipReason::TooLarge {
                size: 5_000,
                max: 2_048,
            },
            SkipReason::LongerThanListed {
                limit: 66_560,
                listed: 1_024,
            },
            SkipReason::Desynced,
        ] {
            let text = reason.to_string();
            assert_eq!(SkipReason::from_legacy_text(&text), reason, "{text}");
        }
        assert_eq!(
            SkipReason::from_legacy_text("larger than max_size (5000 > 2048 bytes)"),
            SkipReason::TooLarge {
                size: 5000,
                max: 2048
            }
        );
        for other in [
            "received 3 of the 9 bytes LIST announced (truncated by the server?)",
            "larger than max_size",
            "larger than max_size (big > 2048 bytes)",
            "exceeds 5 bytes",
            "",
        ] {
            assert_eq!(
                SkipReason::from_legacy_text(other),
                SkipReason::Other(other.into())
            );
        }
    }
}
