//! gRPC client over HTTP/2: unary, server-streaming and bidi calls on one
//! multiplexed connection. Used by netsy-bench, the conformance runner,
//! peer connections and tests; also offers raw calls for bad-input tests.
//! A call's timeout is a deadline the client enforces itself (the server
//! is told too); optional keepalive pings close a connection whose peer
//! stopped answering, so its calls fail instead of hanging. A call's
//! headers and first message leave together, and the connection's frames
//! are gathered into one write a turn, as the server's are.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::codec::{self, FrameDecoder};
use super::flow::write;
use super::queued::Counted;
use super::status::{Code, Status};
use super::timeout;

/// Largest response message the client accepts.
const MAX_RESPONSE_LEN: usize = 64 * 1024 * 1024;

/// HTTP/2 PINGs on an otherwise quiet connection: the connection closes
/// when one is not answered within `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A connection to one gRPC server; cheap to clone, calls multiplex.
#[derive(Clone)]
pub struct Channel {
    send: SendRequest<Bytes>,
    authority: String,
    scheme: &'static str,
    /// Set once the connection has ended (closed by either side, broken,
    /// or dropped after an unanswered keepalive ping).
    closed: Arc<AtomicBool>,
    /// Unary calls under way: while others are, the connection's task lets
    /// the callers it woke send their next requests before it writes.
    /// (Not the server's count of woken streams: a unary call is never
    /// parked for long, and counting it needs no waker of its own.)
    unary_calls: Arc<AtomicUsize>,
    /// The capacity of the connection's write buffer (tests).
    #[cfg(test)]
    write_buffer: Option<Arc<dyn Fn() -> usize + Send + Sync>>,
}

/// How often an idle connection is looked at to give back its write buffer.
const IDLE_CHECK: Duration = Duration::from_secs(1);

use super::router::with_deadline as until;

