//! Evaluation of one etcd Txn against a view of the current state (pure; no
//! I/O of its own). Put and DeleteRange arrive here as one-op txns. A txn
//! may write at most one key, because each revision is one record.

use bytes::Bytes;

use crate::etcd::{errors, range};
use crate::grpc::Status;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::request_op::Request;
use crate::pb::etcdserverpb::response_op::Response;
use crate::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::store::{KeyRange, KvEntry, Record, Rev, Timestamp};

/// etcd's default limit on operations per txn.
pub const MAX_TXN_OPS: usize = 128;

/// The state a txn reads: committed data plus earlier txns of the batch.
pub trait KvView {
    /// Revision of the newest state in the view.
    fn current_revision(&self) -> i64;
    fn compacted_revision(&self) -> i64;
    /// Live keys in `range` as of `at` (<= current), ascending by key.
    fn scan(&self, range: &KeyRange, at: i64) -> Result<Vec<KvEntry>, Status>;
    /// Loads values missing from entries (older revisions).
    fn load_values(&self, entries: &mut [KvEntry]) -> Result<(), Status>;
    fn lease_exists(&self, id: i64) -> bool;
    /// Makes a write at `revision` visible to later reads of the view.
    fn stage(&mut self, key: Bytes, entry: Option<KvEntry>, revision: i64);
    /// Forgets the last staged write (its txn failed after staging).
    fn unstage(&mut self);
}

/// The single write a txn made, with the key's state before it.
#[derive(Debug)]
pub struct Write {
    pub record: Record,
    pub prev: Option<KvEntry>,
}

/// A txn's answer and its write, if any.
#[derive(Debug)]
pub struct Evaluated {
    pub response: TxnResponse,
    pub write: Option<Write>,
}

/// Checks a txn the way etcd does, plus netsy's one-write rule.
pub fn validate(req: &TxnRequest) -> Result<(), Status> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > MAX_TXN_OPS {
        return Err(errors::too_many_ops());
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for branch in [&req.success, &req.failure] {
        let mut writes = 0;
        for op in branch.iter() {
            match &op.request {
                None => return Err(errors::key_not_found()),
                Some(Request::RequestRange(r)) => range::validate(r)?,
                Some(Request::RequestPut(p)) => {
                    validate_put(p)?;
                    writes += 1;
                }
                Some(Request::RequestDeleteRange(d)) => {
                    validate_delete(d)?;
                    writes += 1;
                }
                Some(Request::RequestTxn(_)) => return Err(errors::nested_txn()),
            }
        }
        if writes > 1 {
            return Err(errors::multi_key_txn());
        }
    }
    Ok(())
}

