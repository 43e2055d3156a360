//! Serves gRPC over HTTP/2 connections: accepts streams, validates the
//! request headers, and dispatches to the router. Also keeps connections
//! healthy: keepalive pings to find dead peers, and an idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::call::{reject, Inbound, Outbound, RequestContext};
use super::queued::{Counted, QueuedStreams};
use super::router::{Call, Router};
use super::status::Status;
use super::timeout;
use crate::http::metrics::{labels, Metrics};

/// Tunables of one gRPC server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request message accepted (etcd: 1.5 MiB request limit plus
    /// 512 KiB of gRPC overhead).
    pub max_recv_message_len: usize,
    pub max_concurrent_streams: u32,
    /// Server-initiated PING interval on a connection (finds dead peers).
    pub keepalive_interval: Duration,
    /// How long to wait for the PING acknowledgement before closing.
    pub keepalive_timeout: Duration,
    /// Close a connection that has had no open stream for this long.
    pub idle_timeout: Option<Duration>,
    pub stream_window: u32,
    pub connection_window: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_recv_message_len: 2 * 1024 * 1024,
            max_concurrent_streams: 100_000,
            keepalive_interval: Duration::from_secs(2 * 3600),
            keepalive_timeout: Duration::from_secs(20),
            // Connections without a stream for this long are closed with
            // GOAWAY; clients reconnect transparently.
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            stream_window: 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
        }
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes a connection whose TLS handshake was refused so the client reads
/// the alert saying why: a TLS 1.3 client sends its first requests before
/// the server has checked its certificate, and closing with those unread
/// would make the kernel reset the connection, destroying the alert.
/// So: end our side, then read and discard briefly until the client closes.
async fn close_refused(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            total += n;
            if total > REFUSED_DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_DRAIN_TIME, drain).await;
}

/// How long and how much a refused connection is drained before closing.
const REFUSED_DRAIN_TIME: Duration = Duration::from_secs(1);
const REFUSED_DRAIN_LIMIT: usize = 256 * 1024;

/// Shutdown signal shared by the accept loop and every connection.
pub type Shutdown = watch::Receiver<bool>;

/// A gRPC server: a router plus connection settings.
#[derive(Clone)]
pub struct Server {
    router: Arc<Router>,
    config: Arc<ServerConfig>,
    /// Where calls are counted and timed (grpc_server_*), if anywhere.
    metrics: Option<Arc<Metrics>>,
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    pub identity: Option<String>,
}

impl Server {
    pub fn new(router: Router, config: ServerConfig) -> Server {
        Server {
            router: Arc::new(router),
            config: Arc::new(config),
            metrics: None,
        }
    }

    /// Counts and times every call in `grpc_server_*`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Server {
        Server {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Accepts plain-TCP (h2c prior knowledge) connections until shutdown,
    /// then waits for open connections to drain.
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: Shutdown) {
        self.accept_loop(listener, shutdown, None).await
    }

    /// Accepts TLS connections (ALPN h2) until shutdown. The configuration
    /// decides which client certificates are let in; the verified identity
    /// reaches handlers in [`RequestContext::identity`].
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: Shutdown,
    ) {
        self.accept_loop(
            listener,
            shutdown,
            Some(tokio_rustls::TlsAcceptor::from(config)),
        )
        .await
    }

    async fn accept_loop(
        &self,
        listener: TcpListener,
        mut shutdown: Shutdown,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        let _ = tcp.set_nodelay(true);
                        let server = self.clone();
                        let sd = shutdown.clone();
                        let tls = tls.clone();
                        conns.spawn(async move {
                            let Some(acceptor) = tls else {
                                let peer = PeerInfo { remote_addr: Some(addr), identity: None };
                                return server.serve_connection(tcp, peer, sd).await;
                            };
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
                                Ok(Ok(stream)) => {
                                    let identity = crate::tls::peer_identity(stream.get_ref().1).map(|id| id.uri());
                                    let peer = PeerInfo { remote_addr: Some(addr), identity };
                                    server.serve_connection(stream, peer, sd).await
                                }
                                Ok(Err((e, tcp))) => {
                                    log::info!("TLS handshake with {addr} failed: {e}");
                                    close_refused(tcp).await;
                                }
                                Err(_) => log::info!("TLS handshake with {addr} timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off briefly.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        while conns.join_next().await.is_some() {}
    }

    /// Serves one established connection (TCP or TLS) until it closes or
    /// shutdown drains it.
    pub async fn serve_connection<IO>(&self, io: IO, peer: PeerInfo, mut shutdown: Shutdown)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.config;
        let (io, drain) = super::write_batch::batched(io);
        let handshake = h2::server::Builder::new()
            .initial_window_size(cfg.stream_window)
            .initial_connection_window_size(cfg.connection_window)
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(64 * 1024)
            .max_send_buffer_size(1024 * 1024)
            .handshake::<_, Bytes>(io);
        let mut handshake = std::pin::pin!(handshake);
        let mut conn = match std::future::poll_fn(|cx| {
            drain.after(cx, |cx| std::future::Future::poll(handshake.as_mut(), cx))
        })
        .await
        {
            Ok(c) => c,
            Err(e) => {
                log::debug!("h2 handshake with {:?} failed: {e}", peer.remote_addr);
                return;
            }
        };
        let active = Arc::new(AtomicUsize::new(0));
        let queued = QueuedStreams::default();
        let (dead_tx, mut dead_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(ping_pong) = conn.ping_pong() {
            tokio::spawn(keepalive(
                ping_pong,
                cfg.keepalive_interval,
                cfg.keepalive_timeout,
                dead_tx,
            ));
        }
        let mut idle_since = Some(Instant::now());
        let idle_timeout = cfg.idle_timeout;
        let mut draining = *shutdown.borrow();
        if draining {
            conn.graceful_shutdown();
        }
        let mut idle_check = tokio::time::interval(
            Duration::from_secs(1).min(idle_timeout.unwrap_or(Duration::from_secs(1))),
        );
        loop {
            tokio::select! {
                next = std::future::poll_fn(|cx| {
                    drain.turn(cx, queued.count(), |cx| conn.poll_accept(cx))
                }) => match next {
                    Some(Ok((request, respond))) => {
                        idle_since = None;
                        let guard = Counted::new(active.clone());
                        let router = self.router.clone();
                        let cfg = self.config.clone();
                        let metrics = self.metrics.clone();
                        let peer = peer.clone();
                        let queued = queued.clone();
                        tokio::spawn(async move {
                            let stream = handle_stream(request, respond, &router, &cfg, peer, metrics.as_deref());
                            queued.track(stream).await;
                            drop(guard);
                        });
                    }
                    Some(Err(e)) => {
                        log::debug!("connection from {:?} ended: {e}", peer.remote_addr);
                        break;
                    }
                    None => break,
                },
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                    conn.graceful_shutdown();
                }
                _ = &mut dead_rx => {
                    log::info!("closing connection from {:?}: keepalive ping not answered", peer.remote_addr);
                    break;
                }
                _ = idle_check.tick(), if idle_timeout.is_some() && !draining => {
                    drain.release_capacity();
                    if active.load(Ordering::Acquire) > 0 {
                        idle_since = None;
                    } else {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if idle_timeout.is_some_and(|t| since.elapsed() >= t) {
                            log::debug!("closing idle connection from {:?}", peer.remote_addr);
                            draining = true;
                            conn.graceful_shutdown();
                        }
                    }
                }
            }
        }
    }
}

async fn keepalive(
    mut ping_pong: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    dead: tokio::sync::oneshot::Sender<()>,
) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => continue,
            // The connection closed on its own: nothing to do.
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = dead.send(());
                return;
            }
        }
    }
}

