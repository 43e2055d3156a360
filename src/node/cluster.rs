//! This node's part in the cluster: what it knows of it (the cluster state,
//! guarded against a deposed Elector), its connections to the other nodes
//! (one reconnecting connector per peer address, mTLS with its peer
//! certificate), and the client side of the Elector RPCs — in-process when
//! this node is the Elector. It is also how the local Elector reaches
//! nodes (`Peers`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::election::cluster_state::{ClusterState, ClusterView, NodeRef, Refused, Source};
use crate::election::discovery::Registration;
use crate::election::elector::{Elector, ElectorError, Peers};
use crate::grpc::{Code, Connector, ConnectorSettings, Status, TlsTarget};
use crate::pb::netsy::{
    DeregisterNodeRequest, GetMemberListRequest, GetMemberListResponse, MemberEntry, NodeState,
    RegisterNodeRequest, RegisterNodeResponse,
};
use futures_util::future::BoxFuture;

use super::status::NodeView;

/// Time allowed for one peer RPC (heartbeats, node states, pushes).
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Outbound connections to peers, one connector per address.
pub struct PeerClients {
    tls: Arc<rustls::ClientConfig>,
    connectors: Mutex<HashMap<String, Arc<Connector>>>,
}

impl PeerClients {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> PeerClients {
        PeerClients {
            tls,
            connectors: Mutex::new(HashMap::new()),
        }
    }

    pub fn to(&self, addr: &str) -> Arc<Connector> {
        let mut map = match self.connectors.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(addr.to_string())
            .or_insert_with(|| {
                let server_name = crate::tls::host_of(addr).unwrap_or(addr).to_string();
                let tls = TlsTarget {
                    config: self.tls.clone(),
                    server_name,
                };
                Arc::new(Connector::new(
                    addr,
                    Some(tls),
                    ConnectorSettings::default(),
                ))
            })
            .clone()
    }

    async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        self.to(addr).unary(path, request, timeout).await
    }
}

/// Why a heartbeat did not reach the Elector's map.
#[derive(Debug)]
pub enum HeartbeatError {
    /// The Elector does not know this node (NotFound).
    NotRegistered,
    Failed(String),
}

impl std::fmt::Display for HeartbeatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeartbeatError::NotRegistered => write!(f, "this node is not registered"),
            HeartbeatError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Describes a failed peer call: the status's message, or what it was.
fn described(e: Status) -> String {
    format!("{} ({:?})", e.message, e.code)
}

pub struct Cluster {
    me: Registration,
    view: Mutex<ClusterView>,
    /// States applied so far (changed only with `view` locked): a fetched
    /// state is dropped if another arrived while it was being fetched.
    applied: AtomicU64,
    changes: watch::Sender<Option<ClusterState>>,
    /// The local Elector service (it reaches nodes through this Cluster).
    elector: OnceLock<Arc<Elector>>,
    peers: PeerClients,
    node: Arc<NodeView>,
    member_id: OnceLock<u64>,
}

impl Cluster {
    pub fn new(me: Registration, peers: PeerClients, node: Arc<NodeView>) -> Cluster {
        Cluster {
            me,
            view: Mutex::new(ClusterView::default()),
            applied: AtomicU64::new(0),
            changes: watch::Sender::new(None),
            elector: OnceLock::new(),
            peers,
            node,
            member_id: OnceLock::new(),
        }
    }

    /// Attaches the local Elector service (made with this Cluster as its
    /// way to reach nodes).
    pub fn attach(&self, elector: Arc<Elector>) {
        let _ = self.elector.set(elector);
    }

    /// The local Elector service.
    pub fn local_elector(&self) -> Result<&Arc<Elector>, String> {
        self.elector
            .get()
            .ok_or_else(|| "the elector service is not running".to_string())
    }

    pub fn me(&self) -> &Registration {
        &self.me
    }

    pub fn member_id(&self) -> u64 {
        self.member_id.get().copied().unwrap_or(0)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        match self.view.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The connection to a peer address (shared, reconnecting).
    pub fn peer(&self, addr: &str) -> Arc<crate::grpc::Connector> {
        self.peers.to(addr)
    }

    /// The cluster state as last applied.
    pub fn state(&self) -> Option<ClusterState> {
        self.view().state().cloned()
    }

    /// Wakes on every change of the cluster state.
    pub fn subscribe(&self) -> watch::Receiver<Option<ClusterState>> {
        self.changes.subscribe()
    }

    /// Applies a state from the Elector; a deposed Elector is refused.
    /// Subscribers wake even when nothing changed: the Elector pushes the
    /// same state again to a node that acts against it.
    pub fn apply(&self, cs: ClusterState) -> Result<(), Refused> {
        self.apply_unless_newer(cs, None, self.peer_source())
    }

    /// Where a state from another node stands: refused when it names
    /// another Elector while this node's own Elector runs.
    fn peer_source(&self) -> Source<'_> {
        let holding = self
            .elector
            .get()
            .is_some_and(|e| e.is_active())
            .then_some(self.me.node_id.as_str());
        Source::Peer { holding }
    }

