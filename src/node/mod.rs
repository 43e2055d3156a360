//! Node lifecycle: report loading, open the local store, register with and
//! restore from object storage, run preflight as the (lone) Primary, start
//! the write path and the listeners, report healthy, and shut down
//! gracefully.

pub mod failpoint;
pub mod peer;
pub mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{node_env::bind_address, Config};
use crate::election::discovery::{self, Registration};
use crate::etcd::{self, ApiSettings, EtcdApi, Identity};
use crate::grpc::{Server, ServerConfig};
use crate::http::metrics::{labels, metrics, InfoLabels, Metrics};
use crate::log::cleanup::{self, CleanupSettings};
use crate::log::restore::{self, CaughtUp};
use crate::log::snapshot::{self, SnapshotClock, SnapshotPolicy};
use crate::log::{LogError, ObjectLog};
use crate::primary::Durability;
use crate::store::{Store, StoreError};
use crate::tls::{Role, TlsMaterial};
use crate::watch::{RingLimits, WatchHub};
use state::{Health, HealthCell};

/// How long in-flight requests may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn bind(setting: &str, value: &str) -> Result<TcpListener, String> {
    let addr = bind_address(setting, value)?;
    TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("{setting}: cannot listen on {addr}: {e}"))
}

async fn open_store(data_dir: &Path) -> Result<Arc<Store>, String> {
    let dir = data_dir.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .map_err(|e| format!("opening the local store failed: {e}"))?;
    Ok(Arc::new(opened.map_err(|e| {
        format!(
            "NETSY_DATA_DIR ({}): cannot open the local store: {e}",
            data_dir.display()
        )
    })?))
}

/// Moves a local database that disagrees with object storage aside, so the
/// node rebuilds it from the bucket.
fn set_aside(data_dir: &Path) -> Result<(), String> {
    let stamp = crate::store::Timestamp::now().seconds;
    for name in ["db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"] {
        let from = data_dir.join(name);
        if from.exists() {
            let to = data_dir.join(format!("{name}.diverged-{stamp}"));
            std::fs::rename(&from, &to)
                .map_err(|e| format!("moving {} aside: {e}", from.display()))?;
        }
    }
    Ok(())
}

fn diverged(e: &LogError) -> bool {
    let (LogError::Store(error) | LogError::Import { error, .. }) = e else {
        return false;
    };
    matches!(
        error,
        StoreError::Conflict { .. } | StoreError::Gap { .. } | StoreError::Integrity { .. }
    )
}

/// Restores from object storage; a local store that diverged from the bucket
/// is set aside and rebuilt once.
async fn load(config: &Config, log: &ObjectLog) -> Result<(Arc<Store>, CaughtUp), String> {
    let data_dir = &config.node.data_dir;
    let store = open_store(data_dir).await?;
    match restore::catch_up(&store, log).await {
        Ok(report) => return Ok((store, report)),
        Err(e) if diverged(&e) => {
            log::warn!(
                "the local store disagrees with object storage ({e}); rebuilding it from {}",
                log.store.describe()
            );
        }
        Err(e) => return Err(format!("restoring from {}: {e}", log.store.describe())),
    }
    drop(store);
    set_aside(data_dir)?;
    metrics()
        .local_db_rebuilds
        .get_or_create(&labels(&[("reason", "integrity_check_failed")]))
        .inc();
    metrics()
        .loading_restarts
        .get_or_create(&labels(&[("reason", "integrity_check_failed")]))
        .inc();
    let store = open_store(data_dir).await?;
    let report = restore::catch_up(&store, log).await.map_err(|e| {
        format!(
            "restoring from {} after a rebuild: {e}",
            log.store.describe()
        )
    })?;
    Ok((store, report))
}

/// Runs a loading stage and records its duration and outcome
/// (`netsy_loading_stage_duration_seconds`).
async fn timed_stage<T>(
    stage: &'static str,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let started = std::time::Instant::now();
    log::info!("loading_stage_started: {stage}");
    let result = work.await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    metrics()
        .loading_stage_duration
        .get_or_create(&labels(&[("stage", stage), ("result", outcome)]))
        .observe(started.elapsed().as_secs_f64());
    log::info!(
        "loading_stage_completed: {stage} ({outcome}) in {:?}",
        started.elapsed()
    );
    result
}

