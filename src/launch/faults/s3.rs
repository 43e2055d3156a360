//! A fault-injecting HTTP/1.1 reverse proxy for an S3 API server (moto on
//! loopback). Nodes reach the bucket through it by taking
//! [`S3Proxy::env`] instead of the server's own variables; a test switches
//! [`S3Mode`]s at run time through [`S3Faults`] and reads how many requests
//! each mode saw. Requests are forwarded whole (bodies buffered), each on
//! a fresh upstream connection, so a mode applies per request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{spread, Background};

/// What the proxy does to the requests it applies to (see
/// [`S3Faults::only`]).
#[derive(Clone, Debug, PartialEq)]
pub enum S3Mode {
    /// Forwarded untouched.
    Pass,
    /// Forwarded after this wait.
    Latency(Duration),
    /// `fraction` of the requests (0.0–1.0, spread evenly) get `status`
    /// with S3's error body instead of an answer from the server: 503 is
    /// `SlowDown`, any other status `InternalError`. The rest are
    /// forwarded.
    Error { status: u16, fraction: f64 },
    /// `fraction` of the requests: the connection closes without an
    /// answer. The rest are forwarded.
    Drop { fraction: f64 },
    /// Nothing answers: requests on open connections close them without an
    /// answer, and new connections are reset as soon as they are accepted.
    Outage,
    /// Conditional PUTs (`If-None-Match` or `If-Match`) get 412
    /// `PreconditionFailed` without reaching the server, as when another
    /// writer won the race; everything else is forwarded.
    PreconditionFailed,
}

impl S3Mode {
    /// 503 SlowDown for every request.
    pub fn slow_down() -> S3Mode {
        S3Mode::Error {
            status: 503,
            fraction: 1.0,
        }
    }
}

/// Requests the proxy saw, by the mode in force when each arrived (a
/// request outside [`S3Faults::only`] counts as `pass`), and what was done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct S3Counts {
    pub pass: u64,
    pub latency: u64,
    pub error: u64,
    pub drop: u64,
    pub outage: u64,
    pub precondition_failed: u64,
    /// Requests that got a fault: delayed, answered by the proxy, or
    /// dropped.
    pub injected: u64,
    /// Connections reset at accept during an outage.
    pub reset_connections: u64,
    /// Requests forwarded whose server could not be reached (answered 502).
    pub upstream_failures: u64,
}

impl S3Counts {
    /// Every request seen, whatever the mode.
    pub fn requests(&self) -> u64 {
        self.pass + self.latency + self.error + self.drop + self.outage + self.precondition_failed
    }
}

struct State {
    mode: S3Mode,
    /// Faults apply only to paths containing this.
    only: Option<String>,
    /// Requests the current mode applied to, for spreading fractions.
    matched: u64,
    counts: S3Counts,
}

/// The control handle of an [`S3Proxy`]; cheap to clone and usable from
/// any thread.
#[derive(Clone)]
pub struct S3Faults {
    state: Arc<Mutex<State>>,
}

/// What to do with one request.
enum Decision {
    Forward,
    Delay(Duration),
    Answer(StatusCode),
    Drop,
}

