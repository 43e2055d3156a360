//! The fault suite and its pieces. `suite`: Kubernetes-shaped traffic
//! through every node while a fault strikes, every recorded history
//! checked. The pieces themselves: fault points compiled into the test
//! build (a crash between a chunk upload and the SQLite commit loses
//! nothing the bucket holds), the S3 proxy's modes against moto and a node
//! behind it during an outage, and the TCP proxy's modes against a plain
//! echo server and between the nodes of a cluster.

#[path = "../support/mod.rs"]
mod support;

mod failpoints;
mod s3proxy;
mod stale_reads;
mod suite;
mod tcpproxy;

pub use support::fingerprint;
