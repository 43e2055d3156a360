//! Membership in a cluster (outside --dev): joining (the registration file,
//! the peer API and the election endpoint served, the tier-1 election
//! running, registration with the Elector, heartbeats) and leaving at a
//! graceful stop (deregistration, the file removed, the lock resigned).
//! Also what the etcd layer asks about members and the leader.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::config::Config;
use crate::election::discovery::{self, Registration};
use crate::election::elector::{Elector, ElectorSettings};
use crate::election::endpoint::{self, HttpsProbe, Leadership};
use crate::election::lock::{self, ElectorLock};
use crate::etcd::{BoxFuture, ClusterInfo, MemberInfo};
use crate::http::metrics::{labels, Metrics};
use crate::log::ObjectLog;
use crate::tls::TlsMaterial;

pub use super::cluster::Cluster;
use super::cluster::PeerClients;
use super::driver::DriverInput;
use super::heartbeat::{HeartbeatLease, HeartbeatSender};
use super::listeners::{self, Bound};
use super::lock_runner::LockRunner;
use super::peer;
use super::status::NodeView;
use super::status::RoleCell;

/// How long a node keeps trying to register before it gives up.
const REGISTRATION_DEADLINE: Duration = Duration::from_secs(60);

/// How long the first election cycles may take to name an Elector.
const FIRST_ELECTION_DEADLINE: Duration = Duration::from_secs(60);

/// How long resigning the lock, and then the peer requests still running,
/// may take at a graceful stop.
const PEER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// DeregisterNode's timeout at a graceful stop.
const DEREGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Tests only: divides the tier-1 election's cycle interval and leader
/// timeout (never set in production; see protocol-spec/cluster.md).
pub const TEST_SPEEDUP_VAR: &str = crate::config::env_vars::TEST_ELECTION_SPEEDUP.name;

/// The tier-1 timings, sped up only by the test setting.
fn lock_timings() -> Result<(Duration, Duration), String> {
    let speedup = match std::env::var(TEST_SPEEDUP_VAR) {
        Err(_) => 1,
        Ok(v) => {
            let n = speedup(&v)?;
            log::warn!("{TEST_SPEEDUP_VAR}={n}: election timings shortened for tests");
            n
        }
    };
    Ok((
        lock::CYCLE_INTERVAL / speedup,
        lock::LEADER_TIMEOUT / speedup,
    ))
}

fn speedup(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (2..=100).contains(n))
        .ok_or_else(|| {
            format!("{TEST_SPEEDUP_VAR} must be an integer from 2 to 100, not {value:?}")
        })
}

/// What joining needs.
pub struct JoinParts<'a> {
    pub config: &'a Config,
    pub tls: &'a TlsMaterial,
    pub log: &'a Arc<ObjectLog>,
    pub metrics: &'a Arc<Metrics>,
    pub role: &'a Arc<RoleCell>,
    pub view: Arc<NodeView>,
    pub advertise_client: String,
    pub peer: Bound,
    pub election: Bound,
}

/// A node's membership, from joining to leaving.
pub struct Membership {
    pub cluster: Arc<Cluster>,
    pub member_id: u64,
    /// Set once loading is done.
    pub loaded: Arc<AtomicBool>,
    /// What the peer API serves once the node has loaded.
    pub late: Arc<peer::LateServices>,
    /// What the role driver hears from the membership (heartbeats).
    pub driver_inputs: Option<mpsc::UnboundedReceiver<DriverInput>>,
    /// The heartbeat lease: whether this node may still acknowledge writes.
    pub lease: Arc<HeartbeatLease>,
    /// Stops the heartbeats; then the election (which resigns the lock).
    heartbeat_stop: watch::Sender<bool>,
    lock_stop: watch::Sender<bool>,
    lock_task: JoinHandle<()>,
    heartbeat_task: Option<JoinHandle<()>>,
    log: Arc<ObjectLog>,
    /// The peer API and the election endpoint stop last, after leaving:
    /// a stopping Elector keeps answering heartbeats until it resigns.
    peer_stop: watch::Sender<bool>,
    peer_tasks: JoinSet<()>,
}

