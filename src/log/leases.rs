//! Leases in the bucket (a netsy extension; reference nodes ignore the
//! prefix): one small JSON object per live lease, `leases/{id:016x}`,
//! holding its id and granted TTL. Created only if absent when a lease is
//! granted, deleted after it is revoked; a node taking the Primary role
//! lists them. Which keys a lease holds is not stored here: the records'
//! `lease` field says it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::objstore::{Condition, ObjError, ObjectStore};

use super::LogError;

pub const LEASES: &str = "leases/";

/// The object key of lease `id` (etcd prints lease ids in hex).
pub fn lease_key(id: i64) -> String {
    format!("{LEASES}{:016x}", id as u64)
}

/// A lease as the bucket keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseObject {
    pub id: i64,
    pub ttl: i64,
}

/// Creates lease `id`'s object. `Ok(false)` when one already exists.
pub async fn create(store: &dyn ObjectStore, lease: LeaseObject) -> Result<bool, LogError> {
    let body = serde_json::to_vec(&lease)
        .map_err(|e| LogError::Invalid(format!("encoding lease {}: {e}", lease.id)))?;
    match store
        .put(&lease_key(lease.id), Bytes::from(body), Condition::IfAbsent)
        .await
    {
        Ok(_) => Ok(true),
        Err(ObjError::PreconditionFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes lease `id`'s object (a missing one is not an error).
pub async fn delete(store: &dyn ObjectStore, id: i64) -> Result<(), LogError> {
    Ok(store.delete(&lease_key(id)).await?)
}

/// Every lease in the bucket, ascending by id. An object that does not
/// parse, or whose id does not match its key, is an error naming it: a
/// lease silently lost would let its keys outlive it forever.
pub async fn list(store: &dyn ObjectStore) -> Result<Vec<LeaseObject>, LogError> {
    let mut leases = Vec::new();
    for listed in store.list(LEASES).await? {
        let object = store.get(&listed.key).await?;
        let lease: LeaseObject = serde_json::from_slice(&object.data)
            .map_err(|e| LogError::Invalid(format!("lease object {}: {e}", listed.key)))?;
        if lease_key(lease.id) != listed.key {
            return Err(LogError::Invalid(format!(
                "lease object {} holds lease {:016x}",
                listed.key, lease.id as u64
            )));
        }
        leases.push(lease);
    }
    leases.sort_by_key(|l| l.id);
    Ok(leases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::memory::MemoryStore;

    #[tokio::test]
    async fn created_once_listed_and_deleted() {
        let store = MemoryStore::new();
        let a = LeaseObject {
            id: 0x694d,
            ttl: 60,
        };
        let b = LeaseObject { id: -2, ttl: 5 };
        assert!(create(&store, a).await.unwrap());
        assert!(!create(&store, LeaseObject { ttl: 9, ..a }).await.unwrap());
        assert!(create(&store, b).await.unwrap());
        assert_eq!(lease_key(a.id), "leases/000000000000694d");
        assert_eq!(list(&store).await.unwrap(), [b, a]);
        delete(&store, a.id).await.unwrap();
        delete(&store, a.id).await.unwrap();
        assert_eq!(list(&store).await.unwrap(), [b]);
    }

    #[tokio::test]
    async fn a_foreign_object_under_the_prefix_is_an_error() {
        let store = MemoryStore::new();
        store
            .put(
                "leases/0000000000000001",
                Bytes::from_static(b"{\"id\":2,\"ttl\":5}"),
                Condition::None,
            )
            .await
            .unwrap();
        let e = list(&store).await.unwrap_err().to_string();
        assert!(e.contains("leases/0000000000000001"), "{e}");
        store
            .put(
                "leases/0000000000000001",
                Bytes::from_static(b"not json"),
                Condition::None,
            )
            .await
            .unwrap();
        assert!(list(&store).await.is_err());
    }
}