/// Dials `addr` (within `timeout`, if given), without Nagle's delay.
pub(crate) async fn dial(addr: &str, timeout: Option<Duration>) -> Result<TcpStream, Status> {
    let connecting = TcpStream::connect(crate::failpoint::dial_address(addr));
    let connected = match timeout {
        Some(limit) => tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| Status::unavailable(format!("connect to {addr}: timed out")))?,
        None => connecting.await,
    };
    let tcp = connected.map_err(|e| Status::unavailable(format!("connect to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

impl Channel {
    /// Connects with plain TCP (h2c, prior knowledge) to `host:port`.
    pub async fn connect(addr: &str) -> Result<Channel, Status> {
        let tcp = dial(addr, Some(Duration::from_secs(10))).await?;
        Channel::over(tcp, addr, "http").await
    }

    /// Connects with TLS (ALPN h2) to `host:port`, verifying the server as
    /// `server_name` and presenting the configuration's client certificate.
    pub async fn connect_tls(
        addr: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Channel, Status> {
        let tcp = dial(addr, Some(Duration::from_secs(10))).await?;
        let tls = handshake(tcp, config, server_name, addr).await?;
        Channel::over(tls, addr, "https").await
    }

    /// Runs HTTP/2 over an established stream (e.g. a TLS session).
    pub async fn over<IO>(io: IO, authority: &str, scheme: &'static str) -> Result<Channel, Status>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Channel::over_with(io, authority, scheme, None).await
    }

    /// As [`Channel::over`], with keepalive pings when given.
    pub async fn over_with<IO>(
        io: IO,
        authority: &str,
        scheme: &'static str,
        keepalive: Option<Keepalive>,
    ) -> Result<Channel, Status>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // As the server's: h2's frames gathered into one write a turn.
        let (io, drain) = super::write_batch::batched(io);
        let handshake = h2::client::Builder::new()
            .initial_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .handshake::<_, Bytes>(io);
        let mut handshake = std::pin::pin!(handshake);
        let (send, mut conn) =
            std::future::poll_fn(|cx| drain.after(cx, |cx| Future::poll(handshake.as_mut(), cx)))
                .await
                .map_err(|e| Status::unavailable(format!("h2 handshake with {authority}: {e}")))?;
        let unanswered = match (keepalive, conn.ping_pong()) {
            (Some(k), Some(pings)) => Some(tokio::spawn(ping_until_unanswered(pings, k))),
            _ => None,
        };
        let closed = Arc::new(AtomicBool::new(false));
        let unary_calls = Arc::new(AtomicUsize::new(0));
        #[cfg(test)]
        let write_buffer: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(drain.capacity_probe());
        let (done, peer, calls) = (closed.clone(), authority.to_string(), unary_calls.clone());
        tokio::spawn(async move {
            let drain = &drain;
            let mut conn = std::pin::pin!(std::future::poll_fn(move |cx| {
                // Callers this task woke with their answers queue their
                // next requests first, to leave in the same write: the
                // task of a caller that wakes it runs it next otherwise.
                let others = calls.load(Ordering::Relaxed).saturating_sub(1);
                drain.turn(cx, others, |cx| Future::poll(Pin::new(&mut conn), cx))
            }));
            let mut unanswered = std::pin::pin!(async move {
                match unanswered {
                    Some(pinger) => drop(pinger.await),
                    None => std::future::pending().await,
                }
            });
            // As the server's idle checks: a connection that once sent a
            // burst does not keep its buffer while it sits idle.
            let mut idle_check = tokio::time::interval(IDLE_CHECK);
            idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ended = loop {
                tokio::select! {
                    ended = &mut conn => break ended,
                    () = &mut unanswered => {
                        log::warn!("connection to {peer} closed: keepalive ping not answered");
                        break Ok(());
                    }
                    _ = idle_check.tick() => drain.release_capacity(),
                }
            };
            done.store(true, Ordering::Release);
            if let Err(e) = ended {
                log::debug!("client connection to {peer} ended: {e}");
            }
        });
        Ok(Channel {
            send,
            authority: authority.to_string(),
            scheme,
            closed,
            unary_calls,
            #[cfg(test)]
            write_buffer: Some(write_buffer),
        })
    }

    /// Wraps an h2 handle whose connection the caller drives (tests).
    pub fn from_parts(send: SendRequest<Bytes>, authority: &str) -> Channel {
        Channel {
            send,
            authority: authority.to_string(),
            scheme: "http",
            closed: Arc::new(AtomicBool::new(false)),
            unary_calls: Arc::new(AtomicUsize::new(0)),
            #[cfg(test)]
            write_buffer: None,
        }
    }

    /// True once the connection has ended: calls on it fail, and a new
    /// connection is needed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The capacity of the connection's write buffer now (0 for a channel
    /// made of parts).
    #[cfg(test)]
    pub(crate) fn write_buffer_capacity(&self) -> usize {
        self.write_buffer.as_ref().map_or(0, |probe| probe())
    }

    /// The `host:port` this channel is connected to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    fn request(&self, path: &str, timeout: Option<Duration>) -> Result<Request<()>, Status> {
        let uri = format!("{}://{}{}", self.scheme, self.authority, path);
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri
            .parse()
            .map_err(|e| Status::internal(format!("bad request uri {uri:?}: {e}")))?;
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        if let Some(t) = timeout {
            if let Ok(v) = HeaderValue::from_str(&timeout::format(t)) {
                h.insert("grpc-timeout", v);
            }
        }
        Ok(req)
    }

    async fn ready(&self) -> Result<SendRequest<Bytes>, Status> {
        self.send
            .clone()
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection to {} lost: {e}", self.authority)))
    }

    /// Opens a call; send messages with the sender, read with the receiver.
    /// With a timeout, both halves fail with DeadlineExceeded once it has
    /// passed; dropping both cancels the call on the wire.
    pub async fn start(&self, path: &str, timeout: Option<Duration>) -> Result<ClientCall, Status> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let req = self.request(path, timeout)?;
        let mut send = until(deadline, self.ready()).await?;
        let (response, stream) = send
            .send_request(req, false)
            .map_err(|e| Status::unavailable(format!("send request: {e}")))?;
        Ok(ClientCall {
            sender: CallSender {
                stream,
                deadline,
                sent: false,
            },
            receiver: CallReceiver::new(response, deadline),
        })
    }

    /// One request, one response.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        self.unary_with_timeout(path, request, None).await
    }

    pub async fn unary_with_timeout<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, Status> {
        let _counted = Counted::new(self.unary_calls.clone());
        let mut call = self.start(path, timeout).await?;
        if let Err(send_error) = call.sender.send_last(request).await {
            // The server may have answered (and closed the stream) before
            // reading the request, e.g. Unimplemented: prefer its status.
            return match call.receiver.next::<Resp>().await {
                Err(status) => Err(status),
                Ok(_) => Err(send_error),
            };
        }
        let resp = call.receiver.next().await?;
        match resp {
            Some(r) => {
                // Drain to the trailers so a late error status is not lost.
                match call.receiver.next_bytes().await? {
                    None => Ok(r),
                    Some(_) => Err(Status::internal(
                        "unary call returned more than one message",
                    )),
                }
            }
            None => Err(Status::internal(
                "unary call returned no message and status OK",
            )),
        }
    }

    /// Sends a hand-built request (tests of malformed input): the headers
    /// given replace the defaults, `body` is sent as is.
    pub async fn raw(
        &self,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        end: bool,
    ) -> Result<RawResponse, Status> {
        let mut req = self.request(path, None)?;
        for (name, value) in headers.iter() {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let mut send = self.ready().await?;
        let (response, mut stream) = send
            .send_request(req, false)
            .map_err(|e| Status::unavailable(format!("send request: {e}")))?;
        // The server may answer before reading everything (oversize refusal).
        let _ = stream.send_data(body, end);
        let response = response
            .await
            .map_err(|e| Status::unavailable(format!("response: {e}")))?;
        let (parts, mut body) = response.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(c) => {
                    let _ = body.flow_control().release_capacity(c.len());
                    data.extend_from_slice(&c);
                }
                Err(_) => break,
            }
        }
        let trailers = body.trailers().await.ok().flatten();
        Ok(RawResponse {
            http_status: parts.status,
            headers: parts.headers,
            body: Bytes::from(data),
            trailers,
        })
    }
}

