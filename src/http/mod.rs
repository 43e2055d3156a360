//! Small HTTP/1.1 listeners: the plain health and metrics one (`GET
//! /health` answers `{"status":"loading|healthy|degraded"}`, 200 only when
//! healthy; `GET /metrics` the Prometheus text exposition), and the
//! server under the election endpoint (HTTPS). One request per
//! connection; routes are functions from method and path to a response.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Where this node's health is read (the node's role machine answers);
/// /health and the etcd Status and Alarm answers share it.
pub trait HealthSource: Send + Sync {
    /// `loading`, `healthy` or `degraded`.
    fn health(&self) -> &'static str;

    fn is_healthy(&self) -> bool {
        self.health() == "healthy"
    }
}

/// Produces the metrics text on demand.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// One answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Code and reason, e.g. "200 OK".
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn new(status: &'static str, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body,
        }
    }

    pub fn not_found() -> Response {
        Response::new("404 Not Found", "text/plain", "not found\n".into())
    }

    pub fn method_not_allowed() -> Response {
        Response::new(
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        )
    }
}

/// Answers a request given its method and path (query removed).
pub type Routes = Arc<dyn Fn(&str, &str) -> Response + Send + Sync>;

/// The health and metrics routes.
pub fn health_routes(health: Arc<dyn HealthSource>, metrics: MetricsFn) -> Routes {
    Arc::new(move |method, path| match (method, path) {
        (_, "/health") => {
            let code = if health.is_healthy() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let body = format!("{{\"status\":\"{}\"}}", health.health());
            Response::new(code, "application/json", body)
        }
        ("GET", "/metrics") => Response::new(
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(),
        ),
        (_, "/metrics") => Response::method_not_allowed(),
        _ => Response::not_found(),
    })
}

/// How long one connection may take, request and answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves plain HTTP until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    serve_with(listener, None, routes, shutdown).await
}

/// Serves HTTP, over TLS when an acceptor is given, until `shutdown` fires.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: Routes,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let (routes, tls) = (routes.clone(), tls.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, async move {
                        match tls {
                            None => answer(conn, &routes).await,
                            Some(acceptor) => match acceptor.accept(conn).await {
                                Ok(stream) => answer(stream, &routes).await,
                                Err(e) => {
                                    log::debug!("TLS handshake on an HTTPS listener failed: {e}");
                                    Ok(())
                                }
                            },
                        }
                    })
                    .await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    routes: &Routes,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let r = routes(method, path);
    let response = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        r.content_type,
        r.body.len(),
        r.body
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}
