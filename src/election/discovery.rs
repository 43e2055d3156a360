//! `nodes/{node_id}.json` and `members.json` in the reference's formats.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::log::{bootstrap, LogError, ObjectLog};
use crate::objstore::{Condition, ObjError, ObjectStore};

/// Object keys (relative to `storage.key_prefix`), as the reference has them.
pub mod keys {
    /// Member ids by node id.
    pub const MEMBERS: &str = "members.json";
    /// Every node's registration lives under here.
    pub const NODES: &str = "nodes/";

    /// `nodes/{node_id}.json`.
    pub fn node_key(node_id: &str) -> String {
        format!("{NODES}{node_id}.json")
    }
}

/// A node's registration; field order is the reference's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node_id: String,
    pub client_advertise_address: String,
    pub peer_advertise_address: String,
}

/// `members.json`: member ids by node id (written with sorted keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub cluster_id: String,
    pub members: BTreeMap<String, u64>,
}

/// Attempts for a members.json compare-and-swap.
const MEMBER_ID_ATTEMPTS: usize = 5;

/// Ensures this node's registration: identical → nothing to do; absent →
/// written; different → the node must not start (another node, or this one
/// moved, owns the id).
pub async fn ensure_registration(
    store: &dyn ObjectStore,
    reg: &Registration,
) -> Result<(), String> {
    let key = keys::node_key(&reg.node_id);
    let body = serde_json::to_vec(reg).map_err(|e| format!("encoding {key}: {e}"))?;
    match store.get(&key).await {
        Ok(existing) => {
            let theirs: Option<Registration> = serde_json::from_slice(&existing.data).ok();
            if theirs.as_ref() == Some(reg) {
                Ok(())
            } else {
                Err(format!(
                    "discovery: node registration {key} already exists with different values (remove it if this node moved)"
                ))
            }
        }
        Err(ObjError::NotFound(_)) => store
            .put(&key, Bytes::from(body), Condition::None)
            .await
            .map(|_| ())
            .map_err(|e| format!("writing {key}: {e}")),
        Err(e) => Err(format!("reading {key}: {e}")),
    }
}

/// This node's etcd member id from `members.json`, allocating max + 1 (first
/// id 1) if it has none. When the file does not exist yet this node is the
/// first Elector of a new bucket: `bootstrap.netsy` is promoted first, then
/// the file is created.
pub async fn member_id(log: &ObjectLog, cluster_id: &str, node_id: &str) -> Result<u64, String> {
    let store = &*log.store;
    for _ in 0..MEMBER_ID_ATTEMPTS {
        let (mut members, condition) = match store.get(keys::MEMBERS).await {
            Ok(obj) => {
                let members: Members = serde_json::from_slice(&obj.data)
                    .map_err(|e| format!("{} is not valid: {e}", keys::MEMBERS))?;
                if members.cluster_id != cluster_id {
                    return Err(format!(
                        "the bucket belongs to cluster {:?} ({}), not {cluster_id:?}: check cluster_id and storage.key_prefix",
                        members.cluster_id,
                        keys::MEMBERS
                    ));
                }
                if let Some(id) = members.members.get(node_id) {
                    return Ok(*id);
                }
                (members, Condition::IfMatch(obj.etag))
            }
            Err(ObjError::NotFound(_)) => {
                bootstrap::promote(log)
                    .await
                    .map_err(|e: LogError| e.to_string())?;
                (
                    Members {
                        cluster_id: cluster_id.to_string(),
                        members: BTreeMap::new(),
                    },
                    Condition::IfAbsent,
                )
            }
            Err(e) => return Err(format!("reading {}: {e}", keys::MEMBERS)),
        };
        let id = members.members.values().max().copied().unwrap_or(0) + 1;
        members.members.insert(node_id.to_string(), id);
        let body =
            serde_json::to_vec(&members).map_err(|e| format!("encoding {}: {e}", keys::MEMBERS))?;
        match store.put(keys::MEMBERS, Bytes::from(body), condition).await {
            Ok(_) => {
                log::info!("member id {id} allocated to {node_id}");
                return Ok(id);
            }
            Err(ObjError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(format!("writing {}: {e}", keys::MEMBERS)),
        }
    }
    Err(format!(
        "failed to allocate member_id after {MEMBER_ID_ATTEMPTS} retries"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::memory::MemoryStore;
    use std::sync::Arc;

    fn log() -> (ObjectLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (
            ObjectLog::new(Arc::new(MemoryStore::new()), "n1", dir.path()).unwrap(),
            dir,
        )
    }

    #[test]
    fn keys_are_the_reference_ones() {
        assert_eq!(keys::node_key("dev-node-1"), "nodes/dev-node-1.json");
        assert_eq!(keys::MEMBERS, "members.json");
    }

    #[tokio::test]
    async fn member_ids_are_stable_and_sequential() {
        let (log, _d) = log();
        assert_eq!(member_id(&log, "c", "n1").await.unwrap(), 1);
        assert_eq!(member_id(&log, "c", "n2").await.unwrap(), 2);
        assert_eq!(member_id(&log, "c", "n1").await.unwrap(), 1);
        let raw = log.store.get(keys::MEMBERS).await.unwrap().data;
        assert_eq!(&raw[..], br#"{"cluster_id":"c","members":{"n1":1,"n2":2}}"#);
        let err = member_id(&log, "other", "n3").await.unwrap_err();
        assert!(err.contains("belongs to cluster"), "{err}");
    }

    #[tokio::test]
    async fn registrations_must_not_change() {
        let (log, _d) = log();
        let reg = Registration {
            node_id: "n1".into(),
            client_advertise_address: "a:2378".into(),
            peer_advertise_address: "a:2381".into(),
        };
        ensure_registration(&*log.store, &reg).await.unwrap();
        ensure_registration(&*log.store, &reg).await.unwrap();
        let raw = log.store.get("nodes/n1.json").await.unwrap().data;
        assert_eq!(
            &raw[..],
            br#"{"node_id":"n1","client_advertise_address":"a:2378","peer_advertise_address":"a:2381"}"#
        );
        let moved = Registration {
            client_advertise_address: "b:2378".into(),
            ..reg
        };
        let err = ensure_registration(&*log.store, &moved).await.unwrap_err();
        assert!(
            err.contains("already exists with different values"),
            "{err}"
        );
    }
}
