//! popsync: a durable POP3 mail-fetching sync agent.
//!
//! Layers, from the wire up:
//! - [`pop3`]: the pure protocol codec (no I/O).
//! - [`session`]: a tokio connection speaking that codec over TCP or TLS.
//! - [`config`]: the TOML configuration.
//! - [`deliver`]: local delivery targets (maildir, mbox, MDA).
//! - [`migrate`]: readers of fetchmail, mpop and getmail6 UID files.
//! - [`verify`]: checks stored messages against their recorded SHA-256.
//! - [`repair`]: moves damaged copies aside before they are fetched again.
//! - [`sync`]: the engine that syncs one account.
//! - [`oauth2`]: OAuth2 tokens (presets, store, refresh, login flows).
//! - [`daemon`]: the background service over many accounts; [`notify`]: its
//!   desktop notifications.
//! - [`setup`]: `popsync init`'s server discovery and config writing.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datetime;
pub mod deliver;
pub mod hardening;
pub mod helpers;
pub mod migrate;
pub mod notify;
pub mod oauth2;
pub mod ownership;
pub mod pop3;
pub mod repair;
pub mod session;
pub mod setup;
pub mod store;
pub mod sync;
pub mod verify;
