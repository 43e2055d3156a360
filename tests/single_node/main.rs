//! Integration tests of a single `netsy --dev` node driven by real clients:
//! etcdctl 3.5.1, the etcd-client crate, and raw gRPC for bad input.

#[path = "../support/mod.rs"]
mod support;

mod authority;
mod bad_input;
mod cli;
mod client;
mod etcdctl;
mod kubernetes;
mod leases;
mod operations;
mod python;
mod restart;
