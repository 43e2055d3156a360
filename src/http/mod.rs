//! The plain-HTTP health and metrics listener: `GET /health` answers
//! `{"status":"loading|healthy|degraded"}` (200 only when healthy) and
//! `GET /metrics` the Prometheus text exposition.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    health: Arc<dyn HealthSource>,
    metrics: MetricsFn,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((conn, _)) = accepted {
                    let health = health.clone();
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), answer(conn, &health, &metrics)).await;
                    });
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn answer(
    mut conn: TcpStream,
    health: &Arc<dyn HealthSource>,
    metrics: &MetricsFn,
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
    let (status, content_type, body) = match (method, path) {
        (_, "/health") => {
            let code = if health.is_healthy() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (
                code,
                "application/json",
                format!("{{\"status\":\"{}\"}}", health.health()),
            )
        }
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics(),
        ),
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}
