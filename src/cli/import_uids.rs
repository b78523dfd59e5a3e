//! `popsync import-uids ACCOUNT --from fetchmail|mpop|getmail FILE`: mark
//! as seen the UIDs an older tool recorded for this account, so the next
//! sync fetches only what that tool had not.
//!
//! Only UIDs on the server now are recorded (a UID the server no longer
//! lists would leave the seen set at the next complete listing anyway);
//! the rest are counted as "not on the server".

use std::collections::HashMap;
use std::path::Path;

use crate::config::{Account, Config};
use crate::migrate::{self, PeerFormat, getmail};
use crate::session::TraceSink;

use super::exit::{Exit, Failure};
use super::server;

/// Skipped lines shown one by one; the rest are only counted.
const SHOWN_LINES: usize = 20;

pub struct Args<'a> {
    pub format: PeerFormat,
    pub file: &'a Path,
    /// How the old tool named the server and user, when not as popsync does.
    pub host: Option<&'a str>,
    pub user: Option<&'a str>,
    pub trace: Option<TraceSink>,
}

pub async fn run(config: &Config, account: &Account, args: Args<'_>) -> Result<Exit, Failure> {
    let usage = |m: String| Failure::new(Exit::Usage, m);
    let shown = args.file.display();
    let bytes = std::fs::read(args.file).map_err(|e| usage(format!("{shown}: {e}")))?;
    let parsed = migrate::parse(args.format, &bytes).map_err(|e| usage(format!("{shown}: {e}")))?;
    let host = args.host.unwrap_or(&account.host);
    let user = args.user.unwrap_or(&account.username);
    let total = parsed.entries.len();
    let mut selected = parsed.select(host, user);
    if args.format == PeerFormat::Getmail {
        // The file name says whose a getmail6 oldmail file is.
        let expected = getmail::file_name(host, account.port, user);
        let name = args.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("oldmail-") && name != expected {
            for e in selected.entries.drain(..) {
                selected.skipped.push(migrate::SkippedLine {
                    line: e.line,
                    reason: format!("the file is another account's (its name is not {expected})"),
                });
            }
        }
    }
    if total > 0 && selected.entries.is_empty() {
        return Err(usage(format!(
            "{shown}: none of its {total} UIDs belong to {user}@{host}{}; nothing imported \
             (if the old tool knew the server or user by another name, pass --host/--user)",
            selected
                .skipped
                .first()
                .map(|s| format!(" (line {}: {})", s.line, s.reason))
                .unwrap_or_default()
        )));
    }

    let _lock = server::lock(config, account)?;
    let mut store = server::open_store(config)?;
    let acct = server::account_id(&mut store, account)?;
    let (session, uids) = server::open(account, args.trace).await?;
    server::quit_quietly(session).await;

    // getmail6 stored `/` in UIDs as `-`: compare in its form.
    let key = |uid: &str| match args.format {
        PeerFormat::Getmail => getmail::stored_uid(uid),
        _ => uid.to_string(),
    };
    let mut by_key: HashMap<String, Option<(&str, u64)>> = HashMap::new();
    for (uid, (_, size)) in &uids.unique {
        by_key
            .entry(key(uid))
            .and_modify(|v| *v = None) // two server UIDs look alike: ambiguous
            .or_insert(Some((uid.as_str(), *size)));
    }
    let shared: HashMap<String, usize> = uids.shared.iter().map(|(u, n)| (key(u), *n)).collect();
    let mut to_mark: Vec<(&str, u64)> = Vec::new();
    let mut not_on_server = 0;
    for e in &selected.entries {
        match (by_key.get(&e.uid), shared.get(&e.uid)) {
            (Some(Some(found)), _) => to_mark.push(*found),
            (Some(None), _) | (None, Some(_)) => selected.skipped.push(migrate::SkippedLine {
                line: e.line,
                reason: "several messages on the server have this UID; left unmarked".into(),
            }),
            (None, None) => not_on_server += 1,
        }
    }
    to_mark.sort_unstable();
    to_mark.dedup();
    let counts = store
        .mark_seen(acct, &to_mark, super::sync::now())
        .map_err(server::store_failure)?;
    selected.skipped.sort_by_key(|s| s.line);

    println!(
        "{}: read {} UIDs for {user}@{host} from {} file {shown}: {} marked as seen, {} already known, \
         {not_on_server} not on the server (not recorded); {} lines skipped",
        account.name,
        selected.entries.len(),
        args.format.name(),
        counts.marked,
        counts.already,
        selected.skipped.len()
    );
    for s in selected.skipped.iter().take(SHOWN_LINES) {
        println!("  line {}: {}", s.line, s.reason);
    }
    if selected.skipped.len() > SHOWN_LINES {
        println!("  … and {} more", selected.skipped.len() - SHOWN_LINES);
    }
    Ok(Exit::Ok)
}
