//! Snapshots: after enough records, bytes or time since the last one, the
//! Primary writes every record 1..=R (tombstones and compacted rows
//! included) into `snapshots/{R}.netsy`, zstd-compressed, then asks the
//! cleaner to delete the chunks the snapshot covers. Snapshots are never
//! deleted. The records are compressed as zstd frames kept between
//! snapshots, so each compresses only the records since the one before.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::cluster::SnapshotConfig;
use crate::datafile::{self, Compression, Frame, Kind, Progress};
use crate::http::metrics::{labels, Metrics};
use crate::store::{Record, Store, Timestamp};

use super::cleanup::Cleaner;
use super::{keys, LogError, ObjectLog};

/// When to take a snapshot (the reference's thresholds).
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// Records since the last snapshot; 0 disables.
    pub threshold_records: i64,
    /// Whole MiB written since the last snapshot; 0 disables.
    pub threshold_size_mb: u64,
    /// Time since the last snapshot; None disables.
    pub threshold_age: Option<Duration>,
}

impl SnapshotPolicy {
    pub fn from_config(c: &SnapshotConfig) -> SnapshotPolicy {
        SnapshotPolicy {
            threshold_records: c.threshold_records,
            threshold_size_mb: c.threshold_size_mb.max(0) as u64,
            threshold_age: (c.threshold_age_minutes > 0)
                .then(|| Duration::from_secs(c.threshold_age_minutes as u64 * 60)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    RecordCount,
    FirstSnapshot,
    Age,
    Size,
}

/// The trigger state, driven by (revision, time, size) observations.
#[derive(Clone, Debug)]
pub struct SnapshotClock {
    pub policy: SnapshotPolicy,
    last_revision: i64,
    last_time: Option<Instant>,
    bytes: u64,
}

impl SnapshotClock {
    /// After loading: the latest snapshot's revision (0 if none).
    pub fn new(policy: SnapshotPolicy, last_snapshot: i64, now: Instant) -> SnapshotClock {
        SnapshotClock {
            policy,
            last_revision: last_snapshot,
            last_time: (last_snapshot > 0).then_some(now),
            bytes: 0,
        }
    }

    /// Records a committed write; returns why a snapshot is due, if it is.
    pub fn observe(&mut self, revision: i64, now: Instant, size: u64) -> Option<Reason> {
        self.bytes += size;
        if revision <= self.last_revision {
            return None;
        }
        let p = &self.policy;
        if p.threshold_records > 0 && revision - self.last_revision >= p.threshold_records {
            return Some(Reason::RecordCount);
        }
        if let Some(age) = p.threshold_age {
            match self.last_time {
                None => return Some(Reason::FirstSnapshot),
                Some(t) if now.duration_since(t) >= age => return Some(Reason::Age),
                _ => {}
            }
        }
        if p.threshold_size_mb > 0 && self.bytes / (1024 * 1024) >= p.threshold_size_mb {
            return Some(Reason::Size);
        }
        None
    }

    pub fn taken(&mut self, revision: i64, now: Instant) {
        self.last_revision = revision;
        self.last_time = Some(now);
        self.bytes = 0;
    }

    /// The first report that could make a snapshot due, `seen_bytes`
    /// being every byte reported so far (those observed included). Before
    /// it, [`SnapshotClock::observe`] would answer None.
    pub fn next_wake(&self, seen_bytes: u64) -> WakeAt {
        let p = &self.policy;
        let mut revision = if p.threshold_records > 0 {
            self.last_revision.saturating_add(p.threshold_records)
        } else {
            i64::MAX
        };
        let mut at = None;
        if let Some(age) = p.threshold_age {
            match self.last_time {
                // The first snapshot: at the next revision.
                None => revision = revision.min(self.last_revision.saturating_add(1)),
                Some(t) => at = Some(t + age),
            }
        }
        let bytes = if p.threshold_size_mb > 0 {
            let threshold = p.threshold_size_mb.saturating_mul(1024 * 1024);
            seen_bytes.saturating_add(threshold.saturating_sub(self.bytes))
        } else {
            u64::MAX
        };
        WakeAt {
            revision,
            bytes,
            at,
        }
    }
}

/// When the write path wakes the snapshot worker: a report reaching one
/// of these. Most commits make no snapshot due; waking the worker for each
/// one queued its task on the other runtime worker, a wake of an idle CPU
/// per write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WakeAt {
    /// A revision reported at or past this (0 until the worker first
    /// looked: any report).
    revision: i64,
    /// The bytes reported in all reaching this.
    bytes: u64,
    /// A report at or after this time.
    at: Option<Instant>,
}

impl WakeAt {
    fn reached_by(&self, r: &Reported) -> bool {
        r.revision >= self.revision
            || r.bytes >= self.bytes
            || self.at.is_some_and(|at| Instant::now() >= at)
    }
}

/// What the write path has reported: the latest committed revision and
/// the bytes committed in all, and when the worker wants to hear of them.
#[derive(Clone, Copy, Default)]
struct Reported {
    revision: i64,
    bytes: u64,
    wake: WakeAt,
}

/// The handle the write path uses to report committed revisions. Reports
/// coalesce: the worker, when free, sees the latest revision and every
/// byte since it last looked, so a busy worker (a snapshot being written)
/// never blocks the write path, nor loses a report's size.
#[derive(Clone)]
pub struct SnapshotRequests {
    reported: Arc<watch::Sender<Reported>>,
}

impl SnapshotRequests {
    /// Never blocks; wakes the worker only when a snapshot may be due.
    pub fn request(&self, revision: i64, size: u64) {
        self.reported.send_if_modified(|r| {
            r.revision = r.revision.max(revision);
            r.bytes += size;
            r.wake.reached_by(r)
        });
    }
}

/// Starts the snapshot worker; it ends when every [`SnapshotRequests`] is
/// dropped.
pub fn start(
    store: Arc<Store>,
    log: Arc<ObjectLog>,
    clock: SnapshotClock,
    cleaner: Cleaner,
    metrics: Arc<Metrics>,
) -> SnapshotRequests {
    let (requests, mut rx) = reports();
    // Not a strong handle: the worker ends with the write path's.
    let reported = Arc::downgrade(&requests.reported);
    let mut worker = Worker {
        store,
        log,
        writer: SnapshotWriter::default(),
        clock,
        cleaner,
        metrics,
    };
    tokio::spawn(async move {
        let mut seen_bytes = 0;
        while rx.changed().await.is_ok() {
            let report = *rx.borrow_and_update();
            let size = report.bytes - seen_bytes;
            seen_bytes = report.bytes;
            let revision = report.revision;
            let due = worker.clock.observe(revision, Instant::now(), size);
            if let Some(reason) = due {
                worker.take(revision, reason).await;
            }
            // Only ever later than the one before (or the same, after a
            // failed snapshot: the next report tries again), so a report
            // checked against the one before and not woken for could not
            // have made a snapshot due.
            let wake = worker.clock.next_wake(seen_bytes);
            let Some(reported) = reported.upgrade() else {
                break;
            };
            wake_at(&reported, wake);
        }
    });
    requests
}

/// Tells the write path when to wake the worker next, waking nobody.
fn wake_at(reported: &watch::Sender<Reported>, wake: WakeAt) {
    reported.send_if_modified(|r| {
        r.wake = wake;
        false
    });
}

/// What the snapshot worker keeps between snapshots.
struct Worker {
    store: Arc<Store>,
    log: Arc<ObjectLog>,
    writer: SnapshotWriter,
    clock: SnapshotClock,
    cleaner: Cleaner,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn take(&mut self, revision: i64, reason: Reason) {
        log::info!("taking snapshot at revision {revision} (reason: {reason:?})");
        let started = Instant::now();
        let result = self.writer.create(&self.store, &self.log, revision).await;
        let m = &self.metrics;
        let outcome = if result.is_ok() { "success" } else { "error" };
        let l = labels(&[("result", outcome)]);
        m.primary_snapshot_creations.get_or_create(&l).inc();
        m.primary_snapshot_creation_duration
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(key) => {
                log::info!("snapshot {key} written in {:?}", started.elapsed());
                self.clock.taken(revision, Instant::now());
                m.snapshot_taken(Timestamp::now().seconds);
                self.cleaner.enqueue(revision);
            }
            Err(e) => log::error!("snapshot at revision {revision} failed: {e}"),
        }
    }
}

fn reports() -> (SnapshotRequests, watch::Receiver<Reported>) {
    let (tx, rx) = watch::channel(Reported::default());
    let requests = SnapshotRequests {
        reported: Arc::new(tx),
    };
    (requests, rx)
}

/// The records the last snapshot was written from, kept for the next one:
/// zstd frames in a file of their own and what they add up to. The next
/// snapshot appends a frame of the records since (instead of reading and
/// compressing the whole history again) unless a row they hold has changed.
struct Frames {
    path: PathBuf,
    /// The file's length after its last frame.
    len: u64,
    progress: Progress,
    /// The last record they hold, as it was read.
    last: Record,
    /// [`Store::rewrites`] before they were read.
    rewrites: u64,
}

impl Frames {
    /// Whether they still hold the store's records 1..=their last: their
    /// file is as they left it, no row was changed since (a compaction
    /// nulls values) and their last record is still the store's (a suffix
    /// undone and rewritten changes it).
    fn still_hold(&self, store: &Store, revision: i64) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.len)
            && store.rewrites() == Some(self.rewrites)
            && self.last.revision < revision
            && store
                .record_at(self.last.revision)
                .is_ok_and(|r| r.as_ref() == Some(&self.last))
    }
}

