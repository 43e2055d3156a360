//! Node lifecycle: the composition of every part of a node, its role
//! machine and the driver that starts and stops services on role changes,
//! loading, membership in a cluster (outside --dev), the listeners, the
//! cluster compaction scheduler and graceful shutdown.

pub mod cluster;
pub mod compaction;
pub mod data_dir;
pub mod driver;
pub mod heartbeat;
pub mod listeners;
pub mod loading;
pub mod lock_runner;
pub mod membership;
pub mod peer;
pub mod role;
pub mod status;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Config;
use crate::etcd::{self, ApiSettings, EtcdApi, Identity, MemberInfo};
use crate::http::metrics::{InfoLabels, Metrics};
use crate::log::buffer::ChunkBuffer;
use crate::log::cleanup::{self, CleanupSettings};
use crate::log::restore::CaughtUp;
use crate::log::snapshot::{self, SnapshotClock, SnapshotPolicy, SnapshotRequests};
use crate::log::ObjectLog;
use crate::primary::{Leases, ObjectStorageDurability, Replicas, WritePathParts};
use crate::replication::{FollowerParts, PrimaryService, ReplicaSet};
use crate::store::{Store, Timestamp};
use crate::watch::{RingLimits, WatchHub};
use driver::{Appointer, DriverHandle, PrimaryParts, RoleDriver};
use membership::{JoinParts, LoneMember, Membership};
use role::{ElectorState, Health, PrimaryState};
use status::RoleCell;

/// How long in-flight requests may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the node until `shutdown` resolves. `role` is the node's role as
/// the rest of the process (log lines) reads it.
pub async fn run(
    config: Config,
    role: Arc<RoleCell>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let dev = config.dev;
    let node = match start(config, role).await {
        Ok(node) => node,
        Err(Failed { error, serving }) => {
            if serving && !dev {
                jittered_exit_delay(&error).await;
            }
            return Err(error);
        }
    };
    shutdown.await;
    node.stop().await;
    Ok(())
}

/// A start that failed, and whether the health listener was up by then.
struct Failed {
    error: String,
    serving: bool,
}

/// Nodes that fail together should not restart together: wait 0-9 s.
async fn jittered_exit_delay(error: &str) {
    let seconds = Timestamp::now().nanos % 10;
    log::error!("{error}; exiting in {seconds} s");
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
}

/// A node serving clients, and what stopping it takes.
struct Running {
    /// Tells listeners and long-lived streams to finish.
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    driver: DriverHandle,
    membership: Option<Membership>,
    api: Arc<EtcdApi>,
    commit_thread: std::thread::JoinHandle<()>,
    /// Held until the process ends.
    _data_dir_lock: data_dir::DataDirLock,
}

