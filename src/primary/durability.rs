//! Where a batch becomes durable beyond this node's database before it is
//! acknowledged. The committer appends the batch to SQLite while a
//! [`Durability`] makes the same records durable elsewhere; only when both
//! succeed is the batch committed. The first implementation is object
//! storage (one chunk per batch); the quorum path of a cluster plugs in
//! beside it as another implementation, without touching evaluation.

use std::sync::Arc;
use std::time::Duration;

use crate::http::metrics::Metrics;
use crate::log::claims::Claim;
use crate::log::{EncodedChunk, ObjectLog};
use crate::store::Record;

use futures_util::future::BoxFuture;

pub trait Durability: Send + Sync + 'static {
    /// Makes consecutive records durable; resolves once they are, or with
    /// why they are not. The committing thread (the commit thread, or a
    /// worker committing a lone write) builds the future and polls it once
    /// in the runtime's context to start it (work before its first await,
    /// such as encoding, runs there), commits locally meanwhile, then waits
    /// for it.
    fn persist(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>>;

    /// After a failed persist: one attempt to settle the records' fate, so
    /// an earlier attempt whose outcome is unknown resolves one way. Ok
    /// when the records are durable now, or when the revisions are already
    /// held by other records (which are then the truth to catch up with).
    fn settle(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>>;
}

/// How long one chunk write may take before it counts as failed.
pub const CHUNK_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Object storage as the permanent store (quorum 0, or too few replicas):
/// every batch is one chunk, written create-only before the batch is
/// acknowledged. In a cluster a multi-record chunk also needs its claim
/// (see [`crate::log::claims`]): another node may already be Primary.
pub struct ObjectStorageDurability {
    pub log: Arc<ObjectLog>,
    pub metrics: Arc<Metrics>,
    pub timeout: Duration,
    /// Whether another node can be Primary (a cluster): chunks are claimed.
    pub claims: bool,
}

impl ObjectStorageDurability {
    pub fn new(log: Arc<ObjectLog>, metrics: Arc<Metrics>) -> ObjectStorageDurability {
        ObjectStorageDurability {
            log,
            metrics,
            timeout: CHUNK_WRITE_TIMEOUT,
            claims: false,
        }
    }

    /// Claims every multi-record chunk (a node in a cluster).
    pub fn claimed(self) -> ObjectStorageDurability {
        ObjectStorageDurability {
            claims: true,
            ..self
        }
    }
}

/// The chunk for `records` and, when `claims`, its claim; encoded once so
/// that every retry sends the same bytes. (Inside the returned futures: the
/// committing thread only builds them.)
fn encode(log: &ObjectLog, claims: bool, records: &[Record]) -> Result<Option<Encoded>, String> {
    let Some(chunk) = log.encode_chunk(records).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let claim = match claims {
        true => log.encode_claim(records).map_err(|e| e.to_string())?,
        false => None,
    };
    Ok(Some(Encoded { chunk, claim }))
}

/// A batch's chunk and its claim, ready to write.
struct Encoded {
    chunk: EncodedChunk,
    claim: Option<EncodedChunk>,
}

impl Durability for ObjectStorageDurability {
    fn persist(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
        let (log, metrics, timeout) = (self.log.clone(), self.metrics.clone(), self.timeout);
        let claims = self.claims;
        Box::pin(async move {
            let Some(encoded) = encode(&log, claims, &records)? else {
                return Ok(());
            };
            // As the reference does: one immediate retry whatever the
            // failure (the store below already retried transient ones). The
            // retry sends the same bytes, so a first attempt that landed
            // after all counts as written.
            let first = put_in_time(&log, &records, &encoded, timeout).await;
            let claim = match first {
                Ok(claim) => claim,
                Err(e) => {
                    log::warn!("chunk write failed: {e}; retrying once");
                    metrics.count_retry("object_storage_write");
                    put_in_time(&log, &records, &encoded, timeout).await?
                }
            };
            if claim == Claim::Theirs {
                return Err(lost(&records));
            }
            metrics
                .primary_object_storage_revision
                .set(encoded.chunk.last_revision);
            Ok(())
        })
    }

    fn settle(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
        let (log, timeout, claims) = (self.log.clone(), self.timeout, self.claims);
        Box::pin(async move {
            let Some(encoded) = encode(&log, claims, &records)? else {
                return Ok(());
            };
            // Revisions another Primary has claimed are its: writing this
            // chunk now would only leave a superseded one behind. So are
            // revisions a snapshot covers (its cleanup may have removed the
            // claim): a Primary has moved past them.
            let first = records.first().map_or(0, |r| r.revision);
            let snapshot = log.latest_snapshot().await.map_err(|e| e.to_string())?;
            let passed = snapshot.is_some_and(|(revision, _)| revision >= first);
            if passed
                || (encoded.claim.is_some()
                    && log
                        .superseded(&log.leader_id, &records)
                        .await
                        .map_err(|e| e.to_string())?)
            {
                log::warn!("{}; they are the truth", lost(&records));
                return Ok(());
            }
            match put_in_time(&log, &records, &encoded, timeout).await? {
                Claim::Ours => Ok(()),
                Claim::Theirs => {
                    log::warn!("{}; they are the truth", lost(&records));
                    Ok(())
                }
            }
        })
    }
}

fn lost(records: &[Record]) -> String {
    let first = records.first().map_or(0, |r| r.revision);
    let last = records.last().map_or(0, |r| r.revision);
    format!("revisions {first}..={last} are held by other records (another Primary wrote them)")
}

/// One write of a chunk and its claim under `timeout`.
async fn put_in_time(
    log: &ObjectLog,
    records: &[Record],
    encoded: &Encoded,
    timeout: Duration,
) -> Result<Claim, String> {
    let put = log.put_claimed(records, &encoded.chunk, encoded.claim.as_ref());
    match tokio::time::timeout(timeout, put).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("writing the chunk took longer than {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::tests::{transient, Flaky};
    use crate::objstore::{ObjError, ObjectStore};

    fn retries(m: &Metrics) -> u64 {
        m.retries
            .get_or_create(&crate::http::metrics::labels(&[(
                "operation",
                "object_storage_write",
            )]))
            .get()
    }

    fn setup(
        failures: u32,
    ) -> (
        tempfile::TempDir,
        Arc<Flaky>,
        Arc<Metrics>,
        ObjectStorageDurability,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Flaky::new(failures, transient);
        let log = ObjectLog::new(flaky.clone(), "n1", dir.path()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let durability = ObjectStorageDurability::new(Arc::new(log), metrics.clone());
        (dir, flaky, metrics, durability)
    }

    #[tokio::test]
    async fn a_failed_chunk_write_is_retried_once_with_the_same_bytes() {
        let (_dir, flaky, metrics, durability) = setup(1);
        let records: Arc<[Record]> = vec![Record::internal("n1")].into();
        durability.persist(records).await.unwrap();
        let puts = flaky.puts.lock().unwrap().clone();
        assert_eq!(puts.len(), 2, "one failure, one retry");
        assert_eq!(puts[0], puts[1], "the retry sends the very same bytes");
        let stored = flaky.inner.get(&puts[0].0).await.unwrap();
        assert_eq!(stored.data, puts[0].1);
        assert_eq!(retries(&metrics), 1);
        assert_eq!(metrics.primary_object_storage_revision.get(), 1);
    }

    #[tokio::test]
    async fn a_second_failure_fails_the_batch_and_settle_tries_again() {
        let (_dir, flaky, metrics, durability) = setup(2);
        let records: Arc<[Record]> = vec![Record::internal("n1")].into();
        let err = durability.persist(records.clone()).await.unwrap_err();
        assert!(err.contains("HTTP 503"), "{err}");
        assert_eq!(flaky.take_attempts(), 2, "no third attempt");
        assert_eq!(retries(&metrics), 1);
        assert_eq!(metrics.primary_object_storage_revision.get(), 0);
        durability.settle(records).await.unwrap();
        assert!(flaky
            .inner
            .get("chunks/0001/0000000000000000001.netsy")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn settling_accepts_other_records_already_at_those_revisions() {
        let (_dir, flaky, _metrics, durability) = setup(0);
        let mine: Arc<[Record]> = vec![Record::internal("n1")].into();
        let theirs = vec![Record::internal("n2")];
        ObjectLog::new(flaky.clone(), "n2", _dir.path())
            .unwrap()
            .write_chunk(&theirs)
            .await
            .unwrap();
        durability.settle(mine).await.unwrap();
    }

    fn batch(range: std::ops::RangeInclusive<i64>, leader: &str) -> Arc<[Record]> {
        crate::log::testing::records(range, leader).into()
    }

    /// The Primary that was replaced ("old") and the one appointed after
    /// it ("new"), both in a cluster, on one bucket.
    fn rivals() -> (
        tempfile::TempDir,
        Arc<crate::objstore::memory::MemoryStore>,
        ObjectStorageDurability,
        ObjectStorageDurability,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(crate::objstore::memory::MemoryStore::new());
        let node = |name: &str| {
            let log = ObjectLog::new(bucket.clone(), name, &dir.path().join(name)).unwrap();
            ObjectStorageDurability::new(Arc::new(log), Arc::new(Metrics::new())).claimed()
        };
        let (old, new) = (node("old"), node("new"));
        (dir, bucket, old, new)
    }

    #[tokio::test]
    async fn a_batch_whose_first_revision_another_primary_claimed_is_not_durable() {
        let (_dir, _bucket, old, new) = rivals();
        new.persist(batch(56..=57, "new")).await.unwrap();
        let err = old.persist(batch(56..=58, "old")).await.unwrap_err();
        assert!(err.contains("another Primary"), "{err}");
        assert_eq!(old.metrics.primary_object_storage_revision.get(), 0);
    }

    #[tokio::test]
    async fn settling_after_another_primary_claimed_the_revisions_writes_nothing() {
        // The failure CI met: the old Primary's batch 56..=58 failed during
        // an outage, a new Primary wrote 56..=57, and the old one's recovery
        // then created 56..=58 at key 58 beside it: the bucket could no
        // longer be restored.
        let (_dir, bucket, old, new) = rivals();
        new.persist(batch(56..=57, "new")).await.unwrap();
        old.settle(batch(56..=58, "old")).await.unwrap();
        let key = crate::log::keys::chunk_key(58);
        assert!(
            matches!(bucket.get(&key).await, Err(ObjError::NotFound(_))),
            "the recovery wrote {key}"
        );
    }

    #[tokio::test]
    async fn a_lone_node_writes_one_object_per_batch_and_a_cluster_node_two() {
        let (_dir, bucket, _old, new) = rivals();
        let lone = ObjectStorageDurability::new(new.log.clone(), new.metrics.clone());
        lone.persist(batch(2..=4, "new")).await.unwrap();
        assert_eq!(
            bucket.list(crate::log::keys::CHUNKS).await.unwrap().len(),
            1
        );
        new.persist(batch(5..=7, "new")).await.unwrap();
        new.persist(batch(8..=8, "new")).await.unwrap();
        let mut keys: Vec<String> = bucket
            .list(crate::log::keys::CHUNKS)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        keys.sort();
        assert_eq!(keys, [4, 5, 7, 8].map(crate::log::keys::chunk_key));
    }

    #[tokio::test]
    async fn settling_revisions_a_snapshot_already_covers_writes_nothing() {
        let (_dir, bucket, old, new) = rivals();
        new.persist(batch(2..=9, "new")).await.unwrap();
        // A snapshot at 9, then the cleanup of every chunk up to it: the
        // claim at 2 is gone with them.
        let history: Vec<Record> = std::iter::once(Record::internal("new"))
            .chain(batch(2..=9, "new").iter().cloned())
            .collect();
        let snapshot = crate::datafile::encode(
            crate::datafile::Kind::Snapshot,
            crate::datafile::Compression::Zstd,
            "new",
            &history,
        )
        .unwrap();
        let key = crate::log::keys::snapshot_key(9);
        let none = crate::objstore::Condition::None;
        bucket.put(&key, snapshot.into(), none).await.unwrap();
        for r in [2, 9] {
            bucket
                .delete(&crate::log::keys::chunk_key(r))
                .await
                .unwrap();
        }
        for stale in [batch(5..=5, "old"), batch(5..=7, "old")] {
            old.settle(stale).await.unwrap();
        }
        assert!(bucket
            .list(crate::log::keys::CHUNKS)
            .await
            .unwrap()
            .is_empty());
    }
}
