//! The peer API this node serves (mTLS, role peer): the Node service
//! (GetNodeState, PushClusterState, and once loaded the compaction
//! protocol's GetMinWatchRevision and SendCompactionNotice) on every node,
//! the Elector service, which answers only while this node holds the lock,
//! the Primary service (Follow, SendHeartbeat) and the etcd write and read
//! methods replicas forward, both bound once the node has loaded. Errors
//! become the reference's statuses here, at the edge.

use std::sync::{Arc, OnceLock};

use crate::election::cluster_state::{ClusterState, Refused};
use crate::election::elector::{Elector, ElectorError};
use crate::grpc::{bidi_streaming, unary, Call, Handler, RequestContext, Router, Status};
use crate::pb::netsy::{
    ClusterState as WireClusterState, CompactionNotice, CompactionNoticeResponse,
    DeregisterNodeRequest, GetMemberListRequest, MinWatchRevisionResponse, NodeState,
    PrimaryMessage, RegisterNodeRequest, ReplicaMessage,
};
use crate::replication::PrimaryService;
use crate::watch::WatchHub;

use super::cluster::Cluster;
use super::status::NodeView;

/// The caller's node id, from its verified peer certificate (the peer
/// listener admits only peer certificates, so a missing one is refused).
fn caller(ctx: &RequestContext) -> Result<String, Status> {
    ctx.identity
        .as_deref()
        .and_then(|uri| crate::tls::identity::parse_uri(uri).ok())
        .map(|id| id.name)
        .ok_or_else(|| Status::permission_denied("the peer certificate names no node"))
}

/// Only the Elector a state names may push it.
fn check_pusher(caller: &str, state: &ClusterState) -> Result<(), Status> {
    if caller != state.elector.node_id {
        return Err(Status::permission_denied(format!(
            "a cluster state naming {} as the elector was pushed by {caller}",
            state.elector.node_id
        )));
    }
    Ok(())
}

fn elector_status(e: ElectorError) -> Status {
    let text = e.to_string();
    match e {
        ElectorError::NotElector => Status::failed_precondition(text),
        ElectorError::Bootstrapping => Status::unavailable(text),
        ElectorError::InvalidArgument(_) => Status::invalid_argument(text),
        ElectorError::WrongIdentity(_) => Status::permission_denied(text),
        ElectorError::NotRegistered(_) => Status::not_found(text),
        ElectorError::Internal(_) => Status::internal(text),
    }
}

fn push_status(e: Refused) -> Status {
    match e {
        Refused::SplitBrain { .. } => {
            log::error!("{e}");
            Status::failed_precondition(e.to_string())
        }
        other => Status::invalid_argument(other.to_string()),
    }
}

/// What the peer API serves once the node has loaded.
#[derive(Default)]
pub struct LateServices {
    pub primary: OnceLock<Arc<PrimaryService>>,
    /// The etcd methods a replica forwards to the Primary (served without
    /// forwarding again).
    pub etcd: OnceLock<Router>,
    /// This node's watches, which the compaction protocol asks about.
    pub hub: OnceLock<Arc<WatchHub>>,
}

/// The etcd methods served on the peer API.
const FORWARDED: [(&str, &str); 10] = [
    ("etcdserverpb.KV", "Range"),
    ("etcdserverpb.KV", "Put"),
    ("etcdserverpb.KV", "DeleteRange"),
    ("etcdserverpb.KV", "Txn"),
    ("etcdserverpb.KV", "Compact"),
    ("etcdserverpb.Lease", "LeaseGrant"),
    ("etcdserverpb.Lease", "LeaseRevoke"),
    ("etcdserverpb.Lease", "LeaseKeepAlive"),
    ("etcdserverpb.Lease", "LeaseTimeToLive"),
    ("etcdserverpb.Lease", "LeaseLeases"),
];

fn still_loading() -> Status {
    Status::unavailable("this node is still loading")
}

/// A handler that hands the call to the late-bound etcd router.
fn forwarded(late: Arc<LateServices>, path: String) -> Handler {
    Arc::new(move |call: Call| {
        let late = late.clone();
        let path = path.clone();
        Box::pin(async move {
            match late.etcd.get().map(|r| r.lookup(&path)) {
                Some(Ok(handler)) => handler(call).await,
                Some(Err(status)) => call.outbound.finish(Err(status)),
                None => call.outbound.finish(Err(still_loading())),
            }
        })
    })
}

fn add_primary(r: &mut Router, late: &Arc<LateServices>) {
    const PRIMARY: &str = "netsy.Primary";
    let l = late.clone();
    r.add(
        PRIMARY,
        "Follow",
        bidi_streaming(
            move |requests: crate::grpc::Requests<ReplicaMessage>,
                  ctx: RequestContext,
                  out: crate::grpc::Responses<PrimaryMessage>| {
                let l = l.clone();
                async move {
                    let node = caller(&ctx).map_err(|e| {
                        Status::unauthenticated(format!("failed to identify peer: {}", e.message))
                    })?;
                    let Some(service) = l.primary.get().cloned() else {
                        return Err(still_loading());
                    };
                    service.follow(node, requests, out).await
                }
            },
        ),
    );
    let l = late.clone();
    r.add(
        PRIMARY,
        "SendHeartbeat",
        unary(move |req: NodeState, _ctx| {
            let l = l.clone();
            async move {
                let service = l.primary.get().ok_or_else(still_loading)?;
                service.heartbeat(&req)
            }
        }),
    );
}

