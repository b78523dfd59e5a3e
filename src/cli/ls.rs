//! `popsync ls ACCOUNT [--json] [--new]`: what is on the server, changing
//! nothing. One row per message: number, size, UID, what the next sync does
//! with it (from the state, read-only), and From/Date/Subject from `TOP n 0`,
//! pipelined like the fetch loop pipelines RETR.

use std::collections::HashMap;
use std::io::IsTerminal;

use mail_parser::MessageParser;

use crate::config::{Account, Config};
use crate::pop3::{Command, ListEntry, UidList};
use crate::session::{Session, TraceSink};
use crate::store::{KnownSet, MessageState, SkipReason, Store};
use crate::sync::plan::{self, Plan, Policy};

use super::exit::{Exit, Failure};
use super::server::session_failure;

/// TOP commands kept in flight when the server pipelines (as the fetch loop).
const WINDOW: usize = 64;
/// Header bytes kept per message; the rest of a TOP answer is read and dropped.
const HEADER_KEEP: usize = 64 * 1024;
/// A TOP answer longer than this is hostile (it should be headers only).
const TOP_LIMIT: u64 = 16 * 1024 * 1024;

/// What the next sync does with a message, as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum RowState {
    /// The next sync fetches it.
    New,
    /// Left on the server before for this reason; the next sync tries again.
    Retried(String),
    Stored,
    /// Recorded as seen without download (mark-seen, import-uids).
    Marked,
    /// Left on the server, with the reason (too large, invalid or shared UID).
    Skipped(String),
    /// Stored; the next sync deletes it from the server.
    DeletedPending,
}

impl RowState {
    pub fn label(&self) -> String {
        match self {
            RowState::New => "new".into(),
            RowState::Retried(r) => format!("new (skipped before: {r})"),
            RowState::Stored => "stored".into(),
            RowState::Marked => "marked".into(),
            RowState::Skipped(r) => format!("skipped: {r}"),
            RowState::DeletedPending => "deleted-pending".into(),
        }
    }

    pub fn is_fetched_next(&self) -> bool {
        matches!(self, RowState::New | RowState::Retried(_))
    }
}

/// The server's listing next to the state, and what the next sync's plan
/// is made from.
pub struct Survey {
    pub uidl: Option<UidList>,
    pub list: Vec<ListEntry>,
    pub known: KnownSet,
    pub skip_reasons: HashMap<String, SkipReason>,
    pub policy: Policy,
    pub accept_uid_change: bool,
}

impl Survey {
    /// The next sync's plan; `Err` when the sync would refuse to run (no
    /// UIDL with keep, UIDs renumbered).
    pub fn plan(&self) -> Result<Plan<'_>, plan::PlanError> {
        plan::plan(
            self.uidl.as_ref(),
            &self.list,
            &self.known,
            self.policy,
            self.accept_uid_change,
        )
    }
}

/// Connects, logs in, lists, and plans the next sync from the state opened
/// read-only: nothing is written, locally or on the server.
pub async fn survey(
    config: &Config,
    account: &Account,
    trace: Option<TraceSink>,
    accept_uid_change: bool,
) -> Result<(Session, Survey), Failure> {
    let (known, skip_reasons) = match Store::open_read_only_in(&config.state_dir)? {
        Some(store) => match store.find_account(&account.name)? {
            Some(id) => (store.known_set(id)?, store.skip_reasons(id)?),
            None => Default::default(),
        },
        None => Default::default(),
    };
    let (session, (_, uidl, list)) = super::server::login_and_list(account, trace).await?;
    let policy = Policy {
        keep: account.keep,
        delete_after_days: account.delete_after_days,
        max_size: account.max_size,
        now: super::sync::now(),
    };
    let survey = Survey {
        uidl,
        list,
        known,
        skip_reasons,
        policy,
        accept_uid_change,
    };
    Ok((session, survey))
}

/// One message on the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub msg: u32,
    pub size: u64,
    pub uid: Option<String>,
    #[serde(flatten)]
    pub state: RowState,
    pub from: String,
    pub date: String,
    pub subject: String,
}

