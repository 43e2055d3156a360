//! The Maintenance service: Status and Alarm reflect this node's health,
//! Defragment and HashKV act on its local database; plus the standard gRPC
//! health check.

use std::sync::Arc;

use crate::grpc::{RequestContext, Status};
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, StatusRequest, StatusResponse,
};

use super::{EtcdApi, ETCD_VERSION};

pub async fn status(api: Arc<EtcdApi>, _req: StatusRequest) -> Result<StatusResponse, Status> {
    let (db_size, db_size_in_use) = api
        .store
        .db_size()
        .map_err(|e| Status::unavailable(format!("error getting db size: {e}")))?;
    let errors = if api.health.is_healthy() {
        vec![]
    } else {
        vec![format!("health state: {}", api.health.health())]
    };
    // No raft: the committed revision stands in for both indexes, so
    // `endpoint status` shows how far each member is behind.
    let committed = api.store.committed_revision();
    Ok(StatusResponse {
        header: Some(api.header(committed)),
        version: ETCD_VERSION.to_string(),
        db_size,
        leader: api.cluster.leader(),
        raft_index: committed as u64,
        raft_term: 0,
        raft_applied_index: committed as u64,
        errors,
        db_size_in_use,
        is_learner: false,
    })
}

/// Runs on this node only, as etcd's does on the member it is sent to.
pub async fn defragment(
    api: Arc<EtcdApi>,
    _req: DefragmentRequest,
) -> Result<DefragmentResponse, Status> {
    let store = api.store.clone();
    tokio::task::spawn_blocking(move || store.defragment())
        .await
        .map_err(|e| Status::internal(format!("defragment task failed: {e}")))?
        .map_err(|e| Status::internal(format!("defragment: {e}")))?;
    Ok(DefragmentResponse {
        header: Some(api.header(api.store.committed_revision())),
    })
}

/// This node's history as a checksum (not etcd's own hash: compare
/// members of one netsy cluster with each other).
pub async fn hash_kv(api: Arc<EtcdApi>, req: HashKvRequest) -> Result<HashKvResponse, Status> {
    let store = api.store.clone();
    let (hash, compact_revision, _) =
        tokio::task::spawn_blocking(move || store.hash_kv(req.revision))
            .await
            .map_err(|e| Status::internal(format!("hashkv task failed: {e}")))?
            .map_err(super::errors::from_store)?;
    Ok(HashKvResponse {
        header: Some(api.header(api.store.committed_revision())),
        hash,
        compact_revision,
    })
}

pub async fn alarm(api: Arc<EtcdApi>, req: AlarmRequest) -> Result<AlarmResponse, Status> {
    if req.action != AlarmAction::Get as i32 {
        return Err(Status::unimplemented(
            "netsy: alarms follow node health and cannot be raised or cleared",
        ));
    }
    let alarms = if api.health.is_healthy() {
        vec![]
    } else {
        vec![AlarmMember {
            member_id: api.identity.member_id,
            alarm: AlarmType::Corrupt as i32,
        }]
    };
    Ok(AlarmResponse {
        header: Some(api.header(api.store.committed_revision())),
        alarms,
    })
}

/// grpc.health.v1.HealthCheckRequest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// grpc.health.v1.HealthCheckResponse; status 1 = SERVING.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub async fn grpc_health_check(
    _req: HealthCheckRequest,
    _ctx: RequestContext,
) -> Result<HealthCheckResponse, Status> {
    Ok(HealthCheckResponse { status: 1 })
}
