//! etcd-wire compatibility: the KV, Watch, Lease, Cluster and Maintenance
//! services, built on the store (reads), the writer (writes) and the watch
//! hub. Everything etcd has that we do not serve answers Unimplemented.

pub mod cluster;
pub mod convert;
pub mod errors;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod range;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use crate::grpc::{bidi_streaming, unary, Call, Router};
use crate::http::metrics::Metrics;
use crate::http::HealthSource;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::primary::{Leases, Writer};
use crate::store::Store;
use crate::watch::WatchHub;

/// The version we report; kube-apiserver enables watch progress requests
/// only from 3.5.13 on.
pub const ETCD_VERSION: &str = "3.5.21";

/// etcd's default request limit (--max-request-bytes).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Who this node is, as etcd clients see it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// FNV-1a 64 of the cluster id string.
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
}

pub use futures_util::future::BoxFuture;

/// A member as MemberList shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
}

/// What the Cluster and Maintenance services ask about the cluster; the
/// node answers from the Elector's map and the cluster state.
pub trait ClusterInfo: Send + Sync {
    fn members(&self) -> BoxFuture<'_, Result<Vec<MemberInfo>, String>>;
    /// The Primary's member id (etcd's leader); 0 while none is known.
    fn leader(&self) -> u64;
}

/// Tunables of the etcd API.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub progress_notify_interval: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            progress_notify_interval: Duration::from_secs(5),
        }
    }
}

/// Everything the etcd services share.
pub struct EtcdApi {
    pub store: Arc<Store>,
    pub writer: Writer,
    /// Leases, answered by the Primary.
    pub leases: Arc<Leases>,
    pub hub: Arc<WatchHub>,
    pub identity: Identity,
    pub health: Arc<dyn HealthSource>,
    pub cluster: Arc<dyn ClusterInfo>,
    pub metrics: Arc<Metrics>,
    pub settings: ApiSettings,
    /// Becomes true when the node stops: long-lived streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Where writes go on a cluster member (None: always here, as for a
    /// lone node or requests a replica forwarded).
    pub forwarding: Option<Arc<dyn forward::Forwarding>>,
    /// Serves what replicas forwarded (the peer API's copy): a default
    /// read here is a replica's read-index question, which only an active
    /// Primary may answer.
    pub forwarded_here: bool,
    pub read_index: Arc<forward::ReadIndex>,
}

impl EtcdApi {
    /// The same API serving every request here (what a replica forwarded).
    pub fn clone_local(&self) -> EtcdApi {
        EtcdApi {
            store: self.store.clone(),
            writer: self.writer.clone(),
            leases: self.leases.clone(),
            hub: self.hub.clone(),
            identity: self.identity.clone(),
            health: self.health.clone(),
            cluster: self.cluster.clone(),
            metrics: self.metrics.clone(),
            settings: self.settings.clone(),
            shutdown: self.shutdown.clone(),
            forwarding: None,
            forwarded_here: true,
            read_index: Arc::default(),
        }
    }

    /// The Primary to forward writes to, when it is another node.
    pub fn primary(&self) -> Option<Arc<crate::grpc::Connector>> {
        match self.forwarding.as_ref().map(|f| f.route()) {
            Some(forward::WriteRoute::Primary(p)) => Some(p),
            _ => None,
        }
    }

    /// A full response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: 0,
        }
    }

    /// Fills cluster and member ids into a header that has the revision.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.store.committed_revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }
}

/// Counts a client request by kind and result (`netsy_client_requests_total`)
/// and observes its duration.
async fn timed<T>(
    m: Arc<Metrics>,
    kind: &'static str,
    work: impl std::future::Future<Output = Result<T, crate::grpc::Status>>,
) -> Result<T, crate::grpc::Status> {
    let started = std::time::Instant::now();
    let result = work.await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    m.client_request_handles.observe(
        &m.client_requests,
        &m.client_request_duration,
        (kind, outcome),
        started.elapsed().as_secs_f64(),
    );
    result
}

