//! Adapters for streaming methods, beside [`unary`](super::unary): a
//! handler written as an async function over typed requests and a typed
//! response sink. The adapter moves messages to the wire, ends the call
//! with the handler's status, enforces the client's deadline, and stops
//! the handler when the client cancels or goes away.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;

use super::call::{Finished, Inbound, Outbound, RequestContext};
use super::router::{handler, with_deadline, Call, Handler};
use super::status::Status;

/// Responses waiting for the wire before the handler is slowed down.
const RESPONSE_BUFFER: usize = 16;

/// The response side of a streaming call, as its handler sees it.
pub struct Responses<M> {
    tx: mpsc::Sender<M>,
}

impl<M> Responses<M> {
    /// Queues one message for the client; waits while the client reads
    /// slowly. Fails once the client has cancelled or gone away.
    pub async fn send(&self, message: M) -> Result<(), Status> {
        self.tx
            .send(message)
            .await
            .map_err(|_| Status::cancelled("the client went away"))
    }
}

/// The request side of a bidirectional call, as its handler sees it.
pub struct Requests<M> {
    inbound: Inbound,
    _messages: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Requests<M> {
    /// The next request; None once the client closed its side.
    pub async fn next(&mut self) -> Result<Option<M>, Status> {
        self.inbound.next().await
    }
}

/// Adapts `async fn(Req, RequestContext, Responses<Resp>) -> Result<(),
/// Status>` into a server-streaming handler: one request in, any number of
/// responses out.
pub fn server_streaming<Req, Resp, F, Fut>(f: F) -> Handler
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
    F: Fn(Req, RequestContext, Responses<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let f = Arc::new(f);
    handler(move |call: Call| {
        let f = f.clone();
        async move {
            let Call {
                ctx,
                mut inbound,
                outbound,
            } = call;
            let request: Req = match inbound.expect_one().await {
                Ok(r) => r,
                Err(status) => return outbound.finish(Err(status)),
            };
            let finished = respond(ctx, outbound, |ctx, out| f(request, ctx, out)).await;
            inbound.close_after_answer();
            finished
        }
    })
}

/// Adapts `async fn(Requests<Req>, RequestContext, Responses<Resp>) ->
/// Result<(), Status>` into a bidirectional-streaming handler.
pub fn bidi_streaming<Req, Resp, F, Fut>(f: F) -> Handler
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
    F: Fn(Requests<Req>, RequestContext, Responses<Resp>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let f = Arc::new(f);
    handler(move |call: Call| {
        let f = f.clone();
        async move {
            let Call {
                ctx,
                inbound,
                outbound,
            } = call;
            let requests = Requests {
                inbound,
                _messages: PhantomData,
            };
            respond(ctx, outbound, |ctx, out| f(requests, ctx, out)).await
        }
    })
}

/// Starts the handler with a response sink, under the call's deadline.
async fn respond<Resp, Fut>(
    ctx: RequestContext,
    outbound: Outbound,
    handler: impl FnOnce(RequestContext, Responses<Resp>) -> Fut,
) -> Finished
where
    Resp: Message,
    Fut: Future<Output = Result<(), Status>>,
{
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    let deadline = ctx.deadline;
    let work = with_deadline(deadline, handler(ctx, Responses { tx }));
    pump(work, rx, outbound).await
}

/// Runs the handler while moving its responses to the wire; ends the call
/// with its status once every response it queued is sent. A client that
/// cancels, or stops reading, ends the handler.
async fn pump<Resp: Message>(
    work: impl Future<Output = Result<(), Status>>,
    mut rx: mpsc::Receiver<Resp>,
    mut outbound: Outbound,
) -> Finished {
    tokio::pin!(work);
    let mut result = None;
    loop {
        tokio::select! {
            r = &mut work, if result.is_none() => result = Some(r),
            next = rx.recv() => match next {
                Some(message) => {
                    if let Err(gone) = outbound.send(&message).await {
                        return outbound.finish(Err(gone));
                    }
                }
                // The handler has finished, or dropped its sink.
                None => break,
            },
            _ = outbound.reset() => {
                return outbound.finish(Err(Status::cancelled("call cancelled by the client")));
            }
        }
    }
    let result = match result {
        Some(r) => r,
        None => work.await,
    };
    outbound.finish(result)
}
