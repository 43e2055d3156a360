//! One server-side gRPC call: the request context, the inbound message
//! stream and the outbound sink that ends with a status.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use prost::Message;
use tokio::time::Instant;

use super::codec::{self, FrameDecoder};
use super::flow::write_all;
use super::status::Status;

/// How long an answered call waits for the end of the client's request.
const END_OF_REQUEST_GRACE: Duration = Duration::from_secs(10);

/// What a handler knows about the caller.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub remote_addr: Option<SocketAddr>,
    /// Verified TLS identity of the caller (role and name), if any.
    pub identity: Option<String>,
    /// From `grpc-timeout`, if the client sent one.
    pub deadline: Option<Instant>,
    pub headers: HeaderMap,
}

impl RequestContext {
    /// A context for calls made in-process (tests, local forwarding).
    pub fn local() -> RequestContext {
        RequestContext {
            remote_addr: None,
            identity: None,
            deadline: None,
            headers: HeaderMap::new(),
        }
    }

    /// Time left before the deadline, if there is one.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Proof that a call's status was sent (and which); handlers must return it.
#[must_use]
pub struct Finished(pub super::status::Code);

/// Request messages from the client.
pub struct Inbound {
    body: RecvStream,
    decoder: FrameDecoder,
    ended: bool,
}

impl Inbound {
    pub(crate) fn new(
        body: RecvStream,
        max_message_len: usize,
        encoding: Option<String>,
    ) -> Inbound {
        Inbound {
            body,
            decoder: FrameDecoder::new(max_message_len, encoding),
            ended: false,
        }
    }

    /// The next raw message, None at the end of the client's stream.
    pub async fn next_bytes(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            if self.ended {
                if !self.decoder.is_empty() {
                    return Err(Status::internal(
                        "grpc: request stream ended inside a message",
                    ));
                }
                return Ok(None);
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    // Capacity is released as soon as bytes are buffered; the
                    // decoder only asks for more when it lacks a whole message,
                    // so at most one message plus one chunk is held.
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                }
                Some(Err(e)) => {
                    return Err(Status::cancelled(format!("request stream broken: {e}")))
                }
                None => self.ended = true,
            }
        }
    }

    /// The next decoded message, None at the end of the client's stream.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.next_bytes().await? {
            Some(bytes) => codec::decode(bytes, "request").map(Some),
            None => Ok(None),
        }
    }

    /// Lets the call's stream close once the client ends its side, after
    /// a unary or server-streaming answer. A client may send the end of its
    /// request in an empty frame of its own (our client did), which can
    /// arrive after the answer. Dropping the stream before then resets it,
    /// and h2 counts each late frame on a forgotten stream as an error of
    /// its own, closing the connection with ENHANCE_YOUR_CALM past 1,024;
    /// etcd's Go server ignores such frames. A client that sends nothing
    /// within END_OF_REQUEST_GRACE gets the reset after all.
    pub fn close_after_answer(self) {
        if self.ended || self.body.is_end_stream() {
            return;
        }
        let mut body = self.body;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(END_OF_REQUEST_GRACE, async {
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
            })
            .await;
        });
    }

    /// Exactly one message (unary and server-streaming calls).
    pub async fn expect_one<M: Message + Default>(&mut self) -> Result<M, Status> {
        match self.next().await? {
            Some(m) => Ok(m),
            None => Err(Status::internal(
                "grpc: expected one request message, got none",
            )),
        }
    }
}

/// Response messages to the client, then the final status.
pub struct Outbound {
    respond: SendResponse<Bytes>,
    stream: Option<SendStream<Bytes>>,
    finished: bool,
}

impl Outbound {
    pub(crate) fn new(respond: SendResponse<Bytes>) -> Outbound {
        Outbound {
            respond,
            stream: None,
            finished: false,
        }
    }

    fn stream(&mut self) -> Result<&mut SendStream<Bytes>, Status> {
        if self.stream.is_none() {
            let response = grpc_response(StatusCode::OK, HeaderMap::new());
            let stream = self
                .respond
                .send_response(response, false)
                .map_err(|e| Status::cancelled(format!("client went away: {e}")))?;
            self.stream = Some(stream);
        }
        match self.stream.as_mut() {
            Some(s) => Ok(s),
            None => Err(Status::internal("response stream missing")),
        }
    }

    /// Sends one framed message, waiting for HTTP/2 flow-control capacity so
    /// a slow reader slows the sender instead of growing a buffer.
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), Status> {
        let stream = self.stream()?;
        write_all(stream, frame)
            .await
            .map_err(|e| Status::cancelled(format!("client went away: {e}")))
    }

    pub async fn send<M: Message>(&mut self, message: &M) -> Result<(), Status> {
        self.send_frame(codec::encode(message)).await
    }

    /// Resolves when the client resets the stream (cancels the call).
    pub async fn reset(&mut self) -> h2::Reason {
        let r = match self.stream.as_mut() {
            Some(s) => poll_fn(|cx| s.poll_reset(cx)).await,
            None => poll_fn(|cx| self.respond.poll_reset(cx)).await,
        };
        r.unwrap_or(h2::Reason::CANCEL)
    }

    /// Ends the call with a status: trailers after messages, or a
    /// trailers-only response when nothing was sent.
    pub fn finish(mut self, result: Result<(), Status>) -> Finished {
        self.finished = true;
        let status = match result {
            Ok(()) => Status::ok(),
            Err(s) => s,
        };
        let mut fields = HeaderMap::new();
        status.write_to(&mut fields);
        match self.stream.as_mut() {
            Some(stream) => {
                let _ = stream.send_trailers(fields);
            }
            None => {
                let response = grpc_response(StatusCode::OK, fields);
                let _ = self.respond.send_response(response, true);
            }
        }
        Finished(status.code)
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if !self.finished {
            // A handler vanished without a status (panic or cancellation):
            // tell the client rather than leaving the stream hanging.
            match self.stream.as_mut() {
                Some(s) => s.send_reset(h2::Reason::INTERNAL_ERROR),
                None => self.respond.send_reset(h2::Reason::INTERNAL_ERROR),
            }
        }
    }
}

/// Builds response headers for a gRPC answer.
pub(crate) fn grpc_response(status: StatusCode, extra: HeaderMap) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
    headers.extend(extra);
    response
}

/// Answers a request that never reached a handler (bad headers).
pub(crate) fn reject(mut respond: SendResponse<Bytes>, http_status: StatusCode, status: Status) {
    let mut fields = HeaderMap::new();
    status.write_to(&mut fields);
    let _ = respond.send_response(grpc_response(http_status, fields), true);
}
