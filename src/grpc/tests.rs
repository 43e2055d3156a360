//! Connection-level behaviour of our gRPC server and client over real
//! loopback sockets: deadlines on both sides, pings both ways, dead-peer
//! and idle cleanup, streaming handlers, reconnection, and how a
//! connection's answers (server) and requests (client) are gathered into
//! writes.

use std::sync::Arc;
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

/// Says when a handler stops, however it stops (returns or is dropped).
struct Report(
    &'static str,
    tokio::sync::mpsc::UnboundedSender<&'static str>,
);

impl Drop for Report {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// A server with streaming methods: Count streams `n` numbers, Fail sends
/// two then NotFound, Echo answers each request, Forever sends until the
/// client goes, Stall never answers (both report when their handler stops).
async fn start_streaming() -> (
    String,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
    let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let mut router = Router::new();
    router.add(
        "test.Stream",
        "Count",
        server_streaming(
            |req: RangeRequest, _ctx, out: Responses<RangeResponse>| async move {
                for i in 0..req.limit {
                    out.send(RangeResponse {
                        count: i,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            },
        ),
    );
    router.add(
        "test.Stream",
        "Fail",
        server_streaming(
            |_req: RangeRequest, _ctx, out: Responses<RangeResponse>| async move {
                out.send(RangeResponse::default()).await?;
                out.send(RangeResponse::default()).await?;
                Err(Status::not_found("no more"))
            },
        ),
    );
    router.add(
        "test.Stream",
        "Echo",
        bidi_streaming(
            |mut requests: Requests<RangeRequest>, _ctx, out: Responses<RangeResponse>| async move {
                while let Some(r) = requests.next().await? {
                    out.send(RangeResponse {
                        count: r.limit,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            },
        ),
    );
    let ended_tx2 = ended_tx.clone();
    router.add(
        "test.Stream",
        "Forever",
        server_streaming(
            move |_req: RangeRequest, _ctx, out: Responses<RangeResponse>| {
                let report = Report("forever", ended_tx2.clone());
                async move {
                    let _report = report;
                    for count in 1.. {
                        out.send(RangeResponse {
                            count,
                            ..Default::default()
                        })
                        .await?;
                    }
                    Ok(())
                }
            },
        ),
    );
    router.add(
        "test.Stream",
        "Stall",
        server_streaming(
            move |_req: RangeRequest, _ctx, _out: Responses<RangeResponse>| {
                let report = Report("stall", ended_tx.clone());
                async move {
                    let _report = report;
                    std::future::pending::<Result<(), Status>>().await
                }
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = Server::new(router, ServerConfig::default());
    tokio::spawn(async move { server.serve_tcp(listener, rx).await });
    (addr, tx, ended)
}

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn server_streaming_sends_every_response_then_the_status() {
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
    let (addr, _stop, _ended) = start_streaming().await;
    let ch = Channel::connect(&addr).await.unwrap();
    let mut call = ch.start("/test.Stream/Count", None).await.unwrap();
    call.sender
        .send(&RangeRequest {
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    call.sender.close();
    let mut got = Vec::new();
    while let Some(r) = call.receiver.next::<RangeResponse>().await.unwrap() {
        got.push(r.count);
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);

    let mut call = ch.start("/test.Stream/Fail", None).await.unwrap();
    call.sender.send(&RangeRequest::default()).await.unwrap();
    call.sender.close();
    assert!(call
        .receiver
        .next::<RangeResponse>()
        .await
        .unwrap()
        .is_some());
    assert!(call
        .receiver
        .next::<RangeResponse>()
        .await
        .unwrap()
        .is_some());
    let err = call.receiver.next::<RangeResponse>().await.unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (Code::NotFound, "no more")
    );
}

#[tokio::test]
async fn bidi_streaming_answers_each_request_until_the_client_closes() {
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
    let (addr, _stop, _ended) = start_streaming().await;
    let ch = Channel::connect(&addr).await.unwrap();
    let mut call = ch.start("/test.Stream/Echo", None).await.unwrap();
    for n in [7, 8, 9] {
        call.sender
            .send(&RangeRequest {
                limit: n,
                ..Default::default()
            })
            .await
            .unwrap();
        let r: RangeResponse = call.receiver.next().await.unwrap().unwrap();
        assert_eq!(r.count, n);
    }
    call.sender.close();
    assert!(call
        .receiver
        .next::<RangeResponse>()
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_streaming_handler() {
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
    let (addr, _stop, mut ended) = start_streaming().await;
    let ch = Channel::connect(&addr).await.unwrap();
    let mut call = ch.start("/test.Stream/Forever", None).await.unwrap();
    call.sender.send(&RangeRequest::default()).await.unwrap();
    let first: RangeResponse = call.receiver.next().await.unwrap().unwrap();
    assert_eq!(first.count, 1);
    drop(call);
    assert_eq!(
        within("the handler to end", ended.recv()).await,
        Some("forever")
    );
}

#[tokio::test]
async fn a_streaming_handler_ends_at_the_deadline() {
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
    let (addr, _stop, mut ended) = start_streaming().await;
    let ch = Channel::connect(&addr).await.unwrap();
    let mut call = ch
        .start("/test.Stream/Stall", Some(Duration::from_millis(200)))
        .await
        .unwrap();
    call.sender.send(&RangeRequest::default()).await.unwrap();
    let err = within("the call to end", call.receiver.next::<RangeResponse>())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    assert_eq!(
        within("the handler to end", ended.recv()).await,
        Some("stall")
    );
}

#[tokio::test]
async fn the_client_deadline_ends_a_call_the_server_never_answers() {
    // A server that accepts the call and then says nothing at all (it
    // ignores grpc-timeout), reporting when the client cancels the stream.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move {
            let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            let _ = reset_tx.send(reason.ok());
        });
        while conn.accept().await.is_some() {}
    });
    let ch = Channel::connect(&addr).await.unwrap();
    let started = Instant::now();
    let err = within(
        "the deadline",
        ch.unary_with_timeout::<_, StatusResponse>(
            "/test.Svc/Silent",
            &StatusRequest {},
            Some(Duration::from_millis(200)),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let reason = within("the server to see the cancel", reset_rx)
        .await
        .unwrap();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
}

/// Forwards bytes both ways between a client and `upstream` until told to
/// freeze; then holds both connections open and silent (a black hole).
async fn freezing_proxy(upstream: String) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if f.load(Ordering::SeqCst) {
                            // Swallow everything, answer nothing, close nothing.
                            let _keep = (&from, &to);
                            continue;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, frozen)
}

#[tokio::test]
async fn an_unanswered_keepalive_ping_closes_the_connection() {
    let (upstream, _stop) = start(ServerConfig::default()).await;
    let (proxy, frozen) = freezing_proxy(upstream).await;
    let tcp = TcpStream::connect(&proxy).await.unwrap();
    let keepalive = Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let ch = Channel::over_with(tcp, &proxy, "http", Some(keepalive))
        .await
        .unwrap();
    let ok: StatusResponse = ch.unary("/test.Svc/Echo", &StatusRequest {}).await.unwrap();
    assert_eq!(ok.version, "echo");
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    within("the connection to close", async {
        while !ch.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let err = within(
        "the call to fail",
        ch.unary::<_, StatusResponse>("/test.Svc/Echo", &StatusRequest {}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn the_connector_reconnects_once_the_server_is_back() {
    let (addr, stop) = start(ServerConfig::default()).await;
    let settings = ConnectorSettings {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let peer = Connector::new(&addr, None, settings);
    let echo = || peer.unary::<_, StatusResponse>("/test.Svc/Echo", &StatusRequest {}, DEADLINE);
    assert_eq!(echo().await.unwrap().version, "echo");
    let first = peer.channel().await.unwrap();

    // The server goes away: the connection ends, an attempt fails, and
    // the next call fails at once while the connector backs off.
    stop.send(true).unwrap();
    within("the connection to end", async {
        while !first.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within("the server to let go of its port", async {
        while TcpStream::connect(&addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let refused = echo().await.unwrap_err();
    assert_eq!(refused.code, Code::Unavailable);
    let backing_off = echo().await.unwrap_err();
    assert!(
        backing_off.message.contains("next attempt in"),
        "{backing_off:?}"
    );

    // Back on the same address: the connector connects again by itself.
    let listener = within("the port to be free", async {
        loop {
            match TcpListener::bind(&addr).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let mut router = Router::new();
    router.add(
        "test.Svc",
        "Echo",
        unary(|_req: StatusRequest, _ctx| async {
            Ok(StatusResponse {
                version: "again".into(),
                ..Default::default()
            })
        }),
    );
    let (_stop2, rx) = tokio::sync::watch::channel(false);
    let server = Server::new(router, ServerConfig::default());
    tokio::spawn(async move { server.serve_tcp(listener, rx).await });
    let answer = within("a reconnect", async {
        loop {
            match echo().await {
                Ok(r) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(answer.version, "again");
}

// HTTP/2 frame types and flags, for the tests that speak it frame by frame.
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A frame read back: type, flags, stream, payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame from `tcp`, `buf` holding what was read past it.
async fn read_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Frame {
    loop {
        if buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() >= 9 + len {
                let frame = Frame {
                    kind: buf[3],
                    flags: buf[4],
                    stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                    payload: buf[9..9 + len].to_vec(),
                };
                buf.drain(..9 + len);
                return frame;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the peer closed the socket");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// HPACK: each header as a literal without indexing, new name.
fn hpack_literals(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A client may end its request stream only after the answer has come
/// (our own client sent the end in an empty frame of its own, which could
/// reach the server after it had answered). Such a call must not cost
/// the connection: were the server to reset the stream and forget it, h2
/// would count every late end as an error of its own and, past 1,024,
/// close the connection with ENHANCE_YOUR_CALM ("too_many_internal_resets").
/// Written frame by frame, as a client library would not send the end of
/// a stream the server has already reset.
#[tokio::test]
async fn a_request_stream_ended_after_the_answer_keeps_the_connection() {
    let (addr, _stop) = start(ServerConfig::default()).await;
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
    tcp.write_all(&hello).await.unwrap();
    let headers = hpack_literals(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/test.Svc/Echo"),
        (":authority", "netsy"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let message = codec::encode(&StatusRequest {});
    let mut resets_without_error = 0;
    let mut buf = Vec::new();
    for call in 0..1_200u32 {
        let stream = 2 * call + 1;
        let mut out = h2_frame(HEADERS, END_HEADERS, stream, &headers);
        out.extend(h2_frame(DATA, 0, stream, &message));
        tcp.write_all(&out).await.unwrap();
        // Read frames until this call's trailers (HEADERS with END_STREAM).
        loop {
            let f = within("the answer", read_frame(&mut tcp, &mut buf)).await;
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => tcp
                    .write_all(&h2_frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .unwrap(),
                GOAWAY => panic!(
                    "call {call}: the server closed the connection: {:?}",
                    String::from_utf8_lossy(f.payload.get(8..).unwrap_or_default())
                ),
                RST_STREAM if f.payload == [0, 0, 0, 0] => resets_without_error += 1,
                RST_STREAM => panic!(
                    "call {call}: stream {} reset with {:?}",
                    f.stream, f.payload
                ),
                HEADERS if f.stream == stream && f.flags & END_STREAM != 0 => break,
                _ => {}
            }
        }
        // Only now does the client end its side.
        tcp.write_all(&h2_frame(DATA, END_STREAM, stream, &[]))
            .await
            .unwrap();
    }
    assert_eq!(resets_without_error, 0, "streams were reset, not closed");
}

/// Our client ends a unary request in its message's own DATA frame, as
/// grpc-go does: a separate empty frame with the end can reach a server
/// after its answer (see the test above).
#[tokio::test]
async fn a_unary_request_ends_its_stream_in_the_frame_of_its_message() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = tokio::spawn(async move {
        let ch = Channel::connect(&addr).await?;
        ch.unary::<_, StatusResponse>("/test.Svc/Echo", &StatusRequest {})
            .await
            .map(|_| ())
    });
    let (mut tcp, _) = within("the client", listener.accept()).await.unwrap();
    tcp.write_all(&h2_frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut preface = [0u8; 24];
    within("the preface", tcp.read_exact(&mut preface))
        .await
        .unwrap();
    let mut buf = Vec::new();
    let data_flags = within("the request's DATA frame", async {
        loop {
            let f = read_frame(&mut tcp, &mut buf).await;
            if f.kind == DATA {
                return f.flags;
            }
        }
    })
    .await;
    assert_eq!(
        data_flags & END_STREAM,
        END_STREAM,
        "the message's DATA frame ends the stream"
    );
    drop(tcp);
    let _ = within("the client to give up", client).await;
}

/// A socket that counts the writes made through it.
struct CountedWrites {
    tcp: TcpStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A commit wakes every watch stream it concerns at once, from outside
/// the runtime's workers; when many such streams share a connection,
/// their answers must leave in a few writes, not one write (a trip
/// through the TCP stack) per stream. The connection's task waits while
/// streams it counts as woken have not yet run. One worker makes the order
/// plain: without that wait, the connection's task runs right after each
/// stream that wakes it and writes that stream's answer alone (64 writes
/// a round here, against 2 to 9 with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn streams_woken_together_leave_in_a_few_writes() {
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
    use std::sync::atomic::Ordering;
    const STREAMS: usize = 64;
    const ROUNDS: i64 = 5;
    let (round_tx, round_rx) = tokio::sync::watch::channel(0i64);
    let mut router = Router::new();
    router.add(
        "test.Stream",
        "EachRound",
        server_streaming(
            move |_req: RangeRequest, _ctx, out: Responses<RangeResponse>| {
                let mut rounds = round_rx.clone();
                async move {
                    while rounds.changed().await.is_ok() {
                        let count = *rounds.borrow_and_update();
                        out.send(RangeResponse {
                            count,
                            ..Default::default()
                        })
                        .await?;
                    }
                    Ok(())
                }
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let server = Server::new(router, ServerConfig::default());
    let counted = writes.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let io = CountedWrites {
            tcp,
            writes: counted,
        };
        let peer = PeerInfo {
            remote_addr: None,
            identity: None,
        };
        server.serve_connection(io, peer, shutdown).await
    });
    let ch = Channel::connect(&addr).await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..STREAMS {
        let mut call = ch.start("/test.Stream/EachRound", None).await.unwrap();
        call.sender.send(&RangeRequest::default()).await.unwrap();
        call.sender.close();
        calls.push(call);
    }
    // Every handler holds a receiver once it runs; the route keeps one.
    within("every handler to start", async {
        while round_tx.receiver_count() < STREAMS + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut per_round = Vec::new();
    for round in 1..=ROUNDS {
        let before = writes.load(Ordering::SeqCst);
        // Sent from the test's own thread, as a commit thread would.
        round_tx.send_replace(round);
        for call in calls.iter_mut() {
            let got = within("a stream's answer", call.receiver.next::<RangeResponse>())
                .await
                .unwrap()
                .map(|r| r.count);
            assert_eq!(got, Some(round));
        }
        per_round.push(writes.load(Ordering::SeqCst) - before);
    }
    per_round.sort_unstable();
    let median = per_round[per_round.len() / 2];
    assert!(
        median <= STREAMS / 4,
        "{STREAMS} streams woken together took {per_round:?} writes a round"
    );
}

/// Our client, connected to the test server through a socket that counts
/// its writes.
async fn counted_channel(addr: &str) -> (Channel, Arc<std::sync::atomic::AtomicUsize>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let io = CountedWrites {
        tcp,
        writes: writes.clone(),
    };
    (Channel::over(io, addr, "http").await.unwrap(), writes)
}

/// A request larger than h2 copies into its frame buffer (256 bytes): the
/// Echo route skips its unknown field.
fn large_request() -> crate::pb::etcdserverpb::RangeRequest {
    crate::pb::etcdserverpb::RangeRequest {
        key: vec![b'k'; 1024].into(),
        ..Default::default()
    }
}

/// A unary call's headers and message leave in one write (one segment, one
/// wake of the server), as grpc-go's do: the client does not wait for the
/// stream's send capacity, which h2 gives only once the headers are out.
#[tokio::test]
async fn a_unary_call_leaves_in_one_write() {
    use std::sync::atomic::Ordering;
    let (addr, _stop) = start(ServerConfig::default()).await;
    let (ch, writes) = counted_channel(&addr).await;
    // The first call also carries the connection's settings and their ack.
    let echo = |ch: Channel| async move {
        ch.unary::<_, StatusResponse>("/test.Svc/Echo", &large_request())
            .await
            .unwrap()
    };
    assert_eq!(within("a call", echo(ch.clone())).await.version, "echo");
    for _ in 0..5 {
        let before = writes.load(Ordering::SeqCst);
        within("a call", echo(ch.clone())).await;
        assert_eq!(
            writes.load(Ordering::SeqCst) - before,
            1,
            "writes of one call"
        );
    }
}

/// Callers sharing a connection, each making a call as soon as its last is
/// answered (a load generator, a Replica forwarding writes): their requests
/// leave together, not one write each. The connection's task, woken by the
/// first caller it answered, waits for the others to queue theirs. One
/// worker makes the order plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn concurrent_unary_calls_leave_in_a_few_writes() {
    use std::sync::atomic::Ordering;
    const CALLERS: usize = 32;
    const CALLS: usize = 20;
    let (addr, _stop) = start(ServerConfig::default()).await;
    let (ch, writes) = counted_channel(&addr).await;
    let before = writes.load(Ordering::SeqCst);
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let ch = ch.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS {
                    ch.unary::<_, StatusResponse>("/test.Svc/Echo", &large_request())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    within("every caller", async {
        for caller in callers {
            caller.await.unwrap();
        }
    })
    .await;
    let made = writes.load(Ordering::SeqCst) - before;
    assert!(
        made <= CALLERS * CALLS / 4,
        "{} calls took {made} writes",
        CALLERS * CALLS
    );
}

/// A client connection that sent a large request gives its write buffer
/// back once idle, as the server's connections do: a Replica's forwarding
/// channel or a load generator's connections otherwise each keep the
/// buffer of their largest burst for as long as they live.
#[tokio::test]
async fn an_idle_client_connection_gives_back_its_write_buffer() {
    let (addr, _stop) = start(ServerConfig::default()).await;
    let (ch, _) = counted_channel(&addr).await;
    let request = crate::pb::etcdserverpb::RangeRequest {
        key: vec![b'k'; 1 << 20].into(),
        ..Default::default()
    };
    within("a large call", async {
        ch.unary::<_, StatusResponse>("/test.Svc/Echo", &request)
            .await
            .unwrap()
    })
    .await;
    let after_burst = ch.write_buffer_capacity();
    assert!(
        after_burst > super::write_batch::WRITE_AT,
        "a 1 MiB request left a buffer of {after_burst} bytes"
    );
    within("the buffer given back", async {
        while ch.write_buffer_capacity() > super::write_batch::KEPT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // And the connection still works.
    within("a call after", async {
        ch.unary::<_, StatusResponse>("/test.Svc/Echo", &large_request())
            .await
            .unwrap()
    })
    .await;
}
