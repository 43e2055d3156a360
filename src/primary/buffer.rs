//! The chunk buffer as the write path uses it: records a quorum made
//! durable wait here and reach the bucket as one chunk (size, age,
//! draining, rollback), and always before any synchronous chunk that
//! follows them, so the bucket never has a gap. The policy is
//! [`ChunkBuffer`]; the upload goes through the [`Durability`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::http::metrics::{labels, Metrics};
use crate::log::buffer::{ChunkBuffer, Trigger};
use crate::store::Record;

use super::durability::Durability;

/// How often the age and draining triggers are checked (the reference's
/// value).
pub const BUFFER_TICK: Duration = Duration::from_millis(100);

pub struct Buffer {
    state: Mutex<ChunkBuffer>,
    durability: Arc<dyn Durability>,
    /// One upload at a time; a flush that must empty the buffer waits for
    /// the running one, then uploads what is left.
    flight: tokio::sync::Mutex<()>,
    /// Moves on every clear: an upload that began before a clear must not
    /// remove records added after it.
    generation: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
}

impl Buffer {
    pub fn new(
        policy: ChunkBuffer,
        durability: Arc<dyn Durability>,
        metrics: Arc<Metrics>,
    ) -> Buffer {
        Buffer {
            state: Mutex::new(policy),
            durability,
            flight: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
            metrics,
        }
    }

    fn state(&self) -> MutexGuard<'_, ChunkBuffer> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds records a quorum committed; true when the size trigger fires.
    pub fn append(&self, records: &[Record], now: Instant) -> bool {
        let mut state = self.state();
        let mut full = false;
        for r in records {
            full |= state.append(r.clone(), now);
        }
        self.observe(&state);
        full
    }

    pub fn is_empty(&self) -> bool {
        self.state().is_empty()
    }

    /// Forgets what is buffered: the node left the Primary role, and
    /// whoever leads next uploads what the bucket lacks in its preflight.
    pub fn clear(&self) {
        let mut state = self.state();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        state.clear();
        self.observe(&state);
    }

    /// Which clear the buffer is at (see [`Buffer::forget_unless_cleared`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Clears the buffer unless it was cleared since `generation` was
    /// read: a step-down's flush, done or failed, leaves nothing for a
    /// replica to retry, without touching what a new term buffered.
    pub fn forget_unless_cleared(&self, generation: u64) {
        if self.generation() == generation {
            self.clear();
        }
    }

    pub fn over_size(&self) -> bool {
        self.state().over_size()
    }

    /// What the periodic check should flush for, if anything.
    pub fn due(&self, now: Instant, draining: bool) -> Option<Trigger> {
        self.state().due(now, draining)
    }

    /// Uploads everything buffered when it is called (and anything added
    /// while it runs), one chunk per round; stops at the first failure,
    /// which keeps the records for the next try.
    pub async fn flush(&self, trigger: Trigger) -> Result<(), String> {
        let _flight = self.flight.lock().await;
        use std::sync::atomic::Ordering;
        loop {
            let (records, generation) = {
                let mut state = self.state();
                (state.begin_flush(), self.generation.load(Ordering::Acquire))
            };
            let Some(records) = records else {
                return Ok(());
            };
            let count = records.len();
            crate::failpoint::hit("buffer_flush").await;
            let result = self.durability.persist(records.into()).await;
            let outcome = if result.is_ok() { "success" } else { "error" };
            self.metrics
                .primary_chunk_buffer_flushes
                .get_or_create(&labels(&[
                    ("trigger", trigger_name(trigger)),
                    ("result", outcome),
                ]))
                .inc();
            {
                let mut state = self.state();
                // Cleared meanwhile: what is buffered now was not uploaded.
                let current = generation == self.generation.load(Ordering::Acquire);
                state.end_flush(count, result.is_ok() && current, Instant::now());
                self.observe(&state);
            }
            if let Err(e) = result {
                log::warn!("chunk buffer flush ({trigger:?}) of {count} records failed: {e}");
                return Err(e);
            }
            log::debug!("chunk buffer flush ({trigger:?}): {count} records");
        }
    }

