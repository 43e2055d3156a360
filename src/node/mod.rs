//! Node lifecycle: open the local store, start the write path and the
//! listeners, report health, and shut down gracefully.

pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{node_env::bind_address, Config};
use crate::etcd::{self, ApiSettings, EtcdApi, Identity};
use crate::grpc::{Server, ServerConfig};
use crate::store::{Batch, Record, Store};
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

/// Runs the node until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let node_id = config.node.node_id.clone();
    let health = Arc::new(HealthCell::new(Health::Loading));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let store = {
        let data_dir = config.node.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|e| format!("opening the local store panicked: {e}"))?;
        Arc::new(opened.map_err(|e| {
            format!(
                "NETSY_DATA_DIR ({}): cannot open the local store: {e}",
                config.node.data_dir.display()
            )
        })?)
    };
    if store.latest_revision() == 0 {
        // A brand-new store starts with the internal record, so the first
        // client write gets revision 2, as in etcd.
        let batch = Batch {
            records: vec![Record::internal(&node_id)],
            ..Default::default()
        };
        store
            .persist(&batch)
            .map_err(|e| format!("initialising the local store: {e}"))?;
        store.publish(&batch);
    }

    let health_listener = if config.node.bind_health.is_empty() {
        None
    } else {
        Some(bind("NETSY_BIND_HEALTH", &config.node.bind_health).await?)
    };
    let client_listener = bind("NETSY_BIND_CLIENT", &config.node.bind_client).await?;
    let client_addr = client_listener
        .local_addr()
        .map_err(|e| format!("NETSY_BIND_CLIENT: {e}"))?;

    let hub = Arc::new(WatchHub::new(
        store.committed_revision(),
        RingLimits::default(),
    ));
    let (writer, committer) = crate::primary::start(store.clone(), hub.clone(), node_id.clone());

    let advertise = if config.node.advertise_client.is_empty() {
        client_addr.to_string()
    } else {
        config.node.advertise_client.clone()
    };
    let scheme = if config.dev { "http" } else { "https" };
    let identity = Identity {
        cluster_id: etcd::fnv1a64(&config.cluster.cluster_id),
        member_id: 1,
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
    });

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = health_listener {
        if let Ok(addr) = listener.local_addr() {
            log::info!("serving health and metrics on {addr}");
        }
        let metrics_store = store.clone();
        let metrics: crate::http::MetricsFn = Arc::new(move || {
            format!(
                "# TYPE netsy_committed_revision gauge\nnetsy_committed_revision {}\n# TYPE netsy_compaction_revision gauge\nnetsy_compaction_revision {}\n",
                metrics_store.committed_revision(),
                metrics_store.compacted_revision()
            )
        });
        tasks.spawn(crate::http::serve(
            listener,
            health.clone(),
            metrics,
            stop_rx.clone(),
        ));
    }
    let server = Server::new(etcd::router(api.clone()), ServerConfig::default());
    let server_stop = stop_rx.clone();
    tasks.spawn(async move { server.serve_tcp(client_listener, server_stop).await });
    log::info!(
        "serving the etcd API on {client_addr} (revision {})",
        store.committed_revision()
    );
    health.set(Health::Healthy);

    shutdown.await;
    log::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
        tasks.abort_all();
    }
    health.set(Health::Degraded);
    // The commit thread ends once the last writer handle is gone.
    drop(api);
    let _ = tokio::task::spawn_blocking(move || committer.join()).await;
    log::info!("stopped");
    Ok(())
}
