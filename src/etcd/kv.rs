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
use crate::primary::txn;
use crate::primary::view::store_status;
use crate::store::{KeyRange, KvEntry};

use super::{errors, range, EtcdApi, MAX_REQUEST_BYTES};

/// Refuses writes etcd would refuse for size (its limit applies to the
/// request as proposed, a few bytes more than the request itself).
fn check_size<M: Message>(req: &M) -> Result<(), Status> {
    const PROPOSAL_OVERHEAD: usize = 16;
    if req.encoded_len() + PROPOSAL_OVERHEAD > MAX_REQUEST_BYTES {
        return Err(errors::request_too_large());
    }
    Ok(())
}

pub async fn range(api: Arc<EtcdApi>, req: RangeRequest) -> Result<RangeResponse, Status> {
    range::validate(&req)?;
    let store = &api.store;
    let (selection, committed) = {
        let index = store.index();
        // Read under the index lock: compaction trims the index and raises
        // the compaction revision atomically.
        let committed = store.committed_revision();
        let at = range::read_revision(req.revision, committed, store.compacted_revision())?;
        let keys = index.scan(&KeyRange::new(&req.key, &req.range_end), at);
        (
            range::select(&req, keys.map(|e| KvEntry::from_entry(&e))),
            committed,
        )
    };
    let result = range::finish(&req, selection, |e| {
        store.load_values(e).map_err(store_status)
    })?;
    Ok(RangeResponse {
        header: Some(api.header(committed)),
        kvs: result.kvs,
        more: result.more,
        count: result.count,
    })
}

pub async fn txn(api: Arc<EtcdApi>, req: TxnRequest) -> Result<TxnResponse, Status> {
    check_size(&req)?;
    let mut resp = api.writer.txn(req).await?;
    api.fill(&mut resp.header);
    Ok(resp)
}

pub async fn put(api: Arc<EtcdApi>, req: PutRequest) -> Result<PutResponse, Status> {
    check_size(&req)?;
    txn::validate_put(&req)?;
    let resp = api.writer.txn(txn::put_as_txn(req)).await?;
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
    txn::validate_delete(&req)?;
    let resp = api.writer.txn(txn::delete_as_txn(req)).await?;
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
    api.writer.compact(req.revision).await?;
    Ok(CompactionResponse {
        header: Some(api.header(api.store.committed_revision())),
    })
}
