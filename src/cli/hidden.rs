//! Reading a secret from the terminal with echo off, for `init` and `shell`.
//!
//! rpassword reads in raw mode and answers a Ctrl-C by raising SIGINT before
//! it restores the terminal, which with SIGINT's default action would leave
//! the user's shell without echo. During the read SIGINT is only noted, and
//! popsync dies of it once rpassword has put the terminal back.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The secret typed at `prompt`. A Ctrl-C during the read ends the process
/// by SIGINT (status 130 to a shell) with the terminal as it was; the
/// `Interrupted` error is returned only if that somehow did not happen.
pub fn read_hidden(prompt: &str) -> io::Result<String> {
    let sigint_kills = sigint_kills();
    sigint_kills.store(false, Ordering::SeqCst);
    let read = rpassword::prompt_password(prompt);
    sigint_kills.store(true, Ordering::SeqCst);
    if matches!(&read, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
        let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGINT);
    }
    read
}

/// Whether SIGINT has its usual effect (true but during [`read_hidden`]'s
/// read): a handler that runs the default action only then.
fn sigint_kills() -> &'static AtomicBool {
    static KILLS: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    KILLS.get_or_init(|| {
        let kills = Arc::new(AtomicBool::new(true));
        let registered = signal_hook::flag::register_conditional_default(
            signal_hook::consts::SIGINT,
            kills.clone(),
        );
        if let Err(e) = registered {
            tracing::debug!("SIGINT handler: {e}");
        }
        kills
    })
}
