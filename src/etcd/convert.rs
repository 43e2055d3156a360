//! Between the etcd wire and netsy's own types: requests become the write
//! path's [`Txn`] (validated as etcd validates them), and store entries, watch events and txn outcomes
//! become mvccpb and etcdserverpb messages. The only place that knows both.

use std::collections::HashSet;

use bytes::Bytes;

use crate::grpc::Status;
use crate::pb::etcdserverpb::compare::{self, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request;
use crate::pb::etcdserverpb::response_op::Response;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::{event::EventType, Event as PbEvent, KeyValue};
use crate::primary::txn::{Compare, CompareResult, Op, OpResult, Put, Target, Txn, TxnOutcome};
use crate::store::{KeyRange, KvEntry};
use crate::watch::Event;

use super::{errors, range};

/// etcd's default limit on operations per txn.
pub const MAX_TXN_OPS: usize = 128;

/// The etcd view of a key: a live key, or a tombstone carrying only the key
/// and its revision (as etcd's delete events do). An entry without a value
/// (keys_only) has an empty one.
pub fn key_value(e: &KvEntry) -> KeyValue {
    if e.rev.deleted {
        return KeyValue {
            key: e.key.clone(),
            mod_revision: e.rev.revision,
            ..Default::default()
        };
    }
    KeyValue {
        key: e.key.clone(),
        create_revision: e.rev.create_revision,
        mod_revision: e.rev.revision,
        version: e.rev.version,
        value: e.value.clone().unwrap_or_default(),
        lease: e.rev.lease,
    }
}

pub fn event(e: &Event, with_prev: bool) -> PbEvent {
    PbEvent {
        r#type: if e.is_delete() {
            EventType::Delete as i32
        } else {
            EventType::Put as i32
        },
        kv: Some(key_value(&e.kv)),
        prev_kv: if with_prev {
            e.prev.as_ref().map(key_value)
        } else {
            None
        },
    }
}

/// A header carrying only the revision, as etcd's inner txn responses do.
fn revision_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// The etcd answer to a txn; the caller fills the outer header's ids.
pub fn txn_response(outcome: TxnOutcome) -> TxnResponse {
    let responses = outcome
        .responses
        .into_iter()
        .map(|r| ResponseOp {
            response: Some(match r {
                OpResult::Range { revision, result } => Response::ResponseRange(RangeResponse {
                    header: revision_header(revision),
                    kvs: result.entries.iter().map(key_value).collect(),
                    more: result.more,
                    count: result.count,
                }),
                OpResult::Put { revision, prev } => Response::ResponsePut(PutResponse {
                    header: revision_header(revision),
                    prev_kv: prev.as_ref().map(key_value),
                }),
                OpResult::Delete {
                    revision,
                    deleted,
                    prev,
                } => Response::ResponseDeleteRange(DeleteRangeResponse {
                    header: revision_header(revision),
                    deleted,
                    prev_kvs: prev.iter().map(key_value).collect(),
                }),
                // etcd leaves a nested txn's header empty.
                OpResult::Txn(nested) => Response::ResponseTxn(TxnResponse {
                    header: Some(ResponseHeader::default()),
                    ..txn_response(nested)
                }),
            }),
        })
        .collect();
    TxnResponse {
        header: revision_header(outcome.revision),
        succeeded: outcome.succeeded,
        responses,
    }
}

/// Checks a txn the way etcd does and turns it into the write path's form.
pub fn txn(req: &TxnRequest) -> Result<Txn, Status> {
    let txn = checked_txn(req, MAX_TXN_OPS)?;
    check_duplicates(&req.success)?;
    check_duplicates(&req.failure)?;
    Ok(txn)
}

/// etcd's op-count and empty-key checks; a nested txn gets what its
/// parent left of the op budget.
fn checked_txn(req: &TxnRequest, budget: usize) -> Result<Txn, Status> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > budget {
        return Err(errors::too_many_ops());
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::empty_key());
    }
    let success = branch(&req.success, budget - ops)?;
    let failure = branch(&req.failure, budget - ops)?;
    Ok(Txn {
        compare: req.compare.iter().map(compare).collect(),
        success,
        failure,
    })
}

