//! Group commit, the driver around [`WriteCore`]: one thread takes every
//! write waiting in its queue, has the core evaluate them as one batch,
//! makes the batch durable on one of two routes, then commits it, publishes
//! it to watchers and replicas and answers every caller together. A write
//! that comes alone to an idle single node is committed the same way on
//! its caller's thread ([`Writer`]), without the two thread hand-offs.
//!
//! * Sync: the batch is appended to SQLite while the [`Durability`] writes
//!   it to the bucket (after anything still buffered there).
//! * Quorum: the batch goes to the replicas while it is appended locally;
//!   once enough replicas receipted it, it is committed and buffered for
//!   the bucket. Without the receipts in time it is rolled back and the
//!   same batch takes the sync route, so the caller only waits longer.
//!
//! If durability fails, the batch is discarded, callers get an error, the
//! gate closes (draining) and a background recovery settles what failed;
//! the node is told through [`WritePathEvent`]s and decides when writes
//! resume.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::http::metrics::{labels, Metrics};
use crate::log::buffer::{ChunkBuffer, Trigger};
use crate::log::snapshot::SnapshotRequests;
use crate::store::{Batch, Record, Store, Timestamp};
use crate::watch::WatchHub;

use super::buffer::Buffer;
use super::core::{Command, Evaluated, Reply, WriteCore, MAX_LEASE_TTL};
use super::durability::Durability;
use super::error::WriteError;
use super::gate::{WriteGate, WRITE_PATIENCE};
use super::recovery::{Recovery, Step};
use super::replicas::{Replicas, Route, QUORUM_RECEIPT_TIMEOUT};
use super::tenure::Tenure;
use super::txn::{Txn, TxnOutcome};
use super::view::BatchView;

/// Largest number of commands folded into one commit.
const MAX_BATCH: usize = 1024;

/// Most watch streams a commit made on a caller's thread may wake.
const MAX_LISTENERS_ON_CALLER: usize = 16;

/// Work for the commit thread.
enum Request {
    Write {
        command: Command,
        /// The answer, and the route its batch took.
        reply: oneshot::Sender<(Reply, Route)>,
    },
    /// Runs between two batches, when nothing is in flight.
    Between(Box<dyn FnOnce() + Send>),
}

/// The handle the API layer writes through; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    gate: Arc<WriteGate>,
    metrics: Arc<Metrics>,
    /// The committer, when a caller may commit on its own thread.
    on_caller: Option<Arc<Mutex<Committer>>>,
    /// Writes submitted and not yet answered.
    in_flight: Arc<AtomicUsize>,
}

/// Counts a write in flight until dropped.
struct InFlightWrite<'a>(&'a AtomicUsize);

impl Drop for InFlightWrite<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Writer {
    async fn submit(&self, command: Command) -> Result<(Reply, Route), WriteError> {
        // While a Primary is being chosen or is starting, wait for it a
        // little rather than fail at once (etcd waits for a leader too).
        self.gate.wait(WRITE_PATIENCE).await?;
        let alone = self.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        let _counted = InFlightWrite(&self.in_flight);
        let command = match self.commit_here(command, alone) {
            Ok(answer) => return Ok(answer),
            Err(command) => command,
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Write { command, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)
    }

    /// Commits `command` as a batch of its own on this thread when it is
    /// the only write in flight (`alone`) and the commit thread is idle: a
    /// lone write then makes no thread hand-off, to the commit thread or
    /// back (each a wake of an idle CPU). Under load writes go to the
    /// commit thread, which batches them. Gives the command back otherwise.
    fn commit_here(&self, command: Command, alone: bool) -> Result<(Reply, Route), Command> {
        let Some(committer) = &self.on_caller else {
            return Err(command);
        };
        // Leases and compaction keep to the commit thread: a compaction's
        // work on the index and old values is long for a worker to block.
        let is_txn = matches!(command, Command::Txn(_));
        if !is_txn || !alone || self.tx.capacity() < self.tx.max_capacity() {
            return Err(command);
        }
        let Ok(mut committer) = committer.try_lock() else {
            return Err(command);
        };
        if !committer.commits_on_caller() {
            return Err(command);
        }
        let (reply, mut rx) = oneshot::channel();
        let _blocking = crate::objstore::BlockingIoAllowed::here();
        committer.commit(vec![(command, reply)], Thread::Caller);
        drop(committer);
        // Every sender is answered before commit returns.
        Ok(rx
            .try_recv()
            .unwrap_or_else(|_| (Reply::Txn(Err(WriteError::Stopped)), Route::Sync)))
    }

    /// Runs `f` on the commit thread between two batches: it sees the
    /// store with no batch half made durable (a replica attaches to the
    /// stream of records there).
    pub async fn between(&self, f: Box<dyn FnOnce() + Send>) -> Result<(), WriteError> {
        self.tx
            .send(Request::Between(f))
            .await
            .map_err(|_| WriteError::Stopped)
    }

    /// Evaluates and commits a txn (Put and DeleteRange come as one-op
    /// txns).
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, WriteError> {
        let started = std::time::Instant::now();
        let (result, route) = match self.submit(Command::Txn(txn)).await? {
            (Reply::Txn(r), route) => (r, route),
            _ => (Err(WriteError::Stopped), Route::Sync),
        };
        let m = &self.metrics;
        let key = (
            route.as_str(),
            if result.is_ok() { "success" } else { "error" },
        );
        let (count, duration) = m.primary_write_handles.get(key, || {
            let l = labels(&[("path", key.0), ("result", key.1)]);
            (
                m.primary_write_transactions.get_or_create(&l).clone(),
                m.primary_write_duration.get_or_create(&l).clone(),
            )
        });
        count.inc();
        duration.observe(started.elapsed().as_secs_f64());
        result
    }

    /// Records lease `id` (already stored in the bucket). Returns (id,
    /// granted TTL).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), WriteError> {
        if ttl > MAX_LEASE_TTL {
            return Err(WriteError::LeaseTtlTooLarge);
        }
        match self.submit(Command::LeaseGrant { id, ttl }).await?.0 {
            Reply::LeaseGrant(r) => r,
            _ => Err(WriteError::Stopped),
        }
    }

