//! `popsync init`: finding a server for an address and writing its account.
pub mod discover;
pub mod write;
