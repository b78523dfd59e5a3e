//! Shared integration-test harness: include with `mod support;`.
//!
//! - [`certs`]: a throw-away PKI (test CA, leafs: good, expired, wrong host).
//! - [`dovecot`]: a private Dovecot POP3 server per test.
//! - [`scripted`]: an in-process POP3 server that plays a script.
//! - [`popa3d`]: popa3d, a second real POP3 server (mbox, no CAPA).
//! - [`tmux`]: a real terminal for tests of prompts.
// Each test crate uses only part of the harness; re-exports count as imports.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod daemon;
pub mod delay_proxy;
pub mod dns;
pub mod dovecot;
pub mod scripted;

pub use certs::{Leaf, TestPki, cert_sha256, client_config_trusting};
pub use dovecot::{Dovecot, DovecotOptions, dovecot_available};
pub use scripted::{ScriptedServer, Step, expect, line, tls_server_config, tls_server_config_for};

use std::path::Path;

/// Writes `contents` to a new or truncated file that only its owner can
/// read (configs holding passwords). The mode is set at creation, so the
/// secret is never world-readable, even briefly.
pub fn write_file_0600(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = path.as_ref();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    // An existing file keeps its old mode on open: force it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .expect("chmod 0600");
    f.write_all(contents.as_ref())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
pub mod fault_case;
pub mod fault_server;
pub mod keyring;
pub mod oidc;
pub mod peers;
pub mod popa3d;
pub mod popsync;
pub mod tmux;
pub mod users;