/// Validates one request's headers and runs its handler.
async fn handle_stream(
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    router: &Router,
    cfg: &ServerConfig,
    peer: PeerInfo,
    metrics: Option<&Metrics>,
) {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        let status = Status::internal(format!(
            "invalid gRPC request method {:?}",
            parts.method.as_str()
        ));
        return reject(respond, StatusCode::METHOD_NOT_ALLOWED, status);
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_grpc_content_type(content_type) {
        let status = Status::invalid_argument(format!(
            "invalid gRPC request content-type {content_type:?}"
        ));
        return reject(respond, StatusCode::UNSUPPORTED_MEDIA_TYPE, status);
    }
    let deadline = match parts.headers.get("grpc-timeout") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(timeout::parse) {
            Some(d) => Some(Instant::now() + d),
            None => {
                let status = Status::internal(format!("transport: malformed grpc-timeout: {v:?}"));
                return reject(respond, StatusCode::OK, status);
            }
        },
    };
    let handler = match router.lookup(parts.uri.path()) {
        Ok(h) => h.clone(),
        Err(status) => {
            if let Some(m) = metrics {
                record(m, &["unknown", "unknown"], status.code, None);
            }
            return reject(respond, StatusCode::OK, status);
        }
    };
    let encoding = parts
        .headers
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parts_path = parts.uri.path().to_string();
    let call = Call {
        ctx: RequestContext {
            remote_addr: peer.remote_addr,
            identity: peer.identity,
            deadline,
            headers: parts.headers,
        },
        inbound: Inbound::new(body, cfg.max_recv_message_len, encoding),
        outbound: Outbound::new(respond),
    };
    let (service, method) = parts_of(&parts_path);
    let names = [service, method];
    let handles = metrics.map(|m| m.grpc_method(&parts_path, service, method));
    if let Some(h) = &handles {
        h.started.inc();
    }
    let started = std::time::Instant::now();
    let finished = handler(call).await;
    match (metrics, &handles) {
        (Some(_), Some(h)) if finished.0 == super::status::Code::Ok => {
            h.handled_ok.inc();
            h.handling_seconds.observe(started.elapsed().as_secs_f64());
        }
        (Some(m), _) => record(m, &names, finished.0, Some(started)),
        (None, _) => {}
    }
}

/// `/pkg.Service/Method` → (service, method).
fn parts_of(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .rsplit_once('/')
        .unwrap_or(("unknown", "unknown"))
}

fn record(
    m: &Metrics,
    names: &[&str; 2],
    code: super::status::Code,
    started: Option<std::time::Instant>,
) {
    let base = [("grpc_service", names[0]), ("grpc_method", names[1])];
    let mut with_code = labels(&base);
    with_code.push(("grpc_code".to_string(), code.name().to_string()));
    m.grpc_handled.get_or_create(&with_code).inc();
    if let Some(t) = started {
        m.grpc_handling_seconds
            .get_or_create(&labels(&base))
            .observe(t.elapsed().as_secs_f64());
    }
}

/// `application/grpc` optionally followed by `+proto` or `;params`.
fn is_grpc_content_type(ct: &str) -> bool {
    match ct.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_rules() {
        assert!(is_grpc_content_type("application/grpc"));
        assert!(is_grpc_content_type("application/grpc+proto"));
        assert!(is_grpc_content_type("application/grpc;charset=utf-8"));
        assert!(!is_grpc_content_type("application/grpcx"));
        assert!(!is_grpc_content_type("application/json"));
        assert!(!is_grpc_content_type(""));
    }
}
