//! Chunk cleanup: once a snapshot covers revisions 1..=R, the chunks up to R
//! are deleted in batches. `list` lists and deletes what exists (needed on
//! versioned buckets); `direct` computes every chunk key up to R without
//! listing; `auto` is direct where the backend has batch deletes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::cluster::{CleanupStrategy, SnapshotConfig};
use crate::http::metrics::{labels, Metrics};

use super::{keys, LogError, ObjectLog};

#[derive(Clone, Debug)]
pub struct CleanupSettings {
    pub strategy: CleanupStrategy,
    pub batch_size: usize,
    pub batch_interval: Duration,
}

impl CleanupSettings {
    pub fn from_config(c: &SnapshotConfig) -> CleanupSettings {
        CleanupSettings {
            strategy: c.cleanup_strategy.clone(),
            batch_size: if c.cleanup_batch_size <= 0 {
                250
            } else {
                c.cleanup_batch_size as usize
            },
            batch_interval: c.cleanup_batch_interval,
        }
    }
}

struct State {
    last_cleaned: i64,
    pending: i64,
}

/// Handle to the cleanup worker.
#[derive(Clone)]
pub struct Cleaner {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl Cleaner {
    /// Asks for chunks up to `revision` to go; only the highest request is
    /// kept.
    pub fn enqueue(&self, revision: i64) {
        if let Ok(mut s) = self.state.lock() {
            if revision <= s.last_cleaned || revision <= s.pending {
                return;
            }
            s.pending = revision;
        }
        self.wake.notify_one();
    }

    pub fn last_cleaned(&self) -> i64 {
        self.state.lock().map(|s| s.last_cleaned).unwrap_or(0)
    }
}

/// Starts the worker; `last_cleaned` is the latest snapshot's revision.
pub fn start(
    log: Arc<ObjectLog>,
    settings: CleanupSettings,
    last_cleaned: i64,
    metrics: Arc<Metrics>,
) -> Cleaner {
    let cleaner = Cleaner {
        state: Arc::new(Mutex::new(State {
            last_cleaned,
            pending: 0,
        })),
        wake: Arc::new(Notify::new()),
    };
    let c = cleaner.clone();
    tokio::spawn(async move {
        loop {
            c.wake.notified().await;
            let (from, upto) = match c.state.lock() {
                Ok(s) if s.pending > s.last_cleaned => (s.last_cleaned, s.pending),
                _ => continue,
            };
            let result = clean(&log, &settings, from, upto).await;
            let m = &metrics;
            let outcome = if result.is_ok() { "success" } else { "partial" };
            m.primary_snapshot_cleanup_runs
                .get_or_create(&labels(&[("result", outcome)]))
                .inc();
            if let Ok(n) = &result {
                m.primary_snapshot_cleanup_chunks_deleted.inc_by(*n as u64);
            }
            match result {
                Ok(deleted) => {
                    log::info!("chunk cleanup up to revision {upto}: {deleted} keys deleted");
                    if let Ok(mut s) = c.state.lock() {
                        s.last_cleaned = s.last_cleaned.max(upto);
                    }
                }
                Err(e) => log::warn!("chunk cleanup up to revision {upto} incomplete: {e}"),
            }
        }
    });
    cleaner
}

/// Deletes the chunks with revisions in (from, upto]. Errors when any
/// delete failed, so the range is tried again next time.
pub async fn clean(
    log: &ObjectLog,
    settings: &CleanupSettings,
    from: i64,
    upto: i64,
) -> Result<usize, LogError> {
    let direct = match settings.strategy {
        CleanupStrategy::Direct => true,
        CleanupStrategy::List => false,
        CleanupStrategy::Auto => log.store.bulk_delete_limit() > 0,
    };
    let keys: Vec<String> = if direct {
        (from + 1..=upto).map(keys::chunk_key).collect()
    } else {
        log.store
            .list(keys::CHUNKS)
            .await?
            .into_iter()
            .filter(|l| keys::revision_of(&l.key).is_some_and(|r| r <= upto))
            .map(|l| l.key)
            .collect()
    };
    let mut failed = 0;
    for (i, batch) in keys.chunks(settings.batch_size.max(1)).enumerate() {
        if i > 0 {
            tokio::time::sleep(settings.batch_interval).await;
        }
        failed += log.store.delete_batch(batch).await?.len();
    }
    if failed > 0 {
        return Err(LogError::Invalid(format!("{failed} chunk deletes failed")));
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::{memory::MemoryStore, Condition, ObjectStore};
    use bytes::Bytes;

    /// Chunks at these revisions (a batched chunk leaves gaps in the keys).
    const CHUNKS: [i64; 7] = [1, 2, 3, 6, 7, 9, 12];

    #[tokio::test]
    async fn every_strategy_deletes_exactly_the_covered_chunks() {
        for strategy in [
            CleanupStrategy::List,
            CleanupStrategy::Direct,
            CleanupStrategy::Auto,
        ] {
            let store = Arc::new(MemoryStore::new());
            for r in CHUNKS {
                store
                    .put(
                        &keys::chunk_key(r),
                        Bytes::from_static(b"c"),
                        Condition::None,
                    )
                    .await
                    .unwrap();
            }
            let dir = tempfile::tempdir().unwrap();
            let log = ObjectLog::new(store.clone(), "n", dir.path()).unwrap();
            let settings = CleanupSettings {
                strategy: strategy.clone(),
                batch_size: 2,
                batch_interval: Duration::ZERO,
            };
            clean(&log, &settings, 0, 7).await.unwrap();
            let left: Vec<i64> = store
                .list(keys::CHUNKS)
                .await
                .unwrap()
                .iter()
                .filter_map(|l| keys::revision_of(&l.key))
                .collect();
            assert_eq!(left, vec![9, 12], "{strategy:?}");
            // From a later point only the newly covered chunks are touched.
            clean(&log, &settings, 7, 9).await.unwrap();
            assert_eq!(
                store.list(keys::CHUNKS).await.unwrap().len(),
                1,
                "{strategy:?}"
            );
        }
    }
}
