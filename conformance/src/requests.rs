//! Scenario JSON → etcd requests. Field names follow the protobuf fields;
//! enums are written by name; bytes as text, `{"hex"}` or `{"repeat"}`.
//! Shorthands: `"prefix": true` sets range_end to the prefix end,
//! `"from_key": true` sets it to "\0".

use std::collections::HashMap;

use serde_json::Value;

use netsy::pb::etcdserverpb::{
    compare, request_op, watch_create_request, watch_request, AlarmRequest, CompactionRequest,
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use netsy::store::keyrange::prefix_end;

use crate::json::{bytes_field, flag, int, obj, only, string, Obj};

/// Names given to lease ids in a run (`"as": "L1"` on a grant, `"$L1"` in
/// later requests).
#[derive(Debug, Default)]
pub struct Leases {
    names: HashMap<String, i64>,
    /// Resolve any name (for checking a scenario before it runs).
    lenient: bool,
}

impl Leases {
    pub fn new() -> Leases {
        Leases::default()
    }

    pub fn lenient() -> Leases {
        Leases {
            names: HashMap::new(),
            lenient: true,
        }
    }

    pub fn insert(&mut self, name: String, id: i64) {
        self.names.insert(name, id);
    }

    fn resolve(&self, name: &str) -> Option<i64> {
        self.names
            .get(name)
            .copied()
            .or(if self.lenient { Some(1) } else { None })
    }
}

fn lease(o: &Obj, key: &str, leases: &Leases) -> Result<i64, String> {
    match o.get(key) {
        None => Ok(0),
        Some(Value::String(s)) => match s.strip_prefix('$') {
            Some(name) => leases
                .resolve(name)
                .ok_or_else(|| format!("unknown lease name {s:?}")),
            None => Err(format!("{key}: a lease reference starts with $, got {s:?}")),
        },
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("{key} must be a lease id or $name, got {v}")),
    }
}

fn range_end(o: &Obj, key: &bytes::Bytes) -> Result<bytes::Bytes, String> {
    if flag(o, "prefix")? {
        return Ok(prefix_end(key).into());
    }
    if flag(o, "from_key")? {
        return Ok(bytes::Bytes::from_static(b"\0"));
    }
    bytes_field(o, "range_end")
}

fn enum_field(o: &Obj, key: &str, names: &[&str]) -> Result<i32, String> {
    match o.get(key) {
        None => Ok(0),
        Some(Value::String(s)) => names
            .iter()
            .position(|n| n == s)
            .map(|i| i as i32)
            .ok_or_else(|| format!("{key} must be one of {names:?}, got {s:?}")),
        Some(v) => v
            .as_i64()
            .map(|i| i as i32)
            .ok_or_else(|| format!("{key}: bad value {v}")),
    }
}

pub fn range(v: &Value) -> Result<RangeRequest, String> {
    let o = obj(v, "range")?;
    only(
        o,
        &[
            "key",
            "range_end",
            "prefix",
            "from_key",
            "limit",
            "revision",
            "sort_order",
            "sort_target",
            "serializable",
            "keys_only",
            "count_only",
            "min_mod_revision",
            "max_mod_revision",
            "min_create_revision",
            "max_create_revision",
        ],
        "range",
    )?;
    let key = bytes_field(o, "key")?;
    Ok(RangeRequest {
        range_end: range_end(o, &key)?,
        key,
        limit: int(o, "limit")?,
        revision: int(o, "revision")?,
        sort_order: enum_field(o, "sort_order", &["NONE", "ASCEND", "DESCEND"])?,
        sort_target: enum_field(
            o,
            "sort_target",
            &["KEY", "VERSION", "CREATE", "MOD", "VALUE"],
        )?,
        serializable: flag(o, "serializable")?,
        keys_only: flag(o, "keys_only")?,
        count_only: flag(o, "count_only")?,
        min_mod_revision: int(o, "min_mod_revision")?,
        max_mod_revision: int(o, "max_mod_revision")?,
        min_create_revision: int(o, "min_create_revision")?,
        max_create_revision: int(o, "max_create_revision")?,
    })
}

