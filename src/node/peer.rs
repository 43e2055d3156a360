//! The peer API this node serves (mTLS, role peer): so far the Node
//! service's GetNodeState. (Elector, Primary and forwarded writes join it
//! with cluster membership.)

use std::sync::Arc;

use crate::grpc::{unary, Router, Status};
use crate::pb::netsy::{
    ElectorState as WireElector, HealthState, NodeState, PrimaryState as WirePrimary,
};
use crate::store::Store;

use super::driver::RoleCell;
use super::role::{ElectorState, Health, PrimaryState};

/// What GetNodeState reports.
pub struct NodeView {
    pub node_id: String,
    pub role: Arc<RoleCell>,
    pub store: Arc<Store>,
    pub start_time: i64,
}

impl NodeView {
    pub fn state(&self) -> NodeState {
        let role = self.role.get();
        NodeState {
            node_id: self.node_id.clone(),
            health_state: match role.health {
                Health::Loading => HealthState::HealthLoading,
                Health::Healthy => HealthState::HealthHealthy,
                Health::Degraded => HealthState::HealthDegraded,
            } as i32,
            elector_state: match role.elector {
                ElectorState::Follower => WireElector::ElectorFollower,
                ElectorState::Leader => WireElector::ElectorLeader,
            } as i32,
            primary_state: match role.primary {
                PrimaryState::Replica => WirePrimary::PrimaryReplica,
                PrimaryState::Starting => WirePrimary::PrimaryStarting,
                PrimaryState::Active => WirePrimary::PrimaryActive,
                PrimaryState::Draining => WirePrimary::PrimaryDraining,
            } as i32,
            latest_revision: self.store.latest_revision(),
            start_time: self.start_time,
        }
    }
}

pub fn router(view: Arc<NodeView>) -> Router {
    let mut r = Router::new();
    r.add(
        "netsy.Node",
        "GetNodeState",
        unary(move |_req: (), _ctx| {
            let view = view.clone();
            async move { Ok::<NodeState, Status>(view.state()) }
        }),
    );
    r.add_unimplemented(
        "netsy.Node",
        &[
            "PushClusterState",
            "GetMinWatchRevision",
            "SendCompactionNotice",
        ],
    );
    r
}