/// Writes snapshots, each built on the frames of the one before when it can.
#[derive(Default)]
pub struct SnapshotWriter {
    frames: Option<Frames>,
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if let Some(frames) = &self.frames {
            let _ = std::fs::remove_file(&frames.path);
        }
    }
}

impl SnapshotWriter {
    /// Writes and uploads the snapshot of revisions 1..=revision.
    pub async fn create(
        &mut self,
        store: &Arc<Store>,
        log: &ObjectLog,
        revision: i64,
    ) -> Result<String, LogError> {
        let path = log.temp_path(&format!("snapshot_{revision}"));
        let fresh = log.temp_path("snapshot_frames");
        let (s, p, leader) = (store.clone(), path.clone(), log.leader_id.clone());
        let frames = self.frames.take();
        let written = in_background(move || write(&s, &p, &leader, revision, frames, fresh)).await;
        let result = async {
            let (frames, written) =
                written.map_err(|_| LogError::Invalid("snapshot task failed".to_string()))?;
            self.frames = frames;
            written?;
            crate::failpoint::hit("snapshot_upload").await;
            let key = keys::snapshot_key(revision);
            log.store.put_file(&key, &path).await?;
            Ok(key)
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// Writes the snapshot of 1..=revision to `path`: a header, the frames
/// (continued, or started afresh at `fresh`) and the footer's frame.
/// Returns the frames to keep for the next snapshot, if any.
fn write(
    store: &Store,
    path: &Path,
    leader: &str,
    revision: i64,
    frames: Option<Frames>,
    fresh: PathBuf,
) -> (Option<Frames>, Result<(), LogError>) {
    let rewrites = store.rewrites();
    let frames = match frames {
        Some(f) if f.still_hold(store, revision) => Some(f),
        Some(f) => {
            let _ = std::fs::remove_file(&f.path);
            None
        }
        None => None,
    };
    let (frames_path, progress, continued) = match frames {
        Some(f) => (f.path, f.progress, true),
        None => (fresh, Progress::default(), false),
    };
    let written = write_continuing(
        store,
        path,
        leader,
        revision,
        &frames_path,
        progress,
        continued,
    );
    match (written, rewrites) {
        // Kept only if no row changed while they were read.
        (Ok((progress, last, len)), Some(rewrites)) if store.rewrites() == Some(rewrites) => {
            let kept = Frames {
                path: frames_path,
                len,
                progress,
                last,
                rewrites,
            };
            (Some(kept), Ok(()))
        }
        (written, _) => {
            let _ = std::fs::remove_file(&frames_path);
            (None, written.map(|_| ()))
        }
    }
}

/// Appends a frame of the records after `progress` up to `revision` to
/// the frames file (created first unless `continued`), then writes the
/// snapshot from it. Returns what the frames now hold, their last record
/// and the file's length.
fn write_continuing(
    store: &Store,
    path: &Path,
    leader: &str,
    revision: i64,
    frames_path: &Path,
    progress: Progress,
    continued: bool,
) -> Result<(Progress, Record, u64), LogError> {
    let io = |what: &str, e: &dyn std::fmt::Display| {
        LogError::Invalid(format!("snapshot at revision {revision}: {what}: {e}"))
    };
    let corrupt = |error| LogError::Corrupt {
        key: path.display().to_string(),
        error,
    };
    let file = std::fs::OpenOptions::new()
        .create(!continued)
        .write(true)
        .append(continued)
        .truncate(!continued)
        .open(frames_path)
        .map_err(|e| io(&frames_path.display().to_string(), &e))?;
    let from = progress.last_revision() + 1;
    let mut frame = Frame::new(std::io::BufWriter::new(file), progress).map_err(corrupt)?;
    store.for_each_record(from, revision, |r| {
        frame
            .write(r)
            .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e.to_string())))
    })?;
    let (frames, progress) = frame.finish().map_err(corrupt)?;
    let len = frames
        .get_ref()
        .metadata()
        .map_err(|e| io("frames", &e))?
        .len();
    // Contiguous 1..=revision, or not a snapshot.
    let last = store.record_at(revision)?;
    let last = match last {
        Some(last) if progress.count() == revision && progress.last_revision() == revision => last,
        _ => {
            return Err(LogError::Invalid(format!(
                "snapshot at revision {revision}: the local store holds {} records up to it",
                progress.count()
            )))
        }
    };
    let mut out = std::fs::File::create(path).map_err(|e| io("creating", &e))?;
    let mut header = Vec::new();
    datafile::write_header(
        &mut header,
        Kind::Snapshot,
        Compression::Zstd,
        revision,
        leader,
        Timestamp::now(),
    )
    .map_err(|e| io("header", &e))?;
    out.write_all(&header).map_err(|e| io("header", &e))?;
    let mut frames = std::fs::File::open(frames_path).map_err(|e| io("reading frames", &e))?;
    std::io::copy(&mut frames, &mut out).map_err(|e| io("copying frames", &e))?;
    let out = datafile::footer_frame(out, &progress).map_err(corrupt)?;
    out.sync_all().map_err(|e| io("fsync", &e))?;
    Ok((progress, last, len))
}

