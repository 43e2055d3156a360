//! The write path: txn evaluation (a pure core), group commit into the
//! local database and a durable store behind the [`Durability`] seam (the
//! bucket, or a quorum of replicas behind the [`Replicas`] seam),
//! publication to readers and watchers, recovery when durability fails, and
//! preflight before a Primary takes writes, and the decisions of the
//! cluster compaction cycle. Knows nothing of the etcd wire or of gRPC:
//! callers get [`WriteError`]s.

pub mod buffer;
pub mod committer;
pub mod compaction;
pub mod core;
pub mod durability;
pub mod error;
pub mod gate;
pub mod leases;
pub mod lessor;
pub mod preflight;
pub mod recovery;
pub mod replicas;
pub mod tenure;
pub mod txn;
pub mod view;

pub use committer::{start, WritePath, WritePathEvent, WritePathParts, Writer};
pub use durability::{Durability, ObjectStorageDurability};
pub use error::WriteError;
pub use gate::WriteGate;
pub use leases::{LeaseStatus, Leases};
pub use preflight::preflight;
pub use replicas::{Replicas, Route};
pub use tenure::Tenure;