/// Everything a server sent back for a raw call.
#[derive(Debug)]
pub struct RawResponse {
    pub http_status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl RawResponse {
    /// The gRPC status from trailers, or from the headers of a
    /// trailers-only response.
    pub fn status(&self) -> Option<Status> {
        self.trailers
            .as_ref()
            .and_then(Status::from_headers)
            .or_else(|| Status::from_headers(&self.headers))
    }
}

/// An open call, split so one task can send while another receives.
pub struct ClientCall {
    pub sender: CallSender,
    pub receiver: CallReceiver,
}

/// The request half of a call.
pub struct CallSender {
    stream: SendStream<Bytes>,
    deadline: Option<Instant>,
    /// A message was sent: the stream is open (or opening) on the wire.
    sent: bool,
}

impl CallSender {
    pub async fn send<M: Message>(&mut self, message: &M) -> Result<(), Status> {
        self.write(message, false).await
    }

    /// Sends the call's last message, ending the request stream in the
    /// same frame (as grpc-go does for unary calls): no separate end that
    /// could reach the server after its answer.
    pub async fn send_last<M: Message>(&mut self, message: &M) -> Result<(), Status> {
        self.write(message, true).await
    }

    async fn write<M: Message>(&mut self, message: &M, end: bool) -> Result<(), Status> {
        let frame = codec::encode(message);
        let first = !std::mem::replace(&mut self.sent, true);
        if first || end {
            // Queued whole, without waiting for send capacity: h2 gives a
            // stream none until its connection task has opened it, so
            // waiting made a call's headers leave in a write (a segment, a
            // wake of the server) of their own. h2 still sends the message
            // within the peer's windows; only one message is held, and the
            // caller held it already.
            return self
                .stream
                .send_data(frame, end)
                .map_err(|e| Status::unavailable(format!("send: {e}")));
        }
        let stream = &mut self.stream;
        until(self.deadline, async move {
            write(stream, frame, end)
                .await
                .map_err(|e| Status::unavailable(format!("send: {e}")))
        })
        .await
    }

