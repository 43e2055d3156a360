//! The Primary service as the Primary serves it: `Follow` (Initial, then a
//! replay from this node's database of what the replica lacks, then live
//! records, commits and compactions) and `SendHeartbeat`. Receipts and
//! heartbeats on the stream feed the [`ReplicaSet`].

use std::sync::Arc;
use std::time::Duration;

use crate::grpc::{Requests, Responses, Status};
use crate::pb::netsy::primary_message::Payload;
use crate::pb::netsy::{HealthState, Initial, NodeState, PrimaryMessage, ReplicaMessage};
use crate::primary::Writer;
use crate::store::Store;

use super::set::{commit_message, record_message, Closed, ReplicaSet};
use super::tracker::{ReplicaHealth, Report};

/// How long the Primary waits for a replica to say where it stands before
/// it streams live messages only (a replica that says nothing gets no
/// replay, as from the reference Primary).
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

/// Records replayed per database read.
const REPLAY_PAGE: usize = 1_000;

/// What the Primary service needs.
pub struct PrimaryService {
    pub set: Arc<ReplicaSet>,
    pub store: Arc<Store>,
    /// Runs the queue registration between two batches.
    pub writer: Writer,
    /// Ok while this node is the Primary (starting, active or draining);
    /// otherwise its primary state.
    pub serving: Box<dyn Fn() -> Result<(), &'static str> + Send + Sync>,
}

fn not_primary(state: &str) -> Status {
    Status::failed_precondition(format!("this node is not the primary (state: {state})"))
}

fn report(state: &NodeState) -> Report {
    let health = match HealthState::try_from(state.health_state) {
        Ok(HealthState::HealthHealthy) => ReplicaHealth::Healthy,
        Ok(HealthState::HealthDegraded) => ReplicaHealth::Degraded,
        _ => ReplicaHealth::Loading,
    };
    Report {
        health,
        latest: state.latest_revision,
    }
}

/// The heartbeat a replica message carries, checked against the caller.
fn heartbeat<'m>(message: &'m ReplicaMessage, node: &str) -> Result<Option<&'m NodeState>, Status> {
    let Some(hb) = &message.heartbeat else {
        log::warn!("replica {node} sent a message without a heartbeat; ignored");
        return Ok(None);
    };
    if hb.node_id != node {
        return Err(Status::invalid_argument(format!(
            "heartbeat node_id {:?} does not match the peer certificate ({node})",
            hb.node_id
        )));
    }
    Ok(Some(hb))
}

impl PrimaryService {
    /// `Primary.SendHeartbeat` from a replica with no receipt to send.
    pub fn heartbeat(&self, state: &NodeState) -> Result<(), Status> {
        (self.serving)().map_err(not_primary)?;
        if state.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id is required"));
        }
        if !self.set.heard(&state.node_id, None, report(state), None) {
            return Err(Status::not_found(format!(
                "replica {} is not connected",
                state.node_id
            )));
        }
        Ok(())
    }

    /// `Primary.Follow` for the replica `node` (from its certificate).
    pub async fn follow(
        self: Arc<Self>,
        node: String,
        mut requests: Requests<ReplicaMessage>,
        out: Responses<PrimaryMessage>,
    ) -> Result<(), Status> {
        (self.serving)().map_err(not_primary)?;
        // Our replicas say first how far they have committed; replay starts
        // there.
        let announced = match tokio::time::timeout(ANNOUNCE_WAIT, requests.next()).await {
            Ok(Ok(Some(m))) => heartbeat(&m, &node)?.map(|hb| hb.latest_revision),
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(status),
            Err(_) => None,
        };
        let stream = self.set.attach(&node);
        let _detach = Detach {
            set: self.set.clone(),
            node: node.clone(),
            stream,
        };
        log::info!(
            "replica {node} follows{}",
            announced.map_or(String::new(), |r| format!(" from revision {r}"))
        );
        let receiving = tokio::spawn(receive(self.set.clone(), node.clone(), stream, requests));
        let _stop_receiving = AbortOnDrop(receiving.abort_handle());
        let sending = self.send(&node, stream, announced, &out);
        tokio::select! {
            r = sending => r,
            r = receiving => r.unwrap_or_else(|e| Err(Status::internal(format!("receive task: {e}")))),
        }
    }

    /// Initial, the replay, then the live queue until it closes.
    async fn send(
        &self,
        node: &str,
        stream: u64,
        announced: Option<i64>,
        out: &Responses<PrimaryMessage>,
    ) -> Result<(), Status> {
        let store = &self.store;
        out.send(PrimaryMessage {
            payload: Some(Payload::Initial(Initial {
                committed_revision: store.committed_revision(),
                compaction_revision: store.compacted_revision(),
            })),
        })
        .await?;
        // The bulk of a replay goes straight from the database while writes
        // continue; the rest is queued between two batches below.
        let mut sent = announced;
        if let Some(mut from) = sent {
            while store.committed_revision() - from > REPLAY_PAGE as i64 {
                let page = store
                    .records_between(from + 1, store.committed_revision(), REPLAY_PAGE)
                    .map_err(|e| Status::internal(format!("replay: {e}")))?;
                let Some(last) = page.last().map(|r| r.revision) else {
                    break;
                };
                for r in &page {
                    out.send(record_message(r)).await?;
                }
                from = last;
            }
            sent = Some(from);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (set, store, who) = (self.set.clone(), self.store.clone(), node.to_string());
        let register = Box::new(move || {
            let queue = set.listen(&who, stream, || {
                let mut first = Vec::new();
                if let Some(from) = sent {
                    let rest = store.records_between(from + 1, store.latest_revision(), usize::MAX);
                    match rest {
                        Ok(records) => first.extend(records.iter().map(record_message)),
                        Err(e) => log::warn!("replay to {who}: {e}"),
                    }
                }
                first.push(commit_message(store.committed_revision()));
                first
            });
            let _ = tx.send(queue);
        });
        self.writer
            .between(register)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let Ok(Some(queue)) = rx.await else {
            return Err(Status::aborted(
                "a newer stream of this replica replaced this one",
            ));
        };
        loop {
            match queue.take().await {
                Ok(messages) => {
                    for m in messages {
                        out.send(m).await?;
                    }
                }
                Err(Closed::Replaced) => {
                    return Err(Status::aborted(
                        "a newer stream of this replica replaced this one",
                    ))
                }
                Err(Closed::Overflowed) => {
                    log::warn!("replica {node} fell too far behind: ending its stream");
                    return Err(Status::resource_exhausted(
                        "the replica fell too far behind; reconnect to be replayed",
                    ));
                }
            }
        }
    }
}

/// Reads receipts and heartbeats until the replica closes its side.
async fn receive(
    set: Arc<ReplicaSet>,
    node: String,
    stream: u64,
    mut requests: Requests<ReplicaMessage>,
) -> Result<(), Status> {
    while let Some(m) = requests.next().await? {
        let Some(hb) = heartbeat(&m, &node)? else {
            continue;
        };
        let receipt = (m.revision > 0).then_some(m.revision);
        set.heard(&node, Some(stream), report(hb), receipt);
    }
    Ok(())
}

/// Untracks a stream however its handler ends.
struct Detach {
    set: Arc<ReplicaSet>,
    node: String,
    stream: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.set.detach(&self.node, self.stream);
        log::info!("replica {} stopped following", self.node);
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
