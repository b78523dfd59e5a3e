//! mda