    /// Deletes the keys attached to lease `id` and the lease; returns the
    /// revision after the deletes.
    pub async fn lease_revoke(&self, id: i64) -> Result<i64, WriteError> {
        match self.submit(Command::LeaseRevoke { id }).await?.0 {
            Reply::LeaseRevoke(r) => r,
            _ => Err(WriteError::Stopped),
        }
    }

    /// Waits (a little) until this node takes writes.
    pub async fn writable(&self) -> Result<(), WriteError> {
        self.gate.wait(WRITE_PATIENCE).await
    }

    /// Compacts history up to `revision` (inclusive of nothing newer).
    pub async fn compact(&self, revision: i64) -> Result<(), WriteError> {
        match self.submit(Command::Compact { revision }).await?.0 {
            Reply::Compact(r) => r,
            _ => Err(WriteError::Stopped),
        }
    }
}

/// What the write path tells the node about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WritePathEvent {
    /// A batch could not be made durable: writes stopped (the Primary
    /// drains).
    Draining { reason: String },
    /// The failed batch is settled in the durable store: the Primary role
    /// can be given up, and preflight can bring the next one level.
    Settled,
}

/// What the write path needs.
pub struct WritePathParts {
    pub store: Arc<Store>,
    pub hub: Arc<WatchHub>,
    pub leader_id: String,
    pub durability: Arc<dyn Durability>,
    /// Where committed revisions are reported for snapshots, if anywhere.
    pub snapshots: Option<SnapshotRequests>,
    pub metrics: Arc<Metrics>,
    /// Where durability work and recovery run.
    pub runtime: tokio::runtime::Handle,
    /// The replicas that follow, when this node is in a cluster.
    pub replicas: Option<Arc<dyn Replicas>>,
    /// The chunk buffer's thresholds (quorum writes only).
    pub buffer: ChunkBuffer,
    /// Whether this node may still acknowledge writes (a cluster's
    /// heartbeat lease); None: always.
    pub tenure: Option<Arc<dyn Tenure>>,
    /// Whether a caller may commit its write on its own thread while the
    /// commit thread is idle: only where the durable write needs no
    /// runtime I/O (the fs provider writes a small chunk on the calling
    /// thread) and there are no replicas.
    pub commit_on_caller: bool,
}

/// A running write path.
pub struct WritePath {
    pub writer: Writer,
    pub gate: Arc<WriteGate>,
    pub events: mpsc::UnboundedReceiver<WritePathEvent>,
    /// Quorum-committed records on their way to the bucket.
    pub buffer: Arc<Buffer>,
    /// The commit thread; it ends when every [`Writer`] is dropped.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the commit thread with the gate closed.
pub fn start(mut parts: WritePathParts) -> Result<WritePath, String> {
    let (tx, rx) = mpsc::channel(4096);
    let (events_tx, events) = mpsc::unbounded_channel();
    let gate = Arc::new(WriteGate::default());
    // Without replicas no batch takes the quorum route or is buffered, so
    // none needs `block_on`, which a runtime worker cannot run.
    let on_caller = parts.commit_on_caller && parts.replicas.is_none();
    let metrics = parts.metrics.clone();
    let policy = std::mem::replace(&mut parts.buffer, ChunkBuffer::new(0, 0));
    let buffer = Arc::new(Buffer::new(
        policy,
        parts.durability.clone(),
        parts.metrics.clone(),
    ));
    // Only quorum writes are buffered.
    if parts.replicas.is_some() {
        super::buffer::spawn_age_loop(&buffer, &parts.runtime);
    }
    parts
        .metrics
        .primary_write_path
        .get_or_create(&labels(&[("path", "sync")]))
        .set(1);
    let committer = Arc::new(Mutex::new(Committer {
        core: WriteCore::new(&parts.leader_id),
        parts,
        gate: gate.clone(),
        events: events_tx,
        buffer: buffer.clone(),
        route: Route::Sync,
        last_batch: 0,
    }));
    let writer = Writer {
        tx,
        gate: gate.clone(),
        metrics,
        on_caller: on_caller.then(|| committer.clone()),
        in_flight: Arc::default(),
    };
    let thread = std::thread::Builder::new()
        .name("netsy-committer".into())
        .spawn(move || run(&committer, rx))
        .map_err(|e| format!("cannot start the commit thread: {e}"))?;
    Ok(WritePath {
        writer,
        gate,
        events,
        buffer,
        thread,
    })
}

struct Committer {
    core: WriteCore,
    parts: WritePathParts,
    gate: Arc<WriteGate>,
    events: mpsc::UnboundedSender<WritePathEvent>,
    buffer: Arc<Buffer>,
    /// The route of the last batch (switches are logged).
    route: Route,
    /// How many writes the last batch held.
    last_batch: usize,
}

/// Where a batch is committed: how it waits for its durable write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Thread {
    /// The commit thread: outside the runtime, it may block on it.
    Committer,
    /// A caller's thread (a runtime worker): it waits by parking.
    Caller,
}