    /// Applies `cs` unless `seen` is given and another state has been
    /// applied since it was read.
    fn apply_unless_newer(
        &self,
        cs: ClusterState,
        seen: Option<u64>,
        source: Source<'_>,
    ) -> Result<(), Refused> {
        let (changes, now) = {
            let mut view = self.view();
            if seen.is_some_and(|n| n != self.applied.load(Ordering::Acquire)) {
                return Ok(());
            }
            let changes = view.apply(cs, source, Instant::now())?;
            self.applied.fetch_add(1, Ordering::AcqRel);
            (changes, view.state().cloned())
        };
        if changes.elector || changes.primary {
            if let Some(s) = &now {
                log::info!(
                    "cluster_state_updated: elector {}, primary {}, {} nodes",
                    s.elector.node_id,
                    s.primary_id().unwrap_or("(none)"),
                    s.node_count
                );
            }
        }
        self.changes.send_replace(now);
        Ok(())
    }

    /// The tier-1 election named the Elector (before any push did).
    pub fn set_elector(&self, elector: NodeRef) {
        let now = {
            let mut view = self.view();
            if !view.set_elector(elector, Instant::now()) {
                return;
            }
            view.state().cloned()
        };
        if let Some(s) = &now {
            log::info!(
                "the elector is {} ({})",
                s.elector.node_id,
                s.elector.peer_addr
            );
        }
        self.changes.send_replace(now);
    }

    /// The Elector to talk to: None while unknown; Some(None) when it is
    /// this node.
    fn elector_addr(&self) -> Option<Option<String>> {
        let state = self.state()?;
        if state.elector.node_id == self.me.node_id {
            Some(None)
        } else {
            Some(Some(state.elector.peer_addr))
        }
    }

    fn no_elector() -> String {
        "no connection to elector".to_string()
    }

    /// RegisterNode: this node's member id and the cluster state, which is
    /// applied. In-process when this node is the Elector.
    pub async fn register(&self) -> Result<u64, String> {
        let req = RegisterNodeRequest {
            node_id: self.me.node_id.clone(),
            client_advertise_address: self.me.client_advertise_address.clone(),
            peer_advertise_address: self.me.peer_advertise_address.clone(),
        };
        // A push that arrives while this call runs is newer than its answer.
        let seen = self.applied.load(Ordering::Acquire);
        let resp: RegisterNodeResponse = match self.elector_addr().ok_or_else(Self::no_elector)? {
            None => self
                .local_elector()?
                .register(&req, None)
                .await
                .map_err(|e| e.to_string())?,
            Some(addr) => self
                .peers
                .unary(
                    &addr,
                    "/netsy.Elector/RegisterNode",
                    &req,
                    PEER_CALL_TIMEOUT,
                )
                .await
                .map_err(described)?,
        };
        if let Some(known) = self.member_id.get() {
            if *known != resp.member_id {
                return Err(format!(
                    "the Elector gave member id {} but this node has {known}",
                    resp.member_id
                ));
            }
        }
        let _ = self.member_id.set(resp.member_id);
        // The state comes with the answer (unless a push came meanwhile);
        // an Elector that left it out is asked for it.
        let applied = match resp.cluster_state.as_ref() {
            Some(p) => ClusterState::from_proto(p)
                .map_err(|e| e.to_string())
                .and_then(|cs| {
                    self.apply_unless_newer(cs, Some(seen), self.peer_source())
                        .map_err(|e| e.to_string())
                }),
            None => self.refresh_state().await,
        };
        if let Err(e) = applied {
            log::warn!("the cluster state at registration: {e}");
        }
        Ok(resp.member_id)
    }

