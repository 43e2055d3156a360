//! Bringing a node's local store level with object storage: an empty store
//! takes the latest snapshot (checked whole first), then every later chunk,
//! each verified as it is read, all in one SQLite transaction that also
//! checks continuity with the local store. Then, as the Primary, records
//! that exist only locally are uploaded (part of preflight).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::datafile::{self, DataFileError, Kind};
use crate::store::record::INTERNAL_KEY;
use crate::store::{Batch, Importer, Record, Store, StoreError};

use super::{claims, LogError, ObjectLog};

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
    /// Chunks skipped because their records lost their revisions to other
    /// writes (see [`super::claims`]).
    pub superseded: Vec<String>,
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
    let beyond = chunks.iter().filter(|(r, _)| *r > base).count();
    // The chunk that ends at the local latest revision is read too and its
    // records compared with the local ones: a local store holding other
    // writes up to a revision where the bucket's chunks also end (one from
    // another bucket, say) would otherwise take the chunks beyond it.
    let from = if snapshot_file.is_some() {
        base + 1
    } else {
        base.max(1)
    };
    let pending: Vec<String> = chunks
        .iter()
        .filter(|(r, _)| *r >= from)
        .map(|(_, key)| key.clone())
        .collect();
    let mut superseded = Vec::new();
    if snapshot_file.is_some() || !pending.is_empty() {
        if beyond > 0 {
            log::info!("importing {beyond} chunks after revision {base}");
        }
        let snapshot_revision = if snapshot_file.is_some() { base } else { 0 };
        let imported = import(
            store,
            log,
            snapshot_file.clone(),
            snapshot_revision,
            pending,
        )
        .await;
        remove_snapshot_file(&snapshot_file);
        superseded = imported?;
    }
    let superseded_beyond = superseded
        .iter()
        .filter(|k| super::keys::revision_of(k).is_some_and(|r| r > base))
        .count();
    report.chunks_imported = beyond - superseded_beyond;
    report.durable = chunks
        .iter()
        .rfind(|(_, key)| !superseded.contains(key))
        .map_or(0, |c| c.0)
        .max(report.snapshot);
    report.superseded = superseded;
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
    import(store, log, None, 0, keys).await.map(drop)
}