/// The commit thread: takes every request waiting in the queue, commits
/// the writes as one batch (runs `Between` work between two batches).
fn run(committer: &Mutex<Committer>, mut rx: mpsc::Receiver<Request>) {
    crate::objstore::allow_blocking_io_on_this_thread();
    while let Some(first) = rx.blocking_recv() {
        // A caller may be committing its own write: this batch follows.
        // One that panicked left the committer in an unknown state: the
        // write path stops (every writer is told so), as it did when the
        // panic was the commit thread's own.
        let Ok(mut committer) = committer.lock() else {
            log::error!("the write path stopped: a commit panicked");
            return;
        };
        let mut writes = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Write { command, reply } => writes.push((command, reply)),
                // Whatever came before it is committed first.
                Request::Between(f) => {
                    committer.commit(std::mem::take(&mut writes), Thread::Committer);
                    f();
                }
            }
            if writes.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        committer.commit(writes, Thread::Committer);
    }
    log::debug!("commit thread stopped");
}

impl Committer {
    /// Whether a caller may commit a batch on its own thread now: while
    /// writes come one at a time (the last batch held one) and the last
    /// commit woke few watch streams. (Callers commit only where [`start`] found no
    /// replicas: no quorum route, nothing buffered, no `block_on`.)
    ///
    /// A commit published from a runtime worker queues every watch stream
    /// it wakes on that worker; from the commit thread they are shared
    /// among the workers. With 1,000 streams the former cost more than
    /// the hand-offs saved.
    fn commits_on_caller(&self) -> bool {
        self.last_batch <= 1 && self.parts.hub.listeners() <= MAX_LISTENERS_ON_CALLER
    }

    fn commit(&mut self, writes: Vec<(Command, oneshot::Sender<(Reply, Route)>)>, thread: Thread) {
        if writes.is_empty() {
            return;
        }
        self.last_batch = writes.len();
        let (commands, senders): (Vec<Command>, Vec<_>) = writes.into_iter().unzip();
        if let Err(e) = self.gate.check() {
            for (command, reply) in commands.iter().zip(senders) {
                let _ = reply.send((refused(command, &e), Route::Sync));
            }
            return;
        }
        let store = self.parts.store.clone();
        let Evaluated {
            batch,
            events,
            mut replies,
        } = {
            let index = store.index();
            let mut view = BatchView::new(&index, &store);
            self.core.evaluate(commands, &mut view, Timestamp::now())
        };
        let mut route = Route::Sync;
        let compaction = batch.compaction;
        if !batch.is_empty() {
            // Lease and compaction changes alone have no records to
            // replicate or upload: they commit here.
            if !batch.records.is_empty() {
                route = self.choose_route();
            }
            let result = match route {
                Route::Quorum { required } => self.quorum(batch, required),
                Route::Sync => self.sync(batch, thread),
            };
            match result {
                // Nothing was committed: every answer of this batch may have
                // read the failed writes, so all fail.
                Err(e) => replies.iter_mut().for_each(|r| r.fail(&e)),
                Ok((records, taken)) => {
                    route = taken;
                    self.publish(&records, events);
                    if let (Some(c), Some(replicas)) = (compaction, &self.parts.replicas) {
                        replicas.send_compact(c);
                    }
                    if route != Route::Sync {
                        self.buffer_records(&records);
                    }
                    // Durable, but another Primary may be answering by now:
                    // the callers learn nothing (it may or may not count).
                    if let Some(Err(why)) = self.parts.tenure.as_ref().map(|t| t.check()) {
                        log::warn!(
                            "not acknowledging revisions up to {}: {why}",
                            store.latest_revision()
                        );
                        let e = WriteError::NotDurable(why);
                        replies.iter_mut().for_each(|r| r.fail(&e));
                    }
                }
            }
        }
        // A caller that gave up (client went away) no longer listens.
        for (reply, tx) in replies.into_iter().zip(senders) {
            let _ = tx.send((reply, route));
        }
    }

    /// The route for the next batch; switches are logged and shown in
    /// `netsy_primary_write_path`.
    fn choose_route(&mut self) -> Route {
        let route = self
            .parts
            .replicas
            .as_ref()
            .map_or(Route::Sync, |r| r.route());
        self.record_route(route);
        route
    }

    /// Remembers the route a batch takes; a switch is logged and shown.
    fn record_route(&mut self, route: Route) {
        if route.as_str() != self.route.as_str() {
            log::info!(
                "write_path_switched: from {} to {} ({route:?})",
                self.route.as_str(),
                route.as_str()
            );
            let paths = self.parts.metrics.primary_write_path.clone();
            for path in ["sync", "quorum"] {
                let on = (path == route.as_str()) as i64;
                paths.get_or_create(&labels(&[("path", path)])).set(on);
            }
        }
        self.route = route;
    }

