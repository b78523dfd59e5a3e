//! mbox
