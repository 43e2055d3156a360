//! The fault-injection pieces themselves: fault points compiled into the
//! test build (a crash between a chunk upload and the SQLite commit loses
//! nothing the bucket holds).

#[path = "../support/mod.rs"]
mod support;

mod failpoints;
