//! Connection-level behaviour of our gRPC server and client over real
//! loopback sockets: deadlines, client pings, dead-peer and idle cleanup.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::pb::etcdserverpb::{StatusRequest, StatusResponse};

async fn start(config: ServerConfig) -> (String, tokio::sync::watch::Sender<bool>) {
    let mut router = Router::new();
    router.add(
        "test.Svc",
        "Slow",
        unary(|_req: StatusRequest, _ctx| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(StatusResponse::default())
        }),
    );
    router.add(
        "test.Svc",
        "Echo",
        unary(|_req: StatusRequest, _ctx| async {
            Ok(StatusResponse {
                version: "echo".into(),
                ..Default::default()
            })
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = Server::new(router, config);
    tokio::spawn(async move { server.serve_tcp(listener, rx).await });
    (addr, tx)
}

#[tokio::test]
async fn grpc_timeout_ends_the_call_with_deadline_exceeded() {
    let (addr, _stop) = start(ServerConfig::default()).await;
    let ch = Channel::connect(&addr).await.unwrap();
    let started = Instant::now();
    let err = ch
        .unary_with_timeout::<_, StatusResponse>(
            "/test.Svc/Slow",
            &StatusRequest {},
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The connection keeps serving.
    let ok: StatusResponse = ch.unary("/test.Svc/Echo", &StatusRequest {}).await.unwrap();
    assert_eq!(ok.version, "echo");
}

#[tokio::test]
async fn client_pings_are_answered() {
    let (addr, _stop) = start(ServerConfig::default()).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (_send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = conn.ping_pong().unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), ping_pong.ping(h2::Ping::opaque()))
            .await
            .expect("pong in time")
            .expect("pong");
    }
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let config = ServerConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let (addr, _stop) = start(config).await;
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(());
    });
    // One call, then nothing: the server must close the connection. The
    // client keeps its handle, so it would never close on its own.
    let ch = Channel::from_parts(send, &addr);
    let _: StatusResponse = ch.unary("/test.Svc/Echo", &StatusRequest {}).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), closed_rx)
        .await
        .expect("idle connection closed by the server")
        .unwrap();
    drop(ch);
}

#[tokio::test]
async fn peers_that_never_answer_pings_are_dropped() {
    let config = ServerConfig {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, _stop) = start(config).await;
    // Speak just enough HTTP/2 to open the connection, then go silent.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent peer must be disconnected");
}
