//! Whether this node may still answer writes as the Primary. In a cluster
//! the Elector may appoint another Primary once this one has been silent
//! for long enough; the node layer keeps a lease on its heartbeats that
//! lapses before that can happen. The commit thread asks it before each
//! batch's answers go out, so a batch that became durable after the lease
//! lapsed is not acknowledged (its outcome is unknown to the callers).

pub trait Tenure: Send + Sync {
    /// Ok while this node may acknowledge writes; otherwise why not.
    fn check(&self) -> Result<(), String>;
}
