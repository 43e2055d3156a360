//! Group commit: one thread takes every write waiting in its queue,
//! evaluates them in order against the state including earlier writes of
//! the same batch, makes the batch durable (one chunk object in object
//! storage and one SQLite transaction, written in parallel), then publishes
//! it and answers every caller together. Each txn keeps its own revision and
//! its own compare result. If object storage fails, the batch is undone,
//! callers get an error, the node stops accepting writes (draining) and a
//! background recovery keeps trying; once the chunk is stored and the local
//! store has caught up, writes resume.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::etcd::errors;
use crate::grpc::Status;
use crate::log::snapshot::SnapshotRequests;
use crate::log::{restore, EncodedChunk, ObjectLog};
use crate::pb::etcdserverpb::{TxnRequest, TxnResponse};
use crate::store::{Batch, LeaseChange, Record, Store};
use crate::watch::{Event, WatchHub};

use super::txn::{self, KvView};
use super::view::{store_status, BatchView};

/// Largest number of commands folded into one commit.
const MAX_BATCH: usize = 1024;

/// etcd's largest lease TTL in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's smallest granted TTL with default election settings.
pub const MIN_LEASE_TTL: i64 = 2;

enum Command {
    Txn {
        request: TxnRequest,
        reply: oneshot::Sender<Result<TxnResponse, Status>>,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
        reply: oneshot::Sender<Result<(i64, i64), Status>>,
    },
    Compact {
        revision: i64,
        reply: oneshot::Sender<Result<(), Status>>,
    },
}

enum Reply {
    Txn(
        oneshot::Sender<Result<TxnResponse, Status>>,
        Result<TxnResponse, Status>,
    ),
    Lease(
        oneshot::Sender<Result<(i64, i64), Status>>,
        Result<(i64, i64), Status>,
    ),
    Compact(oneshot::Sender<Result<(), Status>>, Result<(), Status>),
}

impl Reply {
    fn fail_if_ok(&mut self, status: &Status) {
        match self {
            Reply::Txn(_, r @ Ok(_)) => *r = Err(status.clone()),
            Reply::Lease(_, r @ Ok(_)) => *r = Err(status.clone()),
            Reply::Compact(_, r @ Ok(_)) => *r = Err(status.clone()),
            _ => {}
        }
    }

    fn send(self) {
        // A caller that gave up (client went away) no longer listens.
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Lease(tx, r) => drop(tx.send(r)),
            Reply::Compact(tx, r) => drop(tx.send(r)),
        }
    }
}

/// The handle the API layer writes through; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

fn stopped() -> Status {
    Status::unavailable("netsy: the write path is shutting down")
}

