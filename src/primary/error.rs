//! Why a write failed, as the write path knows it. The etcd layer turns each
//! kind into the gRPC status etcd would send.

use crate::store::StoreError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// A read inside the txn needs history that compaction discarded.
    Compacted,
    /// A read inside the txn asked for a revision not written yet.
    FutureRevision,
    /// ignore_value or ignore_lease on a key that does not exist.
    KeyNotFound,
    LeaseNotFound,
    LeaseExists,
    LeaseTtlTooLarge,
    /// Writes are refused in this primary state.
    NotAccepting {
        state: &'static str,
        reason: String,
    },
    /// The batch could not be made durable (object storage, or later a
    /// quorum of replicas); nothing of it was committed.
    NotDurable(String),
    /// The local database failed.
    Store(String),
    /// The write path has stopped (the node is shutting down).
    Stopped,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Compacted => write!(f, "required revision has been compacted"),
            WriteError::FutureRevision => write!(f, "required revision is a future revision"),
            WriteError::KeyNotFound => write!(f, "key not found"),
            WriteError::LeaseNotFound => write!(f, "requested lease not found"),
            WriteError::LeaseExists => write!(f, "lease already exists"),
            WriteError::LeaseTtlTooLarge => write!(f, "too large lease TTL"),
            WriteError::NotAccepting { state, reason } if reason.is_empty() => {
                write!(f, "this node is not accepting writes (state: {state})")
            }
            WriteError::NotAccepting { state, reason } => {
                write!(
                    f,
                    "this node is not accepting writes (state: {state}): {reason}"
                )
            }
            WriteError::NotDurable(e) => write!(f, "{e}"),
            WriteError::Store(e) => write!(f, "local database: {e}"),
            WriteError::Stopped => write!(f, "the write path is shutting down"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted => WriteError::Compacted,
            StoreError::FutureRevision => WriteError::FutureRevision,
            other => WriteError::Store(other.to_string()),
        }
    }
}
