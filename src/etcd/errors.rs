//! etcd's client-visible errors (codes and texts as etcd sends them), plus
//! the few netsy adds for requests outside what one record per revision can
//! express.

use crate::grpc::Status;
use crate::primary::WriteError;
use crate::store::StoreError;

pub fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

pub fn compacted() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
}

pub fn future_revision() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
}

pub fn key_not_found() -> Status {
    Status::invalid_argument("etcdserver: key not found")
}

pub fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

pub fn value_provided() -> Status {
    Status::invalid_argument("etcdserver: value is provided")
}

pub fn lease_provided() -> Status {
    Status::invalid_argument("etcdserver: lease is provided")
}

pub fn invalid_sort_option() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

pub fn lease_not_found() -> Status {
    Status::not_found("etcdserver: requested lease not found")
}

pub fn lease_exists() -> Status {
    Status::failed_precondition("etcdserver: lease already exists")
}

pub fn lease_ttl_too_large() -> Status {
    Status::out_of_range("etcdserver: too large lease TTL")
}

/// etcd's answer to a txn that writes a key twice.
pub fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

/// The status etcd would send for a write the write path refused.
pub fn from_write(e: WriteError) -> Status {
    match e {
        WriteError::Compacted => compacted(),
        WriteError::FutureRevision => future_revision(),
        WriteError::KeyNotFound => key_not_found(),
        WriteError::LeaseNotFound => lease_not_found(),
        WriteError::LeaseExists => lease_exists(),
        WriteError::LeaseTtlTooLarge => lease_ttl_too_large(),
        WriteError::NotAccepting { .. } | WriteError::Stopped => {
            Status::unavailable(format!("netsy: {e}"))
        }
        WriteError::NotDurable(message) => Status::unavailable(message),
        WriteError::Store(_) => Status::internal(e.to_string()),
    }
}

/// The status for a failed read of the local store.
pub fn from_store(e: StoreError) -> Status {
    match e {
        StoreError::Compacted => compacted(),
        StoreError::FutureRevision => future_revision(),
        other => Status::internal(format!("local database: {other}")),
    }
}
