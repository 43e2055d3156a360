//! A replica following its Primary: it opens `Primary.Follow`, says how far
//! it has committed, and applies what comes: records tentatively (one
//! SQLite commit per group of queued records, then one receipt for the
//! group's last revision), commits by making records visible to readers
//! and watchers, never beyond what this stream has confirmed. Reconnects
//! after a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::grpc::{Connector, Status};
use crate::pb::netsy::primary_message::Payload;
use crate::pb::netsy::{NodeState, PrimaryMessage, PrimaryState as WirePrimary, ReplicaMessage};
use crate::store::{Record, Store};
use crate::watch::WatchHub;

/// How long a replica waits before it reconnects (the reference's value).
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Timeout of the pre-check and of each send.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages read ahead of the applier; what is queued is applied as one
/// group.
const READ_AHEAD: usize = 4_096;

/// What a follower needs.
pub struct FollowerParts {
    pub store: Arc<Store>,
    pub hub: Arc<WatchHub>,
    /// This node's state, for heartbeats and receipts.
    pub state: Arc<dyn Fn() -> NodeState + Send + Sync>,
    /// A plain heartbeat goes on the stream when no receipt went for this
    /// long.
    pub heartbeat_interval: Duration,
    /// Set once a stream's Initial is applied: this node knows the
    /// Primary's compaction revision.
    pub followed: Arc<AtomicBool>,
}

