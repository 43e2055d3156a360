//! Bringing a node's local store level with object storage: an empty store
//! takes the latest snapshot (checked whole first), then every later chunk,
//! each verified as it is read, all in one SQLite transaction that also
//! checks continuity with the local store. Then, as the Primary, records
//! that exist only locally are uploaded (part of preflight).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::datafile::{self, DataFileError, Kind};
use crate::store::record::INTERNAL_KEY;
use crate::store::{Batch, Importer, Record, Store};

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

/// Imports what object storage has beyond the local store, all of it in one
/// SQLite transaction: a damaged object (or a crash part-way) leaves the
/// local store exactly as it was.
pub async fn catch_up(store: &Arc<Store>, log: &ObjectLog) -> Result<CaughtUp, LogError> {
    let mut report = CaughtUp::default();
    let snapshot = log.latest_snapshot().await?;
    if let Some((rev, _)) = &snapshot {
        report.snapshot = *rev;
    }
    let mut base = store.latest_revision();
    // An empty store starts from the latest snapshot, downloaded to a file
    // (it can be large) and checked whole before the import begins.
    let mut snapshot_file = None;
    if base == 0 {
        if let Some((rev, key)) = snapshot {
            log::info!("restoring from snapshot {key} (revision {rev})");
            let path = log.temp_path("snapshot");
            snapshot_file = Some((path.clone(), key.clone()));
            let validated = async {
                log.store.get_to_file(&key, &path).await?;
                blocking(move || {
                    validate_snapshot(&path).map_err(|error| LogError::Corrupt { key, error })
                })
                .await
            };
            base = match validated.await {
                Ok(n) => n,
                Err(e) => {
                    remove_snapshot_file(&snapshot_file);
                    return Err(e);
                }
            };
            report.snapshot_imported = true;
        }
    }
    let chunks = log.chunks_after(0).await?;
    report.durable = chunks.last().map_or(0, |c| c.0).max(report.snapshot);
    let pending: Vec<String> = chunks
        .into_iter()
        .filter(|(r, _)| *r > base)
        .map(|(_, key)| key)
        .collect();
    report.chunks_imported = pending.len();
    if snapshot_file.is_some() || !pending.is_empty() {
        if !pending.is_empty() {
            log::info!("importing {} chunks after revision {base}", pending.len());
        }
        let imported = import(store, log, snapshot_file.clone(), pending).await;
        remove_snapshot_file(&snapshot_file);
        imported?;
    }
    let s = store.clone();
    blocking(move || -> Result<(), LogError> {
        s.seed_compaction()?;
        s.check_integrity()?;
        Ok(())
    })
    .await?;
    report.latest = store.latest_revision();
    Ok(report)
}

/// Imports these chunks (in order, each beyond the last), as a replica
/// does to follow the bucket: no snapshot, no integrity scan (the import
/// itself refuses gaps and conflicts).
pub async fn import_chunks(
    store: &Arc<Store>,
    log: &ObjectLog,
    keys: Vec<String>,
) -> Result<(), LogError> {
    if keys.is_empty() {
        return Ok(());
    }
    import(store, log, None, keys).await
}

/// One import transaction: the snapshot file if any, then the chunks.
/// Chunks are downloaded one at a time inside the transaction (the
/// blocking thread waits on each download), so none is held in memory or
/// on disk beyond its own import.
async fn import(
    store: &Arc<Store>,
    log: &ObjectLog,
    snapshot: Option<(PathBuf, String)>,
    keys: Vec<String>,
) -> Result<(), LogError> {
    let (s, objects, runtime) = (
        store.clone(),
        log.store.clone(),
        tokio::runtime::Handle::current(),
    );
    blocking(move || {
        s.import_all(|importer| {
            if let Some((path, key)) = &snapshot {
                import_snapshot_file(importer, path, key)?;
            }
            let count = keys.len();
            for (i, key) in keys.into_iter().enumerate() {
                let records = runtime.block_on(super::read_chunk(&*objects, &key))?;
                importer
                    .add(&records)
                    .map_err(|error| LogError::Import { key, error })?;
                if (i + 1) % 1000 == 0 {
                    log::info!("imported {} of {count} chunks", i + 1);
                }
            }
            Ok(())
        })
    })
    .await
}

fn remove_snapshot_file(file: &Option<(PathBuf, String)>) {
    if let Some((path, _)) = file {
        let _ = std::fs::remove_file(path);
    }
}

/// Feeds a verified snapshot file to the import in bounded batches.
fn import_snapshot_file(
    importer: &mut Importer<'_>,
    path: &Path,
    key: &str,
) -> Result<(), LogError> {
    let corrupt = |error| LogError::Corrupt {
        key: key.to_string(),
        error,
    };
    let not_imported = |error| LogError::Import {
        key: key.to_string(),
        error,
    };
    let mut reader = datafile::open_file(path, Some(Kind::Snapshot)).map_err(corrupt)?;
    let total = reader.header.records_count;
    let mut batch: Vec<Record> = Vec::with_capacity(SNAPSHOT_IMPORT_BATCH);
    let mut done = 0u64;
    while let Some(r) = reader.next_record().map_err(corrupt)? {
        batch.push(r);
        if batch.len() == SNAPSHOT_IMPORT_BATCH {
            importer.add(&batch).map_err(not_imported)?;
            done += batch.len() as u64;
            batch.clear();
            if done.is_multiple_of(100_000) {
                log::info!("snapshot import: {done} of {total} records");
            }
        }
    }
    importer.add(&batch).map_err(not_imported)
}

/// How many snapshot records go to the importer at a time.
const SNAPSHOT_IMPORT_BATCH: usize = 10_000;

/// Runs blocking work (file reads, SQLite) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Invalid(format!("restore task failed: {e}")))?
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

/// As the Primary, before accepting writes (part of preflight): a
/// brand-new cluster gets its internal first record; records only the local
/// store has (written before a crash, never uploaded) are uploaded one per
/// chunk.
pub async fn upload_local(
    store: &Arc<Store>,
    log: &ObjectLog,
    durable: i64,
) -> Result<(), LogError> {
    if durable == 0 && store.latest_revision() == 0 {
        let batch = Batch {
            records: vec![Record::internal(&log.leader_id)],
            ..Default::default()
        };
        store.append_committed(batch)?;
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