impl Writer {
    /// Evaluates and commits a txn (Put and DeleteRange come as one-op txns).
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        txn::validate(&request)?;
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Txn { request, reply })
            .await
            .map_err(|_| stopped())?;
        let result = rx.await.map_err(|_| stopped())?;
        let m = crate::http::metrics::metrics();
        let l = crate::http::metrics::labels(&[
            ("path", "sync"),
            ("result", if result.is_ok() { "success" } else { "error" }),
        ]);
        m.primary_write_transactions.get_or_create(&l).inc();
        m.primary_write_duration
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Creates a lease; `id` 0 asks for a fresh id. Returns (id, granted TTL).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), Status> {
        if ttl > MAX_LEASE_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::LeaseGrant { id, ttl, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Compacts history up to `revision` (inclusive of nothing newer).
    pub async fn compact(&self, revision: i64) -> Result<(), Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Compact { revision, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Object storage as the permanent store of the write path (quorum 0, or
/// too few replicas: every batch is one chunk before it is acknowledged).
pub struct Durability {
    pub log: Arc<ObjectLog>,
    pub runtime: tokio::runtime::Handle,
    pub snapshots: Option<SnapshotRequests>,
}

/// Whether writes are accepted, shared with the recovery task.
#[derive(Default)]
pub struct WriteState {
    draining: AtomicBool,
    reason: Mutex<String>,
}

impl WriteState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn drain(&self, reason: String) {
        log::error!("not accepting writes (draining): {reason}");
        crate::node::state::set_role("draining");
        if let Ok(mut r) = self.reason.lock() {
            *r = reason;
        }
        self.draining.store(true, Ordering::Release);
    }

    fn resume(&self) {
        log::info!("accepting writes again");
        crate::node::state::set_role("primary");
        self.draining.store(false, Ordering::Release);
    }

    fn refusal(&self) -> Status {
        let reason = self.reason.lock().map(|r| r.clone()).unwrap_or_default();
        Status::unavailable(format!(
            "netsy: this node is not accepting writes (state: draining): {reason}"
        ))
    }
}

/// Starts the commit thread. It stops when every [`Writer`] is dropped.
pub fn start(
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    leader_id: String,
    durability: Option<Durability>,
) -> (Writer, Arc<WriteState>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let state = Arc::new(WriteState::default());
    let committer = Committer {
        store,
        hub,
        leader_id,
        rx,
        ids: LeaseIds::new(),
        durability,
        state: state.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("netsy-committer".into())
        .spawn(move || committer.run())
        .unwrap_or_else(|e| panic!("cannot start the commit thread: {e}"));
    (Writer { tx }, state, handle)
}

struct Committer {
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    leader_id: String,
    rx: mpsc::Receiver<Command>,
    ids: LeaseIds,
    durability: Option<Durability>,
    state: Arc<WriteState>,
}

impl Committer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut commands = vec![first];
            while commands.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            self.commit(commands);
        }
        log::debug!("commit thread stopped");
    }

    fn commit(&mut self, commands: Vec<Command>) {
        if self.state.is_draining() {
            let status = self.state.refusal();
            for c in commands {
                refuse(c, &status);
            }
            return;
        }
        let mut batch = Batch::default();
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(commands.len());
        {
            let index = self.store.index();
            let mut view = BatchView::new(&index, &self.store);
            for command in commands {
                match command {
                    Command::Txn { request, reply } => {
                        let result = txn::evaluate(&request, &mut view, &self.leader_id);
                        view.accept();
                        let result = result.map(|evaluated| {
                            if let Some(w) = evaluated.write {
                                let prev = w.prev.as_ref().map(|p| p.to_key_value());
                                events.push(Event::from_record(&w.record, prev));
                                batch.records.push(w.record);
                            }
                            evaluated.response
                        });
                        replies.push(Reply::Txn(reply, result));
                    }
                    Command::LeaseGrant { id, ttl, reply } => {
                        let result = if id != 0 && view.lease_exists(id) {
                            Err(errors::lease_exists())
                        } else {
                            let id = if id != 0 {
                                id
                            } else {
                                self.ids.fresh(|c| view.lease_exists(c))
                            };
                            let ttl = ttl.max(MIN_LEASE_TTL);
                            view.granted_leases.insert(id);
                            batch.leases.push(LeaseChange::Grant { id, ttl });
                            Ok((id, ttl))
                        };
                        replies.push(Reply::Lease(reply, result));
                    }
                    Command::Compact { revision, reply } => {
                        let result = if revision <= view.compacted_revision() {
                            Err(errors::compacted())
                        } else if revision > view.current_revision() {
                            Err(errors::future_revision())
                        } else {
                            view.raise_compaction(revision);
                            batch.compaction = Some(revision);
                            Ok(())
                        };
                        replies.push(Reply::Compact(reply, result));
                    }
                }
            }
        }
        if !batch.is_empty() {
            if let Err(status) = self.make_durable(&batch) {
                // Nothing was published: every answer of this batch may have
                // read the unpersisted writes, so all fail.
                for r in &mut replies {
                    r.fail_if_ok(&status);
                }
            } else {
                if let Some(last) = batch.records.last() {
                    crate::http::metrics::metrics()
                        .primary_object_storage_revision
                        .set(last.revision);
                }
                let discarded = self.store.publish(&batch);
                let committed = self.store.committed_revision();
                self.hub.publish(events, committed);
                if let (Some(d), false) = (&self.durability, batch.records.is_empty()) {
                    if let Some(snapshots) = &d.snapshots {
                        snapshots.request(committed, encoded_size(&batch.records));
                    }
                }
                if !discarded.is_empty() {
                    let started = std::time::Instant::now();
                    let result = self.store.discard_values(&discarded);
                    if let Err(e) = &result {
                        log::warn!(
                            "compaction could not discard {} old values: {e}",
                            discarded.len()
                        );
                    }
                    let outcome = if result.is_ok() { "success" } else { "error" };
                    crate::http::metrics::metrics()
                        .compaction_duration
                        .get_or_create(&crate::http::metrics::labels(&[("result", outcome)]))
                        .observe(started.elapsed().as_secs_f64());
                }
            }
        }
        for r in replies {
            r.send();
        }
    }

    /// Writes the batch's chunk and its SQLite transaction in parallel;
    /// both must succeed. On failure the local rows are undone, writes stop
    /// and recovery starts.
    fn make_durable(&mut self, batch: &Batch) -> Result<(), Status> {
        let upload = match (&self.durability, batch.records.is_empty()) {
            (Some(d), false) => {
                let (log, records) = (d.log.clone(), batch.records.clone());
                Some(d.runtime.spawn(async move {
                    let Some(chunk) = log.encode_chunk(&records).map_err(|e| e.to_string())? else {
                        return Ok(());
                    };
                    // As the reference does: one immediate retry whatever the
                    // failure (the store below already retried transient
                    // ones). The retry sends the same bytes, so a first
                    // attempt that landed after all counts as written.
                    let first = put_chunk_in_time(&log, &chunk).await;
                    let Err(e) = first else { return Ok(()) };
                    log::warn!("chunk write failed: {e}; retrying once");
                    crate::http::metrics::count_retry("object_storage_write");
                    put_chunk_in_time(&log, &chunk).await
                }))
            }
            _ => None,
        };
        let persisted = self.store.persist(batch);
        let uploaded = match (upload, &self.durability) {
            (Some(handle), Some(d)) => d
                .runtime
                .block_on(handle)
                .unwrap_or_else(|e| Err(format!("upload task failed: {e}"))),
            _ => Ok(()),
        };
        let (persisted, uploaded) = match (persisted, uploaded) {
            (Ok(()), Ok(())) => return Ok(()),
            other => other,
        };
        let first = batch.records.first().map_or(0, |r| r.revision);
        let last = batch.records.last().map_or(0, |r| r.revision);
        let mut problems = Vec::new();
        if let Err(e) = &uploaded {
            problems.push(format!(
                "object storage write of revisions {first}..={last} failed: {e}"
            ));
        }
        match &persisted {
            Err(e) => problems.push(format!("local database commit failed: {e}")),
            Ok(()) if !batch.records.is_empty() => {
                if let Err(e) = self.store.rollback_from(first) {
                    let message = format!(
                        "{}; undoing the local rows failed: {e}; restart the node",
                        problems.join("; ")
                    );
                    self.state.drain(message.clone());
                    return Err(Status::unavailable(message));
                }
            }
            Ok(()) => {}
        }
        let message = problems.join("; ");
        log::error!("{message}");
        if self.durability.is_some() && !batch.records.is_empty() {
            self.recover(batch.records.clone(), message.clone());
        }
        Err(match persisted {
            Err(e) if uploaded.is_ok() => store_status(e),
            _ => Status::unavailable(message),
        })
    }

    /// Stops accepting writes and starts the background recovery: keep
    /// trying to store the chunk (so an ambiguous earlier attempt resolves
    /// one way), then import whatever object storage has beyond the local
    /// store, publish it, and accept writes again.
    fn recover(&self, records: Vec<Record>, reason: String) {
        let Some(d) = &self.durability else { return };
        self.state.drain(reason);
        let (log, store, hub, state) = (
            d.log.clone(),
            self.store.clone(),
            self.hub.clone(),
            self.state.clone(),
        );
        d.runtime.spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                match tokio::time::timeout(CHUNK_WRITE_TIMEOUT, log.write_chunk(&records)).await {
                    Ok(Ok(())) => break,
                    // Object storage already has other records at these
                    // revisions: it is the truth; import them instead.
                    Ok(Err(crate::log::LogError::Storage(
                        crate::objstore::ObjError::Conflict(key),
                    ))) => {
                        log::warn!("recovery: {key} already holds other records; importing them");
                        break;
                    }
                    Ok(Err(e)) => log::warn!(
                        "recovery: object storage still failing: {e}; next try in {backoff:?}"
                    ),
                    Err(_) => {
                        log::warn!("recovery: chunk write timed out; next try in {backoff:?}")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            loop {
                let before = store.latest_revision();
                match restore::catch_up(&store, &log).await {
                    Ok(report) => {
                        if let Err(e) = super::publish_imported(&store, &hub, before) {
                            log::error!("recovery: publishing imported records failed: {e}");
                        }
                        log::info!("recovery: caught up to revision {}", report.latest);
                        break;
                    }
                    Err(e) => log::warn!("recovery: catching up failed: {e}; retrying"),
                }
                tokio::time::sleep(backoff).await;
            }
            state.resume();
        });
    }
}

/// How long one chunk write may take before it counts as failed.
const CHUNK_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One chunk write under [`CHUNK_WRITE_TIMEOUT`].
async fn put_chunk_in_time(log: &ObjectLog, chunk: &EncodedChunk) -> Result<(), String> {
    match tokio::time::timeout(CHUNK_WRITE_TIMEOUT, log.put_chunk(chunk)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "writing the chunk took longer than {CHUNK_WRITE_TIMEOUT:?}"
        )),
    }
}

fn encoded_size(records: &[Record]) -> u64 {
    use prost::Message;
    records
        .iter()
        .map(|r| r.to_proto().encoded_len() as u64)
        .sum()
}

fn refuse(command: Command, status: &Status) {
    let _ = match command {
        Command::Txn { reply, .. } => reply.send(Err(status.clone())).is_ok(),
        Command::LeaseGrant { reply, .. } => reply.send(Err(status.clone())).is_ok(),
        Command::Compact { reply, .. } => reply.send(Err(status.clone())).is_ok(),
    };
}

/// Lease ids: positive, unique, not guessable from the TTL.
struct LeaseIds {
    state: u64,
}

impl LeaseIds {
    fn new() -> LeaseIds {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        LeaseIds { state: seed | 1 }
    }

    fn fresh(&mut self, taken: impl Fn(i64) -> bool) -> i64 {
        loop {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let id = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 1) as i64;
            if id > 0 && !taken(id) {
                return id;
            }
        }
    }
}