/// Joins the cluster.
pub async fn join(p: JoinParts<'_>) -> Result<Membership, String> {
    let config = p.config;
    let me = Registration {
        node_id: config.node.node_id.clone(),
        client_advertise_address: p.advertise_client.clone(),
        peer_advertise_address: p.peer.advertise.clone(),
    };
    // Written before the election, so a node that wins can be found.
    discovery::ensure_registration(&*p.log.store, &me).await?;

    let peers = PeerClients::new(p.tls.client_config()?);
    let cluster = Arc::new(Cluster::new(me.clone(), peers, p.view.clone()));
    let elector = Arc::new(Elector::new(
        me.clone(),
        elector_settings(config),
        p.log.clone(),
        cluster.clone(),
        p.metrics.clone(),
    ));
    cluster.attach(elector.clone());
    let cluster_id = &config.cluster.cluster_id;
    let late = Arc::new(peer::LateServices::default());
    let router = peer::router(p.view.clone(), cluster.clone(), late.clone());
    let (peer_stop, peer_stopped) = watch::channel(false);
    let mut peer_tasks = JoinSet::new();
    if let Ok(addr) = p.peer.listener.local_addr() {
        log::info!("serving the peer API on {addr}");
    }
    listeners::serve_grpc(
        p.peer.listener,
        Some((p.tls, crate::tls::Role::Peer)),
        cluster_id,
        router,
        p.metrics,
        &mut peer_tasks,
        &peer_stopped,
    )?;
    let leadership = Arc::new(Leadership::new(&me.node_id, &p.election.advertise));
    let routes = endpoint::routes(leadership.clone());
    listeners::serve_election(
        p.election.listener,
        p.tls,
        routes,
        &mut peer_tasks,
        &peer_stopped,
    )?;

    let (interval, timeout) = lock_timings()?;
    let probe = Arc::new(HttpsProbe::new(p.tls.election_client_config()?));
    let runner = LockRunner {
        lock: ElectorLock::new(
            p.log.store.clone(),
            &me.node_id,
            &p.election.advertise,
            timeout,
            Some(probe),
        ),
        interval,
        leadership,
        elector,
        cluster: cluster.clone(),
        role: p.role.clone(),
        bucket: p.log.store.clone(),
    };
    let (lock_stop, lock_stopped) = watch::channel(false);
    let (first_tx, first_rx) = oneshot::channel();
    let lock_task = tokio::spawn(runner.run(first_tx, lock_stopped));
    match tokio::time::timeout(FIRST_ELECTION_DEADLINE, first_rx).await {
        Ok(Ok(())) => {}
        _ => {
            let _ = lock_stop.send(true);
            return Err(format!(
                "no Elector could be found or chosen within {FIRST_ELECTION_DEADLINE:?} (is the bucket reachable?)"
            ));
        }
    }

    let started = std::time::Instant::now();
    let registered = register(&cluster).await;
    let outcome = if registered.is_ok() {
        "success"
    } else {
        "error"
    };
    p.metrics
        .node_registration_duration
        .get_or_create(&labels(&[("result", outcome)]))
        .observe(started.elapsed().as_secs_f64());
    let member_id = match registered {
        Ok(id) => id,
        Err(e) => {
            let _ = lock_stop.send(true);
            return Err(e);
        }
    };

    let (driver_tx, driver_rx) = mpsc::unbounded_channel();
    let loaded = Arc::new(AtomicBool::new(false));
    let interval = config.cluster.heartbeat_interval.unwrap_or_default();
    let elector = &config.cluster.elector;
    let silence = interval * elector.degradation_count.clamp(1, 1000) as u32;
    let lease = Arc::new(HeartbeatLease::new(
        HeartbeatLease::length_for(silence, elector.primary_prior_timeout.unwrap_or_default()),
        tokio::time::Instant::now(),
    ));
    let heartbeats = HeartbeatSender {
        cluster: cluster.clone(),
        view: p.view.clone(),
        role: p.role.clone(),
        loaded: loaded.clone(),
        interval,
        metrics: p.metrics.clone(),
        bucket: p.log.store.clone(),
        driver: driver_tx,
        lease: lease.clone(),
    };
    let (heartbeat_stop, heartbeats_stopped) = watch::channel(false);
    let heartbeat_task = Some(tokio::spawn(heartbeats.run(heartbeats_stopped)));
    Ok(Membership {
        cluster,
        member_id,
        loaded,
        late,
        driver_inputs: Some(driver_rx),
        lease,
        heartbeat_stop,
        lock_stop,
        lock_task,
        heartbeat_task,
        log: p.log.clone(),
        peer_stop,
        peer_tasks,
    })
}

fn elector_settings(config: &Config) -> ElectorSettings {
    let c = &config.cluster;
    ElectorSettings {
        cluster_id: c.cluster_id.clone(),
        quorum: c.replication.quorum,
        heartbeat_interval: c.heartbeat_interval.unwrap_or_default(),
        degradation_count: c.elector.degradation_count.clamp(1, u32::MAX as i64) as u32,
        deregistration_timeout: (!c.elector.deregistration_timeout.is_zero())
            .then_some(c.elector.deregistration_timeout),
        primary_prior_timeout: c.elector.primary_prior_timeout.unwrap_or_default(),
    }
}