    /// Half-closes the request stream (no more messages).
    pub fn close(&mut self) {
        let _ = self.stream.send_data(Bytes::new(), true);
    }

    /// Cancels the call (RST_STREAM CANCEL).
    pub fn cancel(&mut self) {
        self.stream.send_reset(h2::Reason::CANCEL);
    }
}

/// The response half of a call.
pub struct CallReceiver {
    response: Option<ResponseFuture>,
    body: Option<RecvStream>,
    decoder: FrameDecoder,
    done: bool,
    deadline: Option<Instant>,
}

impl CallReceiver {
    fn new(response: ResponseFuture, deadline: Option<Instant>) -> CallReceiver {
        CallReceiver {
            response: Some(response),
            body: None,
            decoder: FrameDecoder::new(MAX_RESPONSE_LEN, None),
            done: false,
            deadline,
        }
    }

    /// The next raw message; None once the server ended with status OK; the
    /// status as an error otherwise (DeadlineExceeded once the call's
    /// deadline has passed).
    pub async fn next_bytes(&mut self) -> Result<Option<Bytes>, Status> {
        if self.done {
            return Ok(None);
        }
        let result = until(self.deadline, self.receive()).await;
        if result.is_err() {
            self.done = true;
        }
        result
    }

    async fn receive(&mut self) -> Result<Option<Bytes>, Status> {
        if let Some(response) = self.response.take() {
            let response = response
                .await
                .map_err(|e| Status::unavailable(format!("call failed: {e}")))?;
            let (parts, body) = response.into_parts();
            if let Some(status) = Status::from_headers(&parts.headers) {
                // Trailers-only response.
                self.done = true;
                return if status.code == Code::Ok {
                    Ok(None)
                } else {
                    Err(status)
                };
            }
            if parts.status != StatusCode::OK {
                self.done = true;
                return Err(Status::new(
                    http_status_to_code(parts.status),
                    format!("unexpected HTTP status {}", parts.status),
                ));
            }
            self.body = Some(body);
        }
        let body = match self.body.as_mut() {
            Some(b) => b,
            None => return Err(Status::internal("response body missing")),
        };
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            match body.data().await {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(Status::unavailable(format!("stream broken: {e}")));
                }
                None => {
                    self.done = true;
                    let trailers = body
                        .trailers()
                        .await
                        .map_err(|e| Status::unavailable(format!("trailers: {e}")))?;
                    let status = trailers
                        .as_ref()
                        .and_then(Status::from_headers)
                        .unwrap_or_else(|| Status::internal("server sent no grpc-status"));
                    return if status.code == Code::Ok {
                        Ok(None)
                    } else {
                        Err(status)
                    };
                }
            }
        }
    }

    /// The next decoded message.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.next_bytes().await? {
            Some(b) => codec::decode(b, "response").map(Some),
            None => Ok(None),
        }
    }
}

/// The gRPC spec's mapping for responses without a grpc-status.
fn http_status_to_code(s: StatusCode) -> Code {
    match s.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The TLS client handshake on a connected socket.
pub(crate) async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Status> {
    crate::tls::connect(tcp, config, server_name, addr)
        .await
        .map_err(Status::unavailable)
}

/// Pings every `interval` and returns once a ping goes unanswered for
/// `timeout` (or the connection has gone).
async fn ping_until_unanswered(mut pings: h2::PingPong, k: Keepalive) {
    loop {
        tokio::time::sleep(k.interval).await;
        match tokio::time::timeout(k.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => continue,
            // The connection ended on its own.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}
