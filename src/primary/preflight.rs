//! Preflight: before a new Primary takes writes, the rows it holds beyond
//! its committed revision are settled (adopted, or discarded when the
//! bucket has moved past them), its store catches up with the bucket,
//! records only this node has are made durable, and watchers see
//! everything that became committed, and the lease table becomes what the
//! bucket holds. Run at every starting → active step, including after a
//! recovery.

use std::sync::Arc;

use crate::log::restore::{self, CaughtUp};
use crate::log::{LogError, ObjectLog};
use crate::store::Store;
use crate::watch::WatchHub;

pub async fn preflight(
    store: &Arc<Store>,
    log: &ObjectLog,
    hub: &WatchHub,
) -> Result<CaughtUp, LogError> {
    crate::failpoint::hit("preflight_start").await;
    let before = store.committed_revision();
    settle_tentative(store, log).await?;
    let report = restore::catch_up(store, log).await?;
    remove_superseded(log, &report.superseded).await?;
    crate::failpoint::hit("preflight").await;
    restore::upload_local(store, log, report.durable).await?;
    load_leases(store, log).await?;
    // Imported and adopted records, and a new cluster's first record.
    hub.publish_from_store(store, before)?;
    Ok(report)
}

/// Chunks that lost their claim were never acknowledged; left in place
/// they would block their key when this Primary's writes reach it (and
/// cost every restore a read), so the Primary removes them.
async fn remove_superseded(log: &ObjectLog, keys: &[String]) -> Result<(), LogError> {
    for key in keys {
        log::warn!("deleting {key}: superseded (never acknowledged)");
        match log.store.delete(key).await {
            Ok(()) | Err(crate::objstore::ObjError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The bucket's leases replace the local table: a lease granted by an
/// earlier Primary is known here, one revoked is gone.
async fn load_leases(store: &Store, log: &ObjectLog) -> Result<(), LogError> {
    let granted_at = crate::store::Timestamp::now();
    let rows = crate::log::leases::list(&*log.store)
        .await?
        .into_iter()
        .map(|l| crate::store::LeaseRow {
            id: l.id,
            ttl: l.ttl,
            granted_at,
        })
        .collect::<Vec<_>>();
    let count = rows.len();
    store.replace_leases(rows)?;
    if count > 0 {
        log::info!("{count} leases loaded from object storage");
    }
    Ok(())
}

/// Rows above the committed revision (written before a crash, or received
/// from a Primary that died before saying they were committed) are
/// adopted, except where the bucket holds other writes at those revisions:
/// another Primary wrote them, and from the first difference on the
/// bucket is the truth. Rows the bucket agrees with, and rows beyond it,
/// stay: a quorum may have acknowledged them.
async fn settle_tentative(store: &Arc<Store>, log: &ObjectLog) -> Result<(), LogError> {
    let committed = store.committed_revision();
    if store.latest_revision() == committed {
        return Ok(());
    }
    for (_, key) in log.chunks_after(committed).await? {
        let chunk = crate::log::read_written_chunk(&*log.store, &key).await?;
        let records = chunk.records;
        if log.superseded(&chunk.writer, &records).await? {
            // Never acknowledged: catching up skips it too (and this
            // Primary removes it, then or when a write meets its key).
            continue;
        }
        store.replicate(&records)?;
    }
    let latest = store.latest_revision();
    if latest > committed {
        log::info!("adopting local revisions {}..={latest}", committed + 1);
        store.commit(latest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::objstore::memory::MemoryStore;
    use crate::store::{Batch, Record};
    use crate::watch::RingLimits;

    fn record(revision: i64, value: &str, leader: &str) -> Record {
        Record {
            revision,
            key: Bytes::copy_from_slice(format!("k{revision}").as_bytes()),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            create_revision: revision,
            ..Record::internal(leader)
        }
    }

    /// A node whose store holds revisions 1..=3, only 1 of them in the
    /// bucket, with 2..=3 made tentative as loading does.
    async fn node() -> (tempfile::TempDir, Arc<Store>, ObjectLog, WatchHub) {
        let dir = tempfile::tempdir().unwrap();
        let log = ObjectLog::new(Arc::new(MemoryStore::new()), "n1", dir.path()).unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let internal = Record::internal("n1");
        log.write_chunk(std::slice::from_ref(&internal))
            .await
            .unwrap();
        let batch = Batch {
            records: vec![internal, record(2, "mine", "n1"), record(3, "mine", "n1")],
            ..Batch::default()
        };
        store.append_committed(batch).unwrap();
        store.demote_above(1).unwrap();
        let hub = WatchHub::new(1, RingLimits::default());
        (dir, store, log, hub)
    }

    #[tokio::test]
    async fn rows_beyond_the_bucket_are_adopted_and_uploaded() {
        let (_dir, store, log, hub) = node().await;
        preflight(&store, &log, &hub).await.unwrap();
        assert_eq!(
            (store.committed_revision(), store.latest_revision()),
            (3, 3)
        );
        assert_eq!(log.durable_revision().await.unwrap(), 3);
        assert_eq!(hub.committed(), 3);
        assert_eq!(hub.events_between(1, 3, 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn rows_the_bucket_has_moved_past_are_replaced_by_the_bucket() {
        let (_dir, store, log, hub) = node().await;
        // Another Primary wrote revision 2 meanwhile.
        log.write_chunk(&[record(2, "theirs", "n2")]).await.unwrap();
        preflight(&store, &log, &hub).await.unwrap();
        assert_eq!(
            (store.committed_revision(), store.latest_revision()),
            (2, 2)
        );
        let two = store.record_at(2).unwrap().unwrap();
        assert_eq!(two.value.as_deref(), Some(&b"theirs"[..]));
        assert_eq!(
            log.durable_revision().await.unwrap(),
            2,
            "ours were not uploaded"
        );
    }

    #[tokio::test]
    async fn rows_the_bucket_agrees_with_and_rows_beyond_it_are_kept() {
        let (_dir, store, log, hub) = node().await;
        // The old Primary flushed revision 2 (the same write this node
        // has) and died before this node heard 2 and 3 were committed.
        let two = store.record_at(2).unwrap().unwrap();
        log.write_chunk(&[two]).await.unwrap();
        preflight(&store, &log, &hub).await.unwrap();
        assert_eq!(
            (store.committed_revision(), store.latest_revision()),
            (3, 3),
            "an acknowledged write beyond the bucket survives"
        );
        assert_eq!(log.durable_revision().await.unwrap(), 3);
        assert_eq!(hub.committed(), 3);
    }

    #[tokio::test]
    async fn a_chunk_that_lost_its_claim_is_neither_adopted_nor_left_in_the_bucket() {
        let (_dir, store, log, hub) = node().await;
        // Primary n2 claimed revision 2 and wrote 2..=3; a replaced Primary's
        // 2..=5 landed after that, unclaimed.
        let theirs = vec![record(2, "theirs", "n2"), record(3, "theirs", "n2")];
        let chunk = log.encode_chunk(&theirs).unwrap().unwrap();
        let claim = log.encode_claim(&theirs).unwrap();
        log.put_claimed(&theirs, &chunk, claim.as_ref())
            .await
            .unwrap();
        let late: Vec<Record> = (2..=5).map(|r| record(r, "late", "n3")).collect();
        let garbage = log.encode_chunk(&late).unwrap().unwrap();
        log.put_chunk(&garbage).await.unwrap();
        preflight(&store, &log, &hub).await.unwrap();
        assert_eq!(
            (store.committed_revision(), store.latest_revision()),
            (3, 3)
        );
        for r in [2, 3] {
            let held = store.record_at(r).unwrap().unwrap();
            assert_eq!(held.value.as_deref(), Some(&b"theirs"[..]));
        }
        assert_eq!(log.durable_revision().await.unwrap(), 3, "2..=5 removed");
    }
}
