//! Bringing a node's local store level with object storage: an empty store
//! takes the latest snapshot, then every later chunk. Every object needed is
//! downloaded and verified (CRCs, kind, counts) before anything is written;
//! then all of them go into one SQLite transaction, where continuity with
//! the local store is checked. Then, as the Primary, records that exist only
//! locally are uploaded (preflight).

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

/// Imports what object storage has beyond the local store. Every object
/// needed is downloaded and verified first; then all of it is imported in
/// one transaction, so a damaged object (or a crash part-way) leaves the
/// local store exactly as it was.
pub async fn catch_up(store: &Arc<Store>, log: &ObjectLog) -> Result<CaughtUp, LogError> {
    let mut staged = Staged::default();
    let result = stage_and_import(store, log, &mut staged).await;
    for path in staged.paths() {
        let _ = std::fs::remove_file(path);
    }
    let mut report = result?;
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

/// Downloaded, verified objects waiting to be imported: temporary files
/// with the object key each came from.
#[derive(Default)]
struct Staged {
    snapshot: Option<(PathBuf, String)>,
    chunks: Vec<(PathBuf, String)>,
}

impl Staged {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.snapshot.iter().chain(&self.chunks).map(|(p, _)| p)
    }
}

async fn stage_and_import(
    store: &Arc<Store>,
    log: &ObjectLog,
    staged: &mut Staged,
) -> Result<CaughtUp, LogError> {
    let mut report = CaughtUp::default();
    let snapshot = log.latest_snapshot().await?;
    if let Some((rev, _)) = &snapshot {
        report.snapshot = *rev;
    }
    let mut base = store.latest_revision();
    if base == 0 {
        if let Some((rev, key)) = snapshot {
            log::info!("restoring from snapshot {key} (revision {rev})");
            let path = log.temp_path("snapshot");
            staged.snapshot = Some((path.clone(), key.clone()));
            log.store.get_to_file(&key, &path).await?;
            base = blocking(move || {
                validate_snapshot(&path).map_err(|error| LogError::Corrupt { key, error })
            })
            .await?;
            report.snapshot_imported = true;
        }
    }
    let chunks = log.chunks_after(0).await?;
    report.durable = chunks.last().map_or(0, |c| c.0).max(report.snapshot);
    let pending: Vec<(i64, String)> = chunks.into_iter().filter(|(r, _)| *r > base).collect();
    if !pending.is_empty() {
        log::info!(
            "downloading and verifying {} chunks after revision {base}",
            pending.len()
        );
    }
    for (i, (_, key)) in pending.into_iter().enumerate() {
        let path = log.temp_path("chunk");
        staged.chunks.push((path.clone(), key.clone()));
        let data = log.store.get(&key).await?.data;
        blocking(move || {
            datafile::decode(&data, Some(Kind::Chunk))
                .map_err(|error| LogError::Corrupt { key, error })?;
            std::fs::write(&path, &data)
                .map_err(|e| LogError::Invalid(format!("cannot write {}: {e}", path.display())))
        })
        .await?;
        report.chunks_imported += 1;
        if (i + 1) % 1000 == 0 {
            log::info!("verified {} chunks", i + 1);
        }
    }
    if staged.snapshot.is_none() && staged.chunks.is_empty() {
        return Ok(report);
    }
    let (s, snapshot, chunks) = (
        store.clone(),
        staged.snapshot.clone(),
        staged.chunks.clone(),
    );
    blocking(move || s.import_all(|importer| import_staged(importer, snapshot, chunks))).await?;
    Ok(report)
}

/// Feeds the staged snapshot (in bounded batches) and chunks to one import.
fn import_staged(
    importer: &mut Importer<'_>,
    snapshot: Option<(PathBuf, String)>,
    chunks: Vec<(PathBuf, String)>,
) -> Result<(), LogError> {
    if let Some((path, key)) = snapshot {
        let corrupt = |error| LogError::Corrupt {
            key: key.clone(),
            error,
        };
        let not_imported = |error| LogError::Import {
            key: key.clone(),
            error,
        };
        let mut reader = datafile::open_file(&path, Some(Kind::Snapshot)).map_err(corrupt)?;
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
        importer.add(&batch).map_err(not_imported)?;
    }
    let count = chunks.len();
    for (i, (path, key)) in chunks.into_iter().enumerate() {
        let data = std::fs::read(&path)
            .map_err(|e| LogError::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let (_, records, _) =
            datafile::decode(&data, Some(Kind::Chunk)).map_err(|error| LogError::Corrupt {
                key: key.clone(),
                error,
            })?;
        importer
            .add(&records)
            .map_err(|error| LogError::Import { key, error })?;
        if (i + 1) % 1000 == 0 {
            log::info!("imported {} of {count} chunks", i + 1);
        }
    }
    Ok(())
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
