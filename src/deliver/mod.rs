//! Local delivery targets.