    /// The buffered records (a failed flush that recovery must settle).
    pub fn records(&self) -> Vec<Record> {
        self.state().records().to_vec()
    }

    fn observe(&self, state: &ChunkBuffer) {
        self.metrics
            .primary_chunk_buffer_records
            .set(state.len() as i64);
        self.metrics
            .primary_chunk_buffer_bytes
            .set(state.bytes() as i64);
    }
}

fn trigger_name(t: Trigger) -> &'static str {
    match t {
        Trigger::Size => "size",
        Trigger::Age => "age",
        Trigger::Draining => "draining",
        Trigger::Rollback => "rollback",
        Trigger::Manual => "manual",
    }
}

/// Checks the age trigger every [`BUFFER_TICK`] until the buffer is
/// dropped elsewhere (the task holds a weak reference).
pub fn spawn_age_loop(buffer: &Arc<Buffer>, runtime: &tokio::runtime::Handle) {
    let weak = Arc::downgrade(buffer);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(BUFFER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(buffer) = weak.upgrade() else { return };
            if let Some(trigger) = buffer.due(Instant::now(), false) {
                let _ = buffer.flush(trigger).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::memory::MemoryStore;
    use crate::objstore::ObjectStore;
    use crate::primary::ObjectStorageDurability;

    fn record(revision: i64) -> Record {
        Record {
            revision,
            key: bytes::Bytes::from(format!("k{revision}")),
            value: Some(bytes::Bytes::from_static(b"v")),
            create_revision: revision,
            ..Record::internal("n1")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_trigger_uploads_one_chunk_keyed_by_the_last_revision() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(MemoryStore::new());
        let log = Arc::new(crate::log::ObjectLog::new(bucket.clone(), "n1", dir.path()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let durability = Arc::new(ObjectStorageDurability::new(log, metrics.clone()));
        let buffer = Arc::new(Buffer::new(ChunkBuffer::new(0, 1), durability, metrics));
        let t0 = Instant::now();
        assert!(!buffer.append(&[record(2), record(3)], t0));
        assert_eq!(buffer.due(t0 + Duration::from_secs(59), false), None);
        assert_eq!(
            buffer.due(t0 + Duration::from_secs(60), false),
            Some(Trigger::Age)
        );
        spawn_age_loop(&buffer, &tokio::runtime::Handle::current());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(buffer.is_empty());
        let listed = bucket.list("chunks/").await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["chunks/0003/0000000000000000003.netsy"]);
    }

    /// Clears the buffer and buffers revision 9 during the first upload.
    #[derive(Default)]
    struct ClearingDuring {
        buffer: std::sync::OnceLock<Arc<Buffer>>,
        done: std::sync::atomic::AtomicBool,
        persisted: Mutex<Vec<Vec<i64>>>,
    }

    impl Durability for ClearingDuring {
        fn persist(
            &self,
            records: Arc<[Record]>,
        ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
            let revisions = records.iter().map(|r| r.revision).collect();
            self.persisted.lock().unwrap().push(revisions);
            if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let buffer = self.buffer.get().unwrap();
                buffer.clear();
                buffer.append(&[record(9)], Instant::now());
            }
            Box::pin(async { Ok(()) })
        }

        fn settle(
            &self,
            _records: Arc<[Record]>,
        ) -> futures_util::future::BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn an_upload_that_began_before_a_clear_leaves_later_records_buffered() {
        let durability = Arc::new(ClearingDuring::default());
        let metrics = Arc::new(Metrics::new());
        let buffer = Arc::new(Buffer::new(
            ChunkBuffer::new(0, 1),
            durability.clone(),
            metrics,
        ));
        let _ = durability.buffer.set(buffer.clone());
        buffer.append(&[record(2), record(3)], Instant::now());
        buffer.flush(Trigger::Manual).await.unwrap();
        assert_eq!(
            *durability.persisted.lock().unwrap(),
            [vec![2, 3], vec![9]],
            "revision 9 came after the clear: it was uploaded, not dropped"
        );
        assert!(buffer.is_empty());
    }
}
