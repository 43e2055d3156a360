//! The Lease service. Grant creates a real, durable lease with a unique id.

use std::sync::Arc;

use crate::grpc::Status;
use crate::pb::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse};

use super::EtcdApi;

pub async fn grant(
    api: Arc<EtcdApi>,
    req: LeaseGrantRequest,
) -> Result<LeaseGrantResponse, Status> {
    if let Some(primary) = api.primary() {
        let path = "/etcdserverpb.Lease/LeaseGrant";
        let resp = super::forward::forward(&api.metrics, &primary, "lease", path, &req).await;
        return resp.map(|mut r: LeaseGrantResponse| {
            api.fill(&mut r.header);
            r
        });
    }
    let (id, ttl) = api
        .writer
        .lease_grant(req.id, req.ttl)
        .await
        .map_err(super::errors::from_write)?;
    Ok(LeaseGrantResponse {
        header: Some(api.header(api.store.committed_revision())),
        id,
        ttl,
        error: String::new(),
    })
}
