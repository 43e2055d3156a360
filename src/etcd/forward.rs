//! A replica's side of writes and linearizable reads: writes go to the
//! Primary's peer API unchanged and its answer (or status) comes back
//! unchanged; a default Range first learns the Primary's committed
//! revision — one peer call shared by every read waiting when it starts,
//! as etcd's ReadIndex — and is answered once this node has applied that
//! far. Serializable reads never leave the node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::oneshot;

use crate::grpc::{Connector, Status};
use crate::http::metrics::Metrics;
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};

/// Where this node's writes go.
pub enum WriteRoute {
    /// This node is (or may become) the Primary: write locally.
    Local,
    /// Another node is the Primary.
    Primary(Arc<Connector>),
}

/// Tells the etcd layer where writes go; the node answers from the
/// cluster state.
pub trait Forwarding: Send + Sync {
    fn route(&self) -> WriteRoute;
}

/// How long a forwarded call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a linearizable read on a replica waits to apply the Primary's
/// committed revision.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Sends `request` to the Primary's `path`; its answer, or its status,
/// comes back as the Primary gave it.
pub async fn forward<Req: Message, Resp: Message + Default>(
    metrics: &Metrics,
    primary: &Connector,
    kind: &'static str,
    path: &str,
    request: &Req,
) -> Result<Resp, Status> {
    let started = std::time::Instant::now();
    // Boxed: a client call is large, and inline it would make every
    // write's future (which moves several times before it is polled) as
    // large, forwarded or not.
    let result = Box::pin(async {
        let channel = primary
            .channel()
            .await
            .map_err(|e| Status::unavailable(format!("no connection to primary: {}", e.message)))?;
        channel
            .unary_with_timeout(path, request, Some(FORWARD_TIMEOUT))
            .await
    })
    .await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    metrics.replica_proxy_handles.observe(
        &metrics.replica_proxy_requests,
        &metrics.replica_proxy_request_duration,
        (kind, outcome),
        started.elapsed().as_secs_f64(),
    );
    result
}

type Waiter = oneshot::Sender<Result<i64, Status>>;

/// Reads waiting for the Primary's committed revision.
#[derive(Default)]
pub struct ReadIndex {
    state: Mutex<ReadIndexState>,
}

#[derive(Default)]
struct ReadIndexState {
    waiting: Vec<Waiter>,
    /// A task is asking the Primary (it takes the waiting reads when its
    /// next call starts).
    asking: bool,
}

impl ReadIndex {
    /// The Primary's committed revision, learnt after this call began.
    pub async fn primary_committed(
        self: &Arc<Self>,
        primary: Arc<Connector>,
        metrics: Arc<Metrics>,
    ) -> Result<i64, Status> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = match self.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            state.waiting.push(tx);
            !std::mem::replace(&mut state.asking, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.ask(primary, metrics).await });
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("no answer from the primary")))
    }

    /// One call per round, answering every read that waited before it.
    async fn ask(&self, primary: Arc<Connector>, metrics: Arc<Metrics>) {
        loop {
            let waiting = {
                let mut state = match self.state.lock() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if state.waiting.is_empty() {
                    state.asking = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            metrics.replica_read_index_calls.inc();
            // The cheapest read there is: a count of one key; its header
            // carries the Primary's committed revision. Not serializable:
            // the Primary answers only once it is active (caught up).
            let probe = RangeRequest {
                key: bytes::Bytes::from_static(b"\0"),
                count_only: true,
                serializable: false,
                ..RangeRequest::default()
            };
            let answer: Result<RangeResponse, Status> = forward(
                &metrics,
                &primary,
                "read_index",
                "/etcdserverpb.KV/Range",
                &probe,
            )
            .await;
            let result = answer.and_then(|r| {
                r.header
                    .map(|h| h.revision)
                    .ok_or_else(|| Status::internal("the primary's answer has no header"))
            });
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }
}

/// Waits until the local committed revision reaches `revision`.
pub async fn applied(
    mut committed: tokio::sync::watch::Receiver<i64>,
    revision: i64,
) -> Result<(), Status> {
    let reached = tokio::time::timeout(APPLY_WAIT, committed.wait_for(|c| *c >= revision)).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(Status::unavailable("etcdserver: request timed out")),
    }
}