pub fn validate_put(p: &PutRequest) -> Result<(), Status> {
    if p.key.is_empty() {
        return Err(errors::empty_key());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(errors::value_provided());
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

pub fn validate_delete(d: &DeleteRangeRequest) -> Result<(), Status> {
    if d.key.is_empty() {
        return Err(errors::empty_key());
    }
    if !KeyRange::new(&d.key, &d.range_end).is_single_key() {
        return Err(errors::multi_key_delete());
    }
    Ok(())
}

/// Evaluates a validated txn. `revision` is what its write would get.
pub fn evaluate(
    req: &TxnRequest,
    view: &mut dyn KvView,
    leader_id: &str,
) -> Result<Evaluated, Status> {
    let begin = view.current_revision();
    let mut succeeded = true;
    for c in &req.compare {
        if !compare(c, &*view, begin)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    check_ops(ops, &*view, begin)?;

    let mut write: Option<Write> = None;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let current = if write.is_some() { begin + 1 } else { begin };
        let result = match &op.request {
            Some(Request::RequestRange(r)) => {
                read_range(r, &*view, current).map(Response::ResponseRange)
            }
            Some(Request::RequestPut(p)) => put(p, view, begin + 1, leader_id).map(|(resp, w)| {
                write = Some(w);
                Response::ResponsePut(resp)
            }),
            Some(Request::RequestDeleteRange(d)) => {
                delete(d, view, begin, leader_id).map(|(resp, w)| {
                    write = w;
                    Response::ResponseDeleteRange(resp)
                })
            }
            // Rejected by validate.
            Some(Request::RequestTxn(_)) => Err(errors::nested_txn()),
            None => Err(errors::key_not_found()),
        };
        match result {
            Ok(r) => responses.push(ResponseOp { response: Some(r) }),
            Err(status) => {
                if write.is_some() {
                    view.unstage();
                }
                return Err(status);
            }
        }
    }
    let revision = if write.is_some() { begin + 1 } else { begin };
    Ok(Evaluated {
        response: TxnResponse {
            header: Some(header(revision)),
            succeeded,
            responses,
        },
        write,
    })
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

/// etcd's compare: every key in the compare's range must satisfy it; an
/// absent key compares as zero, except for VALUE, which then fails.
fn compare(c: &Compare, view: &dyn KvView, at: i64) -> Result<bool, Status> {
    let range = KeyRange::new(&c.key, &c.range_end);
    let mut entries = view.scan(&range, at)?;
    let target = CompareTarget::try_from(c.target).ok();
    if entries.is_empty() {
        if target == Some(CompareTarget::Value) {
            return Ok(false);
        }
        return Ok(compare_one(c, target, None));
    }
    if target == Some(CompareTarget::Value) {
        view.load_values(&mut entries)?;
    }
    Ok(entries.iter().all(|e| compare_one(c, target, Some(e))))
}

fn compare_one(c: &Compare, target: Option<CompareTarget>, e: Option<&KvEntry>) -> bool {
    use std::cmp::Ordering;
    let rev = e.map(|e| e.rev);
    let ord: Ordering = match target {
        Some(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            let have: &[u8] = e.and_then(|e| e.value.as_deref()).unwrap_or(&[]);
            have.cmp(want)
        }
        Some(CompareTarget::Version) => {
            let want = match c.target_union {
                Some(TargetUnion::Version(v)) => v,
                _ => 0,
            };
            rev.map_or(0, |r| r.version).cmp(&want)
        }
        Some(CompareTarget::Create) => {
            let want = match c.target_union {
                Some(TargetUnion::CreateRevision(v)) => v,
                _ => 0,
            };
            rev.map_or(0, |r| r.create_revision).cmp(&want)
        }
        Some(CompareTarget::Mod) => {
            let want = match c.target_union {
                Some(TargetUnion::ModRevision(v)) => v,
                _ => 0,
            };
            rev.map_or(0, |r| r.revision).cmp(&want)
        }
        Some(CompareTarget::Lease) => {
            let want = match c.target_union {
                Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            };
            rev.map_or(0, |r| r.lease).cmp(&want)
        }
        None => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => false,
    }
}

/// etcd's pre-execution checks of the chosen branch: read revisions, leases
/// and the keys that ignore_value/ignore_lease need.
fn check_ops(ops: &[RequestOp], view: &dyn KvView, begin: i64) -> Result<(), Status> {
    for op in ops {
        match &op.request {
            Some(Request::RequestRange(r)) => {
                range::read_revision(r.revision, begin, view.compacted_revision())?;
            }
            Some(Request::RequestPut(p)) => {
                if (p.ignore_value || p.ignore_lease) && latest(view, &p.key, begin)?.is_none() {
                    return Err(errors::key_not_found());
                }
                if p.lease != 0 && !view.lease_exists(p.lease) {
                    return Err(errors::lease_not_found());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn latest(view: &dyn KvView, key: &Bytes, at: i64) -> Result<Option<KvEntry>, Status> {
    let mut found = view.scan(&KeyRange::Single(key.clone()), at)?;
    match found.pop() {
        Some(mut e) => {
            view.load_values(std::slice::from_mut(&mut e))?;
            Ok(Some(e))
        }
        None => Ok(None),
    }
}

/// A Range op inside a txn (or a plain Range evaluated in a batch).
fn read_range(r: &RangeRequest, view: &dyn KvView, current: i64) -> Result<RangeResponse, Status> {
    let at = range::read_revision(r.revision, current, view.compacted_revision())?;
    let keys = view.scan(&KeyRange::new(&r.key, &r.range_end), at)?;
    let selection = range::select(r, keys.into_iter());
    let result = range::finish(r, selection, |e| view.load_values(e))?;
    Ok(RangeResponse {
        header: Some(header(current)),
        kvs: result.kvs,
        more: result.more,
        count: result.count,
    })
}

fn put(
    p: &PutRequest,
    view: &mut dyn KvView,
    revision: i64,
    leader_id: &str,
) -> Result<(PutResponse, Write), Status> {
    let prev = latest(&*view, &p.key, revision - 1)?;
    let value = if p.ignore_value {
        prev.as_ref()
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    } else {
        p.value.clone()
    };
    let lease = if p.ignore_lease {
        prev.as_ref().map_or(0, |e| e.rev.lease)
    } else {
        p.lease
    };
    let (created, create_revision, prev_revision, version) = match &prev {
        Some(e) => (
            false,
            e.rev.create_revision,
            e.rev.revision,
            e.rev.version + 1,
        ),
        None => (true, revision, 0, 1),
    };
    let record = Record {
        revision,
        key: p.key.clone(),
        created,
        deleted: false,
        create_revision,
        prev_revision,
        version,
        lease,
        dek: 0,
        value: Some(value.clone()),
        created_at: Timestamp::now(),
        compacted_at: None,
        leader_id: leader_id.to_string(),
        replicated_at: None,
    };
    view.stage(
        p.key.clone(),
        Some(KvEntry {
            key: p.key.clone(),
            rev: Rev {
                revision,
                create_revision,
                version,
                lease,
                deleted: false,
            },
            value: Some(value),
        }),
        revision,
    );
    let response = PutResponse {
        header: Some(header(revision)),
        prev_kv: if p.prev_kv {
            prev.as_ref().map(KvEntry::to_key_value)
        } else {
            None
        },
    };
    Ok((response, Write { record, prev }))
}

fn delete(
    d: &DeleteRangeRequest,
    view: &mut dyn KvView,
    begin: i64,
    leader_id: &str,
) -> Result<(DeleteRangeResponse, Option<Write>), Status> {
    let Some(prev) = latest(&*view, &d.key, begin)? else {
        let response = DeleteRangeResponse {
            header: Some(header(begin)),
            deleted: 0,
            prev_kvs: vec![],
        };
        return Ok((response, None));
    };
    let revision = begin + 1;
    let record = Record {
        revision,
        key: prev.key.clone(),
        created: false,
        deleted: true,
        create_revision: prev.rev.create_revision,
        prev_revision: prev.rev.revision,
        version: 0,
        lease: 0,
        dek: 0,
        value: None,
        created_at: Timestamp::now(),
        compacted_at: None,
        leader_id: leader_id.to_string(),
        replicated_at: None,
    };
    view.stage(prev.key.clone(), None, revision);
    let response = DeleteRangeResponse {
        header: Some(header(revision)),
        deleted: 1,
        prev_kvs: if d.prev_kv {
            vec![prev.to_key_value()]
        } else {
            vec![]
        },
    };
    Ok((
        response,
        Some(Write {
            record,
            prev: Some(prev),
        }),
    ))
}

/// Wraps a Put as the one-op txn it is evaluated as.
pub fn put_as_txn(p: PutRequest) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestPut(p)),
        }],
        failure: vec![],
    }
}

/// Wraps a DeleteRange as the one-op txn it is evaluated as.
pub fn delete_as_txn(d: DeleteRangeRequest) -> TxnRequest {
    TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestDeleteRange(d)),
        }],
        failure: vec![],
    }
}
