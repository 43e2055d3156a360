//! The write path: txn evaluation, group commit into the local database,
//! and publication to readers and watchers. (Object-storage durability and
//! quorum replication plug in here in later stages.)

pub mod committer;
pub mod txn;
pub mod view;

pub use committer::{start, Writer};
