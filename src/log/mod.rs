//! The log in object storage, exactly in the reference's layout: chunks of
//! consecutive records keyed by their last revision, snapshots of the whole
//! history, `bootstrap.netsy` for seeding a new bucket. Here: writing chunks
//! (the durable write path), restoring and catching up from the bucket,
//! snapshots and chunk cleanup, and the chunk buffer of the quorum path.

pub mod bootstrap;
pub mod buffer;
pub mod claims;
pub mod cleanup;
pub mod keys;
pub mod leases;
pub mod restore;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::datafile::{self, DataFileError, Kind};
use crate::objstore::{put_if_absent_idempotent, ObjError, ObjectStore};
use crate::store::{Record, StoreError};

/// How many revisions ahead a chunk write announces the next chunk keys.
const PREPARE_AHEAD: i64 = 8;

/// Why a log operation failed; names the object key when one is involved.
#[derive(Debug)]
pub enum LogError {
    Storage(ObjError),
    Corrupt {
        key: String,
        error: DataFileError,
    },
    Store(StoreError),
    /// The records of this object do not fit the local store.
    Import {
        key: String,
        error: StoreError,
    },
    Invalid(String),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Storage(e) => write!(f, "object storage: {e}"),
            LogError::Corrupt { key, error } => {
                write!(f, "object {key} is not a valid data file: {error}")
            }
            LogError::Store(e) => write!(f, "local database: {e}"),
            LogError::Import { key, error } => write!(f, "importing {key}: {error}"),
            LogError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<ObjError> for LogError {
    fn from(e: ObjError) -> Self {
        LogError::Storage(e)
    }
}

impl From<StoreError> for LogError {
    fn from(e: StoreError) -> Self {
        LogError::Store(e)
    }
}

/// Downloads and fully validates one chunk from `store`.
pub async fn read_chunk(store: &dyn ObjectStore, key: &str) -> Result<Vec<Record>, LogError> {
    Ok(read_written_chunk(store, key).await?.records)
}

/// A chunk as read: the node that wrote it (its header's leader id) and
/// its records.
pub struct WrittenChunk {
    pub writer: String,
    pub records: Vec<Record>,
}

/// [`read_chunk`], keeping the writer.
pub async fn read_written_chunk(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<WrittenChunk, LogError> {
    let obj = store.get(key).await?;
    let (header, records, _) =
        datafile::decode(&obj.data, Some(Kind::Chunk)).map_err(|error| LogError::Corrupt {
            key: key.to_string(),
            error,
        })?;
    Ok(WrittenChunk {
        writer: header.leader_id,
        records,
    })
}

/// A chunk ready to be written: its key and its exact bytes.
pub struct EncodedChunk {
    pub key: String,
    pub bytes: Bytes,
    pub last_revision: i64,
    /// How many records it holds.
    pub records: i64,
}

/// The log as one node sees it: the bucket plus this node's identity.
pub struct ObjectLog {
    pub store: Arc<dyn ObjectStore>,
    /// Written into every file header.
    pub leader_id: String,
    /// Scratch space for downloads and snapshot files, emptied at start.
    pub tmp_dir: PathBuf,
}

impl ObjectLog {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        leader_id: &str,
        data_dir: &Path,
    ) -> Result<ObjectLog, String> {
        let tmp_dir = data_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir)
            .map_err(|e| format!("cannot create {}: {e}", tmp_dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&tmp_dir, std::fs::Permissions::from_mode(0o700));
        }
        // The data dir belongs to this node and the log is opened once at
        // start: whatever is here was left by an earlier run that stopped
        // mid-download or mid-snapshot (a snapshot file can be large).
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp_dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            log::info!(
                "removed {removed} files an earlier run left in {}",
                tmp_dir.display()
            );
        }
        Ok(ObjectLog {
            store,
            leader_id: leader_id.to_string(),
            tmp_dir,
        })
    }

    /// Encodes consecutive records as one chunk and creates it; an existing
    /// chunk with the very same bytes counts as written.
    /// A superseded chunk at the key is removed first (see [`claims`]).
    pub async fn write_chunk(&self, records: &[Record]) -> Result<(), LogError> {
        let Some(chunk) = self.encode_chunk(records)? else {
            return Ok(());
        };
        match self.put_claimed(records, &chunk, None).await? {
            claims::Claim::Ours => Ok(()),
            claims::Claim::Theirs => Err(ObjError::Conflict(chunk.key).into()),
        }
    }

    /// Encodes consecutive records as one chunk (None for no records). The
    /// header carries the time of encoding, so a retry must reuse these
    /// bytes to be recognised as the same chunk.
    pub fn encode_chunk(&self, records: &[Record]) -> Result<Option<EncodedChunk>, LogError> {
        let Some(last) = records.last() else {
            return Ok(None);
        };
        let key = keys::chunk_key(last.revision);
        let bytes = datafile::encode(
            Kind::Chunk,
            datafile::chunk_compression(records),
            &self.leader_id,
            records,
        )
        .map_err(|error| LogError::Corrupt {
            key: key.clone(),
            error,
        })?;
        Ok(Some(EncodedChunk {
            key,
            bytes: Bytes::from(bytes),
            last_revision: last.revision,
            records: records.len() as i64,
        }))
    }

    /// Creates an encoded chunk; the very same bytes already there count as
    /// written.
    pub async fn put_chunk(&self, chunk: &EncodedChunk) -> Result<(), LogError> {
        put_if_absent_idempotent(&*self.store, &chunk.key, chunk.bytes.clone()).await?;
        // Let the provider make room off the write path (the fs provider
        // creates partition directories) for the chunks expected over the
        // next few revisions, guessing they hold as many records as this
        // one. Guessing wider would create directories no chunk uses.
        let step = chunk.records.max(1);
        self.store.prepare(
            (1..=(PREPARE_AHEAD / step).max(1))
                .map(|j| keys::chunk_key(chunk.last_revision + j * step))
                .collect(),
        );
        Ok(())
    }

    /// Chunks whose last revision is above `after`, ascending: (revision, key).
    pub async fn chunks_after(&self, after: i64) -> Result<Vec<(i64, String)>, LogError> {
        let mut chunks: Vec<(i64, String)> = self
            .store
            .list(keys::CHUNKS)
            .await?
            .into_iter()
            .filter_map(|l| keys::revision_of(&l.key).map(|r| (r, l.key)))
            .filter(|(r, _)| *r > after)
            .collect();
        chunks.sort();
        Ok(chunks)
    }

    /// The newest snapshot: (revision, key).
    pub async fn latest_snapshot(&self) -> Result<Option<(i64, String)>, LogError> {
        Ok(self
            .store
            .list(keys::SNAPSHOTS)
            .await?
            .into_iter()
            .filter_map(|l| keys::revision_of(&l.key).map(|r| (r, l.key)))
            .max())
    }

    /// The highest revision the bucket holds: its newest snapshot or
    /// chunk, 0 for an empty bucket.
    pub async fn durable_revision(&self) -> Result<i64, LogError> {
        let snapshot = self.latest_snapshot().await?.map_or(0, |s| s.0);
        let chunk = self.chunks_after(snapshot).await?.last().map_or(0, |c| c.0);
        Ok(snapshot.max(chunk))
    }

    /// Downloads and fully validates one chunk.
    pub async fn read_chunk(&self, key: &str) -> Result<Vec<Record>, LogError> {
        read_chunk(&*self.store, key).await
    }

    /// A fresh temporary file path under the data dir.
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.tmp_dir.join(format!(
            "{prefix}_{}_{}.netsy",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

/// Records for tests: revision r holds key `k{r}` with the writer's name
/// as its value.
#[cfg(test)]
pub mod testing {
    use bytes::Bytes;

    use crate::store::Record;

    pub fn record(revision: i64, leader: &str) -> Record {
        Record {
            revision,
            key: Bytes::copy_from_slice(format!("k{revision}").as_bytes()),
            value: Some(Bytes::copy_from_slice(leader.as_bytes())),
            create_revision: revision,
            ..Record::internal(leader)
        }
    }

    pub fn records(range: std::ops::RangeInclusive<i64>, leader: &str) -> Vec<Record> {
        range.map(|r| record(r, leader)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_an_earlier_run_left_in_tmp_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::objstore::memory::MemoryStore::new());
        let first = ObjectLog::new(store.clone(), "n", dir.path()).unwrap();
        let leftover = first.temp_path("snapshot");
        std::fs::write(&leftover, b"half a download").unwrap();
        drop(first);
        let second = ObjectLog::new(store, "n", dir.path()).unwrap();
        assert!(!leftover.exists());
        assert!(second.tmp_dir.is_dir());
    }

    /// A retry after a reply was lost sends the very same bytes, which the
    /// bucket then already holds: written, not a conflict.
    #[tokio::test]
    async fn a_chunk_put_again_with_the_same_bytes_counts_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(crate::objstore::memory::MemoryStore::new());
        let log = ObjectLog::new(store.clone(), "n", dir.path()).unwrap();
        let records = vec![Record::internal("n")];
        let chunk = log.encode_chunk(&records).unwrap().unwrap();
        log.put_chunk(&chunk).await.unwrap();
        log.put_chunk(&chunk).await.unwrap();
        assert_eq!(store.get(&chunk.key).await.unwrap().data, chunk.bytes);
        assert!(log.encode_chunk(&[]).unwrap().is_none());
    }
}
