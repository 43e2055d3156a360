//! The node's listeners: the node's own certificates checked before anything
//! is bound, health and metrics (plain HTTP, first), then the client API
//! and (outside --dev) the peer API, served once the node is ready.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{node_env::bind_address, Config};
use crate::grpc::{Router, Server, ServerConfig, Shutdown};
use crate::http::metrics::Metrics;
use crate::http::HealthSource;
use crate::tls::{Role, TlsMaterial};

async fn bind(setting: &str, value: &str) -> Result<TcpListener, String> {
    let addr = bind_address(setting, value)?;
    TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("{setting}: cannot listen on {addr}: {e}"))
}

/// Outside --dev every API listener is mTLS: loads the node's certificates
/// and checks them against its cluster, node id and advertise addresses.
pub fn check_tls(config: &Config) -> Result<Option<TlsMaterial>, String> {
    if config.dev {
        return Ok(None);
    }
    let material = TlsMaterial::load(&config.node.tls)?;
    let n = &config.node;
    material.validate(
        &config.cluster.cluster_id,
        &n.node_id,
        &[
            ("NETSY_ADVERTISE_CLIENT", n.advertise_client.as_str()),
            ("NETSY_ADVERTISE_PEER", n.advertise_peer.as_str()),
            ("NETSY_ADVERTISE_ELECTION", n.advertise_election.as_str()),
        ],
    )?;
    log::info!(
        "node certificates verified for netsy://{}/peer/{}",
        config.cluster.cluster_id,
        n.node_id
    );
    Ok(Some(material))
}

/// Serves /health and /metrics (when NETSY_BIND_HEALTH is set).
pub async fn serve_health(
    config: &Config,
    tasks: &mut JoinSet<()>,
    health: Arc<dyn HealthSource>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) -> Result<(), String> {
    if config.node.bind_health.is_empty() {
        return Ok(());
    }
    let listener = bind("NETSY_BIND_HEALTH", &config.node.bind_health).await?;
    if let Ok(addr) = listener.local_addr() {
        log::info!("serving health and metrics on {addr}");
    }
    let render: crate::http::MetricsFn = Arc::new(move || metrics.render());
    let routes = crate::http::health_routes(health, render);
    tasks.spawn(crate::http::serve(listener, routes, stop));
    Ok(())
}

/// The API listeners, bound early so a busy port fails the start at once.
pub struct ApiListeners {
    pub client: TcpListener,
    pub client_addr: SocketAddr,
    /// NETSY_ADVERTISE_CLIENT, or the bound address.
    pub advertise_client: String,
    pub peer: Option<TcpListener>,
}

pub async fn bind_apis(config: &Config, tls: bool) -> Result<ApiListeners, String> {
    let client = bind("NETSY_BIND_CLIENT", &config.node.bind_client).await?;
    let peer = match tls {
        true => Some(bind("NETSY_BIND_PEER", &config.node.bind_peer).await?),
        false => None,
    };
    let client_addr = client
        .local_addr()
        .map_err(|e| format!("NETSY_BIND_CLIENT: {e}"))?;
    let advertise_client = if config.node.advertise_client.is_empty() {
        client_addr.to_string()
    } else {
        config.node.advertise_client.clone()
    };
    Ok(ApiListeners {
        client,
        client_addr,
        advertise_client,
        peer,
    })
}

/// Serves the client API and, with TLS, the peer API.
pub fn serve_apis(
    listeners: ApiListeners,
    tls: Option<&TlsMaterial>,
    cluster_id: &str,
    routers: (Router, Router),
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    stop: &Shutdown,
) -> Result<(), String> {
    let (client_router, peer_router) = routers;
    let server = Server::new(client_router, ServerConfig::default()).with_metrics(metrics.clone());
    let (listener, stop_client) = (listeners.client, stop.clone());
    match tls {
        None => {
            tasks.spawn(async move { server.serve_tcp(listener, stop_client).await });
        }
        Some(material) => {
            let client_tls = material.server_config(Role::Client, cluster_id)?;
            tasks.spawn(async move { server.serve_tls(listener, client_tls, stop_client).await });
        }
    }
    if let (Some(material), Some(listener)) = (tls, listeners.peer) {
        let peer_tls = material.server_config(Role::Peer, cluster_id)?;
        if let Ok(addr) = listener.local_addr() {
            log::info!("serving the peer API on {addr}");
        }
        let server =
            Server::new(peer_router, ServerConfig::default()).with_metrics(metrics.clone());
        let stop = stop.clone();
        tasks.spawn(async move { server.serve_tls(listener, peer_tls, stop).await });
    }
    Ok(())
}