/// Runs the node until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let node_id = config.node.node_id.clone();
    let start_time = crate::store::Timestamp::now().seconds;
    for line in config.describe() {
        log::info!("setting {line}");
    }
    // Outside --dev every API listener is mTLS; the node's own certificates
    // are checked before anything is bound.
    let tls = if config.dev {
        None
    } else {
        let material = TlsMaterial::load(&config.node.tls)?;
        let n = &config.node;
        material.validate(
            &config.cluster.cluster_id,
            &node_id,
            &[
                ("NETSY_ADVERTISE_CLIENT", n.advertise_client.as_str()),
                ("NETSY_ADVERTISE_PEER", n.advertise_peer.as_str()),
                ("NETSY_ADVERTISE_ELECTION", n.advertise_election.as_str()),
            ],
        )?;
        log::info!(
            "node certificates verified for netsy://{}/peer/{node_id}",
            config.cluster.cluster_id
        );
        Some(material)
    };
    let health = Arc::new(HealthCell::new(Health::Loading));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    // Health first, so it reports loading while the node restores.
    let m = metrics();
    m.process_start_time.set(start_time);
    m.info
        .get_or_create(&InfoLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cluster_id: config.cluster.cluster_id.clone(),
            node_id: node_id.clone(),
            quorum_config: match config.cluster.replication.quorum {
                0 => "disabled".to_string(),
                -1 => "majority".to_string(),
                k => format!("static:{k}"),
            },
        })
        .set(1);
    {
        let health = health.clone();
        m.on_scrape(move |m| {
            Metrics::one_hot(
                &m.state_health,
                "state",
                &["loading", "healthy", "degraded"],
                health.get().as_str(),
            );
            // A lone node is its own Elector.
            Metrics::one_hot(&m.state_elector, "state", &["follower", "leader"], "leader");
        });
    }
    if !config.node.bind_health.is_empty() {
        let listener = bind("NETSY_BIND_HEALTH", &config.node.bind_health).await?;
        if let Ok(addr) = listener.local_addr() {
            log::info!("serving health and metrics on {addr}");
        }
        let render: crate::http::MetricsFn = Arc::new(|| metrics().render());
        tasks.spawn(crate::http::serve(
            listener,
            health.clone(),
            render,
            stop_rx.clone(),
        ));
    }
    let client_listener = bind("NETSY_BIND_CLIENT", &config.node.bind_client).await?;
    let peer_listener = match &tls {
        Some(_) => Some(bind("NETSY_BIND_PEER", &config.node.bind_peer).await?),
        None => None,
    };
    let client_addr = client_listener
        .local_addr()
        .map_err(|e| format!("NETSY_BIND_CLIENT: {e}"))?;
    let advertise = if config.node.advertise_client.is_empty() {
        client_addr.to_string()
    } else {
        config.node.advertise_client.clone()
    };

    let env = |name: &str| std::env::var(name).ok();
    let objects = crate::objstore::from_config(&config.cluster.storage, &env)?;
    log::info!("object storage: {}", objects.describe());
    let log = Arc::new(ObjectLog::new(objects, &node_id, &config.node.data_dir)?);
    failpoint::hold("loading").await;
    let member_id = timed_stage("registration", async {
        if !config.dev {
            let reg = Registration {
                node_id: node_id.clone(),
                client_advertise_address: advertise.clone(),
                peer_advertise_address: config.node.advertise_peer.clone(),
            };
            discovery::ensure_registration(&*log.store, &reg).await?;
        }
        discovery::member_id(&log, &config.cluster.cluster_id, &node_id).await
    })
    .await?;
    let (store, caught_up) = timed_stage("backfill", load(&config, &log)).await?;
    log::info!(
        "restored: snapshot {}{}, {} chunks imported, local revision {}",
        caught_up.snapshot,
        if caught_up.snapshot_imported {
            " (imported)"
        } else {
            ""
        },
        caught_up.chunks_imported,
        caught_up.latest
    );
    restore::preflight(&store, &log, caught_up.durable)
        .await
        .map_err(|e| format!("preflight: {e}"))?;

    let cleaner = cleanup::start(
        log.clone(),
        CleanupSettings::from_config(&config.cluster.snapshot),
        caught_up.snapshot,
    );
    let clock = SnapshotClock::new(
        SnapshotPolicy::from_config(&config.cluster.snapshot),
        caught_up.snapshot,
        tokio::time::Instant::now(),
    );
    let snapshots = snapshot::start(store.clone(), log.clone(), clock, cleaner);
    let hub = Arc::new(WatchHub::new(
        store.committed_revision(),
        RingLimits::default(),
    ));
    let durability = Durability {
        log: log.clone(),
        runtime: tokio::runtime::Handle::current(),
        snapshots: Some(snapshots),
    };
    let (writer, write_state, committer) = crate::primary::start(
        store.clone(),
        hub.clone(),
        node_id.clone(),
        Some(durability),
    );

    let scheme = if config.dev { "http" } else { "https" };
    let identity = Identity {
        cluster_id: etcd::fnv1a64(&config.cluster.cluster_id),
        member_id,
        name: node_id.clone(),
        client_urls: vec![format!("{scheme}://{advertise}")],
        peer_urls: if config.node.advertise_peer.is_empty() {
            vec![]
        } else {
            vec![format!("{scheme}://{}", config.node.advertise_peer)]
        },
    };
    let api = Arc::new(EtcdApi {
        store: store.clone(),
        writer,
        hub,
        identity,
        health: health.clone(),
        settings: ApiSettings::default(),
        shutdown: stop_rx.clone(),
    });
    {
        let (store, writes) = (store.clone(), write_state.clone());
        m.on_scrape(move |m| {
            m.latest_revision.set(store.latest_revision());
            m.committed_revision.set(store.committed_revision());
            m.compaction_revision.set(store.compacted_revision());
            let primary = if writes.is_draining() {
                "draining"
            } else {
                "active"
            };
            Metrics::one_hot(
                &m.state_primary,
                "state",
                &["replica", "starting", "active", "draining"],
                primary,
            );
            Metrics::one_hot(&m.primary_write_path, "path", &["sync", "quorum"], "sync");
            let last = snapshot::LAST_SNAPSHOT_UNIX.load(std::sync::atomic::Ordering::Relaxed);
            if last > 0 {
                m.primary_snapshot_age
                    .set(crate::store::Timestamp::now().seconds - last);
            }
        });
    }
    let server = Server::new(etcd::router(api.clone()), ServerConfig::default());
    let server_stop = stop_rx.clone();
    match &tls {
        None => {
            tasks.spawn(async move { server.serve_tcp(client_listener, server_stop).await });
        }
        Some(material) => {
            let client_tls = material.server_config(Role::Client, &config.cluster.cluster_id)?;
            tasks.spawn(async move {
                server
                    .serve_tls(client_listener, client_tls, server_stop)
                    .await
            });
        }
    }
    if let (Some(material), Some(listener)) = (&tls, peer_listener) {
        let peer_tls = material.server_config(Role::Peer, &config.cluster.cluster_id)?;
        let view = Arc::new(peer::NodeView {
            node_id: node_id.clone(),
            health: health.clone(),
            store: store.clone(),
            writes: write_state.clone(),
            start_time,
        });
        if let Ok(addr) = listener.local_addr() {
            log::info!("serving the peer API on {addr}");
        }
        let peer_server = Server::new(peer::router(view), ServerConfig::default());
        let stop = stop_rx.clone();
        tasks.spawn(async move { peer_server.serve_tls(listener, peer_tls, stop).await });
    }
    log::info!(
        "serving the etcd API on {client_addr} ({}, revision {}, member id {member_id})",
        if tls.is_some() {
            "mTLS"
        } else {
            "plain HTTP/2"
        },
        store.committed_revision()
    );
    state::set_role("primary");
    health.set(Health::Healthy);

    shutdown.await;
    log::info!("shutting down: no new connections, finishing requests in flight");
    failpoint::hold("draining").await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => log::info!("drain_completed: every request finished"),
        Err(_) => {
            log::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
            tasks.abort_all();
        }
    }
    health.set(Health::Degraded);
    // The commit thread ends once the last writer handle is gone.
    drop(api);
    let _ = tokio::task::spawn_blocking(move || committer.join()).await;
    log::info!("stopped");
    Ok(())
}
