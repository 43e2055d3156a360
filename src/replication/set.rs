//! The Primary's replica set: one outbound queue per following replica,
//! the [`Tracker`] behind a lock, and the waits for receipts. It is what
//! the write path sees through [`Replicas`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::http::metrics::Metrics;
use crate::pb::netsy::primary_message::Payload;
use crate::pb::netsy::PrimaryMessage;
use crate::primary::{Replicas, Route};
use crate::store::Record;

use super::tracker::{required_receipts, Report, Tracker};

/// Messages a replica may fall behind by before its stream is ended (it
/// then reconnects and is replayed from the Primary's database): records
/// are never silently dropped.
pub const QUEUE_LIMIT: usize = 16_384;

/// How often silent replicas are checked (the reference's value).
pub const DEGRADATION_TICK: Duration = Duration::from_millis(100);

/// The messages waiting for one replica's stream.
pub struct Queue {
    messages: Mutex<VecDeque<PrimaryMessage>>,
    ready: Notify,
    /// Why the queue closed, once it has (see [`Closed`]).
    closed: Mutex<Option<Closed>>,
}

/// Why a queue gives nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The replica fell [`QUEUE_LIMIT`] messages behind.
    Overflowed,
    /// A newer stream of the same replica replaced this one.
    Replaced,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            messages: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<PrimaryMessage>> {
        match self.messages.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn closed(&self) -> MutexGuard<'_, Option<Closed>> {
        match self.closed.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Closes the queue (the first reason stays) and drops what it held.
    fn close(&self, why: Closed) {
        self.closed().get_or_insert(why);
        self.lock().clear();
        self.ready.notify_one();
    }

    /// Adds messages; a queue over its limit closes instead.
    pub fn push(&self, messages: impl IntoIterator<Item = PrimaryMessage>) {
        if self.closed().is_some() {
            return;
        }
        let mut queue = self.lock();
        queue.extend(messages);
        let over = queue.len() > QUEUE_LIMIT;
        drop(queue);
        if over {
            self.close(Closed::Overflowed);
        } else {
            self.ready.notify_one();
        }
    }

    /// Everything queued, waiting while there is nothing.
    pub async fn take(&self) -> Result<Vec<PrimaryMessage>, Closed> {
        loop {
            let ready = self.ready.notified();
            if let Some(why) = *self.closed() {
                return Err(why);
            }
            {
                let mut queue = self.lock();
                if !queue.is_empty() {
                    return Ok(queue.drain(..).collect());
                }
            }
            ready.await;
        }
    }
}

struct Inner {
    tracker: Tracker,
    /// Live queues by node, with the stream they belong to.
    queues: BTreeMap<String, (u64, Arc<Queue>)>,
}

pub struct ReplicaSet {
    /// Itself, for waits that outlive a borrow.
    me: std::sync::Weak<ReplicaSet>,
    inner: Mutex<Inner>,
    receipts: Notify,
    /// replication.quorum.
    quorum: i64,
    /// Registered nodes, the Primary included (from the cluster state).
    node_count: AtomicI64,
    metrics: Arc<Metrics>,
}

impl ReplicaSet {
    /// `degrade_after`: degradation_count × heartbeat interval.
    pub fn new(quorum: i64, degrade_after: Duration, metrics: Arc<Metrics>) -> Arc<ReplicaSet> {
        let set = Arc::new_cyclic(|me| ReplicaSet {
            me: me.clone(),
            inner: Mutex::new(Inner {
                tracker: Tracker::new(degrade_after),
                queues: BTreeMap::new(),
            }),
            receipts: Notify::new(),
            quorum,
            node_count: AtomicI64::new(1),
            metrics,
        });
        spawn_degradation_loop(&set);
        set
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(i) => i,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn set_node_count(&self, n: i64) {
        self.node_count.store(n, Ordering::Release);
    }

    /// A replica opened a stream: it is tracked afresh (its older stream,
    /// if any, ends). Its queue comes later, with [`ReplicaSet::listen`].
    pub fn attach(&self, node: &str) -> u64 {
        let mut inner = self.lock();
        if let Some((_, old)) = inner.queues.remove(node) {
            old.close(Closed::Replaced);
        }
        let stream = inner.tracker.attach(node, Instant::now());
        self.metrics
            .primary_replication_streams
            .set(inner.tracker.following() as i64);
        stream
    }

    /// Starts queueing live messages for `node`'s `stream`, after `first`
    /// (messages the caller queues itself, under the same lock, so nothing
    /// sent meanwhile is missed). None when the stream was replaced.
    pub fn listen(
        &self,
        node: &str,
        stream: u64,
        first: impl FnOnce() -> Vec<PrimaryMessage>,
    ) -> Option<Arc<Queue>> {
        let mut inner = self.lock();
        if !inner.tracker.is_following(node) {
            return None;
        }
        let queue = Arc::new(Queue::new());
        queue.push(first());
        inner
            .queues
            .insert(node.to_string(), (stream, queue.clone()));
        Some(queue)
    }

    /// The stream ended.
    pub fn detach(&self, node: &str, stream: u64) {
        let mut inner = self.lock();
        if inner.tracker.detach(node, stream) {
            inner.queues.remove(node);
        }
        self.metrics
            .primary_replication_streams
            .set(inner.tracker.following() as i64);
        drop(inner);
        // A wait may now be hopeless; let it look again.
        self.receipts.notify_waiters();
    }

    /// A heartbeat or receipt from `node` (on `stream`, or from the unary
    /// heartbeat). False when the node does not follow on that stream.
    pub fn heard(
        &self,
        node: &str,
        stream: Option<u64>,
        report: Report,
        receipt: Option<i64>,
    ) -> bool {
        let known = self
            .lock()
            .tracker
            .heard(node, stream, report, receipt, Instant::now());
        if known && receipt.is_some() {
            self.receipts.notify_waiters();
        }
        known
    }

    pub fn is_following(&self, node: &str) -> bool {
        self.lock().tracker.is_following(node)
    }

    fn broadcast(&self, messages: &[PrimaryMessage]) {
        let inner = self.lock();
        for (_, queue) in inner.queues.values() {
            queue.push(messages.iter().cloned());
        }
    }
}

fn spawn_degradation_loop(set: &Arc<ReplicaSet>) {
    let weak = Arc::downgrade(set);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DEGRADATION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(set) = weak.upgrade() else { return };
            for node in set.lock().tracker.tick(Instant::now()) {
                log::warn!("replica {node} is silent: degraded");
            }
        }
    });
}

