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

/// A bound listener and the address others dial for it.
pub struct Bound {
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// The advertise setting, or the bound address when it is unset.
    pub advertise: String,
}

/// The address others dial: the advertise setting, or the bound address
/// when it is unset, except in a cluster when that is every interface
/// (0.0.0.0 or ::), which no other node can dial.
fn advertised(
    setting: &str,
    addr: SocketAddr,
    advertise_setting: &str,
    advertise: &str,
    cluster: bool,
) -> Result<String, String> {
    if !advertise.is_empty() {
        Ok(advertise.to_string())
    } else if cluster && addr.ip().is_unspecified() {
        Err(format!(
            "{advertise_setting} must be set: {setting} listens on every interface ({addr})"
        ))
    } else {
        Ok(addr.to_string())
    }
}

async fn bind_advertised(
    setting: &str,
    bind_value: &str,
    advertise_setting: &str,
    advertise: &str,
    cluster: bool,
) -> Result<Bound, String> {
    let listener = bind(setting, bind_value).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("{setting}: {e}"))?;
    let advertise = advertised(setting, addr, advertise_setting, advertise, cluster)?;
    Ok(Bound {
        listener,
        addr,
        advertise,
    })
}

/// The listeners, bound early so a busy port fails the start at once: the
/// client API always; the peer API and the election endpoint outside
/// --dev.
pub struct ApiListeners {
    pub client: Bound,
    pub peer: Option<Bound>,
    pub election: Option<Bound>,
}

pub async fn bind_apis(config: &Config, cluster: bool) -> Result<ApiListeners, String> {
    let n = &config.node;
    let client = bind_advertised(
        "NETSY_BIND_CLIENT",
        &n.bind_client,
        "NETSY_ADVERTISE_CLIENT",
        &n.advertise_client,
        cluster,
    )
    .await?;
    let (peer, election) = if cluster {
        let peer = bind_advertised(
            "NETSY_BIND_PEER",
            &n.bind_peer,
            "NETSY_ADVERTISE_PEER",
            &n.advertise_peer,
            true,
        )
        .await?;
        let election = bind_advertised(
            "NETSY_BIND_ELECTION",
            &n.bind_election,
            "NETSY_ADVERTISE_ELECTION",
            &n.advertise_election,
            true,
        )
        .await?;
        (Some(peer), Some(election))
    } else {
        (None, None)
    };
    Ok(ApiListeners {
        client,
        peer,
        election,
    })
}

/// Serves a gRPC API: with TLS, only certificates of `role` (of this
/// cluster) are admitted; without (the client API in --dev), plain TCP.
pub fn serve_grpc(
    listener: TcpListener,
    tls: Option<(&TlsMaterial, Role)>,
    cluster_id: &str,
    router: Router,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
    stop: &Shutdown,
) -> Result<(), String> {
    let server = Server::new(router, ServerConfig::default()).with_metrics(metrics.clone());
    let stop = stop.clone();
    match tls {
        None => {
            tasks.spawn(async move { server.serve_tcp(listener, stop).await });
        }
        Some((material, role)) => {
            let config = material.server_config(role, cluster_id)?;
            tasks.spawn(async move { server.serve_tls(listener, config, stop).await });
        }
    }
    Ok(())
}

/// Serves the election endpoint (HTTPS, no client certificate).
pub fn serve_election(
    listener: TcpListener,
    tls: &TlsMaterial,
    routes: crate::http::Routes,
    tasks: &mut JoinSet<()>,
    stop: &Shutdown,
) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.election_server_config()?);
    if let Ok(addr) = listener.local_addr() {
        log::info!("serving the election endpoint on {addr}");
    }
    tasks.spawn(crate::http::serve_with(
        listener,
        Some(acceptor),
        routes,
        stop.clone(),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_node_bound_to_every_interface_must_say_how_it_is_dialled() {
        let any: SocketAddr = "0.0.0.0:2381".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:2381".parse().unwrap();
        let ask = |addr, adv: &str, cluster| {
            advertised(
                "NETSY_BIND_PEER",
                addr,
                "NETSY_ADVERTISE_PEER",
                adv,
                cluster,
            )
        };
        assert_eq!(
            ask(any, "", true).unwrap_err(),
            "NETSY_ADVERTISE_PEER must be set: NETSY_BIND_PEER listens on every interface (0.0.0.0:2381)"
        );
        assert_eq!(ask(any, "n1:2381", true).unwrap(), "n1:2381");
        assert_eq!(ask(lo, "", true).unwrap(), "127.0.0.1:2381");
        assert_eq!(ask(any, "", false).unwrap(), "0.0.0.0:2381", "--dev");
    }
}
