//! The Maintenance service: Status and Alarm reflect this node's health;
//! plus the standard gRPC health check.

use std::sync::Arc;

use crate::grpc::{RequestContext, Status};
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, StatusRequest, StatusResponse,
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
