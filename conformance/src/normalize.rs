//! Responses → JSON with what legitimately differs between etcd and netsy
//! taken out: cluster and member ids, raft fields, database sizes, the
//! version string, timing-driven progress notifications. Lease ids, random
//! on both sides, become the names the scenario gave them. A lease's
//! remaining TTL depends on the clock and becomes a band (`remaining_ttl`);
//! lists whose order the server does not fix (a lease's keys, the leases)
//! are sorted.

use std::collections::HashMap;

use serde_json::{json, Value};

use netsy::grpc::Status;
use netsy::pb::etcdserverpb::{
    response_op, AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    MemberListResponse, PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse,
    WatchResponse,
};
use netsy::pb::mvccpb::{event::EventType, Event, KeyValue};

use crate::json::show;

/// Lease id → the name a scenario gave it.
pub type LeaseNames = HashMap<i64, String>;

pub fn error(s: &Status) -> Value {
    json!({"error": {"code": s.code.name(), "message": s.message}})
}

fn header(h: &Option<ResponseHeader>) -> Value {
    json!({"revision": h.as_ref().map_or(0, |h| h.revision)})
}

fn lease(id: i64, names: &LeaseNames) -> Value {
    match names.get(&id) {
        Some(n) => Value::String(format!("${n}")),
        None => json!(id),
    }
}

pub fn kv(kv: &KeyValue, names: &LeaseNames) -> Value {
    json!({
        "key": show(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": show(&kv.value),
        "lease": lease(kv.lease, names),
    })
}

pub fn range(r: &RangeResponse, names: &LeaseNames) -> Value {
    json!({
        "header": header(&r.header),
        "kvs": r.kvs.iter().map(|k| kv(k, names)).collect::<Vec<_>>(),
        "more": r.more,
        "count": r.count,
    })
}

pub fn put(r: &PutResponse, names: &LeaseNames) -> Value {
    json!({"header": header(&r.header), "prev_kv": r.prev_kv.as_ref().map(|k| kv(k, names))})
}

pub fn delete(r: &DeleteRangeResponse, names: &LeaseNames) -> Value {
    json!({
        "header": header(&r.header),
        "deleted": r.deleted,
        "prev_kvs": r.prev_kvs.iter().map(|k| kv(k, names)).collect::<Vec<_>>(),
    })
}

pub fn txn(r: &TxnResponse, names: &LeaseNames) -> Value {
    let responses: Vec<Value> = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(response_op::Response::ResponseRange(x)) => json!({"range": range(x, names)}),
            Some(response_op::Response::ResponsePut(x)) => json!({"put": put(x, names)}),
            Some(response_op::Response::ResponseDeleteRange(x)) => {
                json!({"delete": delete(x, names)})
            }
            Some(response_op::Response::ResponseTxn(x)) => json!({"txn": txn(x, names)}),
            None => json!({}),
        })
        .collect();
    json!({"header": header(&r.header), "succeeded": r.succeeded, "responses": responses})
}

pub fn compact(r: &CompactionResponse) -> Value {
    json!({"header": header(&r.header)})
}

pub fn lease_grant(r: &LeaseGrantResponse, names: &LeaseNames) -> Value {
    json!({"header": header(&r.header), "id": lease(r.id, names), "ttl": r.ttl, "error": r.error})
}

pub fn lease_revoke(r: &LeaseRevokeResponse) -> Value {
    json!({"header": header(&r.header)})
}

/// The TTL a keep-alive answers is the granted TTL (0 for an unknown
/// lease): exact.
pub fn lease_keep_alive(r: &LeaseKeepAliveResponse, names: &LeaseNames) -> Value {
    json!({"header": header(&r.header), "id": lease(r.id, names), "ttl": r.ttl})
}

/// What a remaining TTL within `[granted - 3, granted]` and above 0
/// becomes: the seconds left depend on when the request arrived.
pub const TTL_BAND: &str = "in [granted-3, granted], > 0";

/// A lease's remaining TTL: -1 (no such lease) as is, a value in the band
/// as `TTL_BAND`, anything else as is (so it differs).
pub fn remaining_ttl(ttl: i64, granted: i64) -> Value {
    if ttl > 0 && ttl <= granted && ttl >= granted - 3 {
        json!(TTL_BAND)
    } else {
        json!(ttl)
    }
}

/// The attached keys sorted: etcd lists them in Go map order.
pub fn lease_time_to_live(r: &LeaseTimeToLiveResponse, names: &LeaseNames) -> Value {
    let mut keys: Vec<&bytes::Bytes> = r.keys.iter().collect();
    keys.sort();
    json!({
        "header": header(&r.header),
        "id": lease(r.id, names),
        "ttl": remaining_ttl(r.ttl, r.granted_ttl),
        "granted_ttl": r.granted_ttl,
        "keys": keys.iter().map(|k| show(k)).collect::<Vec<_>>(),
    })
}

