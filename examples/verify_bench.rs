//! How long `verify` takes over a large archive: delivers N messages
//! (default 100,000, about 4 KiB each) into a fresh maildir, records them
//! in a fresh state, moves a third into `cur/` with flags as a mail reader
//! would, then times `popsync::verify::verify` over all records.
//!
//!     cargo run --release --example verify_bench [N] [DIR]

use std::io::Write;
use std::time::Instant;

use popsync::deliver::{MessageMeta, Target, maildir::Maildir};
use popsync::store::{Store, TargetId};
use popsync::verify::verify;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::Builder::new()
        .prefix("verify-bench-")
        .tempdir_in(base)?;
    let root = dir.path().join("mail");
    let mut md = Maildir::open(&root)?;
    let mut store = Store::open_in(&dir.path().join("state"))?;
    let acct = store.account("bench", 1)?;
    let started = Instant::now();
    let body = "a line of about sixty-four characters of message body text...\n".repeat(64);
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        let mut batch = md.batch()?;
        let mut stored = Vec::new();
        for i in chunk {
            let mut message = batch.message(&MessageMeta::default())?;
            message.write_all(format!("Subject: message {i}\n\n").as_bytes())?;
            message.write_all(body.as_bytes())?;
            stored.push((format!("uid{i}"), message.finish()?));
        }
        batch.sync()?.publish()?;
        let items: Vec<(&str, &_)> = stored.iter().map(|(u, s)| (u.as_str(), s)).collect();
        store.commit_delivered(acct, &TargetId::Maildir(root.clone()), &items, 2, false)?;
    }
    for (i, e) in std::fs::read_dir(root.join("new"))?.enumerate() {
        let e = e?;
        if i % 3 == 0 {
            let name = e.file_name().into_string().map_err(|_| "name")?;
            std::fs::rename(e.path(), root.join("cur").join(format!("{name}:2,S")))?;
        }
    }
    println!(
        "setup: {n} messages in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let records = store.delivery_records(acct)?;
    let t = Instant::now();
    let findings = verify(&records);
    let secs = t.elapsed().as_secs_f64();
    let intact = findings.iter().filter(|f| f.is_intact()).count();
    println!(
        "verify: {} records, {intact} intact, {secs:.2}s ({:.0} messages/s)",
        records.len(),
        records.len() as f64 / secs
    );
    Ok(())
}
