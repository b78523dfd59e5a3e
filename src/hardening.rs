//! Process hygiene at start-up: no core dumps (they would hold passwords
//! and tokens), unless `POPSYNC_ALLOW_CORE` is set for debugging.

/// The environment variable that keeps core dumps possible.
pub const ALLOW_CORE: &str = "POPSYNC_ALLOW_CORE";

/// `RLIMIT_CORE` 0 and, on Linux, `PR_SET_DUMPABLE` 0 (which also keeps
/// other processes of the same user from ptrace-reading our memory).
pub fn disable_core_dumps() {
    if std::env::var_os(ALLOW_CORE).is_some() {
        return;
    }
    let zero = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, zero) {
        tracing::debug!("setrlimit(RLIMIT_CORE, 0): {e}");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::debug!("prctl(PR_SET_DUMPABLE, 0): {e}");
    }
}