/// The leases sorted: named ones (`"$L1"`) by name, then unnamed ids by
/// value (etcd lists them in expiry order).
pub fn lease_leases(r: &LeaseLeasesResponse, names: &LeaseNames) -> Value {
    let mut leases: Vec<Value> = r.leases.iter().map(|l| lease(l.id, names)).collect();
    leases.sort_by_key(|l| match l {
        Value::String(name) => (0, name.clone(), 0),
        other => (1, String::new(), other.as_i64().unwrap_or(0)),
    });
    json!({"header": header(&r.header), "leases": leases})
}

pub fn status(r: &StatusResponse) -> Value {
    // Version, sizes, leader and raft fields differ by design.
    json!({"header": header(&r.header), "errors": r.errors, "is_learner": r.is_learner, "has_leader": r.leader != 0})
}

pub fn alarm(r: &AlarmResponse) -> Value {
    json!({"header": header(&r.header), "alarms": r.alarms.iter().map(|a| a.alarm).collect::<Vec<_>>()})
}

pub fn member_list(r: &MemberListResponse) -> Value {
    json!({
        "header": header(&r.header),
        "members": r.members.iter().map(|m| json!({"is_learner": m.is_learner, "has_client_urls": !m.client_ur_ls.is_empty()})).collect::<Vec<_>>(),
    })
}

fn event(watch_id: i64, e: &Event, names: &LeaseNames) -> Value {
    let kind = if e.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    json!({
        "watch_id": watch_id,
        "type": kind,
        "kv": e.kv.as_ref().map(|k| kv(k, names)),
        "prev_kv": e.prev_kv.as_ref().map(|k| kv(k, names)),
    })
}

/// One watch response as comparable items: events one by one (servers may
/// batch them differently), created/canceled notices, and answers to
/// progress requests. Periodic progress notifications depend on timing and
/// are dropped.
pub fn watch_items(r: &WatchResponse, names: &LeaseNames) -> Vec<Value> {
    let revision = r.header.as_ref().map_or(0, |h| h.revision);
    if r.created {
        let mut v = json!({"created": true, "watch_id": r.watch_id, "revision": revision});
        if r.canceled {
            v["canceled"] = json!(true);
            v["cancel_reason"] = json!(r.cancel_reason);
        }
        return vec![v];
    }
    if r.canceled {
        return vec![json!({
            "canceled": true,
            "watch_id": r.watch_id,
            "compact_revision": r.compact_revision,
            "cancel_reason": r.cancel_reason,
            "revision": revision,
        })];
    }
    if r.events.is_empty() {
        if r.watch_id == -1 {
            return vec![json!({"progress": true, "watch_id": -1, "revision": revision})];
        }
        return vec![];
    }
    r.events
        .iter()
        .map(|e| event(r.watch_id, e, names))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netsy::pb::etcdserverpb::LeaseStatus;

    #[test]
    fn remaining_ttl_is_a_band() {
        assert_eq!(remaining_ttl(60, 60), json!(TTL_BAND));
        assert_eq!(remaining_ttl(57, 60), json!(TTL_BAND));
        assert_eq!(remaining_ttl(56, 60), json!(56));
        assert_eq!(remaining_ttl(61, 60), json!(61));
        assert_eq!(remaining_ttl(-1, 0), json!(-1));
        assert_eq!(remaining_ttl(0, 2), json!(0));
        assert_eq!(remaining_ttl(1, 2), json!(TTL_BAND));
    }

    #[test]
    fn lease_lists_and_keys_are_sorted() {
        let names: LeaseNames = [(7, "L2".to_string()), (9, "L1".to_string())].into();
        let r = LeaseLeasesResponse {
            header: None,
            leases: [12345, 7, 9, 5].map(|id| LeaseStatus { id }).to_vec(),
        };
        assert_eq!(
            lease_leases(&r, &names)["leases"],
            json!(["$L1", "$L2", 5, 12345])
        );
        let r = LeaseTimeToLiveResponse {
            id: 9,
            ttl: 59,
            granted_ttl: 60,
            keys: vec!["b".into(), "a".into()],
            ..Default::default()
        };
        assert_eq!(
            lease_time_to_live(&r, &names),
            json!({"header": {"revision": 0}, "id": "$L1", "ttl": TTL_BAND, "granted_ttl": 60, "keys": ["a", "b"]})
        );
    }
}
