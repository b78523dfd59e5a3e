//! `popsync mark-seen ACCOUNT`: record every UID now on the server as seen
//! (state `marked`) without downloading anything, to mirror "from now on".

use crate::config::{Account, Config};
use crate::session::TraceSink;

use super::exit::{Exit, Failure};
use super::server;

pub async fn run(
    config: &Config,
    account: &Account,
    trace: Option<TraceSink>,
) -> Result<Exit, Failure> {
    let _lock = server::lock(config, account)?;
    let mut store = server::open_store(config)?;
    let acct = server::account_id(&mut store, account)?;
    let (session, uidl, list) = server::open_listings(account, trace).await?;
    server::quit_quietly(session).await;
    // Compact: a mailbox of a million messages is marked in ~150 MiB.
    let (list, left) = crate::sync::plan::unique_uids(&uidl, &list);
    let counts = store
        .mark_seen(acct, &list, super::sync::now())
        .map_err(server::store_failure)?;
    let mut line = format!(
        "{}: {} marked as seen, {} already known",
        account.name, counts.marked, counts.already
    );
    if left > 0 {
        line.push_str(&format!(
            "; {left} left unmarked (invalid or shared UID: sync never fetches or deletes them)"
        ));
    }
    println!("{line}");
    Ok(Exit::Ok)
}
