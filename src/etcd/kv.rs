//! The KV service: Range is served from the local store; Put, DeleteRange
//! and Txn go through the writer; Compact asks the writer to compact.

use std::sync::Arc;

use prost::Message;

use crate::grpc::Status;
use crate::pb::etcdserverpb::response_op::Response;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::primary::txn::Txn;
use crate::store::query::{RangeQuery, RangeResult};
use crate::store::{query, KvEntry, Store};

use super::convert::{self, key_value};
use super::errors::{self, from_store, from_write};
use super::forward::{self, forward};
use super::{range, EtcdApi, MAX_REQUEST_BYTES};

const KV: &str = "/etcdserverpb.KV/";

/// Refuses writes etcd would refuse for size (its limit applies to the
/// request as proposed, a few bytes more than the request itself).
pub fn check_size<M: Message>(req: &M) -> Result<(), Status> {
    const PROPOSAL_OVERHEAD: usize = 16;
    if req.encoded_len() + PROPOSAL_OVERHEAD > MAX_REQUEST_BYTES {
        return Err(errors::request_too_large());
    }
    Ok(())
}

pub async fn range(api: Arc<EtcdApi>, req: RangeRequest) -> Result<RangeResponse, Status> {
    let q = range::query(&req)?;
    if !req.serializable {
        linearizable(&api).await?;
    }
    let (result, committed) = read_local(&api.store, &q)?;
    Ok(RangeResponse {
        header: Some(api.header(committed)),
        kvs: result.entries.iter().map(key_value).collect(),
        more: result.more,
        count: result.count,
    })
}

/// Makes this node's data fit for a linearizable read: on a replica, apply
/// as far as the Primary has committed (read index); on a cluster member
/// with no other Primary, only as the active Primary — a node whose Primary is gone, or that is still
/// catching up with the bucket to take over, may miss acknowledged writes
/// (the fault suite caught one reading revision 57 after 58 was
/// acknowledged), so it waits a little for a Primary like a write would.
async fn linearizable(api: &EtcdApi) -> Result<(), Status> {
    // A replica's read index asks here: the answer's revision is what the
    // replica waits for, so it must be a Primary's that has caught up with
    // the bucket (a starting one has not; it once answered a revision below
    // one an earlier Primary had acknowledged).
    if api.forwarded_here {
        return api.writer.writable().await.map_err(|e| {
            Status::unavailable(format!(
                "netsy: the Primary cannot confirm its latest revision yet: {e}"
            ))
        });
    }
    // A lone node is the only writer: its own data is always the latest.
    if api.forwarding.is_none() {
        return Ok(());
    }
    if api.primary().is_none() {
        let local = api.writer.writable().await;
        if local.is_ok() {
            return Ok(());
        }
        if api.primary().is_none() {
            return local.map_err(from_write);
        }
    }
    if let Some(primary) = api.primary() {
        let index = api
            .read_index
            .primary_committed(primary, api.metrics.clone())
            .await?;
        forward::applied(api.hub.subscribe(), index).await?;
    }
    Ok(())
}

/// Answers a checked Range query from this node's store; also returns the
/// committed revision the answer was read under.
pub fn read_local(store: &Store, q: &RangeQuery) -> Result<(RangeResult, i64), Status> {
    let (selection, committed) = {
        let index = store.index();
        // Read under the index lock: compaction trims the index and raises
        // the compaction revision atomically.
        let committed = store.committed_revision();
        let at = query::read_revision(q.revision, committed, store.compacted_revision())
            .map_err(from_store)?;
        let keys = index.scan(&q.range, at);
        (
            query::select(q, keys.map(|e| KvEntry::from_entry(&e))),
            committed,
        )
    };
    let result = query::finish(q, selection, |e| store.load_values(e)).map_err(from_store)?;
    Ok((result, committed))
}

/// Commits a txn and answers it as etcd would.
async fn commit(api: &EtcdApi, txn: Txn) -> Result<TxnResponse, Status> {
    let outcome = api.writer.txn(txn).await.map_err(from_write)?;
    Ok(convert::txn_response(outcome))
}

pub async fn txn(api: Arc<EtcdApi>, req: TxnRequest) -> Result<TxnResponse, Status> {
    check_size(&req)?;
    let txn = convert::txn(&req)?;
    if let Some(primary) = api.primary() {
        let resp = forward(&api.metrics, &primary, "txn", &format!("{KV}Txn"), &req).await;
        return resp.map(|mut r: TxnResponse| {
            api.fill(&mut r.header);
            r
        });
    }
    let mut resp = commit(&api, txn).await?;
    api.fill(&mut resp.header);
    Ok(resp)
}

pub async fn put(api: Arc<EtcdApi>, req: PutRequest) -> Result<PutResponse, Status> {
    check_size(&req)?;
    let put = convert::put(&req)?;
    if let Some(primary) = api.primary() {
        let resp = forward(&api.metrics, &primary, "put", &format!("{KV}Put"), &req).await;
        return resp.map(|mut r: PutResponse| {
            api.fill(&mut r.header);
            r
        });
    }
    let resp = commit(&api, Txn::put(put)).await?;
    match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(Response::ResponsePut(mut put)) => {
            api.fill(&mut put.header);
            Ok(put)
        }
        _ => Err(Status::internal("put produced no put response")),
    }
}

pub async fn delete_range(
    api: Arc<EtcdApi>,
    req: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Status> {
    check_size(&req)?;
    let txn = Txn {
        success: vec![convert::delete(&req)?],
        ..Txn::default()
    };
    if let Some(primary) = api.primary() {
        let path = format!("{KV}DeleteRange");
        let resp = forward(&api.metrics, &primary, "delete", &path, &req).await;
        return resp.map(|mut r: DeleteRangeResponse| {
            api.fill(&mut r.header);
            r
        });
    }
    let resp = commit(&api, txn).await?;
    match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(Response::ResponseDeleteRange(mut del)) => {
            api.fill(&mut del.header);
            Ok(del)
        }
        _ => Err(Status::internal("delete produced no delete response")),
    }
}

pub async fn compact(
    api: Arc<EtcdApi>,
    req: CompactionRequest,
) -> Result<CompactionResponse, Status> {
    if let Some(primary) = api.primary() {
        let path = format!("{KV}Compact");
        let resp = forward(&api.metrics, &primary, "compaction", &path, &req).await;
        return resp.map(|mut r: CompactionResponse| {
            api.fill(&mut r.header);
            r
        });
    }
    api.writer.compact(req.revision).await.map_err(from_write)?;
    Ok(CompactionResponse {
        header: Some(api.header(api.store.committed_revision())),
    })
}
