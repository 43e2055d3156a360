//! Bringing a node's local store level with object storage: an empty store
//! first imports the latest snapshot, then every later chunk is imported in
//! order, each verified (CRCs, kind, continuity) before anything of it is
//! written. Then, as the Primary, records that exist only locally are
//! uploaded (preflight).

use std::path::Path;
use std::sync::Arc;

use crate::datafile::{self, DataFileError, Kind};
use crate::store::record::INTERNAL_KEY;
use crate::store::{Batch, Record, Store};

use super::{LogError, ObjectLog};

/// What catching up found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CaughtUp {
    /// The latest snapshot's revision, 0 if none.
    pub snapshot: i64,
    /// Whether that snapshot was imported (empty local store).
    pub snapshot_imported: bool,
    pub chunks_imported: usize,
    /// Highest revision in object storage (latest snapshot or chunk).
    pub durable: i64,
    /// Local latest revision afterwards.
    pub latest: i64,
}

/// Imports what object storage has beyond the local store.
pub async fn catch_up(store: &Arc<Store>, log: &ObjectLog) -> Result<CaughtUp, LogError> {
    let mut report = CaughtUp::default();
    let snapshot = log.latest_snapshot().await?;
    if let Some((rev, _)) = &snapshot {
        report.snapshot = *rev;
    }
    if store.latest_revision() == 0 {
        if let Some((rev, key)) = &snapshot {
            log::info!("restoring from snapshot {key} (revision {rev})");
            import_snapshot(store, log, key).await?;
            report.snapshot_imported = true;
        }
    }
    let chunks = log.chunks_after(0).await?;
    report.durable = chunks.last().map_or(0, |c| c.0).max(report.snapshot);
    let pending: Vec<&(i64, String)> = chunks
        .iter()
        .filter(|(r, _)| *r > store.latest_revision())
        .collect();
    if !pending.is_empty() {
        log::info!(
            "importing {} chunks after revision {}",
            pending.len(),
            store.latest_revision()
        );
    }
    for (i, (_, key)) in pending.iter().enumerate() {
        let records = log.read_chunk(key).await?;
        let s = store.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || s.import(&records))
            .await
            .map_err(|e| LogError::Invalid(format!("import task failed: {e}")))?
            .map_err(|e| LogError::Invalid(format!("importing {k}: {e}")))?;
        report.chunks_imported += 1;
        if (i + 1) % 1000 == 0 {
            log::info!("imported {} of {} chunks", i + 1, pending.len());
        }
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || -> Result<(), LogError> {
        s.seed_compaction()?;
        s.check_integrity()?;
        Ok(())
    })
    .await
    .map_err(|e| LogError::Invalid(format!("integrity task failed: {e}")))??;
    report.latest = store.latest_revision();
    Ok(report)
}

/// Checks a snapshot file completely: kind, every CRC, and that it holds
/// revisions 1..=N contiguously, starting with the internal record.
/// Returns N.
pub fn validate_snapshot(path: &Path) -> Result<i64, DataFileError> {
    let mut reader = datafile::open_file(path, Some(Kind::Snapshot))?;
    let mut expected = 1;
    while let Some(r) = reader.next_record()? {
        if r.revision != expected {
            return Err(DataFileError::Revisions(format!(
                "record {} has revision {}",
                expected - 1,
                r.revision
            )));
        }
        if expected == 1 && r.key.as_ref() != INTERNAL_KEY {
            return Err(DataFileError::Revisions(
                "the first record is not _netsy".into(),
            ));
        }
        expected += 1;
    }
    let count = reader.header.records_count;
    reader.finish()?;
    if count == 0 {
        return Err(DataFileError::Revisions("the snapshot is empty".into()));
    }
    if count != expected - 1 {
        return Err(DataFileError::Count {
            declared: count,
            found: expected - 1,
        });
    }
    Ok(count)
}

/// Downloads a snapshot, verifies all of it, then imports it in batches.
async fn import_snapshot(store: &Arc<Store>, log: &ObjectLog, key: &str) -> Result<(), LogError> {
    let path = log.temp_path("snapshot");
    let result = async {
        log.store.get_to_file(key, &path).await?;
        let (s, p, k) = (store.clone(), path.clone(), key.to_string());
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            let corrupt = |error| LogError::Corrupt {
                key: k.clone(),
                error,
            };
            let total = validate_snapshot(&p).map_err(corrupt)?;
            let mut reader = datafile::open_file(&p, Some(Kind::Snapshot)).map_err(corrupt)?;
            let mut batch: Vec<Record> = Vec::with_capacity(10_000);
            let mut done = 0i64;
            while let Some(r) = reader.next_record().map_err(corrupt)? {
                batch.push(r);
                if batch.len() == 10_000 {
                    s.import(&batch)?;
                    done += batch.len() as i64;
                    batch.clear();
                    if done % 100_000 == 0 {
                        log::info!("snapshot import: {done} of {total} records");
                    }
                }
            }
            s.import(&batch)?;
            Ok(())
        })
        .await
        .map_err(|e| LogError::Invalid(format!("snapshot import task failed: {e}")))?
    }
    .await;
    let _ = std::fs::remove_file(&path);
    result
}

/// As the Primary, before accepting writes: a brand-new cluster gets its
/// internal first record; records only the local store has (written before
/// a crash, never uploaded) are uploaded one per chunk.
pub async fn preflight(store: &Arc<Store>, log: &ObjectLog, durable: i64) -> Result<(), LogError> {
    if durable == 0 && store.latest_revision() == 0 {
        let batch = Batch {
            records: vec![Record::internal(&log.leader_id)],
            ..Default::default()
        };
        store.persist(&batch)?;
        store.publish(&batch);
    }
    let latest = store.latest_revision();
    if latest > durable {
        log::info!(
            "uploading {} local records above durable revision {durable}",
            latest - durable
        );
        let records = store.records_between(durable + 1, latest, usize::MAX)?;
        for r in records {
            log.write_chunk(std::slice::from_ref(&r)).await?;
        }
    }
    Ok(())
}