/// Brings the node up: health first (it reports loading meanwhile), the
/// node's certificates checked and its listeners bound, membership
/// (outside --dev) or a lone member id, restore, the write path, the
/// Primary role (a lone node takes it; a cluster member is appointed),
/// then the client API.
async fn start(config: Config, role: Arc<RoleCell>) -> Result<Running, Failed> {
    let early = |error: String| Failed {
        error,
        serving: false,
    };
    let node_id = config.node.node_id.clone();
    let start_time = Timestamp::now().seconds;
    for line in config.describe() {
        log::info!("setting {line}");
    }
    let tls = listeners::check_tls(&config).map_err(early)?;
    // Before anything is written or bound: one process per data directory.
    let data_dir_lock = data_dir::lock(&config.node.data_dir).map_err(early)?;
    let metrics = Arc::new(Metrics::new());
    observe_node(&metrics, &config, &role, start_time);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // Health first, so it reports loading while the node restores.
    listeners::serve_health(
        &config,
        &mut tasks,
        role.clone(),
        metrics.clone(),
        stop.clone(),
    )
    .await
    .map_err(early)?;
    let failed = |error: String| Failed {
        error,
        serving: true,
    };
    let apis = listeners::bind_apis(&config, tls.is_some())
        .await
        .map_err(failed)?;

    let env = |name: &str| std::env::var(name).ok();
    let objects =
        crate::objstore::from_config(&config.cluster.storage, &env, &metrics).map_err(failed)?;
    log::info!("object storage: {}", objects.describe());
    let log = Arc::new(ObjectLog::new(objects, &node_id, &config.node.data_dir).map_err(failed)?);
    crate::failpoint::hit("loading").await;
    let view = Arc::new(status::NodeView {
        node_id: node_id.clone(),
        role: role.clone(),
        store: OnceLock::new(),
        start_time,
    });
    let advertise_client = apis.client.advertise.clone();
    let mut membership = match (&tls, apis.peer, apis.election) {
        (Some(tls), Some(peer), Some(election)) => {
            let parts = JoinParts {
                config: &config,
                tls,
                log: &log,
                metrics: &metrics,
                role: &role,
                view: view.clone(),
                advertise_client: advertise_client.clone(),
                peer,
                election,
            };
            let joining = membership::join(parts);
            Some(
                loading::timed_stage(&metrics, "registration", joining)
                    .await
                    .map_err(failed)?,
            )
        }
        _ => None,
    };
    let member_id = match &membership {
        Some(m) => m.member_id,
        None => {
            let lone =
                crate::election::discovery::member_id(&log, &config.cluster.cluster_id, &node_id);
            loading::timed_stage(&metrics, "registration", lone)
                .await
                .map_err(failed)?
        }
    };
    let restoring = loading::load(&config.node.data_dir, &log, &metrics);
    let (store, caught_up) = loading::timed_stage(&metrics, "backfill", restoring)
        .await
        .map_err(failed)?;
    log_restored(&caught_up);
    // Rows beyond the bucket were never known to be acknowledged: nobody
    // reads them until a Primary adopts or discards them (preflight).
    store
        .demote_above(caught_up.durable)
        .map_err(|e| failed(format!("local store: {e}")))?;
    let _ = view.store.set(store.clone());

    let hub = Arc::new(WatchHub::new(
        store.committed_revision(),
        RingLimits::default(),
    ));
    let replication = &config.cluster.replication;
    let heartbeat_interval = config
        .cluster
        .heartbeat_interval
        .unwrap_or(Duration::from_secs(1));
    let replica_set = membership.as_ref().map(|m| {
        let silence = heartbeat_interval * replication.degradation_count.clamp(1, 1000) as u32;
        let set = ReplicaSet::new(replication.quorum, silence, metrics.clone());
        follow_node_count(&m.cluster, &set);
        set
    });
    let replicas = replica_set.clone().map(|s| s as Arc<dyn Replicas>);
    let write_path = crate::primary::start(WritePathParts {
        store: store.clone(),
        hub: hub.clone(),
        leader_id: node_id.clone(),
        durability: Arc::new(match membership {
            Some(_) => ObjectStorageDurability::new(log.clone(), metrics.clone()).claimed(),
            None => ObjectStorageDurability::new(log.clone(), metrics.clone()),
        }),
        snapshots: Some(start_snapshots(&config, &store, &log, &caught_up, &metrics)),
        metrics: metrics.clone(),
        runtime: tokio::runtime::Handle::current(),
        replicas: replicas.clone(),
        buffer: ChunkBuffer::new(
            replication.chunk_buffer.threshold_size_mb,
            replication.chunk_buffer.threshold_age_minutes,
        ),
        tenure: membership
            .as_ref()
            .map(|m| m.lease.clone() as Arc<dyn crate::primary::Tenure>),
        // The fs provider writes a chunk on the calling thread, with no
        // runtime I/O to wait for (the write path itself refuses callers
        // when there are replicas).
        commit_on_caller: config.cluster.storage.provider == crate::config::Provider::Fs,
    })
    .map_err(failed)?;
    let followed = Arc::new(AtomicBool::new(false));
    let follower = membership.as_ref().map(|_| {
        let view = view.clone();
        Arc::new(FollowerParts {
            store: store.clone(),
            hub: hub.clone(),
            state: Arc::new(move || view.state()),
            heartbeat_interval,
            followed: followed.clone(),
        })
    });
    let bucket = log.store.clone();
    let leases = Arc::new(Leases::new(
        bucket.clone(),
        write_path.writer.clone(),
        store.clone(),
    ));
    tokio::spawn(leases.clone().expire(stop.clone()));
    let primary = PrimaryParts {
        gate: write_path.gate.clone(),
        store: store.clone(),
        log,
        leases: Some(leases.clone()),
        hub: hub.clone(),
        replicas,
        buffer: Some(write_path.buffer.clone()),
        follower,
    };
    let identity = identity(&config, member_id, &advertise_client);
    let (appointer, inputs, info) = match &mut membership {
        Some(m) => (
            Appointer::Cluster(m.cluster.clone()),
            m.driver_inputs.take(),
            m.info(),
        ),
        None => {
            let me = MemberInfo {
                id: member_id,
                name: node_id.clone(),
                client_urls: identity.client_urls.clone(),
                peer_urls: identity.peer_urls.clone(),
            };
            let info: Arc<dyn etcd::ClusterInfo> = Arc::new(LoneMember(me));
            (Appointer::Lone, None, info)
        }
    };
    let inputs = inputs.unwrap_or_else(|| tokio::sync::mpsc::unbounded_channel().1);
    let lone = matches!(appointer, Appointer::Lone);
    let mut driver = RoleDriver::new(role.clone(), primary, appointer, write_path.events, inputs);
    if lone {
        driver.take_primary().await.map_err(failed)?;
    }

    let forwarding = membership.as_ref().map(|m| {
        Arc::new(ClusterForwarding(m.cluster.clone())) as Arc<dyn etcd::forward::Forwarding>
    });
    let api = EtcdApi {
        store: store.clone(),
        writer: write_path.writer.clone(),
        leases,
        hub: hub.clone(),
        identity,
        health: role.clone(),
        cluster: info,
        metrics: metrics.clone(),
        settings: ApiSettings::default(),
        shutdown: stop.clone(),
        forwarding: None,
        forwarded_here: false,
        read_index: Arc::default(),
    };
    if let (Some(m), Some(set)) = (&membership, replica_set) {
        // What replicas forward is served here and never forwarded again.
        let _ = m.late.etcd.set(etcd::router(Arc::new(api.clone_local())));
        let serving_role = role.clone();
        let service = PrimaryService {
            set,
            store: store.clone(),
            writer: write_path.writer.clone(),
            serving: Box::new(move || match serving_role.get().primary {
                PrimaryState::Replica => Err(PrimaryState::Replica.as_str()),
                _ => Ok(()),
            }),
        };
        let _ = m.late.primary.set(Arc::new(service));
        let _ = m.late.hub.set(hub.clone());
        if let Some(interval) = config.cluster.compaction_interval.filter(|d| !d.is_zero()) {
            let scheduler = compaction::CompactionScheduler {
                interval,
                role: role.clone(),
                bucket,
                cluster: m.cluster.clone(),
                hub: hub.clone(),
                store: store.clone(),
                writer: write_path.writer.clone(),
                metrics: metrics.clone(),
            };
            tasks.spawn(scheduler.run(stop.clone()));
        }
    }
    let api = Arc::new(EtcdApi { forwarding, ..api });
    observe_store(&metrics, &store, &hub);
    if let Some(m) = &membership {
        m.loaded.store(true, Ordering::Release);
    }
    // Loaded: healthy (a candidate for Primary), unless heartbeats have
    // failed meanwhile.
    let _ = role.change(|r| match r.health {
        Health::Loading => r.set_health(Health::Healthy),
        _ => Ok(None),
    });
    let driver = driver.spawn();
    if let Some(m) = &membership {
        wait_for_primary(&m.cluster, &store, &followed).await;
    }
    let client = apis.client;
    let cluster_id = &config.cluster.cluster_id;
    let router = etcd::router(api.clone());
    listeners::serve_grpc(
        client.listener,
        tls.as_ref().map(|t| (t, crate::tls::Role::Client)),
        cluster_id,
        router,
        &metrics,
        &mut tasks,
        &stop,
    )
    .map_err(failed)?;
    log::info!(
        "serving the etcd API on {} ({}, revision {}, member id {member_id})",
        client.addr,
        if tls.is_some() {
            "mTLS"
        } else {
            "plain HTTP/2"
        },
        store.committed_revision()
    );
    Ok(Running {
        stop: stop_tx,
        tasks,
        driver,
        membership,
        api,
        commit_thread: write_path.thread,
        _data_dir_lock: data_dir_lock,
    })
}

