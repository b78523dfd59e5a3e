//! `popsync purge ACCOUNT [--dry-run]`: the safe end of a migration. Deletes
//! from the server exactly the messages that popsync stored and that verify
//! intact now; everything else stays on the server and is listed.

use std::collections::HashMap;

use crate::config::{Account, Config};
use crate::pop3::{Command, Status};
use crate::session::TraceSink;
use crate::store::MessageState;
use crate::verify::{Finding, verify};

use super::exit::{Exit, Failure};
use super::server;

/// DELE commands in flight when the server pipelines.
const WINDOW: usize = 64;

pub async fn run(
    config: &Config,
    account: &Account,
    dry_run: bool,
    trace: Option<TraceSink>,
) -> Result<Exit, Failure> {
    let name = &account.name;
    let _lock = server::lock(config, account)?;
    let mut store = server::open_store(config)?;
    let acct = server::account_id(&mut store, account)?;
    let (mut session, uids) = server::open(account, trace).await?;
    let fail = |e| server::session_failure(account, e);

    // Verify now, after listing (the listing may have changed since the
    // sync), and only the stored copies of messages on the server.
    let live = store.live_messages(acct).map_err(server::store_failure)?;
    let records: Vec<_> = store
        .delivery_records(acct)
        .map_err(server::store_failure)?
        .into_iter()
        .filter(|r| r.gone_at.is_none() && uids.unique.contains_key(&r.uid))
        .collect();
    let checked = crate::sync::blocking(|| verify(&records));
    // A location two records claim proves neither copy (forged or confused state).
    let all_records = store
        .delivery_records(acct)
        .map_err(server::store_failure)?;
    let mut claims: HashMap<(&crate::store::TargetId, &crate::deliver::Location), usize> =
        HashMap::new();
    for r in &all_records {
        if r.stored.location != crate::deliver::Location::Mda {
            *claims.entry((&r.target, &r.stored.location)).or_default() += 1;
        }
    }
    let shared_location = |r: &crate::store::DeliveryRecord| {
        claims
            .get(&(&r.target, &r.stored.location))
            .copied()
            .filter(|&n| n > 1)
    };
    let findings: HashMap<&str, &Finding> = records
        .iter()
        .zip(&checked)
        .map(|(r, f)| (r.uid.as_str(), f))
        .collect();

    let mut go: Vec<(u32, &str)> = Vec::new();
    let mut stay: Vec<(Option<u32>, String, String)> = Vec::new();
    let mut damage = false;
    let record_of: HashMap<&str, &crate::store::DeliveryRecord> =
        records.iter().map(|r| (r.uid.as_str(), r)).collect();
    for (uid, &(msg, _)) in &uids.unique {
        if let Some(n) = record_of.get(uid.as_str()).and_then(|r| shared_location(r)) {
            stay.push((
                Some(msg),
                uid.clone(),
                format!("its stored location is recorded for {n} UIDs"),
            ));
            continue;
        }
        let why = match (live.get(uid).map(|k| k.state), findings.get(uid.as_str())) {
            (Some(MessageState::Delivered), Some(f)) if f.is_intact() => {
                go.push((msg, uid));
                continue;
            }
            (Some(MessageState::Delivered), Some(f)) => {
                damage |= f.is_damage();
                format!("stored copy {}: {}", f.kind(), f.detail())
            }
            (Some(MessageState::Delivered), None) => "no delivery record".into(),
            (Some(MessageState::Marked), _) => "marked as seen, never stored by popsync".into(),
            (Some(MessageState::Pending), _) => "not stored yet".into(),
            (Some(MessageState::Skipped), _) => "skipped by sync (see `popsync status`)".into(),
            (None, _) => "not known to popsync (arrived after the last sync?)".into(),
        };
        stay.push((Some(msg), uid.clone(), why));
    }
    for (uid, n) in &uids.shared {
        stay.push((None, uid.clone(), format!("UID shared by {n} messages")));
    }
    for &msg in &uids.invalid {
        stay.push((Some(msg), "-".into(), "invalid UID".into()));
    }
    go.sort_unstable();
    stay.sort();

    let mut deleted: Vec<&str> = Vec::new();
    if dry_run {
        let by_uid: HashMap<&str, &crate::store::DeliveryRecord> =
            records.iter().map(|r| (r.uid.as_str(), r)).collect();
        let going: Vec<&crate::store::DeliveryRecord> = go
            .iter()
            .filter_map(|(_, uid)| by_uid.get(uid).copied())
            .collect();
        let headers = crate::sync::blocking(|| crate::verify::stored_headers(&going));
        let lines: HashMap<&str, crate::notify::MailLine> = going
            .iter()
            .zip(headers)
            .filter_map(|(r, h)| Some((r.uid.as_str(), crate::notify::MailLine::parse(&h?))))
            .collect();
        for (msg, uid) in &go {
            match lines.get(uid) {
                Some(m) => println!(
                    "{name}: would delete message {msg} UID {uid}: From {}, Subject {}",
                    m.from, m.subject
                ),
                None => println!("{name}: would delete message {msg} UID {uid}"),
            }
        }
        server::quit_quietly(session).await;
    } else {
        // A sliding window of DELEs: about one round trip for the lot.
        let mut pipeline = session.pipeline_if_offered(WINDOW);
        let mut in_flight = std::collections::VecDeque::with_capacity(pipeline.window());
        let mut next = go.iter();
        loop {
            while pipeline.has_room() {
                let Some(&(msg, uid)) = next.next() else {
                    break;
                };
                pipeline.send(&Command::Dele(msg)).map_err(fail)?;
                in_flight.push_back((msg, uid));
            }
            let Some((msg, uid)) = in_flight.pop_front() else {
                break;
            };
            let reply = pipeline.next_reply().await.map_err(fail)?;
            if reply.line.status == Status::Ok {
                deleted.push(uid);
            } else {
                stay.push((
                    Some(msg),
                    uid.to_string(),
                    format!("DELE refused: {}", reply.line.describe()),
                ));
            }
        }
        drop(pipeline);
        let quit = session.quit().await.map_err(fail)?;
        if !quit.is_ok() {
            return Err(Failure::new(
                Exit::Protocol,
                format!(
                    "account `{name}`: QUIT answered -ERR ({}): the server may not have removed the {} messages marked for deletion; nothing recorded as deleted",
                    quit.describe(),
                    deleted.len()
                ),
            ));
        }
        store
            .mark_deleted(acct, &deleted, super::sync::now())
            .map_err(server::store_failure)?;
    }
    for (msg, uid, why) in &stay {
        let msg = msg.map_or("-".to_string(), |m| m.to_string());
        println!("{name}: stays: message {msg} UID {uid}: {why}");
    }
    println!(
        "{name}: {} {} from the server, {} stay",
        if dry_run { go.len() } else { deleted.len() },
        if dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        stay.len()
    );
    Ok(if damage { Exit::Delivery } else { Exit::Ok })
}
