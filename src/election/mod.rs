//! Coordination through the bucket: node registrations and member ids
//! (discovery), the tier-1 lock that names the Elector, the Elector's node
//! map and its choice of the Primary (tier 2), and the cluster state it
//! hands every node. Decisions here are plain values told the time; the
//! Elector service and the node's runners do the I/O around them.

pub mod choose;
pub mod cluster_state;
pub mod discovery;
pub mod elector;
pub mod endpoint;
pub mod lock;
pub mod nodemap;