    /// The quorum route: the batch goes to the replicas while it is
    /// appended here; committed once `required` of them receipted its last
    /// revision. On a timeout it is rolled back and takes the sync route.
    fn quorum(&mut self, batch: Batch, required: usize) -> Durable {
        let Some(replicas) = self.parts.replicas.clone() else {
            return self.sync(batch, Thread::Committer);
        };
        let p = &self.parts;
        let records: Arc<[Record]> = batch.records.clone().into();
        let last = records.last().map_or(0, |r| r.revision);
        replicas.send_records(&records);
        let receipts =
            p.runtime
                .spawn(replicas.wait_receipts(last, required, QUORUM_RECEIPT_TIMEOUT));
        let before = p.store.latest_revision();
        if let Err(e) = p.store.append(batch.clone()) {
            receipts.abort();
            let message = format!("local database commit failed: {e}");
            self.drain(message);
            return Err(WriteError::from(e));
        }
        if p.runtime.block_on(receipts).unwrap_or(false) {
            // Durable on a quorum; nothing is committed, answered or
            // broadcast yet.
            crate::failpoint::hit_blocking("quorum_committed");
            p.metrics.primary_replication_rounds.inc();
            return Ok((records, Route::Quorum { required }));
        }
        // Replicas keep their tentative copies; the sync route's records
        // replace them.
        if let Err(e) = p.store.discard_above(before) {
            let message = format!("undoing revisions above {before} failed: {e}; restart the node");
            self.drain(message.clone());
            return Err(WriteError::NotDurable(message));
        }
        replicas.missed(last);
        p.metrics
            .primary_quorum_rollbacks
            .get_or_create(&labels(&[("reason", "receipt_timeout")]))
            .inc();
        log::warn!(
            "quorum not met: insufficient replica receipts within {QUORUM_RECEIPT_TIMEOUT:?} \
             for revisions {}..={last}; writing them to object storage instead",
            before + 1
        );
        // A switch like any other: without it the metric kept showing the
        // quorum route while every batch went to the bucket.
        self.record_route(Route::Sync);
        self.sync(batch, Thread::Committer)
    }

    /// The sync route: anything buffered reaches the bucket first (the
    /// bucket never has a gap), then the batch is one chunk.
    fn sync(&mut self, batch: Batch, thread: Thread) -> Durable {
        if !self.buffer.is_empty() {
            let flushed = self
                .parts
                .runtime
                .block_on(self.buffer.flush(Trigger::Rollback));
            if let Err(e) = flushed {
                let message =
                    format!("flushing the chunk buffer before a synchronous write failed: {e}");
                self.drain(message.clone());
                self.recover_buffer();
                return Err(WriteError::NotDurable(message));
            }
        }
        let records = self.make_durable(batch, thread)?;
        if let Some(replicas) = &self.parts.replicas {
            replicas.send_records(&records);
        }
        Ok((records, Route::Sync))
    }

    /// Buffers quorum-committed records; a full buffer is flushed at once,
    /// and one that stays full after a failed flush stops writes.
    fn buffer_records(&mut self, records: &[Record]) {
        if !self.buffer.append(records, tokio::time::Instant::now()) {
            return;
        }
        let flushed = self
            .parts
            .runtime
            .block_on(self.buffer.flush(Trigger::Size));
        if let Err(e) = flushed {
            if self.buffer.over_size() {
                self.drain(format!(
                    "the chunk buffer is full and cannot be flushed: {e}"
                ));
                self.recover_buffer();
            }
        }
    }