/// Each listed message's state. Pure: unit-tested below.
pub fn row_states(
    s: &Survey,
    plan: &Result<Plan<'_>, plan::PlanError>,
) -> Vec<(u32, u64, Option<String>, RowState)> {
    let uid_of: HashMap<u32, &str> = s
        .uidl
        .iter()
        .flat_map(|l| l.iter())
        .filter_map(|e| e.uid.ok().map(|u| (e.msg, u)))
        .collect();
    let (fetch, skip, delete) = match plan {
        Ok(p) => (
            p.fetch.iter().map(|w| w.msg).collect(),
            p.skip
                .iter()
                .map(|k| (k.msg, k.reason.to_string()))
                .collect(),
            p.delete.iter().map(|(m, _)| *m).collect(),
        ),
        Err(_) => Default::default(),
    };
    let (fetch, skip, delete): (
        std::collections::HashSet<u32>,
        HashMap<u32, String>,
        std::collections::HashSet<u32>,
    ) = (fetch, skip, delete);
    s.list
        .iter()
        .map(|e| {
            let uid = uid_of.get(&e.msg).map(|u| u.to_string());
            let known = uid.as_deref().and_then(|u| s.known.get(u));
            let reason = || {
                uid.as_deref()
                    .and_then(|u| s.skip_reasons.get(u))
                    .map(ToString::to_string)
                    .unwrap_or_default()
            };
            let state = if let Some(r) = skip.get(&e.msg) {
                RowState::Skipped(r.clone())
            } else if delete.contains(&e.msg) {
                RowState::DeletedPending
            } else {
                match known.map(|k| k.state) {
                    Some(MessageState::Delivered) => RowState::Stored,
                    Some(MessageState::Marked) => RowState::Marked,
                    Some(MessageState::Skipped) if fetch.contains(&e.msg) => {
                        RowState::Retried(reason())
                    }
                    Some(MessageState::Skipped) => RowState::Skipped(reason()),
                    Some(MessageState::Pending) | None => RowState::New,
                }
            };
            (e.msg, e.size, uid, state)
        })
        .collect()
}

/// Sender (display name, else address), date and subject of a header
/// section, decoded by mail-parser and made safe for a terminal.
pub fn header_fields(header: &[u8]) -> (String, String, String) {
    let parsed = MessageParser::default().parse_headers(header);
    let from = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|a| a.first())
        .and_then(|a| a.name().filter(|n| !n.trim().is_empty()).or(a.address()))
        .unwrap_or("");
    let date = parsed
        .as_ref()
        .and_then(|m| m.date())
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                d.year, d.month, d.day, d.hour, d.minute
            )
        })
        .unwrap_or_default();
    let subject = parsed.as_ref().and_then(|m| m.subject()).unwrap_or("");
    (safe_text(from), date, safe_text(subject))
}

/// One line of text a hostile sender wrote: control and bidi-override
/// characters become `?` (they could rewrite the terminal), whitespace runs
/// become one space, and it is cut at 200 characters.
pub fn safe_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}');
            if c.is_whitespace() {
                ' '
            } else if c.is_control() || bidi {
                '?'
            } else {
                c
            }
        })
        .collect();
    let flat = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 200 {
        flat.chars().take(199).chain(['…']).collect()
    } else {
        flat
    }
}

/// `TOP n 0` for every message, kept `WINDOW` deep when the server
/// pipelines (a sliding window, as the fetch loop keeps RETR): the whole
/// listing costs about one round trip plus the transfer, not one per message.
async fn headers(
    session: &mut Session,
    msgs: &[u32],
) -> Result<HashMap<u32, Vec<u8>>, crate::session::SessionError> {
    let mut pipeline = session.pipeline_if_offered(WINDOW);
    let mut out = HashMap::with_capacity(msgs.len());
    let mut in_flight = std::collections::VecDeque::with_capacity(pipeline.window());
    let mut next = msgs.iter();
    loop {
        while pipeline.has_room() {
            let Some(&msg) = next.next() else {
                break;
            };
            pipeline.send(&Command::Top(msg, 0))?;
            in_flight.push_back(msg);
        }
        let Some(msg) = in_flight.pop_front() else {
            return Ok(out);
        };
        let reply = pipeline.next_reply().await?;
        if !reply.body_follows {
            continue; // no TOP, or the message is gone: no header fields
        }
        out.insert(
            msg,
            pipeline.read_body_prefix(TOP_LIMIT, HEADER_KEEP).await?,
        );
    }
}