/// Follows the Primary at `primary` until the task is aborted.
pub async fn follow(primary: Arc<Connector>, primary_id: String, parts: Arc<FollowerParts>) {
    let mut last_error = String::new();
    loop {
        let result = follow_once(&primary, &primary_id, &parts).await;
        let error = match result {
            Ok(()) => format!("the stream from {primary_id} ended"),
            Err(e) => e,
        };
        // Say each distinct problem once, not every second.
        if error != last_error {
            log::warn!("following the Primary: {error}; reconnecting in {RECONNECT_AFTER:?}");
            last_error = error;
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

async fn follow_once(
    primary: &Connector,
    primary_id: &str,
    parts: &FollowerParts,
) -> Result<(), String> {
    let text = |s: Status| format!("{primary_id}: {}", s.message);
    let remote: NodeState = primary
        .unary("/netsy.Node/GetNodeState", &(), CALL_TIMEOUT)
        .await
        .map_err(text)?;
    if remote.primary_state == WirePrimary::PrimaryReplica as i32 {
        return Err(format!("remote node {primary_id} is not acting as primary"));
    }
    let mut call = primary
        .start("/netsy.Primary/Follow", None)
        .await
        .map_err(text)?;
    let store = &parts.store;
    // Where a replay should start: what this node has committed is final.
    let mut announce = (parts.state)();
    announce.latest_revision = store.committed_revision();
    call.sender
        .send(&ReplicaMessage {
            revision: 0,
            heartbeat: Some(announce),
        })
        .await
        .map_err(text)?;
    let compaction = match call.receiver.next::<PrimaryMessage>().await.map_err(text)? {
        Some(PrimaryMessage {
            payload: Some(Payload::Initial(initial)),
        }) => initial.compaction_revision,
        Some(_) => {
            return Err(format!(
                "{primary_id} did not start the stream with Initial"
            ))
        }
        None => return Ok(()),
    };
    log::info!("following the Primary {primary_id}");

    // A reader task keeps the stream moving while the applier writes.
    let (tx, mut rx) = mpsc::channel::<PrimaryMessage>(READ_AHEAD);
    let mut receiver = call.receiver;
    let reader = tokio::spawn(async move {
        loop {
            match receiver.next::<PrimaryMessage>().await {
                Ok(Some(m)) => {
                    if tx.send(m).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    });
    let _stop_reader = AbortOnDrop(reader.abort_handle());
    let mut apply = Applier {
        store,
        hub: &parts.hub,
        primary_committed: 0,
        confirmed: store.committed_revision(),
        compaction,
    };
    apply.compact().map_err(|e| e.to_string())?;
    parts.followed.store(true, Ordering::Release);
    let mut sender = call.sender;
    let mut last_sent = Instant::now();
    let mut tick = tokio::time::interval(parts.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { break };
                crate::failpoint::hit("follow_apply").await;
                let mut group = vec![first];
                while let Ok(m) = rx.try_recv() {
                    group.push(m);
                }
                if let Some(revision) = apply.group(group).map_err(|e| e.to_string())? {
                    // In SQLite here; the Primary does not know yet.
                    crate::failpoint::hit("replica_receipt").await;
                    let receipt = ReplicaMessage { revision, heartbeat: Some((parts.state)()) };
                    send(&mut sender, &receipt).await.map_err(text)?;
                    last_sent = Instant::now();
                }
            }
            _ = tick.tick() => {
                if last_sent.elapsed() >= parts.heartbeat_interval {
                    let hb = ReplicaMessage { revision: 0, heartbeat: Some((parts.state)()) };
                    send(&mut sender, &hb).await.map_err(text)?;
                    last_sent = Instant::now();
                }
            }
        }
    }
    match reader.await {
        Ok(Err(status)) => Err(text(status)),
        _ => Ok(()),
    }
}

/// One send within [`CALL_TIMEOUT`]; a failure ends the stream (the
/// replica reconnects and is replayed).
async fn send(
    sender: &mut crate::grpc::client::CallSender,
    message: &ReplicaMessage,
) -> Result<(), Status> {
    match tokio::time::timeout(CALL_TIMEOUT, sender.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Status::deadline_exceeded(
            "sending to the Primary timed out",
        )),
    }
}

/// Applies one stream's messages to the store.
struct Applier<'a> {
    store: &'a Store,
    hub: &'a WatchHub,
    /// The Primary's committed revision, as last told.
    primary_committed: i64,
    /// Highest local revision known to match the Primary's history: the
    /// committed one at the start, then whatever this stream sent.
    confirmed: i64,
    /// The Primary's compaction revision, applied once committed here.
    compaction: i64,
}

impl Applier<'_> {
    /// Applies a group in order; returns the revision to receipt, if
    /// records came.
    fn group(
        &mut self,
        group: Vec<PrimaryMessage>,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        let mut records: Vec<Record> = Vec::new();
        let mut receipt = None;
        for m in group {
            match m.payload {
                Some(Payload::Record(r)) => records.push(Record::from_proto(&r).detached()),
                Some(Payload::Commit(c)) => {
                    receipt = self.records(&mut records)?.or(receipt);
                    self.primary_committed = self.primary_committed.max(c);
                    self.commit()?;
                }
                Some(Payload::Compact(c)) => {
                    receipt = self.records(&mut records)?.or(receipt);
                    self.compaction = self.compaction.max(c);
                    self.compact()?;
                }
                // Initial comes once, first.
                Some(Payload::Initial(_)) | None => {}
            }
        }
        receipt = self.records(&mut records)?.or(receipt);
        self.commit()?;
        Ok(receipt)
    }

    fn records(
        &mut self,
        records: &mut Vec<Record>,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        if records.is_empty() {
            return Ok(None);
        }
        let now = crate::store::Timestamp::now();
        for r in records.iter_mut() {
            r.replicated_at = Some(now);
        }
        let upto = self.store.replicate(records)?;
        records.clear();
        self.confirmed = self.confirmed.max(upto);
        Ok(Some(upto))
    }

    /// Makes visible what the Primary committed and this stream confirmed.
    fn commit(&mut self) -> Result<(), crate::store::StoreError> {
        let upto = self.primary_committed.min(self.confirmed);
        if upto <= self.store.committed_revision() {
            return Ok(());
        }
        self.store.commit(upto);
        self.hub
            .publish_from_store(self.store, self.hub.committed())?;
        self.compact()
    }

    /// Compacts as the Primary did, as far as this node has committed.
    fn compact(&mut self) -> Result<(), crate::store::StoreError> {
        let upto = self.compaction.min(self.store.committed_revision());
        self.store.compact(upto)
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
