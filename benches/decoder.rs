//! Throughput of the multi-line decoder on the corpus as a server sends it
//! (CRLF, dot-stuffed, terminated), fed in 64 KiB chunks like the session
//! does. `cargo bench --bench decoder`. A plain `memchr` count of the line
//! ends over the same bytes is printed as the ceiling to compare with.

#[path = "common/corpus.rs"]
mod corpus;

use std::path::PathBuf;
use std::time::Instant;

use popsync::pop3::MultilineDecoder;
use popsync::pop3::multiline::encode_multiline;

const CHUNK: usize = 64 * 1024;
const ITERATIONS: usize = 21;

fn median_gbps(bytes: usize, mut f: impl FnMut() -> u64) -> (f64, u64) {
    let mut check = 0;
    let mut times: Vec<f64> = (0..ITERATIONS)
        .map(|_| {
            let t = Instant::now();
            check = std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (bytes as f64 / times[ITERATIONS / 2] / 1e9, check)
}

fn main() {
    // `cargo test --all-targets` runs bench targets too: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let messages = corpus::load(&root.join("bench/cache"));
    let mut wire = Vec::new();
    for m in &messages {
        encode_multiline(m, &mut wire);
    }
    let (gbps, out_bytes) = median_gbps(wire.len(), || {
        let mut scratch = Vec::with_capacity(CHUNK + 1);
        let mut total = 0u64;
        let mut pos = 0;
        let mut decoder = MultilineDecoder::new();
        while pos < wire.len() {
            let end = (pos + CHUNK).min(wire.len());
            scratch.clear();
            let d = decoder.decode(&wire[pos..end], &mut scratch);
            total += scratch.len() as u64;
            pos += d.consumed;
            if d.done {
                decoder = MultilineDecoder::new();
            }
        }
        total
    });
    let (memchr_gbps, lines) = median_gbps(wire.len(), || {
        memchr::memchr_iter(b'\n', &wire).count() as u64
    });
    println!(
        "corpus: {} messages, {} wire bytes -> {} decoded bytes, {} lines",
        messages.len(),
        wire.len(),
        out_bytes,
        lines
    );
    println!("multiline decoder:    {gbps:.2} GB/s (median of {ITERATIONS})");
    println!("memchr line count:    {memchr_gbps:.2} GB/s (ceiling)");
}