pub fn record_message(r: &Record) -> PrimaryMessage {
    PrimaryMessage {
        payload: Some(Payload::Record(r.to_proto())),
    }
}

pub fn commit_message(revision: i64) -> PrimaryMessage {
    PrimaryMessage {
        payload: Some(Payload::Commit(revision)),
    }
}

impl Replicas for ReplicaSet {
    fn route(&self) -> Route {
        let required = required_receipts(self.quorum, self.node_count.load(Ordering::Acquire));
        let eligible = self.lock().tracker.eligible();
        self.metrics.primary_required_receipts.set(required as i64);
        self.metrics.primary_healthy_replicas.set(eligible as i64);
        if required > 0 && eligible >= required {
            Route::Quorum { required }
        } else {
            Route::Sync
        }
    }

    fn send_records(&self, records: &[Record]) {
        let messages: Vec<PrimaryMessage> = records.iter().map(record_message).collect();
        self.broadcast(&messages);
    }

    fn send_commit(&self, revision: i64) {
        self.broadcast(&[commit_message(revision)]);
    }

    fn send_compact(&self, revision: i64) {
        self.broadcast(&[PrimaryMessage {
            payload: Some(Payload::Compact(revision)),
        }]);
    }

    fn wait_receipts(
        &self,
        revision: i64,
        required: usize,
        timeout: Duration,
    ) -> BoxFuture<'static, bool> {
        let this = self.me.upgrade();
        Box::pin(async move {
            let Some(set) = this else { return false };
            let deadline = Instant::now() + timeout;
            loop {
                let changed = set.receipts.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if set.lock().tracker.receipted(revision) >= required {
                    return true;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return set.lock().tracker.receipted(revision) >= required;
                }
            }
        })
    }

    fn missed(&self, revision: i64) {
        let marked = self.lock().tracker.missed(revision);
        if !marked.is_empty() {
            log::warn!(
                "replicas {} did not receipt revision {revision} in time: they count again once they catch up",
                marked.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::tracker::ReplicaHealth;

    const HEALTHY: Report = Report {
        health: ReplicaHealth::Healthy,
        latest: 0,
    };

    fn commits(n: usize) -> Vec<PrimaryMessage> {
        (0..n).map(|i| commit_message(i as i64)).collect()
    }

    #[tokio::test]
    async fn a_queue_that_falls_too_far_behind_closes_instead_of_dropping() {
        let q = Queue::new();
        q.push(commits(3));
        assert_eq!(q.take().await.unwrap().len(), 3);
        q.push(commits(QUEUE_LIMIT + 1));
        assert_eq!(q.take().await, Err(Closed::Overflowed));
        q.push(commits(1));
        assert_eq!(q.take().await, Err(Closed::Overflowed), "stays closed");

        let set = ReplicaSet::new(-1, Duration::from_secs(2), Arc::new(Metrics::new()));
        let s1 = set.attach("a");
        let first = set.listen("a", s1, Vec::new).unwrap();
        set.attach("a");
        assert_eq!(first.take().await, Err(Closed::Replaced));
    }

    #[tokio::test(start_paused = true)]
    async fn receipt_waits_end_at_the_required_count_or_the_timeout() {
        let set = ReplicaSet::new(-1, Duration::from_secs(60), Arc::new(Metrics::new()));
        set.set_node_count(3);
        let a = set.attach("a");
        let b = set.attach("b");
        assert_eq!(set.route(), Route::Sync, "no receipts yet");
        set.heard("a", Some(a), HEALTHY, Some(1));
        assert_eq!(set.route(), Route::Quorum { required: 1 });

        let wait = set.wait_receipts(5, 2, Duration::from_secs(1));
        let waiter = tokio::spawn(wait);
        tokio::task::yield_now().await;
        set.heard("a", Some(a), HEALTHY, Some(5));
        set.heard("b", Some(b), HEALTHY, Some(6));
        assert!(waiter.await.unwrap(), "two distinct replicas covered 5");

        let started = Instant::now();
        assert!(!set.wait_receipts(7, 1, Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        set.missed(7);
        assert_eq!(set.route(), Route::Sync, "both missed revision 7");
    }
}
