//! Snapshots: after enough records, bytes or time since the last one, the
//! Primary writes every record 1..=R (tombstones and compacted rows
//! included) into `snapshots/{R}.netsy`, zstd-compressed, then asks the
//! cleaner to delete the chunks the snapshot covers. Snapshots are never
//! deleted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::cluster::SnapshotConfig;
use crate::datafile::{self, Compression, Kind};
use crate::http::metrics::{labels, Metrics};
use crate::store::{Store, Timestamp};

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
}

/// What the write path has reported: the latest committed revision and
/// the bytes committed in all.
#[derive(Clone, Copy, Default)]
struct Reported {
    revision: i64,
    bytes: u64,
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
    /// Never blocks.
    pub fn request(&self, revision: i64, size: u64) {
        self.reported.send_modify(|r| {
            r.revision = r.revision.max(revision);
            r.bytes += size;
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
    tokio::spawn(async move {
        let mut clock = clock;
        let mut seen_bytes = 0;
        while rx.changed().await.is_ok() {
            let reported = *rx.borrow_and_update();
            let size = reported.bytes - seen_bytes;
            seen_bytes = reported.bytes;
            let revision = reported.revision;
            let Some(reason) = clock.observe(revision, Instant::now(), size) else {
                continue;
            };
            log::info!("taking snapshot at revision {revision} (reason: {reason:?})");
            let started = Instant::now();
            let result = create(&store, &log, revision).await;
            let m = &metrics;
            let outcome = if result.is_ok() { "success" } else { "error" };
            let l = labels(&[("result", outcome)]);
            m.primary_snapshot_creations.get_or_create(&l).inc();
            m.primary_snapshot_creation_duration
                .get_or_create(&l)
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(key) => {
                    log::info!("snapshot {key} written in {:?}", started.elapsed());
                    clock.taken(revision, Instant::now());
                    m.snapshot_taken(Timestamp::now().seconds);
                    cleaner.enqueue(revision);
                }
                Err(e) => log::error!("snapshot at revision {revision} failed: {e}"),
            }
        }
    });
    requests
}

fn reports() -> (SnapshotRequests, watch::Receiver<Reported>) {
    let (tx, rx) = watch::channel(Reported::default());
    let requests = SnapshotRequests {
        reported: Arc::new(tx),
    };
    (requests, rx)
}

/// Writes and uploads the snapshot of revisions 1..=revision.
pub async fn create(
    store: &Arc<Store>,
    log: &ObjectLog,
    revision: i64,
) -> Result<String, LogError> {
    let path = log.temp_path(&format!("snapshot_{revision}"));
    let result = async {
        let (s, p, leader) = (store.clone(), path.clone(), log.leader_id.clone());
        in_background(move || -> Result<(), LogError> {
            let file = std::fs::File::create(&p)
                .map_err(|e| LogError::Invalid(format!("{}: {e}", p.display())))?;
            let out = std::io::BufWriter::new(file);
            let corrupt = |error| LogError::Corrupt {
                key: p.display().to_string(),
                error,
            };
            let mut writer = datafile::Writer::new(
                out,
                Kind::Snapshot,
                Compression::Zstd,
                revision,
                &leader,
                Timestamp::now(),
            )
            .map_err(corrupt)?;
            s.for_each_record(revision, |r| {
                writer
                    .write(r)
                    .map_err(|e| crate::store::StoreError::Io(std::io::Error::other(e.to_string())))
            })?;
            let out = writer.finish().map_err(corrupt)?;
            let file = out
                .into_inner()
                .map_err(|e| LogError::Invalid(format!("flushing the snapshot: {e}")))?;
            file.sync_all()
                .map_err(|e| LogError::Invalid(format!("fsync of the snapshot: {e}")))?;
            Ok(())
        })
        .await
        .map_err(|_| LogError::Invalid("snapshot task failed".to_string()))??;
        crate::failpoint::hit("snapshot_upload").await;
        let key = keys::snapshot_key(revision);
        log.store.put_file(&key, &path).await?;
        Ok(key)
    }
    .await;
    let _ = std::fs::remove_file(&path);
    result
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