fn branch(ops: &[RequestOp], budget: usize) -> Result<Vec<Op>, Status> {
    ops.iter()
        .map(|op| match &op.request {
            None => Err(errors::key_not_found()),
            Some(Request::RequestRange(r)) => Ok(Op::Range(range::query(r)?)),
            Some(Request::RequestPut(p)) => Ok(Op::Put(put(p)?)),
            Some(Request::RequestDeleteRange(d)) => delete(d),
            Some(Request::RequestTxn(t)) => Ok(Op::Txn(checked_txn(t, budget)?)),
        })
        .collect()
}

/// etcd's rule against writing a key twice in one txn: no two puts of a
/// key, and no put inside a range the same branch deletes; the two
/// branches of a nested txn exclude each other, so they may share keys.
fn check_duplicates(ops: &[RequestOp]) -> Result<(), Status> {
    put_keys_and_deletes(ops).map(|_| ())
}

/// A deleted range as etcd's interval check sees it: `[key, end)`, a
/// single key when `end` is empty (so a delete to `"\0"` covers nothing
/// here, exactly as in etcd).
type Deleted = (Bytes, Bytes);

fn covers(d: &Deleted, k: &[u8]) -> bool {
    if d.1.is_empty() {
        d.0 == k
    } else {
        d.0.as_ref() <= k && k < d.1.as_ref()
    }
}

fn put_keys_and_deletes(ops: &[RequestOp]) -> Result<(HashSet<Bytes>, Vec<Deleted>), Status> {
    let mut deletes: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let deleted = |deletes: &[Deleted], k: &[u8]| deletes.iter().any(|d| covers(d, k));
    let mut puts = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = put_keys_and_deletes(&t.success)?;
        let (puts_else, deletes_else) = put_keys_and_deletes(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&deletes, k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&deletes, &k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k);
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&deletes, &p.key) {
            return Err(errors::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, deletes))
}

/// A compare reads the union member that matches its target; any other
/// member (or none) compares as zero, or as an empty value.
fn compare(c: &crate::pb::etcdserverpb::Compare) -> Compare {
    use compare::CompareResult as R;
    use compare::CompareTarget as T;
    use TargetUnion as U;
    let target = match (T::try_from(c.target), &c.target_union) {
        (Ok(T::Version), Some(U::Version(v))) => Target::Version(*v),
        (Ok(T::Version), _) => Target::Version(0),
        (Ok(T::Create), Some(U::CreateRevision(v))) => Target::Create(*v),
        (Ok(T::Create), _) => Target::Create(0),
        (Ok(T::Mod), Some(U::ModRevision(v))) => Target::Mod(*v),
        (Ok(T::Mod), _) => Target::Mod(0),
        (Ok(T::Lease), Some(U::Lease(v))) => Target::Lease(*v),
        (Ok(T::Lease), _) => Target::Lease(0),
        (Ok(T::Value), Some(U::Value(v))) => Target::Value(v.clone()),
        (Ok(T::Value), _) => Target::Value(Bytes::new()),
        (Err(_), _) => Target::Unknown,
    };
    let result = match R::try_from(c.result) {
        Ok(R::Equal) => CompareResult::Equal,
        Ok(R::NotEqual) => CompareResult::NotEqual,
        Ok(R::Greater) => CompareResult::Greater,
        Ok(R::Less) => CompareResult::Less,
        Err(_) => CompareResult::Unknown,
    };
    Compare {
        range: KeyRange::new(&c.key, &c.range_end),
        target,
        result,
    }
}

