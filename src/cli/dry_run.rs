//! `popsync sync --dry-run [ACCOUNT...]`: what the next sync would fetch,
//! skip and delete. Reads the state without writing it, sends no RETR and
//! no DELE, touches no target.

use crate::config::{Account, Config};
use crate::session::TraceSink;

use super::exit::{Exit, Failure};
use super::ls::survey;

pub async fn run(
    config: &Config,
    accounts: Vec<&Account>,
    accept_uid_change: bool,
    trace: Option<TraceSink>,
) -> Result<Exit, Failure> {
    let mut exit = Exit::Ok;
    for account in accounts {
        match one(config, account, accept_uid_change, trace.clone()).await {
            Ok(()) => {}
            Err(f) => {
                eprintln!("popsync: {}", f.message);
                exit = exit.worst(f.exit);
            }
        }
    }
    Ok(exit)
}

async fn one(
    config: &Config,
    account: &Account,
    accept_uid_change: bool,
    trace: Option<TraceSink>,
) -> Result<(), Failure> {
    let name = &account.name;
    let (session, s) = survey(config, account, trace, accept_uid_change).await?;
    super::server::quit_quietly(session).await;
    let plan = s.plan().map_err(|e| {
        Failure::new(
            Exit::for_kind(crate::sync::FailureKind::Protocol),
            format!("account `{name}`: the sync would stop: {e}"),
        )
    })?;
    for w in &plan.fetch {
        println!(
            "{name}: would fetch message {} UID {} ({} bytes)",
            w.msg,
            w.uid.unwrap_or("-"),
            w.size
        );
    }
    for k in &plan.skip {
        println!(
            "{name}: would skip message {} UID {}: {}",
            k.msg,
            k.uid.as_deref().unwrap_or("-"),
            k.reason
        );
    }
    for (msg, uid) in &plan.delete {
        println!("{name}: would delete message {msg} UID {uid} from the server");
    }
    let gone = plan.gone.len();
    println!(
        "{name}: dry run: {} to fetch, {} to skip, {} to delete{}; nothing changed",
        plan.fetch.len(),
        plan.skip.len(),
        plan.delete.len(),
        if gone > 0 {
            format!(", {gone} UIDs no longer on the server to retire")
        } else {
            String::new()
        }
    );
    if crate::sync::plan::delete_after_commit(crate::sync::Policy {
        keep: account.keep,
        delete_after_days: account.delete_after_days,
        max_size: account.max_size,
        now: 0,
    }) && !plan.fetch.is_empty()
    {
        println!("{name}: (keep = false: each fetched message would be deleted once stored)");
    }
    Ok(())
}
