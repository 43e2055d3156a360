//! Where a batch becomes durable beyond this node's database before it is
//! acknowledged. The committer appends the batch to SQLite while a
//! [`Durability`] makes the same records durable elsewhere; only when both
//! succeed is the batch committed. The first implementation is object
//! storage (one chunk per batch); the quorum path of a cluster plugs in
//! beside it as another implementation, without touching evaluation.

use std::sync::Arc;
use std::time::Duration;

use crate::http::metrics::Metrics;
use crate::log::{EncodedChunk, LogError, ObjectLog};
use crate::objstore::ObjError;
use crate::store::Record;

use futures_util::future::BoxFuture;

pub trait Durability: Send + Sync + 'static {
    /// Makes consecutive records durable; resolves once they are, or with
    /// why they are not. Called on the committer thread, so it must only
    /// build the future: the work runs on the runtime.
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
/// acknowledged.
pub struct ObjectStorageDurability {
    pub log: Arc<ObjectLog>,
    pub metrics: Arc<Metrics>,
    pub timeout: Duration,
}

impl ObjectStorageDurability {
    pub fn new(log: Arc<ObjectLog>, metrics: Arc<Metrics>) -> ObjectStorageDurability {
        ObjectStorageDurability {
            log,
            metrics,
            timeout: CHUNK_WRITE_TIMEOUT,
        }
    }
}

impl Durability for ObjectStorageDurability {
    fn persist(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
        let (log, metrics, timeout) = (self.log.clone(), self.metrics.clone(), self.timeout);
        Box::pin(async move {
            let Some(chunk) = log.encode_chunk(&records).map_err(|e| e.to_string())? else {
                return Ok(());
            };
            // As the reference does: one immediate retry whatever the
            // failure (the store below already retried transient ones). The
            // retry sends the same bytes, so a first attempt that landed
            // after all counts as written.
            let first = put_chunk_in_time(&log, &chunk, timeout).await;
            if let Err(e) = first {
                log::warn!("chunk write failed: {e}; retrying once");
                metrics.count_retry("object_storage_write");
                put_chunk_in_time(&log, &chunk, timeout).await?;
            }
            metrics
                .primary_object_storage_revision
                .set(chunk.last_revision);
            Ok(())
        })
    }

    fn settle(&self, records: Arc<[Record]>) -> BoxFuture<'static, Result<(), String>> {
        let (log, timeout) = (self.log.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, log.write_chunk(&records)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(LogError::Storage(ObjError::Conflict(key)))) => {
                    log::warn!("{key} already holds other records; they are the truth");
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("writing the chunk took longer than {timeout:?}")),
            }
        })
    }
}

/// One chunk write under `timeout`.
async fn put_chunk_in_time(
    log: &ObjectLog,
    chunk: &EncodedChunk,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, log.put_chunk(chunk)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("writing the chunk took longer than {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::tests::{transient, Flaky};
    use crate::objstore::ObjectStore;

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
}
