//! `nodes/{node_id}.json` and `members.json` in the reference's formats.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::http::metrics::Metrics;
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
                    "discovery: node registration {key} already exists with different values"
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

/// Every registration under `nodes/`, in listing order; objects that do
/// not read or parse are skipped.
pub async fn list_registrations(store: &dyn ObjectStore) -> Result<Vec<Registration>, String> {
    let listed = store
        .list(keys::NODES)
        .await
        .map_err(|e| format!("listing {}: {e}", keys::NODES))?;
    let mut out = Vec::new();
    for object in listed.into_iter().filter(|l| l.key.ends_with(".json")) {
        match store.get(&object.key).await {
            Ok(obj) => match serde_json::from_slice::<Registration>(&obj.data) {
                Ok(reg) => out.push(reg),
                Err(e) => log::warn!("skipping {}: {e}", object.key),
            },
            Err(e) => log::warn!("skipping {}: {e}", object.key),
        }
    }
    Ok(out)
}

/// A node's registration, if it has one.
pub async fn read_registration(
    store: &dyn ObjectStore,
    node_id: &str,
) -> Result<Option<Registration>, String> {
    let key = keys::node_key(node_id);
    match store.get(&key).await {
        Ok(obj) => serde_json::from_slice(&obj.data)
            .map(Some)
            .map_err(|e| format!("{key} is not valid: {e}")),
        Err(ObjError::NotFound(_)) => Ok(None),
        Err(e) => Err(format!("reading {key}: {e}")),
    }
}

/// Removes a node's registration (a missing one counts as removed).
pub async fn delete_registration(store: &dyn ObjectStore, node_id: &str) -> Result<(), String> {
    let key = keys::node_key(node_id);
    match store.delete(&key).await {
        Ok(()) | Err(ObjError::NotFound(_)) => Ok(()),
        Err(e) => Err(format!("deleting {key}: {e}")),
    }
}

/// The member ids of `node_ids` from `members.json`, allocating max + 1
/// (first id 1) to each that has none, with conditional writes retried up
/// to 5 times (`netsy_retries_total{operation="node_registration"}`). Ids
/// are never removed, so a node that comes back keeps its id. When the file
/// does not exist yet this is the first Elector of a new bucket:
/// `bootstrap.netsy` is promoted first, then the file is created.
pub async fn allocate(
    log: &ObjectLog,
    cluster_id: &str,
    node_ids: &[String],
    metrics: Option<&Metrics>,
) -> Result<BTreeMap<String, u64>, String> {
    let store = &*log.store;
    for attempt in 0..MEMBER_ID_ATTEMPTS {
        if attempt > 0 {
            if let Some(m) = metrics {
                m.count_retry("node_registration");
            }
        }
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
        let added = assign(&mut members, node_ids)?;
        if added == 0 && condition != Condition::IfAbsent {
            return Ok(pick(&members, node_ids));
        }
        let body =
            serde_json::to_vec(&members).map_err(|e| format!("encoding {}: {e}", keys::MEMBERS))?;
        match store.put(keys::MEMBERS, Bytes::from(body), condition).await {
            Ok(_) => return Ok(pick(&members, node_ids)),
            Err(ObjError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(format!("writing {}: {e}", keys::MEMBERS)),
        }
    }
    Err(format!(
        "failed to allocate member_id after {MEMBER_ID_ATTEMPTS} retries"
    ))
}

/// Gives each of `node_ids` without a member id the next one (max + 1,
/// first id 1); returns how many were added. An id of u64::MAX already in
/// the file leaves none to give.
pub fn assign(members: &mut Members, node_ids: &[String]) -> Result<usize, String> {
    let mut added = 0;
    for id in node_ids {
        if members.members.contains_key(id) {
            continue;
        }
        let max = members.members.values().max().copied().unwrap_or(0);
        let next = max.checked_add(1).ok_or_else(|| {
            format!(
                "{} holds member id {max}, the largest there is: no id is left for {id}",
                keys::MEMBERS
            )
        })?;
        members.members.insert(id.clone(), next);
        log::info!("member id {next} allocated to {id}");
        added += 1;
    }
    Ok(added)
}

/// The member ids of those of `node_ids` that have one.
pub fn pick(members: &Members, node_ids: &[String]) -> BTreeMap<String, u64> {
    node_ids
        .iter()
        .filter_map(|id| members.members.get(id).map(|m| (id.clone(), *m)))
        .collect()
}

/// This node's etcd member id (see [`allocate`]).
pub async fn member_id(log: &ObjectLog, cluster_id: &str, node_id: &str) -> Result<u64, String> {
    let ids = allocate(log, cluster_id, &[node_id.to_string()], None).await?;
    ids.get(node_id)
        .copied()
        .ok_or_else(|| format!("no member id for {node_id}"))
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
    async fn the_largest_id_in_members_json_leaves_none_to_give() {
        let (log, _d) = log();
        let full = br#"{"cluster_id":"c","members":{"n1":18446744073709551615}}"#;
        log.store
            .put(keys::MEMBERS, Bytes::from_static(full), Condition::None)
            .await
            .unwrap();
        assert_eq!(member_id(&log, "c", "n1").await.unwrap(), u64::MAX);
        let err = member_id(&log, "c", "n2").await.unwrap_err();
        assert!(err.contains("no id is left for n2"), "{err}");
        let raw = log.store.get(keys::MEMBERS).await.unwrap().data;
        assert_eq!(&raw[..], full, "nothing written");
    }

    #[tokio::test]
    async fn several_ids_at_once_and_registrations_listed() {
        let (log, _d) = log();
        let names = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let first = allocate(&log, "c", &names(&["n1", "n2"]), None)
            .await
            .unwrap();
        assert_eq!(
            first.into_iter().collect::<Vec<_>>(),
            [("n1".into(), 1), ("n2".into(), 2)]
        );
        let again = allocate(&log, "c", &names(&["n3", "n1"]), None)
            .await
            .unwrap();
        assert_eq!((again["n1"], again["n3"]), (1, 3), "kept, and the next id");
        assert!(allocate(&log, "c", &[], None).await.unwrap().is_empty());

        for id in ["a", "b"] {
            let reg = Registration {
                node_id: id.into(),
                client_advertise_address: format!("{id}:2378"),
                peer_advertise_address: format!("{id}:2381"),
            };
            ensure_registration(&*log.store, &reg).await.unwrap();
        }
        log.store
            .put("nodes/junk.json", Bytes::from_static(b"{"), Condition::None)
            .await
            .unwrap();
        let listed = list_registrations(&*log.store).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|r| r.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "the damaged one is skipped");
        assert_eq!(
            read_registration(&*log.store, "a")
                .await
                .unwrap()
                .unwrap()
                .peer_advertise_address,
            "a:2381"
        );
        delete_registration(&*log.store, "a").await.unwrap();
        delete_registration(&*log.store, "a").await.unwrap();
        assert!(read_registration(&*log.store, "a").await.unwrap().is_none());
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
