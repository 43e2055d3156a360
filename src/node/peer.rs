//! The peer API this node serves (mTLS, role peer): so far the Node
//! service's GetNodeState. (Elector, Primary and forwarded writes join it
//! with cluster membership.)

use std::sync::Arc;

use crate::grpc::{unary, Router, Status};
use crate::pb::netsy::{ElectorState, HealthState, NodeState, PrimaryState};
use crate::primary::WriteState;
use crate::store::Store;

use super::state::{Health, HealthCell};

/// What GetNodeState reports.
pub struct NodeView {
    pub node_id: String,
    pub health: Arc<HealthCell>,
    pub store: Arc<Store>,
    pub writes: Arc<WriteState>,
    pub start_time: i64,
}

impl NodeView {
    pub fn state(&self) -> NodeState {
        NodeState {
            node_id: self.node_id.clone(),
            health_state: match self.health.get() {
                Health::Loading => HealthState::HealthLoading,
                Health::Healthy => HealthState::HealthHealthy,
                Health::Degraded => HealthState::HealthDegraded,
            } as i32,
            // A lone node is its own Elector and Primary.
            elector_state: ElectorState::ElectorLeader as i32,
            primary_state: if self.writes.is_draining() {
                PrimaryState::PrimaryDraining
            } else {
                PrimaryState::PrimaryActive
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
