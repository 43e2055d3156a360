//! Replication between a Primary and its replicas: the Primary's replica
//! set (per-replica queues, the tracker, receipt waits) behind the write
//! path's `Replicas` seam, the Follow stream as the Primary serves it, and
//! the replica's follower that applies it.

pub mod follower;
pub mod serve;
pub mod set;
pub mod tracker;

pub use follower::{follow, FollowerParts};
pub use serve::PrimaryService;
pub use set::ReplicaSet;
