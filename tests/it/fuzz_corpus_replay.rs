//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`) through
//! the same checks the fuzz targets run, so every input a fuzzer once found
//! interesting stays a regression test without cargo-fuzz or nightly.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus for {target}");
}

#[test]
fn multiline_decoder_corpus() {
    replay("multiline_decoder", checks::multiline_decoder);
}

#[test]
fn status_line_corpus() {
    replay("status_line", checks::status_line);
}

#[test]
fn listing_corpus() {
    replay("listing", checks::listing);
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn reply_pairing_corpus() {
    replay("reply_pairing", checks::reply_pairing);
}
