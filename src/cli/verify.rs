//! `popsync verify [ACCOUNT]`: is every recorded delivery still where it was
//! stored, with the bytes it had? Exit 10 when anything is missing or altered.

use std::time::Instant;

use crate::config::{Account, Config};
use crate::store::{DeliveryRecord, Store};
use crate::verify::{Finding, verify};

use super::exit::{Exit, Failure};
use super::server::{open_store, store_failure};

/// One account's records and what verification found for each.
struct Verified {
    records: Vec<DeliveryRecord>,
    findings: Vec<Finding>,
}

impl Verified {
    fn damaged(&self) -> impl Iterator<Item = (&DeliveryRecord, &Finding)> {
        self.records
            .iter()
            .zip(&self.findings)
            .filter(|(_, f)| f.is_damage())
    }
}

/// Verifies every delivery recorded for the account (none if it never synced).
fn verify_account(store: &Store, account: &str) -> Result<Verified, Failure> {
    let records = match store.find_account(account).map_err(store_failure)? {
        Some(id) => store.delivery_records(id).map_err(store_failure)?,
        None => Vec::new(),
    };
    let findings = crate::sync::blocking(|| verify(&records));
    Ok(Verified { records, findings })
}

pub fn run(config: &Config, accounts: Vec<&Account>, quiet: bool) -> Result<Exit, Failure> {
    let store = open_store(config)?;
    let mut exit = Exit::Ok;
    for account in accounts {
        let started = Instant::now();
        let v = verify_account(&store, &account.name)?;
        let count = |kind: &str| v.findings.iter().filter(|f| f.kind() == kind).count();
        for (rec, f) in v.damaged() {
            println!(
                "{}: {} UID {}: {}",
                account.name,
                f.kind(),
                rec.uid,
                f.detail()
            );
        }
        let damaged = v.damaged().count();
        if damaged > 0 {
            exit = Exit::Verify;
        }
        if !quiet || damaged > 0 {
            println!(
                "{}: {} deliveries checked in {:.1}s: {} intact, {} missing, {} altered, {} unreadable, {} not checkable (MDA)",
                account.name,
                v.records.len(),
                started.elapsed().as_secs_f64(),
                count("intact"),
                count("missing"),
                count("altered"),
                count("unreadable"),
                count("not checkable")
            );
        }
    }
    Ok(exit)
}