    /// SendHeartbeat to the Elector. An Elector still loading its map
    /// answers "still bootstrapping": it was reached, which is what a
    /// heartbeat proves, so that counts as sent. A `retry` first waits out
    /// the connection's backoff (up to a second) so that it really tries.
    pub async fn heartbeat(&self, state: &NodeState, retry: bool) -> Result<(), HeartbeatError> {
        let elector = self
            .elector_addr()
            .ok_or_else(|| HeartbeatError::Failed(Self::no_elector()))?;
        match elector {
            None => {
                let local = self.local_elector().map_err(HeartbeatError::Failed)?;
                match local.heartbeat(state, None) {
                    Ok(()) | Err(ElectorError::Bootstrapping) => Ok(()),
                    Err(ElectorError::NotRegistered(_)) => Err(HeartbeatError::NotRegistered),
                    Err(e) => Err(HeartbeatError::Failed(e.to_string())),
                }
            }
            Some(addr) => {
                if retry {
                    self.peers
                        .to(&addr)
                        .wait_for_attempt(Duration::from_secs(1))
                        .await;
                }
                let sent = self
                    .peers
                    .unary::<_, ()>(
                        &addr,
                        "/netsy.Elector/SendHeartbeat",
                        state,
                        PEER_CALL_TIMEOUT,
                    )
                    .await;
                match sent {
                    Ok(()) => Ok(()),
                    Err(e)
                        if e.code == Code::Unavailable
                            && e.message == ElectorError::Bootstrapping.to_string() =>
                    {
                        Ok(())
                    }
                    Err(e) if e.code == Code::NotFound => Err(HeartbeatError::NotRegistered),
                    Err(e) => Err(HeartbeatError::Failed(described(e))),
                }
            }
        }
    }

    /// DeregisterNode at a graceful stop.
    pub async fn deregister(&self, timeout: Duration) -> Result<(), String> {
        let id = self.me.node_id.clone();
        match self.elector_addr().ok_or_else(Self::no_elector)? {
            None => self
                .local_elector()?
                .deregister(&id, None)
                .await
                .map_err(|e| e.to_string()),
            Some(addr) => {
                let req = DeregisterNodeRequest { node_id: id };
                self.peers
                    .unary::<_, ()>(&addr, "/netsy.Elector/DeregisterNode", &req, timeout)
                    .await
                    .map_err(described)
            }
        }
    }

    /// The members, from the Elector.
    pub async fn member_list(&self) -> Result<Vec<MemberEntry>, String> {
        let resp: GetMemberListResponse = match self.elector_addr().ok_or_else(Self::no_elector)? {
            None => self
                .local_elector()?
                .member_list()
                .map_err(|e| e.to_string())?,
            Some(addr) => self
                .peers
                .unary(
                    &addr,
                    "/netsy.Elector/GetMemberList",
                    &GetMemberListRequest {},
                    PEER_CALL_TIMEOUT,
                )
                .await
                .map_err(described)?,
        };
        Ok(resp.members)
    }

    /// GetClusterState from the Elector, applied unless a push arrived
    /// meanwhile (the push is the newer).
    pub async fn refresh_state(&self) -> Result<(), String> {
        let seen = self.applied.load(Ordering::Acquire);
        let state = match self.elector_addr().ok_or_else(Self::no_elector)? {
            None => self
                .local_elector()?
                .cluster_state()
                .map_err(|e| e.to_string())?,
            Some(addr) => {
                let p: crate::pb::netsy::ClusterState = self
                    .peers
                    .unary(
                        &addr,
                        "/netsy.Elector/GetClusterState",
                        &(),
                        PEER_CALL_TIMEOUT,
                    )
                    .await
                    .map_err(described)?;
                ClusterState::from_proto(&p).map_err(|e| e.to_string())?
            }
        };
        self.apply_unless_newer(state, Some(seen), self.peer_source())
            .map_err(|e| e.to_string())
    }
}

impl Peers for Cluster {
    fn node_state<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<NodeState, String>> {
        Box::pin(async move {
            if node.node_id == self.me.node_id {
                return Ok(self.node.state());
            }
            self.peers
                .unary(
                    &node.peer_addr,
                    "/netsy.Node/GetNodeState",
                    &(),
                    PEER_CALL_TIMEOUT,
                )
                .await
                .map_err(described)
        })
    }

    fn push<'a>(
        &'a self,
        node: &'a NodeRef,
        state: &'a ClusterState,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if node.node_id == self.me.node_id {
                return self
                    .apply_unless_newer(state.clone(), None, Source::OwnElector)
                    .map_err(|e| e.to_string());
            }
            self.peers
                .unary::<_, ()>(
                    &node.peer_addr,
                    "/netsy.Node/PushClusterState",
                    &state.to_proto(),
                    PEER_CALL_TIMEOUT,
                )
                .await
                .map_err(described)
        })
    }
}
