//! `popsync status [ACCOUNT]`: what the state knows, as a table or JSON.

use serde::Serialize;

use crate::config::{Account, Config};
use crate::datetime::Civil;
use crate::store::{AccountCounts, SkipKind, Store};
use crate::sync::human_bytes;

use super::exit::{Exit, Failure};
use super::server::{open_store, store_failure};

#[derive(Debug, Serialize)]
pub struct Row {
    pub account: String,
    /// Unix seconds; `None` when the account never finished a sync.
    pub last_poll: Option<i64>,
    pub outcome: Option<String>,
    /// When a running daemon polls next.
    pub next_poll: Option<i64>,
    pub on_server: Option<u64>,
    /// known, marked, pending, delivered, delivered_bytes, deleted, skipped_reasons.
    #[serde(flatten)]
    pub counts: AccountCounts,
    pub skipped_too_large: u64,
    pub skipped_other: u64,
    /// Invalid or shared UIDs at the last successful poll (not recorded per UID).
    pub skipped_bad_uid: u64,
    /// The latest failure, unless a later poll succeeded.
    pub last_error: Option<LastError>,
    /// The latest failure ever (history), even if resolved since.
    pub last_failure: Option<LastError>,
}

#[derive(Debug, Serialize)]
pub struct LastError {
    /// A later poll succeeded.
    pub resolved: bool,
    pub at: i64,
    pub outcome: Option<String>,
    pub message: String,
}

pub fn run(config: &Config, accounts: Vec<&Account>, json: bool) -> Result<Exit, Failure> {
    let store = open_store(config)?;
    let rows = accounts
        .iter()
        .map(|a| row(&store, &a.name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_failure)?;
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "accounts": rows }))
            .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", table(&rows));
    }
    Ok(Exit::Ok)
}

fn row(store: &Store, name: &str) -> Result<Row, crate::store::StoreError> {
    let next_poll = store
        .next_poll(name)?
        .filter(|&(_, pid)| process_alive(pid))
        .map(|(t, _)| t);
    let mut row = Row {
        account: name.to_string(),
        last_poll: None,
        outcome: None,
        next_poll,
        on_server: None,
        counts: AccountCounts::default(),
        skipped_too_large: 0,
        skipped_other: 0,
        skipped_bad_uid: 0,
        last_error: None,
        last_failure: None,
    };
    let Some(acct) = store.find_account(name)? else {
        return Ok(row);
    };
    row.counts = store.account_counts(acct)?;
    for &(kind, n) in &row.counts.skipped {
        match kind {
            SkipKind::TooLarge => row.skipped_too_large += n,
            _ => row.skipped_other += n,
        }
    }
    let (last, failed) = store.last_runs(acct)?;
    if let Some(last) = &last {
        row.last_poll = last.finished_at;
        row.outcome = last.outcome.clone();
        row.on_server = last.on_server;
        if last.error.is_none() {
            // A run counts every skip; those without a state row had bad UIDs.
            row.skipped_bad_uid = last
                .skipped
                .saturating_sub(row.skipped_too_large + row.skipped_other);
        }
    }
    let last_ok = last.as_ref().filter(|r| r.error.is_none());
    let resolved = |f: &crate::store::RunSummary| {
        last_ok.is_some_and(|ok| (ok.started_at, ok.id) > (f.started_at, f.id))
    };
    row.last_failure = failed.map(|r| LastError {
        resolved: resolved(&r),
        at: r.finished_at.unwrap_or(r.started_at),
        outcome: r.outcome,
        message: r.error.unwrap_or_default(),
    });
    row.last_error = row
        .last_failure
        .as_ref()
        .filter(|f| !f.resolved)
        .map(|f| LastError {
            resolved: false,
            at: f.at,
            outcome: f.outcome.clone(),
            message: f.message.clone(),
        });
    Ok(row)
}

/// A daemon's schedule row is stale once its process is gone.
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // Signal 0 only checks that the process exists; EPERM: it does, as
    // another user's.
    matches!(
        rustix::process::test_kill_process(pid),
        Ok(()) | Err(rustix::io::Errno::PERM)
    )
}

pub fn format_time(t: i64) -> String {
    let c = Civil::from_unix(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

fn table(rows: &[Row]) -> String {
    let mut cells = vec![
        [
            "ACCOUNT",
            "LAST POLL",
            "OUTCOME",
            "NEXT POLL",
            "ON SERVER",
            "KNOWN",
            "PENDING",
            "DELIVERED",
            "SKIPPED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in rows {
        let skipped = r.skipped_too_large + r.skipped_other + r.skipped_bad_uid;
        let mut why: Vec<String> = r
            .counts
            .skipped
            .iter()
            .map(|(kind, n)| format!("{n} {}", kind.label()))
            .collect();
        if r.skipped_bad_uid > 0 {
            why.push(format!("{} bad UID", r.skipped_bad_uid));
        }
        cells.push(vec![
            r.account.clone(),
            r.last_poll.map_or_else(|| "never".to_string(), format_time),
            opt(r.outcome.clone()),
            opt(r.next_poll.map(format_time)),
            opt(r.on_server.map(|n| n.to_string())),
            if r.counts.marked > 0 {
                format!("{} ({} marked)", r.counts.known, r.counts.marked)
            } else {
                r.counts.known.to_string()
            },
            r.counts.pending.to_string(),
            format!(
                "{} ({})",
                r.counts.delivered,
                human_bytes(r.counts.delivered_bytes)
            ),
            if why.is_empty() {
                skipped.to_string()
            } else {
                format!("{skipped} ({})", why.join(", "))
            },
        ]);
    }
    let widths: Vec<usize> = (0..cells[0].len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &cells {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows {
        if let Some(e) = &r.last_error {
            out.push_str(&format!(
                "{}: last error at {} ({}): {}\n",
                r.account,
                format_time(e.at),
                e.outcome.as_deref().unwrap_or("?"),
                e.message
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_process_keeps_its_schedule_row() {
        assert!(process_alive(std::process::id()));
        // init: alive, and another user's unless the tests run as root.
        assert!(process_alive(1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(!process_alive(gone));
        assert!(!process_alive(0), "not a process: the caller's group");
        assert!(!process_alive(u32::MAX));
    }
}
