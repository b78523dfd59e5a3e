//! What the migration and archive commands share: the state, the account
//! lock, and a logged-in session with the server's UID listing.

use std::collections::HashMap;

use crate::config::{Account, Config};
use crate::pop3::{ListEntry, UidList};
use crate::session::{Session, SessionError, TraceSink};
use crate::store::{AccountId, Store};
use crate::sync::{AccountLock, LockError};

use super::exit::{Exit, Failure};

pub fn open_store(config: &Config) -> Result<Store, Failure> {
    Ok(Store::open_for(config)?)
}

pub fn store_failure(e: crate::store::StoreError) -> Failure {
    e.into()
}

/// The account's id in the state, created if the account never synced.
pub fn account_id(store: &mut Store, account: &Account) -> Result<AccountId, Failure> {
    store
        .account(&account.name, super::sync::now())
        .map_err(store_failure)
}

/// The per-account lock that `sync` takes too: one writer per account.
pub fn lock(config: &Config, account: &Account) -> Result<AccountLock, Failure> {
    AccountLock::acquire(&config.state_dir, &account.name).map_err(|e| match e {
        LockError::Held { .. } => {
            Failure::new(Exit::Locked, format!("account `{}`: {e}", account.name))
        }
        LockError::Io { .. } => Failure::new(Exit::Delivery, e.to_string()),
    })
}

/// The credentials could not be had (a missing password, a failing
/// password_command, no OAuth2 login), named once.
pub fn credentials_failure(account: &Account, e: crate::sync::SyncError) -> Failure {
    Failure::new(
        Exit::for_kind(e.kind()),
        format!("account `{}`: {e}", account.name),
    )
}

pub fn session_failure(account: &Account, e: SessionError) -> Failure {
    Failure::new(
        Exit::for_session(&e),
        format!("account `{}`: {e}", account.name),
    )
}

/// The server's messages by UID, as the sync engine would see them.
#[derive(Debug, Default)]
pub struct ServerUids {
    /// Valid UIDs held by exactly one message: UID -> (message number, LIST size).
    pub unique: HashMap<String, (u32, u64)>,
    /// Valid UIDs held by several messages: UID -> how many.
    pub shared: HashMap<String, usize>,
    /// Message numbers whose UID is invalid (RFC 1939 §7).
    pub invalid: Vec<u32>,
}

/// Connects, logs in and lists UIDL + LIST. Refuses a server without UIDL:
/// nothing can be matched there.
pub async fn open(
    account: &Account,
    trace: Option<TraceSink>,
) -> Result<(Session, ServerUids), Failure> {
    let (session, uidl, list) = open_listings(account, trace).await?;
    let sizes: HashMap<u32, u64> = list.iter().map(|e| (e.msg, e.size)).collect();
    let mut out = ServerUids::default();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in &uidl {
        if let Ok(uid) = e.uid {
            *count.entry(uid).or_default() += 1;
        }
    }
    for e in &uidl {
        match e.uid {
            Err(_) => out.invalid.push(e.msg),
            Ok(uid) if count[uid] > 1 => {
                out.shared.insert(uid.to_string(), count[uid]);
            }
            Ok(uid) => {
                let size = sizes.get(&e.msg).copied().unwrap_or(0);
                out.unique.insert(uid.to_string(), (e.msg, size));
            }
        }
    }
    Ok((session, out))
}

/// [`open`] without the maps: the UIDL and LIST replies in compact form.
pub async fn open_listings(
    account: &Account,
    trace: Option<TraceSink>,
) -> Result<(Session, UidList, Vec<ListEntry>), Failure> {
    let (session, (_, uidl, list)) = login_and_list(account, trace).await?;
    let Some(uidl) = uidl else {
        let _ = session.quit().await;
        return Err(Failure::new(
            Exit::Protocol,
            format!(
                "account `{}`: the server does not support UIDL, so its messages cannot be told apart",
                account.name
            ),
        ));
    };
    Ok((session, uidl, list))
}

/// Connects with the account's TLS settings, logs in with its credentials
/// under the same rules as sync, and lists (STAT, UIDL, LIST): all in one
/// write where the server offers PIPELINING.
pub async fn login_and_list(
    account: &Account,
    trace: Option<TraceSink>,
) -> Result<(Session, crate::session::MaildropListing), Failure> {
    let fail = |e| session_failure(account, e);
    let creds = crate::sync::credentials(account)
        .await
        .map_err(|e| credentials_failure(account, e))?;
    let mut session = Session::connect(&crate::sync::connect_options(account, trace))
        .await
        .map_err(fail)?;
    let listing = session
        .login_and_list(&creds, account.max_messages)
        .await
        .map_err(fail)?;
    Ok((session, listing))
}

/// Ends a session that changed nothing; its QUIT reply does not matter.
pub async fn quit_quietly(session: Session) {
    let _ = session.quit().await;
}
