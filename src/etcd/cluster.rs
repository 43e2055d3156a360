//! The Cluster service: MemberList from the Elector's view of the members
//! (asked through the node; a node that cannot reach the Elector answers
//! Unavailable).

use std::sync::Arc;

use crate::grpc::Status;
use crate::pb::etcdserverpb::{Member, MemberListRequest, MemberListResponse};

use super::EtcdApi;

pub async fn member_list(
    api: Arc<EtcdApi>,
    _req: MemberListRequest,
) -> Result<MemberListResponse, Status> {
    let members = api.cluster.members().await.map_err(Status::unavailable)?;
    Ok(MemberListResponse {
        // etcd's cluster service leaves the revision out of its headers.
        header: Some(api.header(0)),
        members: members
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: false,
            })
            .collect(),
    })
}