pub fn put(v: &Value, leases: &Leases) -> Result<PutRequest, String> {
    let o = obj(v, "put")?;
    only(
        o,
        &[
            "key",
            "value",
            "lease",
            "prev_kv",
            "ignore_value",
            "ignore_lease",
        ],
        "put",
    )?;
    Ok(PutRequest {
        key: bytes_field(o, "key")?,
        value: bytes_field(o, "value")?,
        lease: lease(o, "lease", leases)?,
        prev_kv: flag(o, "prev_kv")?,
        ignore_value: flag(o, "ignore_value")?,
        ignore_lease: flag(o, "ignore_lease")?,
    })
}

pub fn delete(v: &Value) -> Result<DeleteRangeRequest, String> {
    let o = obj(v, "delete")?;
    only(
        o,
        &["key", "range_end", "prefix", "from_key", "prev_kv"],
        "delete",
    )?;
    let key = bytes_field(o, "key")?;
    Ok(DeleteRangeRequest {
        range_end: range_end(o, &key)?,
        key,
        prev_kv: flag(o, "prev_kv")?,
    })
}

fn compare(v: &Value, leases: &Leases) -> Result<Compare, String> {
    use compare::TargetUnion;
    let o = obj(v, "compare")?;
    only(
        o,
        &[
            "key",
            "range_end",
            "prefix",
            "target",
            "result",
            "version",
            "create_revision",
            "mod_revision",
            "value",
            "lease",
        ],
        "compare",
    )?;
    let key = bytes_field(o, "key")?;
    let target = enum_field(o, "target", &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])?;
    let result = match string(o, "result")?.as_deref() {
        None | Some("=") | Some("EQUAL") => compare::CompareResult::Equal,
        Some(">") | Some("GREATER") => compare::CompareResult::Greater,
        Some("<") | Some("LESS") => compare::CompareResult::Less,
        Some("!=") | Some("NOT_EQUAL") => compare::CompareResult::NotEqual,
        Some(other) => return Err(format!("unknown compare result {other:?}")),
    };
    let union = if o.contains_key("version") {
        Some(TargetUnion::Version(int(o, "version")?))
    } else if o.contains_key("create_revision") {
        Some(TargetUnion::CreateRevision(int(o, "create_revision")?))
    } else if o.contains_key("mod_revision") {
        Some(TargetUnion::ModRevision(int(o, "mod_revision")?))
    } else if o.contains_key("value") {
        Some(TargetUnion::Value(bytes_field(o, "value")?))
    } else if o.contains_key("lease") {
        Some(TargetUnion::Lease(lease(o, "lease", leases)?))
    } else {
        None
    };
    Ok(Compare {
        range_end: range_end(o, &key)?,
        key,
        target,
        result: result as i32,
        target_union: union,
    })
}

fn op(v: &Value, leases: &Leases) -> Result<RequestOp, String> {
    let o = obj(v, "txn op")?;
    only(o, &["range", "put", "delete", "txn"], "txn op")?;
    let request = if let Some(r) = o.get("range") {
        Some(request_op::Request::RequestRange(range(r)?))
    } else if let Some(p) = o.get("put") {
        Some(request_op::Request::RequestPut(put(p, leases)?))
    } else if let Some(d) = o.get("delete") {
        Some(request_op::Request::RequestDeleteRange(delete(d)?))
    } else if let Some(t) = o.get("txn") {
        Some(request_op::Request::RequestTxn(txn(t, leases)?))
    } else {
        None
    };
    Ok(RequestOp { request })
}

pub fn txn(v: &Value, leases: &Leases) -> Result<TxnRequest, String> {
    let o = obj(v, "txn")?;
    only(o, &["compare", "success", "failure"], "txn")?;
    let list = |key: &str| -> Result<Vec<Value>, String> {
        match o.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(other) => Err(format!("{key} must be a list, got {other}")),
        }
    };
    Ok(TxnRequest {
        compare: list("compare")?
            .iter()
            .map(|c| compare(c, leases))
            .collect::<Result<_, _>>()?,
        success: list("success")?
            .iter()
            .map(|x| op(x, leases))
            .collect::<Result<_, _>>()?,
        failure: list("failure")?
            .iter()
            .map(|x| op(x, leases))
            .collect::<Result<_, _>>()?,
    })
}

pub fn compact(v: &Value) -> Result<CompactionRequest, String> {
    let o = obj(v, "compact")?;
    only(o, &["revision", "physical"], "compact")?;
    Ok(CompactionRequest {
        revision: int(o, "revision")?,
        physical: flag(o, "physical")?,
    })
}