pub async fn run(
    config: &Config,
    account: &Account,
    json: bool,
    only_new: bool,
    trace: Option<TraceSink>,
) -> Result<Exit, Failure> {
    let (mut session, s) = survey(config, account, trace, false).await?;
    let plan = s.plan();
    if let Err(e) = &plan {
        eprintln!("popsync: account `{}`: {e}", account.name);
    }
    let states: Vec<_> = row_states(&s, &plan)
        .into_iter()
        .filter(|(_, _, _, st)| !only_new || st.is_fetched_next())
        .collect();
    let msgs: Vec<u32> = states.iter().map(|(m, ..)| *m).collect();
    let heads = headers(&mut session, &msgs)
        .await
        .map_err(|e| session_failure(account, e))?;
    super::server::quit_quietly(session).await;
    let rows: Vec<Row> = states
        .into_iter()
        .map(|(msg, size, uid, state)| {
            let (from, date, subject) = heads
                .get(&msg)
                .map(|h| header_fields(h))
                .unwrap_or_default();
            Row {
                msg,
                size,
                uid,
                state,
                from,
                date,
                subject,
            }
        })
        .collect();
    if json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Failure::new(Exit::Internal, format!("JSON: {e}")))?;
        println!("{text}");
        return Ok(Exit::Ok);
    }
    let width = std::io::stdout()
        .is_terminal()
        .then(|| {
            console::Term::stdout()
                .size_checked()
                .map(|(_, w)| w as usize)
        })
        .flatten();
    println!(
        "{}",
        fit(
            &format!(
                "{:>5} {:>9}  {:<20} {:<16} {:<22} {:<16} SUBJECT",
                "NUM", "SIZE", "UID", "STATE", "FROM", "DATE"
            ),
            width
        )
    );
    for r in &rows {
        let uid = r.uid.as_deref().unwrap_or("-");
        let line = format!(
            "{:>5} {:>9}  {:<20} {:<16} {:<22} {:<16} {}",
            r.msg,
            r.size,
            console::truncate_str(uid, 20, "…"),
            r.state.label(),
            console::truncate_str(&r.from, 22, "…"),
            r.date,
            r.subject
        );
        println!("{}", fit(&line, width));
    }
    let new = rows.iter().filter(|r| r.state.is_fetched_next()).count();
    eprintln!(
        "{}: {} on the server, {new} to fetch at the next sync",
        account.name,
        s.list.len()
    );
    Ok(Exit::Ok)
}

/// Cuts a row to the terminal's width (no cut when not on a terminal).
fn fit(line: &str, width: Option<usize>) -> String {
    match width {
        Some(w) => console::truncate_str(line, w, "…").into_owned(),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::{Uid, UidlEntry};
    use crate::store::KnownMessage;

    #[test]
    fn states_follow_the_next_syncs_plan() {
        let uidl: UidList = ["s", "m", "k", "n", "big", "p"]
            .iter()
            .enumerate()
            .map(|(i, u)| UidlEntry {
                msg: i as u32 + 1,
                uid: Uid::parse(u.as_bytes()),
            })
            .collect();
        let list: Vec<ListEntry> = (1..=6)
            .map(|msg| ListEntry {
                msg,
                size: if msg == 5 { 10_000 } else { 10 },
            })
            .collect();
        let k = |state| KnownMessage {
            state,
            first_seen: 0,
            deleted_at: None,
        };
        let known: KnownSet = [
            ("s", k(MessageState::Delivered)),
            ("m", k(MessageState::Marked)),
            ("k", k(MessageState::Skipped)),
            ("p", k(MessageState::Pending)),
        ]
        .into_iter()
        .collect();
        let reasons: HashMap<String, SkipReason> = [("k".to_string(), SkipReason::Desynced)].into();
        let policy = |keep| Policy {
            keep,
            delete_after_days: None,
            max_size: Some(1000),
            now: 0,
        };
        let survey = |keep| Survey {
            uidl: Some(uidl.clone()),
            list: list.clone(),
            known: known.clone(),
            skip_reasons: reasons.clone(),
            policy: policy(keep),
            accept_uid_change: false,
        };
        let rows = |s: &Survey| row_states(s, &s.plan());
        let states: Vec<String> = rows(&survey(true))
            .into_iter()
            .map(|r| r.3.label())
            .collect();
        assert_eq!(
            states,
            [
                "stored",
                "marked",
                "new (skipped before: truncated by the server: data followed its end (an unstuffed lone \".\"?))",
                "new",
                "skipped: larger than max_size (10000 > 1000 bytes)",
                "new"
            ]
        );
        let first = &rows(&survey(false))[0];
        assert_eq!(
            (first.2.as_deref(), &first.3),
            (Some("s"), &RowState::DeletedPending)
        );
    }

    #[test]
    fn header_fields_are_decoded_and_defanged() {
        let h = b"From: =?UTF-8?Q?Caf=C3=A9?= <a@example.org>\r\nDate: Tue, 1 Dec 2026 08:31:06 +0000\r\nSubject: hi\x1b[2J there\r\n\r\n";
        let (from, date, subject) = header_fields(h);
        assert_eq!(from, "Café");
        assert_eq!(date, "2026-12-01 08:31");
        assert_eq!(subject, "hi?[2J there");
        assert_eq!(safe_text("a\u{202e}b\tc\n d"), "a?b c d");
        assert_eq!(safe_text(&"x".repeat(300)).chars().count(), 200);
    }
}