/// RegisterNode with retries: in-process while the local Elector loads
/// (every 10 ms), remotely with a doubling backoff (500 ms, capped at 5 s)
/// — a new Elector may be taking over meanwhile.
async fn register(cluster: &Cluster) -> Result<u64, String> {
    let deadline = Instant::now() + REGISTRATION_DEADLINE;
    let mut backoff = Duration::from_millis(500);
    loop {
        let local = cluster
            .state()
            .is_some_and(|s| s.elector.node_id == cluster.me().node_id);
        match cluster.register().await {
            Ok(id) => {
                log::info!("registered with the elector: member id {id}");
                return Ok(id);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("registering with the elector: {e}"));
            }
            Err(e) if local => {
                log::debug!("registering with the local elector: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                log::warn!("registering with the elector: {e}; again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Membership {
    /// The etcd layer's view of the members and the leader.
    pub fn info(&self) -> Arc<dyn ClusterInfo> {
        Arc::new(ClusterMembers {
            cluster: self.cluster.clone(),
        })
    }

    /// Stops the heartbeats (before the node reports itself degraded at a
    /// stop, so they do not heal it again).
    pub async fn stop_heartbeats(&mut self) {
        let _ = self.heartbeat_stop.send(true);
        if let Some(task) = self.heartbeat_task.take() {
            let _ = task.await;
        }
    }

    /// Leaves at a graceful stop: DeregisterNode (in-process while this
    /// node is still the Elector), the registration file removed, then the
    /// election stops and resigns the lock, and last the peer API closes.
    pub async fn leave(mut self) {
        self.stop_heartbeats().await;
        match self.cluster.deregister(DEREGISTRATION_TIMEOUT).await {
            Ok(()) => log::info!("deregistered from the cluster"),
            Err(e) => log::warn!("deregistering: {e}"),
        }
        let id = &self.cluster.me().node_id;
        if let Err(e) = discovery::delete_registration(&*self.log.store, id).await {
            log::warn!("{e}");
        }
        let _ = self.lock_stop.send(true);
        if tokio::time::timeout(PEER_CLOSE_TIMEOUT, &mut self.lock_task)
            .await
            .is_err()
        {
            log::warn!("the elector lock was not resigned within {PEER_CLOSE_TIMEOUT:?}");
            self.lock_task.abort();
        }
        let _ = self.peer_stop.send(true);
        let tasks = &mut self.peer_tasks;
        let closed = tokio::time::timeout(PEER_CLOSE_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if closed.is_err() {
            log::warn!("peer requests still running after {PEER_CLOSE_TIMEOUT:?}; closing anyway");
        }
    }
}

/// Members from the Elector; the leader from the cluster state.
struct ClusterMembers {
    cluster: Arc<Cluster>,
}

impl ClusterInfo for ClusterMembers {
    fn members(&self) -> BoxFuture<'_, Result<Vec<MemberInfo>, String>> {
        Box::pin(async move {
            let members = self.cluster.member_list().await?;
            Ok(members
                .into_iter()
                .map(|m| MemberInfo {
                    id: m.member_id,
                    name: m.node_id,
                    client_urls: vec![format!("https://{}", m.client_advertise_address)],
                    peer_urls: vec![format!("https://{}", m.peer_advertise_address)],
                })
                .collect())
        })
    }

    fn leader(&self) -> u64 {
        self.cluster
            .state()
            .and_then(|s| s.primary)
            .map_or(0, |p| p.member_id)
    }
}

/// A lone node (--dev): its own only member and leader.
pub struct LoneMember(pub MemberInfo);

impl ClusterInfo for LoneMember {
    fn members(&self) -> BoxFuture<'_, Result<Vec<MemberInfo>, String>> {
        let me = self.0.clone();
        Box::pin(async move { Ok(vec![me]) })
    }

    fn leader(&self) -> u64 {
        self.0.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_speedup_is_2_to_100_or_refused() {
        assert_eq!(speedup("10"), Ok(10));
        assert_eq!(speedup("100"), Ok(100));
        for bad in ["1", "0", "101", "fast", ""] {
            assert_eq!(
                speedup(bad).unwrap_err(),
                format!(
                    "NETSY_TEST_ELECTION_SPEEDUP must be an integer from 2 to 100, not {bad:?}"
                )
            );
        }
    }
}