/// FNV-1a 64-bit: the etcd cluster id derived from the cluster id string.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The client API's method table.
pub fn router(api: Arc<EtcdApi>) -> Router {
    let mut r = Router::new();
    const KV: &str = "etcdserverpb.KV";
    let a = api.clone();
    r.add(
        KV,
        "Range",
        unary(move |req, _| timed(a.metrics.clone(), "range", kv::range(a.clone(), req))),
    );
    let a = api.clone();
    r.add(
        KV,
        "Put",
        unary(move |req, _| timed(a.metrics.clone(), "put", kv::put(a.clone(), req))),
    );
    let a = api.clone();
    r.add(
        KV,
        "DeleteRange",
        unary(move |req, _| {
            timed(
                a.metrics.clone(),
                "delete",
                kv::delete_range(a.clone(), req),
            )
        }),
    );
    let a = api.clone();
    r.add(
        KV,
        "Txn",
        unary(move |req, _| timed(a.metrics.clone(), "txn", kv::txn(a.clone(), req))),
    );
    let a = api.clone();
    r.add(
        KV,
        "Compact",
        unary(move |req, _| timed(a.metrics.clone(), "compaction", kv::compact(a.clone(), req))),
    );

    let a = api.clone();
    r.add(
        "etcdserverpb.Watch",
        "Watch",
        Arc::new(move |call: Call| Box::pin(watch::serve(a.clone(), call))),
    );

    const LEASE: &str = "etcdserverpb.Lease";
    let a = api.clone();
    r.add(
        LEASE,
        "LeaseGrant",
        unary(move |req, _| timed(a.metrics.clone(), "lease", lease::grant(a.clone(), req))),
    );
    let a = api.clone();
    r.add(
        LEASE,
        "LeaseRevoke",
        unary(move |req, _| timed(a.metrics.clone(), "lease", lease::revoke(a.clone(), req))),
    );
    let a = api.clone();
    r.add(
        LEASE,
        "LeaseTimeToLive",
        unary(move |req, _| {
            timed(
                a.metrics.clone(),
                "lease",
                lease::time_to_live(a.clone(), req),
            )
        }),
    );
    let a = api.clone();
    r.add(
        LEASE,
        "LeaseLeases",
        unary(move |req, _| timed(a.metrics.clone(), "lease", lease::leases(a.clone(), req))),
    );
    let a = api.clone();
    r.add(
        LEASE,
        "LeaseKeepAlive",
        bidi_streaming(move |requests, ctx, responses| {
            lease::keep_alive(a.clone(), requests, ctx, responses)
        }),
    );

    const CLUSTER: &str = "etcdserverpb.Cluster";
    let a = api.clone();
    r.add(
        CLUSTER,
        "MemberList",
        unary(move |req, _| cluster::member_list(a.clone(), req)),
    );
    r.add_unimplemented(
        CLUSTER,
        &["MemberAdd", "MemberRemove", "MemberUpdate", "MemberPromote"],
    );

    const MAINTENANCE: &str = "etcdserverpb.Maintenance";
    let a = api.clone();
    r.add(
        MAINTENANCE,
        "Status",
        unary(move |req, _| maintenance::status(a.clone(), req)),
    );
    let a = api.clone();
    r.add(
        MAINTENANCE,
        "Alarm",
        unary(move |req, _| maintenance::alarm(a.clone(), req)),
    );
    let a = api.clone();
    r.add(
        MAINTENANCE,
        "Defragment",
        unary(move |req, _| maintenance::defragment(a.clone(), req)),
    );
    let a = api.clone();
    r.add(
        MAINTENANCE,
        "HashKV",
        unary(move |req, _| maintenance::hash_kv(a.clone(), req)),
    );
    r.add_unimplemented(
        MAINTENANCE,
        &["Hash", "Snapshot", "MoveLeader", "Downgrade"],
    );

    r.add_unimplemented(
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    );
    r.add(
        "grpc.health.v1.Health",
        "Check",
        unary(maintenance::grpc_health_check),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(super::fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