/// A Put, checked as etcd checks it.
pub fn put(p: &PutRequest) -> Result<Put, Status> {
    if p.key.is_empty() {
        return Err(errors::empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(errors::value_provided());
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(Put {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

/// A DeleteRange, checked as etcd checks it.
pub fn delete(d: &DeleteRangeRequest) -> Result<Op, Status> {
    if d.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(Op::Delete {
        range: KeyRange::new(&d.key, &d.range_end),
        prev_kv: d.prev_kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::compare::{CompareResult as PbResult, CompareTarget as PbTarget};
    use crate::pb::etcdserverpb::{Compare as PbCompare, RequestOp};
    use crate::store::Rev;

    fn entry(deleted: bool, value: Option<&'static [u8]>) -> KvEntry {
        KvEntry {
            key: Bytes::from_static(b"k"),
            rev: Rev {
                revision: 9,
                create_revision: 3,
                version: 4,
                lease: 7,
                deleted,
            },
            value: value.map(Bytes::from_static),
        }
    }

    #[test]
    fn tombstones_carry_only_key_and_revision() {
        let live = key_value(&entry(false, Some(b"v")));
        assert_eq!(
            (
                live.create_revision,
                live.mod_revision,
                live.version,
                live.lease
            ),
            (3, 9, 4, 7)
        );
        assert_eq!(&live.value[..], b"v");
        let gone = key_value(&entry(true, None));
        assert_eq!(
            gone,
            KeyValue {
                key: Bytes::from_static(b"k"),
                mod_revision: 9,
                ..Default::default()
            }
        );
        assert!(key_value(&entry(false, None)).value.is_empty(), "keys_only");
    }

    #[test]
    fn a_compare_reads_only_the_union_member_of_its_target() {
        let c = |target: PbTarget, union: Option<TargetUnion>| {
            compare(&PbCompare {
                key: "k".into(),
                target: target as i32,
                result: PbResult::Equal as i32,
                target_union: union,
                ..Default::default()
            })
            .target
        };
        assert_eq!(
            c(PbTarget::Mod, Some(TargetUnion::ModRevision(5))),
            Target::Mod(5)
        );
        assert_eq!(
            c(PbTarget::Mod, Some(TargetUnion::Version(5))),
            Target::Mod(0)
        );
        assert_eq!(c(PbTarget::Value, None), Target::Value(Bytes::new()));
        let unknown = compare(&PbCompare {
            key: "k".into(),
            target: 99,
            result: 42,
            ..Default::default()
        });
        assert_eq!(
            (unknown.target, unknown.result),
            (Target::Unknown, CompareResult::Unknown)
        );
    }

    #[test]
    fn txn_checks_come_in_etcds_order() {
        let put = |key: &'static str| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        };
        let too_many = TxnRequest {
            compare: vec![PbCompare::default()],
            success: (0..129).map(|_| put("")).collect(),
            ..Default::default()
        };
        assert_eq!(txn(&too_many).unwrap_err(), errors::too_many_ops());
        let empty_compare = TxnRequest {
            compare: vec![PbCompare::default()],
            success: vec![put("")],
            ..Default::default()
        };
        assert_eq!(txn(&empty_compare).unwrap_err(), errors::empty_key());
        let empty_put = TxnRequest {
            success: vec![put("a"), put("a")],
            failure: vec![put("")],
            ..Default::default()
        };
        assert_eq!(txn(&empty_put).unwrap_err(), errors::empty_key());
        let ok = txn(&TxnRequest {
            success: vec![put("a"), put("b")],
            failure: vec![put("b")],
            ..Default::default()
        })
        .unwrap();
        assert_eq!((ok.success.len(), ok.failure.len()), (2, 1));
    }

    #[test]
    fn a_key_written_twice_in_one_branch_is_refused_as_etcd_refuses_it() {
        let put = |key: &'static str| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        };
        let delete = |key: &'static str, end: &'static str| RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        };
        let nested = |success, failure| RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        };
        let check = |success: Vec<RequestOp>| {
            txn(&TxnRequest {
                success,
                ..Default::default()
            })
            .map(|_| ())
        };
        let dup = Err(errors::duplicate_key());
        assert_eq!(check(vec![put("a"), put("a")]), dup);
        assert_eq!(check(vec![delete("a", "c"), put("b")]), dup);
        assert_eq!(check(vec![put("a"), delete("a", "")]), dup);
        assert_eq!(check(vec![put("a"), nested(vec![put("a")], vec![])]), dup);
        assert_eq!(
            check(vec![nested(vec![], vec![put("a")]), delete("a", "")]),
            dup
        );
        assert_eq!(check(vec![put("a"), put("b"), delete("c", "d")]), Ok(()));
        assert_eq!(check(vec![delete("a", "c"), delete("b", "")]), Ok(()));
        assert_eq!(
            check(vec![nested(vec![put("a")], vec![put("a")])]),
            Ok(()),
            "the branches of a nested txn exclude each other"
        );
        assert_eq!(
            check(vec![delete("a", "\0"), put("b")]),
            Ok(()),
            "etcd's interval check does not see a delete to \\0"
        );
    }
}