impl S3Faults {
    fn new() -> S3Faults {
        S3Faults {
            state: Arc::new(Mutex::new(State {
                mode: S3Mode::Pass,
                only: None,
                matched: 0,
                counts: S3Counts::default(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Switches the mode for every request from now on, on open connections
    /// too.
    pub fn set(&self, mode: S3Mode) {
        let mut s = self.state();
        s.mode = mode;
        s.matched = 0;
    }

    pub fn mode(&self) -> S3Mode {
        self.state().mode.clone()
    }

    /// Restricts faults to requests whose path (`/bucket/key`) contains
    /// `path_part`, such as `/chunks/`; None applies them to all. Other
    /// requests are forwarded (an outage still resets new connections).
    pub fn only(&self, path_part: Option<&str>) {
        let mut s = self.state();
        s.only = path_part.map(str::to_string);
        s.matched = 0;
    }

    pub fn counts(&self) -> S3Counts {
        self.state().counts
    }

    fn refuses_connections(&self) -> bool {
        let mut s = self.state();
        let refuse = s.mode == S3Mode::Outage;
        if refuse {
            s.counts.reset_connections += 1;
        }
        refuse
    }

    fn decide(&self, path: &str, conditional_put: bool) -> Decision {
        let mut s = self.state();
        let applies = s.only.as_deref().is_none_or(|p| path.contains(p));
        if !applies {
            s.counts.pass += 1;
            return Decision::Forward;
        }
        let seen = s.matched;
        s.matched += 1;
        let mode = s.mode.clone();
        let c = &mut s.counts;
        let decision = match mode {
            S3Mode::Pass => {
                c.pass += 1;
                Decision::Forward
            }
            S3Mode::Latency(d) => {
                c.latency += 1;
                Decision::Delay(d)
            }
            S3Mode::Error { status, fraction } => {
                c.error += 1;
                match StatusCode::from_u16(status) {
                    Ok(status) if spread(seen, fraction) => Decision::Answer(status),
                    _ => Decision::Forward,
                }
            }
            S3Mode::Drop { fraction } => {
                c.drop += 1;
                if spread(seen, fraction) {
                    Decision::Drop
                } else {
                    Decision::Forward
                }
            }
            S3Mode::Outage => {
                c.outage += 1;
                Decision::Drop
            }
            S3Mode::PreconditionFailed => {
                c.precondition_failed += 1;
                if conditional_put {
                    Decision::Answer(StatusCode::PRECONDITION_FAILED)
                } else {
                    Decision::Forward
                }
            }
        };
        if !matches!(decision, Decision::Forward) {
            c.injected += 1;
        }
        decision
    }

    fn upstream_failed(&self) {
        self.state().counts.upstream_failures += 1;
    }
}

/// The proxy: listens on 127.0.0.1 and forwards to one S3 API server;
/// stops when dropped.
pub struct S3Proxy {
    addr: SocketAddr,
    upstream: String,
    faults: S3Faults,
    _background: Background,
}

impl S3Proxy {
    /// A proxy for the server at `upstream` (`http://127.0.0.1:PORT` or
    /// `127.0.0.1:PORT`), passing everything until told otherwise.
    pub fn start(upstream: &str) -> Result<S3Proxy, String> {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let faults = S3Faults::new();
        let (background, addr) = {
            let (upstream, faults) = (upstream.clone(), faults.clone());
            Background::start("s3-fault-proxy", move |listener| {
                serve(listener, upstream, faults)
            })?
        };
        Ok(S3Proxy {
            addr,
            upstream,
            faults,
            _background: background,
        })
    }

    /// A proxy in front of a moto server.
    pub fn in_front_of(moto: &crate::launch::Moto) -> Result<S3Proxy, String> {
        S3Proxy::start(&moto.endpoint)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The S3 endpoint clients use: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server requests are forwarded to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The AWS variables that point clients at the proxy.
    pub fn env(&self) -> Vec<(String, String)> {
        crate::launch::aws_env(&self.endpoint())
    }

    pub fn faults(&self) -> S3Faults {
        self.faults.clone()
    }
}

async fn serve(listener: tokio::net::TcpListener, upstream: String, faults: S3Faults) {
    let upstream: Arc<str> = upstream.into();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: try again shortly.
                log::warn!("s3 fault proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if faults.refuses_connections() {
            // Linger 0: the client sees a reset, not an orderly close.
            let _ = stream.set_zero_linger();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (upstream, faults) = (upstream.clone(), faults.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(request, upstream.clone(), faults.clone())
            });
            // A dropped request ends the connection with an error: expected.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The service's error: hyper closes the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    request: Request<Incoming>,
    upstream: Arc<str>,
    faults: S3Faults,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let conditional_put = request.method() == Method::PUT
        && (request.headers().contains_key(header::IF_NONE_MATCH)
            || request.headers().contains_key(header::IF_MATCH));
    let path = request.uri().path().to_string();
    match faults.decide(&path, conditional_put) {
        Decision::Drop => Err(Dropped),
        Decision::Answer(status) => Ok(s3_error(status, &path)),
        Decision::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(forward(request, &upstream, &faults).await)
        }
        Decision::Forward => Ok(forward(request, &upstream, &faults).await),
    }
}

/// Sends the request to the server on a new connection and returns its
/// answer; 502 when the server cannot be reached.
async fn forward(
    request: Request<Incoming>,
    upstream: &str,
    faults: &S3Faults,
) -> Response<Full<Bytes>> {
    match try_forward(request, upstream).await {
        Ok(response) => response,
        Err(e) => {
            faults.upstream_failed();
            log::warn!("s3 fault proxy: forwarding to {upstream} failed: {e}");
            plain(StatusCode::BAD_GATEWAY, Bytes::from(e))
        }
    }
}

async fn try_forward(
    request: Request<Incoming>,
    upstream: &str,
) -> Result<Response<Full<Bytes>>, String> {
    let (mut parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the request: {e}"))?
        .to_bytes();
    strip_hop_by_hop(&mut parts.headers);
    let stream = tokio::net::TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // Drives the connection; it ends once the answer is read and the
    // sender dropped.
    tokio::spawn(connection);
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Headers about one connection, not the message: the server's
/// `Connection: close` must not close the client's kept-alive connection,
/// and a buffered body is no longer chunked (its length is known).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// An S3 error answer, as S3 words it.
fn s3_error(status: StatusCode, resource: &str) -> Response<Full<Bytes>> {
    let (code, message) = match status.as_u16() {
        503 => ("SlowDown", "Please reduce your request rate."),
        412 => (
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        ),
        _ => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{resource}</Resource>\
         <RequestId>fault-proxy</RequestId></Error>"
    );
    let mut response = plain(status, Bytes::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/xml"),
    );
    response
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}