/// Runs `work` on a thread of its own at a lower CPU priority, so a
/// snapshot (reading and compressing every record) takes the CPU the
/// client requests leave rather than half of it on a small machine.
fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned =
        crate::background::spawn("netsy-snapshot", crate::background::NICE_LOW, move || {
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        log::error!("cannot start the snapshot thread: {e}");
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(records: i64, size_mb: u64, age: Option<u64>) -> SnapshotPolicy {
        SnapshotPolicy {
            threshold_records: records,
            threshold_size_mb: size_mb,
            threshold_age: age.map(Duration::from_secs),
        }
    }

    #[tokio::test]
    async fn a_snapshot_is_written_at_background_priority() {
        let nice = in_background(crate::background::nice_of_this_thread)
            .await
            .unwrap();
        assert!(nice >= crate::background::NICE_LOW, "nice {nice}");
        assert!(crate::background::nice_of_this_thread() < crate::background::NICE_LOW);
    }

    /// The snapshot at `revision` in the bucket: its records (checked
    /// against the store's) and how many zstd frames it has.
    async fn snapshot_in_bucket(log: &ObjectLog, store: &Store, revision: i64) -> usize {
        let bytes = log
            .store
            .get(&keys::snapshot_key(revision))
            .await
            .unwrap()
            .data;
        let (header, records, _) = datafile::decode(&bytes, Some(Kind::Snapshot)).unwrap();
        assert_eq!(header.records_count, revision);
        let held = store.records_between(1, revision, usize::MAX).unwrap();
        assert_eq!(records.len(), held.len());
        for (read, held) in records.iter().zip(&held) {
            let value = |r: &Record| r.value.clone().unwrap_or_default();
            assert!(read.same_write(held), "revision {}", held.revision);
            assert_eq!(read.compacted_at, held.compacted_at, "{}", held.revision);
            assert_eq!(value(read), value(held), "revision {}", held.revision);
        }
        datafile::zstd_frame_starts(&bytes)
    }

    fn append(store: &Store, records: Vec<Record>) {
        let batch = crate::store::Batch {
            records,
            ..Default::default()
        };
        store.append_committed(batch).unwrap();
    }

    #[tokio::test]
    async fn a_snapshot_continues_the_last_ones_frames_until_a_row_changes() {
        use crate::log::testing::records;
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(crate::objstore::memory::MemoryStore::new());
        let log = ObjectLog::new(bucket, "n", &dir.path().join("log")).unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        append(
            &store,
            [Record::internal("n")]
                .into_iter()
                .chain(records(2..=3, "n"))
                .collect(),
        );
        let mut writer = SnapshotWriter::default();
        writer.create(&store, &log, 3).await.unwrap();
        assert_eq!(
            snapshot_in_bucket(&log, &store, 3).await,
            2,
            "records, footer"
        );
        append(&store, records(4..=6, "n"));
        writer.create(&store, &log, 6).await.unwrap();
        assert_eq!(snapshot_in_bucket(&log, &store, 6).await, 3, "continued");
        // A compaction nulls a value the frames hold: they are written again.
        store.discard_values(&[2]).unwrap();
        append(&store, records(7..=7, "n"));
        writer.create(&store, &log, 7).await.unwrap();
        assert_eq!(snapshot_in_bucket(&log, &store, 7).await, 2, "rebuilt");
        let compacted = store.record_at(2).unwrap().unwrap();
        assert!(compacted.value.is_none() && compacted.compacted_at.is_some());
        // Rows undone and written again past the frames' last.
        store.demote_above(6).unwrap();
        store.discard_above(6).unwrap();
        append(&store, records(7..=8, "other"));
        writer.create(&store, &log, 8).await.unwrap();
        assert_eq!(snapshot_in_bucket(&log, &store, 8).await, 2, "rebuilt");
        // Frames cut behind the writer's back are written afresh.
        let frames = std::fs::read_dir(dir.path().join("log/tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect::<Vec<_>>();
        assert_eq!(frames.len(), 1, "only the frames in use stay: {frames:?}");
        std::fs::File::options()
            .write(true)
            .open(&frames[0])
            .unwrap()
            .set_len(10)
            .unwrap();
        append(&store, records(9..=9, "other"));
        writer.create(&store, &log, 9).await.unwrap();
        assert_eq!(snapshot_in_bucket(&log, &store, 9).await, 2, "rebuilt");
        drop(writer);
        let left = std::fs::read_dir(dir.path().join("log/tmp"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "the writer takes its frames with it");
    }

    #[test]
    fn reports_made_while_the_worker_is_busy_coalesce_without_losing_bytes() {
        let (requests, mut rx) = reports();
        requests.request(5, 10);
        requests.clone().request(7, 20);
        requests.request(6, 1);
        assert!(rx.has_changed().unwrap());
        let r = *rx.borrow_and_update();
        assert_eq!((r.revision, r.bytes), (7, 31));
        drop(requests);
        assert!(
            rx.has_changed().is_err(),
            "the worker ends with the write path"
        );
    }

    #[test]
    fn the_worker_is_woken_only_by_a_report_that_may_make_a_snapshot_due() {
        let t0 = Instant::now();
        let (requests, mut rx) = reports();
        let mut clock = SnapshotClock::new(policy(10, 1, None), 0, t0);
        requests.request(1, 100);
        assert!(
            rx.has_changed().unwrap(),
            "the first report always wakes it"
        );
        let r = *rx.borrow_and_update();
        assert_eq!(clock.observe(r.revision, t0, r.bytes), None);
        wake_at(&requests.reported, clock.next_wake(r.bytes));
        assert!(
            !rx.has_changed().unwrap(),
            "setting when to wake wakes nobody"
        );
        for revision in 2..10 {
            requests.request(revision, 100);
        }
        assert!(!rx.has_changed().unwrap(), "woken before anything was due");
        requests.request(10, 100);
        assert!(
            rx.has_changed().unwrap(),
            "not woken at the record threshold"
        );
        let r = *rx.borrow_and_update();
        assert_eq!((r.revision, r.bytes), (10, 1000), "every report counted");
        assert_eq!(clock.observe(10, t0, 900), Some(Reason::RecordCount));
    }

    #[test]
    fn the_next_wake_is_the_first_report_observe_would_find_due() {
        let t0 = Instant::now();
        let mib = 1024 * 1024;
        // Records: the threshold's revision, not one before.
        let c = SnapshotClock::new(policy(10, 0, None), 20, t0);
        let wake = c.next_wake(0);
        assert_eq!((wake.revision, wake.bytes, wake.at), (30, u64::MAX, None));
        // Bytes: what is still missing, on top of every byte reported.
        let mut c = SnapshotClock::new(policy(0, 2, None), 0, t0);
        assert_eq!(c.observe(1, t0, mib), None);
        let wake = c.next_wake(5 * mib);
        assert_eq!((wake.revision, wake.bytes), (i64::MAX, 6 * mib));
        assert_eq!(c.observe(2, t0, mib - 1), None);
        assert_eq!(c.observe(3, t0, 1), Some(Reason::Size));
        // Age: the first snapshot at the next revision, then by time.
        let mut c = SnapshotClock::new(policy(0, 0, Some(60)), 4, t0);
        c.last_time = None;
        assert_eq!(c.next_wake(0).revision, 5);
        c.taken(5, t0);
        let wake = c.next_wake(0);
        assert_eq!(
            (wake.revision, wake.at),
            (i64::MAX, Some(t0 + Duration::from_secs(60)))
        );
        // Nothing configured: never.
        let c = SnapshotClock::new(policy(0, 0, None), 0, t0);
        let wake = c.next_wake(0);
        assert_eq!(
            (wake.revision, wake.bytes, wake.at),
            (i64::MAX, u64::MAX, None)
        );
    }

    #[test]
    fn record_count_trigger() {
        let t0 = Instant::now();
        let mut c = SnapshotClock::new(policy(10, 0, None), 0, t0);
        assert_eq!(c.observe(9, t0, 1), None);
        assert_eq!(c.observe(10, t0, 1), Some(Reason::RecordCount));
        c.taken(10, t0);
        assert_eq!(
            c.observe(10, t0, 1),
            None,
            "no snapshot twice at one revision"
        );
        assert_eq!(c.observe(19, t0, 1), None);
        assert_eq!(c.observe(20, t0, 1), Some(Reason::RecordCount));
    }

    #[test]
    fn age_triggers_first_snapshot_then_by_time() {
        let t0 = Instant::now();
        let mut c = SnapshotClock::new(policy(0, 0, Some(60)), 0, t0);
        assert_eq!(c.observe(2, t0, 1), Some(Reason::FirstSnapshot));
        c.taken(2, t0);
        assert_eq!(c.observe(3, t0 + Duration::from_secs(59), 1), None);
        assert_eq!(
            c.observe(4, t0 + Duration::from_secs(60), 1),
            Some(Reason::Age)
        );
        let loaded = SnapshotClock::new(policy(0, 0, Some(60)), 5, t0);
        let mut loaded = loaded;
        assert_eq!(
            loaded.observe(6, t0, 1),
            None,
            "a snapshot in the bucket starts the clock"
        );
    }

    #[test]
    fn size_trigger_counts_whole_mebibytes() {
        let t0 = Instant::now();
        let mut c = SnapshotClock::new(policy(0, 2, None), 0, t0);
        assert_eq!(c.observe(2, t0, 1024 * 1024), None);
        assert_eq!(c.observe(3, t0, 1024 * 1024 - 1), None);
        assert_eq!(c.observe(4, t0, 1), Some(Reason::Size));
    }
}