fn add_compaction(r: &mut Router, late: &Arc<LateServices>) {
    const NODE: &str = "netsy.Node";
    let l = late.clone();
    r.add(
        NODE,
        "GetMinWatchRevision",
        unary(move |_req: (), _ctx| {
            let l = l.clone();
            async move {
                let hub = l.hub.get().ok_or_else(still_loading)?;
                Ok::<MinWatchRevisionResponse, Status>(super::compaction::min_watch_revision(hub))
            }
        }),
    );
    let l = late.clone();
    r.add(
        NODE,
        "SendCompactionNotice",
        unary(move |req: CompactionNotice, _ctx| {
            let l = l.clone();
            async move {
                let hub = l.hub.get().ok_or_else(still_loading)?;
                let accepted = super::compaction::receive_notice(hub, req.compaction_revision);
                Ok::<CompactionNoticeResponse, Status>(CompactionNoticeResponse {
                    confirmed: accepted.is_ok(),
                })
            }
        }),
    );
}

pub fn router(view: Arc<NodeView>, cluster: Arc<Cluster>, late: Arc<LateServices>) -> Router {
    let mut r = Router::new();
    add_primary(&mut r, &late);
    for (service, method) in FORWARDED {
        let handler = forwarded(late.clone(), format!("/{service}/{method}"));
        r.add(service, method, handler);
    }
    const NODE: &str = "netsy.Node";
    r.add(
        NODE,
        "GetNodeState",
        unary(move |_req: (), _ctx| {
            let view = view.clone();
            async move { Ok::<NodeState, Status>(view.state()) }
        }),
    );
    add_compaction(&mut r, &late);
    let c = cluster.clone();
    r.add(
        NODE,
        "PushClusterState",
        unary(move |req: WireClusterState, ctx| {
            let c = c.clone();
            async move {
                let state = ClusterState::from_proto(&req).map_err(push_status)?;
                check_pusher(&caller(&ctx)?, &state)?;
                c.apply(state).map_err(push_status)
            }
        }),
    );
    let Ok(elector) = cluster.local_elector().cloned() else {
        return r;
    };
    add_elector(&mut r, elector);
    r
}

/// Adds one Elector method: `call` gets the Elector, the request and the
/// context; its error becomes the reference's status.
fn elector_route<Req, Resp, F, Fut>(r: &mut Router, method: &str, e: &Arc<Elector>, call: F)
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Arc<Elector>, Req, RequestContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let e = e.clone();
    r.add(
        "netsy.Elector",
        method,
        unary(move |req: Req, ctx| call(e.clone(), req, ctx)),
    );
}

fn add_elector(r: &mut Router, elector: Arc<Elector>) {
    let e = &elector;
    elector_route(
        r,
        "RegisterNode",
        e,
        |e, req: RegisterNodeRequest, ctx| async move {
            let who = caller(&ctx)?;
            e.register(&req, Some(&who)).await.map_err(elector_status)
        },
    );
    elector_route(
        r,
        "DeregisterNode",
        e,
        |e, req: DeregisterNodeRequest, ctx| async move {
            let who = caller(&ctx)?;
            e.deregister(&req.node_id, Some(&who))
                .await
                .map_err(elector_status)
        },
    );
    elector_route(r, "GetClusterState", e, |e, _req: (), _ctx| async move {
        e.cluster_state()
            .map(|s| s.to_proto())
            .map_err(elector_status)
    });
    elector_route(r, "SendHeartbeat", e, |e, req: NodeState, ctx| async move {
        let who = caller(&ctx)?;
        e.heartbeat(&req, Some(&who)).map_err(elector_status)
    });
    elector_route(
        r,
        "GetMemberList",
        e,
        |e, _req: GetMemberListRequest, _ctx| async move { e.member_list().map_err(elector_status) },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elector_errors_become_the_reference_statuses() {
        use crate::grpc::Code;
        let cases = [
            (
                ElectorError::NotElector,
                Code::FailedPrecondition,
                "this node is not the elector",
            ),
            (
                ElectorError::Bootstrapping,
                Code::Unavailable,
                "elector is still bootstrapping",
            ),
            (
                ElectorError::NotRegistered("n".into()),
                Code::NotFound,
                "node n is not registered",
            ),
            (
                ElectorError::InvalidArgument("node_id is required".into()),
                Code::InvalidArgument,
                "node_id is required",
            ),
        ];
        for (e, code, text) in cases {
            let s = elector_status(e);
            assert_eq!((s.code, s.message.as_str()), (code, text));
        }
        let s = push_status(Refused::MissingElector);
        assert_eq!(
            (s.code, s.message.as_str()),
            (Code::InvalidArgument, "elector info is required")
        );
        let s = push_status(Refused::SplitBrain {
            from: "a".into(),
            current: "b".into(),
        });
        assert_eq!(s.code, Code::FailedPrecondition);
        assert!(s.message.starts_with("split-brain detected: "));
    }

    #[test]
    fn only_the_named_elector_may_push() {
        use crate::election::cluster_state::NodeRef;
        let state = ClusterState {
            elector: NodeRef {
                node_id: "e".into(),
                member_id: 1,
                peer_addr: "127.0.0.1:1".into(),
            },
            primary: None,
            node_count: 1,
        };
        assert!(check_pusher("e", &state).is_ok());
        let refused = check_pusher("x", &state).unwrap_err();
        assert_eq!(refused.code, crate::grpc::Code::PermissionDenied);
        assert_eq!(
            refused.message,
            "a cluster state naming e as the elector was pushed by x"
        );
    }
}