/// Writes go to the Primary the cluster state names, unless it is this
/// node (or none is named: the write then waits here for one).
struct ClusterForwarding(Arc<membership::Cluster>);

impl etcd::forward::Forwarding for ClusterForwarding {
    fn route(&self) -> etcd::forward::WriteRoute {
        let cluster = &self.0;
        match cluster.state().and_then(|s| s.primary) {
            Some(p) if p.node_id != cluster.me().node_id => {
                etcd::forward::WriteRoute::Primary(cluster.peer(&p.peer_addr))
            }
            _ => etcd::forward::WriteRoute::Local,
        }
    }
}

/// The replica set's node count follows the cluster state (majority
/// quorums are counted from it).
fn follow_node_count(cluster: &Arc<membership::Cluster>, set: &Arc<ReplicaSet>) {
    let mut states = cluster.subscribe();
    let set = Arc::downgrade(set);
    tokio::spawn(async move {
        loop {
            let count = states.borrow_and_update().as_ref().map(|s| s.node_count);
            let Some(set) = set.upgrade() else { return };
            if let Some(n) = count {
                set.set_node_count(n as i64);
            }
            drop(set);
            if states.changed().await.is_err() {
                return;
            }
        }
    });
}

/// How long a cluster member waits for a Primary before it serves clients
/// anyway (writes then answer Unavailable until one is elected).
const PRIMARY_WAIT: Duration = Duration::from_secs(60);

