//! All integration tests in one binary: one link instead of one per file,
//! and the shared harness in tests/support/ compiled once.
//! Run one file's tests with `cargo test --test it NAME::`.

#[path = "../support/mod.rs"]
mod support;

mod archive;
mod cancelled_sync;
mod crash;
mod daemon;
mod daemon_notify;
mod docs;
mod example_configs;
mod faults;
mod fuzz_corpus_replay;
mod harness_smoke;
mod hostile_server;
mod init;
mod init_oauth2;
mod init_terminal;
mod lab;
mod large_mailbox;
mod list_sizes;
mod local_faults;
mod mda_batch;
mod migrate;
mod newcomer;
mod oauth2;
mod probe;
mod real_servers;
mod round_trips;
mod runaway_helpers;
mod security;
mod session_scripted;
mod shell_terminal;
mod skip_reasons;
mod sync_dovecot;
mod terminal;
mod tls_mixups;
mod tls_trust;
mod trust;
mod utf8_mode;
