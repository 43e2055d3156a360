//! netsy: a replicated key-value database whose permanent store is object
//! storage and which speaks the etcd v3 API. See SPEC §3 for the layout: one
//! folder per concern, small types at the seams.

pub mod background;
pub mod config;
pub mod datafile;
pub mod election;
pub mod etcd;
pub mod failpoint;
/// Fuzz targets for the stable driver and cargo-fuzz; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod launch;
pub mod log;
pub mod node;
pub mod objstore;
pub mod pb;
pub mod primary;
pub mod replication;
pub mod store;
pub mod tls;
pub mod watch;
