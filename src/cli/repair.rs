//! `popsync refetch ACCOUNT UID…`, `popsync forget ACCOUNT UID…` and
//! `popsync verify --repair`: the next step after `verify` finds damage.
//! All take the account lock (they change what the next sync does).

use crate::config::{Account, Config};
use crate::repair::move_aside;
use crate::store::{AccountId, DeliveryRecord, MessageState, Store};
use crate::verify::{Finding, verify};

use super::exit::{Exit, Failure};
use super::server;

/// The live records of the named UIDs; refuses the whole command (nothing
/// changed) if one is unknown.
fn known_uids(
    store: &Store,
    account: &Account,
    uids: &[String],
) -> Result<(AccountId, Vec<(String, MessageState)>), Failure> {
    let name = &account.name;
    let acct = store
        .find_account(name)
        .map_err(server::store_failure)?
        .ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!("account `{name}` has no records yet (it never synced): nothing to change"),
            )
        })?;
    let live = store.live_messages(acct).map_err(server::store_failure)?;
    let unknown: Vec<&str> = uids
        .iter()
        .filter(|u| !live.contains_key(u.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "account `{name}`: no record of UID {} on the server at the last sync (see `popsync ls {name}`); nothing changed",
                unknown.join(", ")
            ),
        ));
    }
    Ok((
        acct,
        uids.iter().map(|u| (u.clone(), live[u].state)).collect(),
    ))
}

/// Moves the damaged copy aside, then records the message as to be fetched
/// again. Returns the line to print.
fn repair_one(store: &mut Store, acct: AccountId, rec: &DeliveryRecord) -> Result<String, Failure> {
    let aside = move_aside(rec).map_err(|e| {
        Failure::new(
            Exit::Delivery,
            format!(
                "UID {}: cannot move the damaged copy aside: {e}; nothing changed for it",
                rec.uid
            ),
        )
    })?;
    store
        .reset_for_refetch(acct, &rec.uid)
        .map_err(server::store_failure)?;
    Ok(format!(
        "UID {}: {aside}; the next sync fetches it again",
        rec.uid
    ))
}

pub fn refetch(config: &Config, account: &Account, uids: &[String]) -> Result<Exit, Failure> {
    let name = &account.name;
    let _lock = server::lock(config, account)?;
    let mut store = server::open_store(config)?;
    let (acct, states) = known_uids(&store, account, uids)?;
    let records = store
        .delivery_records(acct)
        .map_err(server::store_failure)?;
    for (uid, state) in states {
        let line = match state {
            MessageState::Delivered => {
                let Some(rec) = records.iter().find(|r| r.uid == uid && r.gone_at.is_none()) else {
                    println!("{name}: UID {uid}: no delivery record; nothing changed");
                    continue;
                };
                if rec.deleted_at.is_some() {
                    format!(
                        "UID {uid}: deleted from the server after storing: cannot be fetched again"
                    )
                } else {
                    let finding = crate::sync::blocking(|| verify(std::slice::from_ref(rec)));
                    match &finding[0] {
                        Finding::Missing(_) | Finding::Altered(_) => {
                            repair_one(&mut store, acct, rec)?
                        }
                        Finding::Intact => format!(
                            "UID {uid}: stored copy intact; nothing changed (`popsync forget {name} {uid}` fetches a second copy)"
                        ),
                        Finding::Unreadable(d) => format!(
                            "UID {uid}: stored copy unreadable ({d}); fix its permissions, nothing changed"
                        ),
                        Finding::NotCheckable(_) => format!(
                            "UID {uid}: handed to an MDA, cannot be checked; nothing changed (`popsync forget {name} {uid}` hands it over again)"
                        ),
                    }
                }
            }
            MessageState::Pending => format!("UID {uid}: not stored yet; the next sync fetches it"),
            MessageState::Skipped => format!(
                "UID {uid}: skipped by sync (see `popsync ls {name}`); the next sync tries it again"
            ),
            MessageState::Marked => format!(
                "UID {uid}: marked as seen, never stored by popsync; nothing changed (`popsync forget {name} {uid}` makes it new)"
            ),
        };
        println!("{name}: {line}");
    }
    Ok(Exit::Ok)
}

pub fn forget(config: &Config, account: &Account, uids: &[String]) -> Result<Exit, Failure> {
    let name = &account.name;
    let _lock = server::lock(config, account)?;
    let mut store = server::open_store(config)?;
    let (acct, states) = known_uids(&store, account, uids)?;
    let list: Vec<&str> = states.iter().map(|(u, _)| u.as_str()).collect();
    store
        .forget(acct, &list, super::sync::now())
        .map_err(server::store_failure)?;
    for (uid, state) in &states {
        let note = if *state == MessageState::Delivered {
            " (its stored copy stays; the next sync stores another one)"
        } else {
            ""
        };
        println!("{name}: UID {uid}: forgotten, counts as new{note}");
    }
    Ok(Exit::Ok)
}

/// `verify --repair`: verifies like `verify`, then makes every missing or
/// altered copy of a message still on the server (at the last sync)
/// fetchable again. Exit 10 remains only for damage that could not be
/// repaired.
pub fn verify_and_repair(config: &Config, accounts: Vec<&Account>) -> Result<Exit, Failure> {
    let mut exit = Exit::Ok;
    for account in accounts {
        let name = &account.name;
        let _lock = server::lock(config, account)?;
        let mut store = server::open_store(config)?;
        let Some(acct) = store.find_account(name).map_err(server::store_failure)? else {
            println!("{name}: no deliveries recorded");
            continue;
        };
        let records = store
            .delivery_records(acct)
            .map_err(server::store_failure)?;
        let findings = crate::sync::blocking(|| verify(&records));
        let (mut repaired, mut left) = (0, 0);
        for (rec, f) in records.iter().zip(&findings) {
            if !f.is_damage() {
                continue;
            }
            let line = match f {
                Finding::Unreadable(d) => {
                    format!(
                        "UID {}: unreadable ({d}): fix its permissions and verify again",
                        rec.uid
                    )
                }
                _ if rec.gone_at.is_some() || rec.deleted_at.is_some() => format!(
                    "UID {}: {} ({}), and no longer on the server: restore it from a backup",
                    rec.uid,
                    f.kind(),
                    f.detail()
                ),
                _ => {
                    repaired += 1;
                    println!("{name}: {} UID {}: {}", f.kind(), rec.uid, f.detail());
                    println!("{name}: {}", repair_one(&mut store, acct, rec)?);
                    continue;
                }
            };
            left += 1;
            println!("{name}: {line}");
        }
        if left > 0 {
            exit = Exit::Verify;
        }
        println!(
            "{name}: {} deliveries checked: {repaired} to be fetched again at the next sync, {left} damaged that cannot be repaired",
            records.len()
        );
    }
    Ok(exit)
}