pub fn lease_grant(v: &Value) -> Result<(LeaseGrantRequest, Option<String>), String> {
    let o = obj(v, "lease_grant")?;
    only(o, &["ttl", "id", "as"], "lease_grant")?;
    Ok((
        LeaseGrantRequest {
            ttl: int(o, "ttl")?,
            id: int(o, "id")?,
        },
        string(o, "as")?,
    ))
}

/// `{"id": "$L1"}` or a literal id (`{"id": 12345}`); a missing id is 0.
pub fn lease_revoke(v: &Value, leases: &Leases) -> Result<LeaseRevokeRequest, String> {
    let o = obj(v, "lease_revoke")?;
    only(o, &["id"], "lease_revoke")?;
    Ok(LeaseRevokeRequest {
        id: lease(o, "id", leases)?,
    })
}

pub fn lease_time_to_live(v: &Value, leases: &Leases) -> Result<LeaseTimeToLiveRequest, String> {
    let o = obj(v, "lease_time_to_live")?;
    only(o, &["id", "keys"], "lease_time_to_live")?;
    Ok(LeaseTimeToLiveRequest {
        id: lease(o, "id", leases)?,
        keys: flag(o, "keys")?,
    })
}

pub fn lease_leases(v: &Value) -> Result<LeaseLeasesRequest, String> {
    only(obj(v, "lease_leases")?, &[], "lease_leases")?;
    Ok(LeaseLeasesRequest {})
}

/// One message on a LeaseKeepAlive stream: `{"id": "$L1"}`, optionally
/// with `"stream": "name"` (the stream it goes on, default `default`).
pub fn lease_keep_alive(v: &Value, leases: &Leases) -> Result<LeaseKeepAliveRequest, String> {
    let o = obj(v, "lease_keep_alive")?;
    only(o, &["id", "stream"], "lease_keep_alive")?;
    string(o, "stream")?;
    Ok(LeaseKeepAliveRequest {
        id: lease(o, "id", leases)?,
    })
}

pub fn alarm(v: &Value) -> Result<AlarmRequest, String> {
    let o = obj(v, "alarm")?;
    only(o, &["action", "alarm"], "alarm")?;
    Ok(AlarmRequest {
        action: enum_field(o, "action", &["GET", "ACTIVATE", "DEACTIVATE"])?,
        member_id: 0,
        alarm: enum_field(o, "alarm", &["NONE", "NOSPACE", "CORRUPT"])?,
    })
}

/// A message on a watch stream: `{"create": {...}}`, `{"cancel": id}` or
/// `{"progress": true}`.
pub fn watch(o: &Obj) -> Result<WatchRequest, String> {
    use watch_request::RequestUnion;
    if let Some(c) = o.get("create") {
        let c = obj(c, "create")?;
        only(
            c,
            &[
                "key",
                "range_end",
                "prefix",
                "from_key",
                "start_revision",
                "progress_notify",
                "filters",
                "prev_kv",
                "watch_id",
                "fragment",
            ],
            "watch create",
        )?;
        let key = bytes_field(c, "key")?;
        let filters = match c.get("filters") {
            None => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|f| match f.as_str() {
                    Some("NOPUT") => Ok(watch_create_request::FilterType::Noput as i32),
                    Some("NODELETE") => Ok(watch_create_request::FilterType::Nodelete as i32),
                    _ => Err(format!("unknown watch filter {f}")),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("filters must be a list, got {other}")),
        };
        return Ok(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                range_end: range_end(c, &key)?,
                key,
                start_revision: int(c, "start_revision")?,
                progress_notify: flag(c, "progress_notify")?,
                filters,
                prev_kv: flag(c, "prev_kv")?,
                watch_id: int(c, "watch_id")?,
                fragment: flag(c, "fragment")?,
            })),
        });
    }
    if let Some(id) = o.get("cancel") {
        let watch_id = id.as_i64().ok_or("cancel needs a watch id")?;
        return Ok(WatchRequest {
            request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })),
        });
    }
    if o.get("progress").is_some() {
        return Ok(progress_request());
    }
    Err("a watch step sends create, cancel or progress".into())
}

/// A watch progress request (also sent by the end-of-scenario check).
pub fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    }
}