    /// Commits an appended, durable batch and tells watchers and the
    /// snapshot worker.
    fn publish(&self, records: &[Record], events: Vec<crate::watch::Event>) {
        let p = &self.parts;
        let upto = records
            .last()
            .map_or(p.store.latest_revision(), |r| r.revision);
        let discarded = p.store.commit(upto);
        let committed = p.store.committed_revision();
        p.hub.publish(events, committed);
        if let Some(replicas) = &p.replicas {
            replicas.send_commit(committed);
        }
        if let (Some(snapshots), false) = (&p.snapshots, records.is_empty()) {
            snapshots.request(committed, encoded_size(records));
        }
        if !discarded.is_empty() {
            let started = std::time::Instant::now();
            let result = p.store.discard_values(&discarded);
            if let Err(e) = &result {
                log::warn!(
                    "compaction could not discard {} old values: {e}",
                    discarded.len()
                );
            }
            let outcome = if result.is_ok() { "success" } else { "error" };
            p.metrics
                .compaction_duration
                .get_or_create(&labels(&[("result", outcome)]))
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Appends the batch to SQLite (not flushed: the durable copy is
    /// elsewhere) while its records are made durable elsewhere; both must
    /// succeed. On failure the appended batch is
    /// discarded, the gate closes and recovery starts. The store keeps the
    /// batch; the records come back, shared with the durable write.
    fn make_durable(&mut self, batch: Batch, thread: Thread) -> Result<Arc<[Record]>, WriteError> {
        let p = &self.parts;
        let records: Arc<[Record]> = batch.records.clone().into();
        let mut durable =
            (!records.is_empty()).then(|| started(p, p.durability.persist(records.clone())));
        let join = |write: InFlight| match (write, thread) {
            (InFlight::Done(result), _) => result,
            (InFlight::Pending(future), Thread::Committer) => p.runtime.block_on(future),
            (InFlight::Pending(future), Thread::Caller) => wait_here(future),
        };
        // Tests only: with the fault point set, the upload finishes before
        // the SQLite commit starts, so the point sits between the two.
        let mut uploaded = None;
        if crate::failpoint::is_set("chunk_uploaded") {
            if let Some(write) = durable.take() {
                let result = join(write);
                if result.is_ok() {
                    crate::failpoint::hit_blocking("chunk_uploaded");
                }
                uploaded = Some(result);
            }
        }
        let before = p.store.latest_revision();
        // The bucket is this batch's durable copy (it is acknowledged only
        // once its chunk is written), so the local commit need not be
        // flushed; a batch without records (lease or compaction changes
        // alone) has no chunk and is flushed here.
        let appended = if records.is_empty() {
            p.store.append(batch)
        } else {
            p.store.append_backed(batch)
        };
        let durable = match (uploaded, durable) {
            (Some(result), _) => result,
            (None, Some(write)) => join(write),
            (None, None) => Ok(()),
        };
        let (appended, durable) = match (appended, durable) {
            (Ok(()), Ok(())) => return Ok(records),
            other => other,
        };
        let first = records.first().map_or(0, |r| r.revision);
        let last = records.last().map_or(0, |r| r.revision);
        let mut problems = Vec::new();
        if let Err(e) = &durable {
            problems.push(format!(
                "object storage write of revisions {first}..={last} failed: {e}"
            ));
        }
        match &appended {
            Err(e) => problems.push(format!("local database commit failed: {e}")),
            Ok(()) => {
                if let Err(e) = p.store.discard_above(before) {
                    let message = format!(
                        "{}; undoing the local rows failed: {e}; restart the node",
                        problems.join("; ")
                    );
                    self.drain(message.clone());
                    return Err(WriteError::NotDurable(message));
                }
            }
        }
        let message = problems.join("; ");
        log::error!("{message}");
        if !records.is_empty() {
            self.drain(message.clone());
            self.recover(records);
        }
        Err(match appended {
            Err(e) if durable.is_ok() => WriteError::from(e),
            _ => WriteError::NotDurable(message),
        })
    }

    fn drain(&self, reason: String) {
        log::error!("not accepting writes (draining): {reason}");
        self.gate.close_for("draining", reason.clone(), false);
        let _ = self.events.send(WritePathEvent::Draining { reason });
    }

    /// Settles the failed batch in the background (see [`Recovery`]), then
    /// tells the node.
    fn recover(&self, records: Arc<[Record]>) {
        let durability = self.parts.durability.clone();
        self.recover_with(move || durability.settle(records.clone()));
    }

    /// Keeps flushing the buffer (see [`Recovery`]) until it is empty.
    fn recover_buffer(&self) {
        let buffer = self.buffer.clone();
        self.recover_with(move || {
            let buffer = buffer.clone();
            Box::pin(async move { buffer.flush(Trigger::Draining).await })
        });
    }

    /// Runs `attempt` with the recovery backoff until it succeeds, then
    /// tells the node the failure is settled.
    fn recover_with(
        &self,
        attempt: impl Fn() -> BoxFuture<'static, Result<(), String>> + Send + 'static,
    ) {
        let events = self.events.clone();
        self.parts.runtime.spawn(async move {
            let mut recovery = Recovery::new(tokio::time::Instant::now());
            while let Step::AttemptAt(at) = recovery.step() {
                tokio::time::sleep_until(at).await;
                let result = attempt().await;
                let now = tokio::time::Instant::now();
                match (&result, recovery.attempted(now, result.is_ok())) {
                    (Err(e), Step::AttemptAt(next)) => log::warn!(
                        "recovery: the failed batch is still not durable: {e}; next try in {:?}",
                        next - now
                    ),
                    _ => log::info!("recovery: the failed batch is settled"),
                }
            }
            let _ = events.send(WritePathEvent::Settled);
        });
    }
}

/// A batch made durable: its records, and the route that did it.
type Durable = Result<(Arc<[Record]>, Route), WriteError>;

/// A durable write, started.
enum InFlight {
    Done(Result<(), String>),
    Pending(BoxFuture<'static, Result<(), String>>),
}

/// Polls a durable write once, here on the committing thread and in the
/// runtime's context, so its work starts (the batch is encoded and its
/// I/O handed to the runtime's threads) while the thread commits locally;
/// `block_on` (or [`wait_here`]) finishes it. Spawning it as a task
/// instead put two more thread hand-offs on every batch's path (to a
/// runtime worker and back).
fn started(parts: &WritePathParts, mut future: BoxFuture<'static, Result<(), String>>) -> InFlight {
    let _context = parts.runtime.enter();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => InFlight::Done(result),
        std::task::Poll::Pending => InFlight::Pending(future),
    }
}

/// Finishes a durable write on this thread, parked between polls: a
/// runtime worker cannot `block_on` the runtime. The fs provider's write
/// is ready at its second poll; one handed to the blocking pool wakes
/// this thread when done. Outside the task's budget: a spent budget would
/// make a tokio future wake itself and stay pending, for ever here. (A
/// future that defers its wake to the worker, as `yield_now` does, would
/// never finish here either; the fs provider's write has none.)
fn wait_here(future: BoxFuture<'static, Result<(), String>>) -> Result<(), String> {
    let mut future = std::pin::pin!(tokio::task::unconstrained(future));
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(result) = std::future::Future::poll(future.as_mut(), &mut cx)
        {
            return result;
        }
        std::thread::park();
    }
}

/// The answer to a command the gate refused.
fn refused(command: &Command, e: &WriteError) -> Reply {
    match command {
        Command::Txn(_) => Reply::Txn(Err(e.clone())),
        Command::LeaseGrant { .. } => Reply::LeaseGrant(Err(e.clone())),
        Command::LeaseRevoke { .. } => Reply::LeaseRevoke(Err(e.clone())),
        Command::Compact { .. } => Reply::Compact(Err(e.clone())),
    }
}

fn encoded_size(records: &[Record]) -> u64 {
    use prost::Message;
    records
        .iter()
        .map(|r| r.to_proto().encoded_len() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::primary::txn::Put;
    use crate::watch::RingLimits;

    /// Durability whose outcomes the test scripts; remembers when each
    /// settle attempt came.
    #[derive(Default)]
    struct Scripted {
        persists: Mutex<VecDeque<Result<(), String>>>,
        settles: Mutex<VecDeque<Result<(), String>>>,
        settled_at: Mutex<Vec<tokio::time::Instant>>,
        /// The revisions of every persist, in order.
        persisted: Mutex<Vec<Vec<i64>>>,
        /// Whether each persist ran on the commit thread, in order.
        on_commit_thread: Mutex<Vec<bool>>,
        /// Persists are pending at their first poll (woken at once).
        pending_first: bool,
    }

    impl Durability for Scripted {
        fn persist(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
            let revisions = records.iter().map(|r| r.revision).collect();
            self.persisted.lock().unwrap().push(revisions);
            let here = std::thread::current().name() == Some("netsy-committer");
            self.on_commit_thread.lock().unwrap().push(here);
            let next = self.persists.lock().unwrap().pop_front().unwrap_or(Ok(()));
            let mut pending = self.pending_first;
            Box::pin(std::future::poll_fn(move |cx| {
                if std::mem::take(&mut pending) {
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(next.clone())
            }))
        }

        fn settle(&self, _records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
            self.settled_at
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            let next = self.settles.lock().unwrap().pop_front().unwrap_or(Ok(()));
            Box::pin(async move { next })
        }
    }

    fn put(k: &str) -> Txn {
        Txn::put(Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
            ..Put::default()
        })
    }

    /// Replicas whose answers the test scripts; remembers what was sent.
    #[derive(Default)]
    struct FakeReplicas {
        route: Mutex<Option<Route>>,
        receipts: Mutex<VecDeque<bool>>,
        sent: Mutex<Vec<i64>>,
        commits: Mutex<Vec<i64>>,
        missed: Mutex<Vec<i64>>,
    }

    impl Replicas for FakeReplicas {
        fn route(&self) -> Route {
            self.route.lock().unwrap().unwrap_or(Route::Sync)
        }

        fn send_records(&self, records: &[Record]) {
            let mut sent = self.sent.lock().unwrap();
            sent.extend(records.iter().map(|r| r.revision));
        }

        fn send_commit(&self, revision: i64) {
            self.commits.lock().unwrap().push(revision);
        }

        fn send_compact(&self, _revision: i64) {}

        fn wait_receipts(
            &self,
            _revision: i64,
            _required: usize,
            timeout: Duration,
        ) -> BoxFuture<'static, bool> {
            let answer = self.receipts.lock().unwrap().pop_front().unwrap_or(false);
            Box::pin(async move {
                if !answer {
                    tokio::time::sleep(timeout).await;
                }
                answer
            })
        }

        fn missed(&self, revision: i64) {
            self.missed.lock().unwrap().push(revision);
        }
    }

    /// The write path on a fresh store holding only the internal record.
    fn write_path(durability: Arc<dyn Durability>) -> (tempfile::TempDir, Arc<Store>, WritePath) {
        write_path_with(durability, None)
    }

    fn write_path_with(
        durability: Arc<dyn Durability>,
        replicas: Option<Arc<dyn Replicas>>,
    ) -> (tempfile::TempDir, Arc<Store>, WritePath) {
        write_path_held(durability, replicas, None)
    }

    fn write_path_held(
        durability: Arc<dyn Durability>,
        replicas: Option<Arc<dyn Replicas>>,
        tenure: Option<Arc<dyn Tenure>>,
    ) -> (tempfile::TempDir, Arc<Store>, WritePath) {
        let hub = Arc::new(WatchHub::new(1, RingLimits::default()));
        write_path_from(durability, replicas, tenure, hub, false)
    }

    fn write_path_from(
        durability: Arc<dyn Durability>,
        replicas: Option<Arc<dyn Replicas>>,
        tenure: Option<Arc<dyn Tenure>>,
        hub: Arc<WatchHub>,
        commit_on_caller: bool,
    ) -> (tempfile::TempDir, Arc<Store>, WritePath) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let first = Batch {
            records: vec![Record::internal("n1")],
            ..Batch::default()
        };
        store.append_committed(first).unwrap();
        let path = start(WritePathParts {
            store: store.clone(),
            hub,
            leader_id: "n1".into(),
            durability,
            snapshots: None,
            metrics: Arc::new(Metrics::new()),
            runtime: tokio::runtime::Handle::current(),
            replicas,
            buffer: ChunkBuffer::new(0, 0),
            tenure,
            commit_on_caller,
        })
        .unwrap();
        (dir, store, path)
    }

    /// A tenure the test revokes.
    struct Revocable(std::sync::atomic::AtomicBool);

    impl Tenure for Revocable {
        fn check(&self) -> Result<(), String> {
            match self.0.load(std::sync::atomic::Ordering::SeqCst) {
                true => Ok(()),
                false => Err("no heartbeat reached the Elector".into()),
            }
        }
    }

    #[tokio::test]
    async fn a_batch_made_durable_after_the_tenure_lapsed_is_not_acknowledged() {
        let durability = Arc::new(Scripted::default());
        let tenure = Arc::new(Revocable(true.into()));
        let (_dir, store, path) = write_path_held(durability, None, Some(tenure.clone()));
        path.gate.open();
        assert_eq!(path.writer.txn(put("a")).await.unwrap().revision, 2);
        tenure.0.store(false, std::sync::atomic::Ordering::SeqCst);
        let err = path.writer.txn(put("b")).await.unwrap_err();
        assert!(
            matches!(&err, WriteError::NotDurable(why) if why.contains("heartbeat")),
            "{err:?}"
        );
        // Durable all the same: whoever leads next finds it.
        assert_eq!(store.latest_revision(), 3);
    }

    /// A write alone commits on its caller's thread; one that finds the
    /// commit thread busy, another write in flight, a last batch of more
    /// than one or many watch streams goes to the commit thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_write_commits_on_its_callers_thread() {
        // Its durable write pending once: the caller's thread waits for it.
        let durability = Arc::new(Scripted {
            pending_first: true,
            ..Scripted::default()
        });
        let hub = Arc::new(WatchHub::new(1, RingLimits::default()));
        let (_dir, store, path) =
            write_path_from(durability.clone(), None, None, hub.clone(), true);
        path.gate.open();
        let on_commit_thread = || durability.on_commit_thread.lock().unwrap().clone();
        // The commit thread answers before it lets go of the committer.
        let committer_free = || async {
            let committer = path.writer.on_caller.as_ref().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while committer.try_lock().is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the commit thread holds on"
                );
                tokio::task::yield_now().await;
            }
        };

        // On a runtime worker, as a request's handler runs.
        let writer = path.writer.clone();
        let a = tokio::spawn(async move { writer.txn(put("a")).await });
        assert_eq!(a.await.unwrap().unwrap().revision, 2);
        assert_eq!(on_commit_thread(), [false]);
        // Compaction and leases keep to the commit thread.
        let compact = Command::Compact { revision: 1 };
        assert!(path.writer.commit_here(compact, true).is_err());

        // The commit thread busy between two batches: two writes wait for
        // it, the second not alone, and it commits them as one batch.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (entered, busy) = tokio::sync::oneshot::channel();
        let between = {
            let writer = path.writer.clone();
            tokio::spawn(async move {
                let f = move || {
                    let _ = entered.send(());
                    let _ = held.recv();
                };
                writer.between(Box::new(f)).await
            })
        };
        busy.await.unwrap();
        let first = tokio::spawn({
            let writer = path.writer.clone();
            async move { writer.txn(put("b")).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while path.writer.in_flight.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the write never came");
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let writer = path.writer.clone();
            async move { writer.txn(put("c")).await }
        });
        while path.writer.tx.capacity() > path.writer.tx.max_capacity() - 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writes never queued"
            );
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        between.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(durability.persisted.lock().unwrap()[1], [3, 4]);
        assert_eq!(on_commit_thread(), [false, true]);

        // After a batch of two, the next lone write still goes to the
        // commit thread; the one after it, alone again, does not.
        committer_free().await;
        path.writer.txn(put("d")).await.unwrap();
        committer_free().await;
        path.writer.txn(put("e")).await.unwrap();
        assert_eq!(on_commit_thread(), [false, true, true, false]);

        // More watch streams listening than the limit: published from the
        // commit thread; at the limit, from the caller's.
        let mut listeners: Vec<_> = (0..=MAX_LISTENERS_ON_CALLER)
            .map(|_| hub.subscribe())
            .collect();
        path.writer.txn(put("f")).await.unwrap();
        listeners.pop();
        committer_free().await;
        path.writer.txn(put("g")).await.unwrap();
        drop(listeners);
        assert_eq!(on_commit_thread(), [false, true, true, false, true, false]);

        // Another write in flight (say, between its answer and its
        // caller's next poll): to the commit thread.
        path.writer.in_flight.fetch_add(1, Ordering::Relaxed);
        path.writer.txn(put("h")).await.unwrap();
        path.writer.in_flight.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(on_commit_thread().last(), Some(&true));
        assert_eq!(store.latest_revision(), 9);
    }

    /// With replicas a batch may take the quorum route (`block_on`): every
    /// write goes to the commit thread, whatever the node asked for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_replicas_no_write_commits_on_its_callers_thread() {
        let durability = Arc::new(Scripted::default());
        let replicas: Arc<dyn Replicas> = Arc::new(FakeReplicas::default());
        let hub = Arc::new(WatchHub::new(1, RingLimits::default()));
        let (_dir, _store, path) =
            write_path_from(durability.clone(), Some(replicas), None, hub, true);
        path.gate.open();
        let writer = path.writer.clone();
        let a = tokio::spawn(async move { writer.txn(put("a")).await });
        assert_eq!(a.await.unwrap().unwrap().revision, 2);
        assert_eq!(*durability.on_commit_thread.lock().unwrap(), [true]);
    }

    #[tokio::test(start_paused = true)]
    async fn quorum_batches_wait_for_receipts_and_a_timeout_takes_the_sync_route() {
        let durability = Arc::new(Scripted::default());
        let replicas = Arc::new(FakeReplicas::default());
        *replicas.route.lock().unwrap() = Some(Route::Quorum { required: 1 });
        let (_dir, store, path) = write_path_with(durability.clone(), Some(replicas.clone()));
        path.gate.open();

        // Receipts in time: committed, announced, buffered; no bucket write.
        replicas.receipts.lock().unwrap().push_back(true);
        assert_eq!(path.writer.txn(put("a")).await.unwrap().revision, 2);
        assert!(durability.persisted.lock().unwrap().is_empty());
        assert_eq!(*replicas.sent.lock().unwrap(), [2]);
        assert_eq!(*replicas.commits.lock().unwrap(), [2]);
        assert!(!path.buffer.is_empty(), "on its way to the bucket");

        // No receipts: rolled back after the timeout, then the same write
        // at the same revision on the sync route, after the buffer.
        let started = tokio::time::Instant::now();
        replicas.receipts.lock().unwrap().push_back(false);
        assert_eq!(path.writer.txn(put("b")).await.unwrap().revision, 3);
        assert!(started.elapsed() >= QUORUM_RECEIPT_TIMEOUT);
        assert_eq!(*replicas.missed.lock().unwrap(), [3]);
        assert_eq!(
            *durability.persisted.lock().unwrap(),
            [vec![2], vec![3]],
            "the buffered revision reached the bucket before the sync chunk"
        );
        assert!(path.buffer.is_empty());
        assert_eq!(
            *replicas.sent.lock().unwrap(),
            [2, 3, 3],
            "sent again after the rollback"
        );
        assert_eq!(*replicas.commits.lock().unwrap(), [2, 3]);
        assert_eq!(
            (store.latest_revision(), store.committed_revision()),
            (3, 3)
        );
        let shown = |p: &str| {
            let l = labels(&[("path", p)]);
            path.writer
                .metrics
                .primary_write_path
                .get_or_create(&l)
                .get()
        };
        assert_eq!(
            (shown("quorum"), shown("sync")),
            (0, 1),
            "the switch is shown"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_flush_before_a_sync_batch_fails_it_and_drains() {
        let durability = Arc::new(Scripted::default());
        let replicas = Arc::new(FakeReplicas::default());
        *replicas.route.lock().unwrap() = Some(Route::Quorum { required: 1 });
        let (_dir, store, mut path) = write_path_with(durability.clone(), Some(replicas.clone()));
        path.gate.open();
        replicas.receipts.lock().unwrap().push_back(true);
        path.writer.txn(put("a")).await.unwrap();

        *replicas.route.lock().unwrap() = Some(Route::Sync);
        durability
            .persists
            .lock()
            .unwrap()
            .push_back(Err("bucket gone".into()));
        let err = path.writer.txn(put("b")).await.unwrap_err();
        assert!(
            matches!(&err, WriteError::NotDurable(m) if m.contains("flushing the chunk buffer")),
            "{err:?}"
        );
        // (Recovery may already be flushing the buffer again.)
        let persisted = durability.persisted.lock().unwrap().clone();
        assert!(
            persisted.iter().all(|p| *p == [2]),
            "no sync chunk above a gap: {persisted:?}"
        );
        assert_eq!(store.latest_revision(), 2);
        assert!(matches!(
            path.events.recv().await,
            Some(WritePathEvent::Draining { .. })
        ));
        // Recovery keeps flushing; once it succeeds the node is told.
        assert_eq!(path.events.recv().await, Some(WritePathEvent::Settled));
        assert!(path.buffer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_drains_then_recovery_backs_off_until_settled() {
        let durability = Arc::new(Scripted::default());
        let (_dir, store, mut path) = write_path(durability.clone());
        assert!(matches!(
            path.writer.txn(put("a")).await,
            Err(WriteError::NotAccepting {
                state: "replica",
                ..
            })
        ));
        path.gate.open();
        assert_eq!(path.writer.txn(put("a")).await.unwrap().revision, 2);

        durability
            .persists
            .lock()
            .unwrap()
            .push_back(Err("bucket gone".into()));
        durability.settles.lock().unwrap().extend([
            Err("still gone".to_string()),
            Err("still gone".to_string()),
            Ok(()),
        ]);
        let started = tokio::time::Instant::now();
        let err = path.writer.txn(put("b")).await.unwrap_err();
        assert_eq!(
            err,
            WriteError::NotDurable(
                "object storage write of revisions 3..=3 failed: bucket gone".into()
            )
        );
        assert_eq!(
            (store.latest_revision(), store.committed_revision()),
            (2, 2),
            "the failed batch was discarded"
        );
        assert!(matches!(
            path.events.recv().await,
            Some(WritePathEvent::Draining { .. })
        ));
        let refused = path.writer.txn(put("c")).await.unwrap_err();
        assert_eq!(
            refused.to_string(),
            "this node is not accepting writes (state: draining): \
             object storage write of revisions 3..=3 failed: bucket gone"
        );

        assert_eq!(path.events.recv().await, Some(WritePathEvent::Settled));
        let waits: Vec<Duration> = durability
            .settled_at
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - started)
            .collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(3)
            ],
            "at once, then 1 s, then 2 s later"
        );
        // Writes resume once the node opens the gate again (after its
        // preflight), at the revision the failed batch would have had.
        path.gate.open();
        assert_eq!(path.writer.txn(put("d")).await.unwrap().revision, 3);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn object_storage_failing_twice_drains_the_primary() {
        use crate::objstore::tests::{transient, Flaky};
        use crate::objstore::ObjectStore;
        use crate::primary::ObjectStorageDurability;
        let bucket = Flaky::new(1, transient);
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(crate::log::ObjectLog::new(bucket.clone(), "n1", dir.path()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let durability = Arc::new(ObjectStorageDurability::new(log, metrics));
        let (_dir, store, mut path) = write_path(durability);
        path.gate.open();
        assert_eq!(
            path.writer.txn(put("a")).await.unwrap().revision,
            2,
            "one failure is retried"
        );
        assert_eq!(bucket.take_attempts(), 2);

        bucket
            .failures
            .store(2, std::sync::atomic::Ordering::SeqCst);
        let err = path.writer.txn(put("b")).await.unwrap_err();
        assert!(
            matches!(&err, WriteError::NotDurable(m) if m.contains("HTTP 503")),
            "{err:?}"
        );
        assert_eq!(store.latest_revision(), 2);
        assert!(matches!(
            path.events.recv().await,
            Some(WritePathEvent::Draining { .. })
        ));
        assert!(!path.gate.is_open());
        // Recovery settles the failed batch at once: the bucket now has it
        // (its outcome was unknown to the caller), and the node is told.
        assert_eq!(path.events.recv().await, Some(WritePathEvent::Settled));
        assert!(bucket
            .inner
            .get("chunks/0003/0000000000000000003.netsy")
            .await
            .is_ok());
    }
}