/// A cluster member serves clients once the cluster has a Primary and its
/// own store holds the cluster's first record: reading a cluster nobody
/// has started yet would only show revision 0. A replica also waits until
/// it follows that Primary (`followed`): the stream's Initial carries the
/// compaction revision, which must hold before watches are admitted.
async fn wait_for_primary(cluster: &membership::Cluster, store: &Store, followed: &AtomicBool) {
    let deadline = tokio::time::Instant::now() + PRIMARY_WAIT;
    let mut states = cluster.subscribe();
    loop {
        let ready = match cluster.state().and_then(|s| s.primary) {
            Some(p) if p.node_id == cluster.me().node_id => true,
            Some(_) => followed.load(Ordering::Acquire),
            None => false,
        };
        if ready && store.committed_revision() >= 1 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            log::warn!("no Primary after {PRIMARY_WAIT:?}: serving clients anyway");
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), states.changed()).await;
    }
}

impl Running {
    /// Graceful shutdown: no new connections, requests in flight finish
    /// (up to DRAIN_TIMEOUT), the Primary drains, the node leaves the
    /// cluster, the write path stops.
    async fn stop(mut self) {
        log::info!("shutting down: no new connections, finishing requests in flight");
        crate::failpoint::hit("draining").await;
        let _ = self.stop.send(true);
        let tasks = &mut self.tasks;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        match drained {
            Ok(()) => log::info!("drain_completed: every request finished"),
            Err(_) => {
                log::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
                self.tasks.abort_all();
            }
        }
        if let Some(m) = &mut self.membership {
            m.stop_heartbeats().await;
        }
        self.driver.stop().await;
        if let Some(m) = self.membership {
            m.leave().await;
        }
        // The commit thread ends once the last writer handle is gone.
        drop(self.api);
        let thread = self.commit_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        log::info!("stopped");
    }
}

fn log_restored(c: &CaughtUp) {
    log::info!(
        "restored: snapshot {}{}, {} chunks imported, local revision {}",
        c.snapshot,
        if c.snapshot_imported {
            " (imported)"
        } else {
            ""
        },
        c.chunks_imported,
        c.latest
    );
}

/// Who this node is, as etcd clients see it.
fn identity(config: &Config, member_id: u64, advertise_client: &str) -> Identity {
    let scheme = if config.dev { "http" } else { "https" };
    let peer = &config.node.advertise_peer;
    Identity {
        cluster_id: etcd::fnv1a64(&config.cluster.cluster_id),
        member_id,
        name: config.node.node_id.clone(),
        client_urls: vec![format!("{scheme}://{advertise_client}")],
        peer_urls: match peer.is_empty() {
            true => vec![],
            false => vec![format!("{scheme}://{peer}")],
        },
    }
}

/// The snapshot worker and the chunk cleaner behind it.
fn start_snapshots(
    config: &Config,
    store: &Arc<Store>,
    log: &Arc<ObjectLog>,
    caught_up: &CaughtUp,
    metrics: &Arc<Metrics>,
) -> SnapshotRequests {
    let settings = &config.cluster.snapshot;
    let cleaner = cleanup::start(
        log.clone(),
        CleanupSettings::from_config(settings),
        caught_up.snapshot,
        metrics.clone(),
    );
    let clock = SnapshotClock::new(
        SnapshotPolicy::from_config(settings),
        caught_up.snapshot,
        tokio::time::Instant::now(),
    );
    snapshot::start(store.clone(), log.clone(), clock, cleaner, metrics.clone())
}

/// The node's identity and role in /metrics.
fn observe_node(metrics: &Metrics, config: &Config, role: &Arc<RoleCell>, start_time: i64) {
    metrics.process_start_time.set(start_time);
    let quorum_config = match config.cluster.replication.quorum {
        0 => "disabled".to_string(),
        -1 => "majority".to_string(),
        k => format!("static:{k}"),
    };
    metrics
        .info
        .get_or_create(&InfoLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cluster_id: config.cluster.cluster_id.clone(),
            node_id: config.node.node_id.clone(),
            quorum_config,
        })
        .set(1);
    let role = role.clone();
    metrics.on_scrape(move |m| {
        let r = role.get();
        let health = Health::ALL.map(Health::as_str);
        let elector = ElectorState::ALL.map(ElectorState::as_str);
        let primary = PrimaryState::ALL.map(PrimaryState::as_str);
        Metrics::one_hot(&m.state_health, "state", &health, r.health.as_str());
        Metrics::one_hot(&m.state_elector, "state", &elector, r.elector.as_str());
        Metrics::one_hot(&m.state_primary, "state", &primary, r.primary.as_str());
    });
}

/// The store's revisions and what the watches still need in /metrics.
fn observe_store(metrics: &Metrics, store: &Arc<Store>, hub: &Arc<WatchHub>) {
    let (store, hub) = (store.clone(), hub.clone());
    metrics.on_scrape(move |m| {
        m.latest_revision.set(store.latest_revision());
        m.committed_revision.set(store.committed_revision());
        m.compaction_revision.set(store.compacted_revision());
        m.watch_min_revision.set(hub.min_watch_revision());
    });
}
