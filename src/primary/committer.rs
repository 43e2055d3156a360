//! Group commit, the driver around [`WriteCore`]: one thread takes every
//! write waiting in its queue, has the core evaluate them as one batch,
//! appends the batch to SQLite while the [`Durability`] makes it durable
//! elsewhere, then commits it, publishes it to watchers and answers every
//! caller together. If durability fails, the batch is discarded, callers
//! get an error, the gate closes (draining) and a background recovery
//! settles the failed batch; the node is told through [`WritePathEvent`]s
//! and decides when writes resume.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::http::metrics::{labels, Metrics};
use crate::log::snapshot::SnapshotRequests;
use crate::store::{Batch, Record, Store, Timestamp};
use crate::watch::WatchHub;

use super::core::{Command, Evaluated, Reply, WriteCore, MAX_LEASE_TTL};
use super::durability::Durability;
use super::error::WriteError;
use super::gate::{WriteGate, WRITE_PATIENCE};
use super::recovery::{Recovery, Step};
use super::txn::{Txn, TxnOutcome};
use super::view::BatchView;

/// Largest number of commands folded into one commit.
const MAX_BATCH: usize = 1024;

struct Request {
    command: Command,
    reply: oneshot::Sender<Reply>,
}

/// The handle the API layer writes through; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    gate: Arc<WriteGate>,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn submit(&self, command: Command) -> Result<Reply, WriteError> {
        // While a Primary is being chosen or is starting, wait for it a
        // little rather than fail at once (etcd waits for a leader too).
        self.gate.wait(WRITE_PATIENCE).await?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { command, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)
    }

    /// Evaluates and commits a txn (Put and DeleteRange come as one-op
    /// txns).
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, WriteError> {
        let started = std::time::Instant::now();
        let result = match self.submit(Command::Txn(txn)).await? {
            Reply::Txn(r) => r,
            _ => Err(WriteError::Stopped),
        };
        let m = &self.metrics;
        let l = labels(&[
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
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), WriteError> {
        if ttl > MAX_LEASE_TTL {
            return Err(WriteError::LeaseTtlTooLarge);
        }
        match self.submit(Command::LeaseGrant { id, ttl }).await? {
            Reply::LeaseGrant(r) => r,
            _ => Err(WriteError::Stopped),
        }
    }

    /// Compacts history up to `revision` (inclusive of nothing newer).
    pub async fn compact(&self, revision: i64) -> Result<(), WriteError> {
        match self.submit(Command::Compact { revision }).await? {
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
}

/// A running write path.
pub struct WritePath {
    pub writer: Writer,
    pub gate: Arc<WriteGate>,
    pub events: mpsc::UnboundedReceiver<WritePathEvent>,
    /// The commit thread; it ends when every [`Writer`] is dropped.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the commit thread with the gate closed.
pub fn start(parts: WritePathParts) -> Result<WritePath, String> {
    let (tx, rx) = mpsc::channel(4096);
    let (events_tx, events) = mpsc::unbounded_channel();
    let gate = Arc::new(WriteGate::default());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let writer = Writer {
        tx,
        gate: gate.clone(),
        metrics: parts.metrics.clone(),
    };
    let committer = Committer {
        core: WriteCore::new(&parts.leader_id, seed),
        parts,
        rx,
        gate: gate.clone(),
        events: events_tx,
    };
    let thread = std::thread::Builder::new()
        .name("netsy-committer".into())
        .spawn(move || committer.run())
        .map_err(|e| format!("cannot start the commit thread: {e}"))?;
    Ok(WritePath {
        writer,
        gate,
        events,
        thread,
    })
}

struct Committer {
    core: WriteCore,
    parts: WritePathParts,
    rx: mpsc::Receiver<Request>,
    gate: Arc<WriteGate>,
    events: mpsc::UnboundedSender<WritePathEvent>,
}

impl Committer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut requests = vec![first];
            while requests.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            self.commit(requests);
        }
        log::debug!("commit thread stopped");
    }

    fn commit(&mut self, requests: Vec<Request>) {
        let (commands, senders): (Vec<Command>, Vec<_>) =
            requests.into_iter().map(|r| (r.command, r.reply)).unzip();
        if let Err(e) = self.gate.check() {
            for (command, reply) in commands.iter().zip(senders) {
                let _ = reply.send(refused(command, &e));
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
        if !batch.is_empty() {
            match self.make_durable(batch) {
                // Nothing was committed: every answer of this batch may have
                // read the failed writes, so all fail.
                Err(e) => replies.iter_mut().for_each(|r| r.fail(&e)),
                Ok(records) => self.publish(&records, events),
            }
        }
        // A caller that gave up (client went away) no longer listens.
        for (reply, tx) in replies.into_iter().zip(senders) {
            let _ = tx.send(reply);
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

    /// Appends the batch to SQLite while its records are made durable
    /// elsewhere; both must succeed. On failure the appended batch is
    /// discarded, the gate closes and recovery starts. The store keeps the
    /// batch; the records come back, shared with the durable write.
    fn make_durable(&mut self, batch: Batch) -> Result<Arc<[Record]>, WriteError> {
        let p = &self.parts;
        let records: Arc<[Record]> = batch.records.clone().into();
        let durable =
            (!records.is_empty()).then(|| p.runtime.spawn(p.durability.persist(records.clone())));
        let before = p.store.latest_revision();
        let appended = p.store.append(batch);
        let durable = match durable {
            Some(handle) => p
                .runtime
                .block_on(handle)
                .unwrap_or_else(|e| Err(format!("durability task failed: {e}"))),
            None => Ok(()),
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
        let events = self.events.clone();
        self.parts.runtime.spawn(async move {
            let mut recovery = Recovery::new(tokio::time::Instant::now());
            while let Step::AttemptAt(at) = recovery.step() {
                tokio::time::sleep_until(at).await;
                let result = durability.settle(records.clone()).await;
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

/// The answer to a command the gate refused.
fn refused(command: &Command, e: &WriteError) -> Reply {
    match command {
        Command::Txn(_) => Reply::Txn(Err(e.clone())),
        Command::LeaseGrant { .. } => Reply::LeaseGrant(Err(e.clone())),
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
    use futures_util::future::BoxFuture;

    /// Durability whose outcomes the test scripts; remembers when each
    /// settle attempt came.
    #[derive(Default)]
    struct Scripted {
        persists: Mutex<VecDeque<Result<(), String>>>,
        settles: Mutex<VecDeque<Result<(), String>>>,
        settled_at: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Durability for Scripted {
        fn persist(&self, _records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
            let next = self.persists.lock().unwrap().pop_front().unwrap_or(Ok(()));
            Box::pin(async move { next })
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

    /// The write path on a fresh store holding only the internal record.
    fn write_path(durability: Arc<dyn Durability>) -> (tempfile::TempDir, Arc<Store>, WritePath) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let first = Batch {
            records: vec![Record::internal("n1")],
            ..Batch::default()
        };
        store.append_committed(first).unwrap();
        let path = start(WritePathParts {
            store: store.clone(),
            hub: Arc::new(WatchHub::new(1, RingLimits::default())),
            leader_id: "n1".into(),
            durability,
            snapshots: None,
            metrics: Arc::new(Metrics::new()),
            runtime: tokio::runtime::Handle::current(),
        })
        .unwrap();
        (dir, store, path)
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
