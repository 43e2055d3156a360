//! Fuzz targets: each takes arbitrary bytes and must not panic, whatever
//! they are (refusing them is fine). Some also check an invariant (what
//! decodes encodes and decodes back the same, a chunked stream decodes as
//! the whole one does) and panic when it breaks, since that is a bug too.
//!
//! The stable driver (`tests/fuzz`, a time-bounded test run in CI) and the
//! cargo-fuzz harness (`fuzz/`, for long runs with nightly) call the same
//! functions, so an input one finds replays in the other. Not part of
//! netsy's API.

mod config;
mod datafile;
mod election;
mod etcd;
mod grpc;
mod seeds;

pub use config::config;
pub use datafile::datafile;
pub use election::election_json;
pub use etcd::etcd_requests;
pub use grpc::grpc_frames;
pub use seeds::seeds;

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    /// Longest input worth generating: longer ones only slow a run down.
    pub max_len: usize,
}

/// Every target, by the name the harnesses use.
pub const TARGETS: &[Target] = &[
    Target {
        name: "grpc_frames",
        run: grpc_frames,
        max_len: 16 * 1024,
    },
    Target {
        name: "etcd_requests",
        run: etcd_requests,
        max_len: 8 * 1024,
    },
    Target {
        name: "datafile",
        run: datafile,
        max_len: 32 * 1024,
    },
    Target {
        name: "config",
        run: config,
        max_len: 8 * 1024,
    },
    Target {
        name: "election_json",
        run: election_json,
        max_len: 4 * 1024,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
