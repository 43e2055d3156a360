//! The Cluster service: MemberList from this node's view of the members.

use std::sync::Arc;

use crate::grpc::Status;
use crate::pb::etcdserverpb::{Member, MemberListRequest, MemberListResponse};

use super::EtcdApi;

pub async fn member_list(
    api: Arc<EtcdApi>,
    _req: MemberListRequest,
) -> Result<MemberListResponse, Status> {
    let id = &api.identity;
    Ok(MemberListResponse {
        // etcd's cluster service leaves the revision out of its headers.
        header: Some(api.header(0)),
        members: vec![Member {
            id: id.member_id,
            name: id.name.clone(),
            peer_ur_ls: id.peer_urls.clone(),
            client_ur_ls: id.client_urls.clone(),
            is_learner: false,
        }],
    })
}