/// One import transaction: the snapshot file if any (holding revisions
/// up to `snapshot_revision`), then the chunks. Chunks are downloaded one
/// at a time inside the transaction (the blocking thread waits on each
/// download), so none is held in memory or on disk beyond its own import.
/// Returns the keys of chunks skipped as superseded: chunks of several
/// records that conflict with what is already imported and lost their
/// claim, or whose conflicting revision the snapshot imported here covers
/// (its cleanup may have removed the claim).
async fn import(
    store: &Arc<Store>,
    log: &ObjectLog,
    snapshot: Option<(PathBuf, String)>,
    snapshot_revision: i64,
    keys: Vec<String>,
) -> Result<Vec<String>, LogError> {
    let (s, objects, runtime) = (
        store.clone(),
        log.store.clone(),
        tokio::runtime::Handle::current(),
    );
    blocking(move || {
        let mut superseded = Vec::new();
        s.import_all(|importer| {
            if let Some((path, key)) = &snapshot {
                import_snapshot_file(importer, path, key)?;
            }
            let count = keys.len();
            for (i, key) in keys.into_iter().enumerate() {
                let chunk = runtime.block_on(super::read_written_chunk(&*objects, &key))?;
                let records = chunk.records;
                // A conflict changes nothing (existing revisions come first
                // and are checked before anything new goes in), so a chunk
                // that lost its claim can be passed over whole.
                match importer.add(&records) {
                    Ok(()) => {}
                    Err(StoreError::Conflict { revision })
                        if records.len() > 1
                            && (revision <= snapshot_revision
                                || runtime.block_on(claims::superseded(
                                    &*objects,
                                    &chunk.writer,
                                    &records,
                                ))?) =>
                    {
                        log::warn!(
                            "skipping {key}: it holds other writes at revision {revision} than \
                             the bucket's claim or snapshot (a Primary that was replaced wrote \
                             it; never acknowledged)"
                        );
                        superseded.push(key);
                    }
                    Err(error) => return Err(LogError::Import { key, error }),
                }
                if (i + 1) % 1000 == 0 {
                    log::info!("imported {} of {count} chunks", i + 1);
                }
            }
            Ok(())
        })?;
        Ok(superseded)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datafile::Compression;
    use crate::log::keys;
    use crate::log::testing::records;
    use crate::objstore::memory::MemoryStore;
    use crate::objstore::Condition;

    /// A bucket where the new Primary won revision 2 (its claim) and wrote
    /// 2..=3 and 4..=8 (claimed at 4), and a replaced Primary's 2..=`end`
    /// landed anyway. Returns the new Primary's history 1..=8.
    async fn raced_bucket(log: &ObjectLog, end: i64) -> Vec<Record> {
        let mut history = vec![Record::internal("new")];
        log.write_chunk(&history).await.unwrap();
        for range in [2..=3, 4..=8] {
            let batch = records(range, "new");
            let chunk = log.encode_chunk(&batch).unwrap().unwrap();
            let claim = log.encode_claim(&batch).unwrap();
            log.put_claimed(&batch, &chunk, claim.as_ref())
                .await
                .unwrap();
            history.extend(batch);
        }
        let old = records(2..=end, "old");
        let garbage = log.encode_chunk(&old).unwrap().unwrap();
        log.store
            .put(&garbage.key, garbage.bytes.clone(), Condition::IfAbsent)
            .await
            .unwrap();
        history
    }

    fn assert_history(store: &Store, history: &[Record]) {
        let held = store.records_between(1, 100, usize::MAX).unwrap();
        assert_eq!(held.len(), history.len());
        for (h, r) in held.iter().zip(history) {
            assert!(h.same_write(r), "revision {}", r.revision);
        }
    }

    #[tokio::test]
    async fn a_chunk_that_lost_its_claim_is_skipped_wherever_its_key_falls() {
        for end in [7, 9] {
            let dir = tempfile::tempdir().unwrap();
            let log = ObjectLog::new(Arc::new(MemoryStore::new()), "n", dir.path()).unwrap();
            let history = raced_bucket(&log, end).await;
            let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
            let report = catch_up(&store, &log).await.unwrap();
            assert_history(&store, &history);
            assert_eq!(report.superseded, [keys::chunk_key(end)]);
            assert_eq!(report.latest, 8);
            assert_eq!(report.durable, 8, "the skipped chunk's key is not durable");
        }
    }

    #[tokio::test]
    async fn a_local_store_that_differs_where_its_chunks_end_alike_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = ObjectLog::new(Arc::new(MemoryStore::new()), "n", dir.path()).unwrap();
        let ours = [vec![Record::internal("n")], records(2..=5, "n")].concat();
        for r in &ours {
            log.write_chunk(std::slice::from_ref(r)).await.unwrap();
        }
        let local = |name: &str, records: Vec<Record>| {
            let store = Arc::new(Store::open(&dir.path().join(name)).unwrap());
            let batch = Batch {
                records,
                ..Batch::default()
            };
            store.append_committed(batch).unwrap();
            store
        };

        // Our own store, behind: the chunk at its end agrees, two follow.
        let behind = local("behind", ours[..3].to_vec());
        let report = catch_up(&behind, &log).await.unwrap();
        assert_eq!((report.chunks_imported, report.latest), (2, 5));
        assert_history(&behind, &ours);
        // The internal record alone: no value in the store, an empty one
        // in its chunk, the same write.
        let first = local("first", ours[..1].to_vec());
        let report = catch_up(&first, &log).await.unwrap();
        assert_eq!((report.chunks_imported, report.latest), (4, 5));

        // Another bucket's store with as many revisions: other values at 2
        // and 3, where this bucket's chunks end too.
        let mut theirs = ours[..3].to_vec();
        for r in &mut theirs[1..] {
            r.value = Some(bytes::Bytes::from_static(b"another bucket's"));
        }
        let other = local("other", theirs);
        let err = catch_up(&other, &log).await.unwrap_err();
        assert!(
            matches!(
                err,
                LogError::Import {
                    error: StoreError::Conflict { revision: 3 },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(other.latest_revision(), 3, "nothing imported");
    }

    #[tokio::test]
    async fn a_conflict_that_no_claim_explains_still_refuses_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let log = ObjectLog::new(Arc::new(MemoryStore::new()), "n", dir.path()).unwrap();
        log.write_chunk(&[Record::internal("new")]).await.unwrap();
        // Two unclaimed chunks from revision 2 (written before claims, or
        // both writers stopped before claiming): nothing decides.
        log.write_chunk(&records(2..=3, "new")).await.unwrap();
        log.write_chunk(&records(2..=4, "old")).await.unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let err = catch_up(&store, &log).await.unwrap_err();
        assert!(err.to_string().contains("revision 2"), "{err}");
        assert_eq!(store.latest_revision(), 0, "nothing imported");
    }

    #[tokio::test]
    async fn after_cleanup_took_the_claim_the_snapshot_decides() {
        let dir = tempfile::tempdir().unwrap();
        let log = ObjectLog::new(Arc::new(MemoryStore::new()), "n", dir.path()).unwrap();
        let history = raced_bucket(&log, 9).await;
        // A snapshot at 5 and the cleanup of every chunk up to it: the claim
        // at 2 is gone, the superseded 2..=9 is not.
        let snapshot =
            crate::datafile::encode(Kind::Snapshot, Compression::Zstd, "new", &history[..5])
                .unwrap();
        log.store
            .put(&keys::snapshot_key(5), snapshot.into(), Condition::None)
            .await
            .unwrap();
        for r in [1, 2, 3, 4] {
            log.store.delete(&keys::chunk_key(r)).await.unwrap();
        }
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let report = catch_up(&store, &log).await.unwrap();
        assert_history(&store, &history);
        assert_eq!(report.superseded, [keys::chunk_key(9)]);
    }

    #[tokio::test]
    async fn a_superseded_chunk_that_agrees_at_first_and_differs_later_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(MemoryStore::new());
        let new = ObjectLog::new(bucket.clone(), "new", &dir.path().join("new")).unwrap();
        let old = ObjectLog::new(bucket.clone(), "old", &dir.path().join("old")).unwrap();
        let mut history = vec![Record::internal("old")];
        old.write_chunk(&history).await.unwrap();
        // The new Primary adopted the old one's 2..=3 and uploaded them, then
        // wrote its own 4..=5; the old one's 2..=6 came after, unclaimed.
        let adopted = records(2..=3, "old");
        for r in &adopted {
            new.write_chunk(std::slice::from_ref(r)).await.unwrap();
        }
        let own = records(4..=5, "new");
        let chunk = new.encode_chunk(&own).unwrap().unwrap();
        let claim = new.encode_claim(&own).unwrap();
        new.put_claimed(&own, &chunk, claim.as_ref()).await.unwrap();
        // The same writes at 2 and 3 as the ones adopted.
        let late: Vec<Record> = adopted
            .iter()
            .cloned()
            .chain(records(4..=6, "old"))
            .collect();
        history.extend(adopted);
        history.extend(own);
        old.put_chunk(&old.encode_chunk(&late).unwrap().unwrap())
            .await
            .unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let report = catch_up(&store, &new).await.unwrap();
        assert_history(&store, &history);
        assert_eq!(report.superseded, [keys::chunk_key(6)]);
        assert_eq!(report.durable, 5);
    }
}
