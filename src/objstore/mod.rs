//! Object storage: the `ObjectStore` trait every provider implements, with
//! conditional writes (create-only, If-Match), plus a key-prefix wrapper, a
//! retry wrapper for transient failures, and derived operations. Providers:
//! `s3` (rust-s3), `fs` (a directory; the embedded default) and `memory`
//! (unit tests).

pub mod behaviour;
pub mod fs;
pub mod memory;
pub mod s3;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::cluster::{Provider, StorageConfig};
use crate::http::metrics::{labels, Metrics};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an object operation failed. Every variant names the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjError {
    NotFound(String),
    /// A create-only or If-Match condition did not hold.
    PreconditionFailed(String),
    /// A create-only write found the object holding different contents.
    Conflict(String),
    /// Worth retrying: timeouts, connection errors, 5xx, throttling.
    Transient {
        key: String,
        message: String,
    },
    /// Retrying will not help: access denied, missing bucket, bad request.
    Fatal {
        key: String,
        message: String,
    },
}

impl ObjError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjError::Transient { .. })
    }

    pub fn key(&self) -> &str {
        match self {
            ObjError::NotFound(k) | ObjError::PreconditionFailed(k) | ObjError::Conflict(k) => k,
            ObjError::Transient { key, .. } | ObjError::Fatal { key, .. } => key,
        }
    }
}

impl std::fmt::Display for ObjError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjError::NotFound(k) => write!(f, "object {k}: object not found"),
            ObjError::PreconditionFailed(k) => write!(f, "object {k}: precondition failed"),
            ObjError::Conflict(k) => {
                write!(f, "object {k}: already exists with different contents")
            }
            ObjError::Transient { key, message } => write!(f, "object {key}: {message}"),
            ObjError::Fatal { key, message } => write!(f, "object {key}: {message}"),
        }
    }
}

impl std::error::Error for ObjError {}

/// An object's content and its entity tag (quotes stripped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub data: Bytes,
    pub etag: String,
}

/// One listing entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// The condition of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    None,
    /// Only if no object exists (S3 `If-None-Match: *`).
    IfAbsent,
    /// Only if the current object's ETag matches (S3 `If-Match`).
    IfMatch(String),
}

pub trait ObjectStore: Send + Sync {
    /// Reads a whole object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>>;

    /// Writes a whole object under a condition; returns the new ETag.
    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>>;

    /// Deletes an object; deleting a missing object is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>>;

    /// Deletes many objects; returns the keys that could not be deleted.
    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        Box::pin(async move {
            let mut failed = Vec::new();
            for k in keys {
                if self.delete(k).await.is_err() {
                    failed.push(k.clone());
                }
            }
            Ok(failed)
        })
    }

    /// Keys starting with `prefix`, in ascending order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>>;

    /// Most keys one batch delete takes; 0 when the backend has no batch
    /// delete (chunk cleanup then lists instead of guessing keys).
    fn bulk_delete_limit(&self) -> usize {
        0
    }

    /// Streams an object into a local file (large snapshots).
    fn get_to_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<u64, ObjError>> {
        Box::pin(async move {
            let obj = self.get(key).await?;
            tokio::fs::write(path, &obj.data)
                .await
                .map_err(|e| ObjError::Fatal {
                    key: key.to_string(),
                    message: format!("writing {}: {e}", path.display()),
                })?;
            Ok(obj.data.len() as u64)
        })
    }

    /// Uploads a local file unconditionally (snapshots).
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            let data = tokio::fs::read(path).await.map_err(|e| ObjError::Fatal {
                key: key.to_string(),
                message: format!("reading {}: {e}", path.display()),
            })?;
            self.put(key, Bytes::from(data), Condition::None).await
        })
    }

    /// A hint that these keys will be written soon. A provider may make
    /// room for them ahead of time (the fs provider creates their
    /// directories, which otherwise costs a write's latency); it returns at
    /// once and errors are ignored.
    fn prepare(&self, _keys: Vec<String>) {}

    /// Where the objects live, for logs ("s3://bucket", "fs:/path").
    fn describe(&self) -> String;
}

/// Creates only if absent; when the object already exists with the very
/// same bytes (our own earlier attempt whose answer was lost) that counts as
/// success, anything else is an error naming the key.
pub async fn put_if_absent_idempotent(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<(), ObjError> {
    match store.put(key, data.clone(), Condition::IfAbsent).await {
        Ok(_) => Ok(()),
        Err(ObjError::PreconditionFailed(_)) => {
            let existing = store.get(key).await?;
            if existing.data == data {
                Ok(())
            } else {
                Err(ObjError::Conflict(key.to_string()))
            }
        }
        Err(e) => Err(e),
    }
}

/// Scopes every key under `prefix/` (the `storage.key_prefix` setting).
pub struct Prefixed {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Prefixed {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> Prefixed {
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Prefixed { inner, prefix }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, e: ObjError) -> ObjError {
        let s = |k: String| {
            k.strip_prefix(&self.prefix)
                .map(str::to_string)
                .unwrap_or(k)
        };
        match e {
            ObjError::NotFound(k) => ObjError::NotFound(s(k)),
            ObjError::PreconditionFailed(k) => ObjError::PreconditionFailed(s(k)),
            ObjError::Conflict(k) => ObjError::Conflict(s(k)),
            ObjError::Transient { key, message } => ObjError::Transient {
                key: s(key),
                message,
            },
            ObjError::Fatal { key, message } => ObjError::Fatal {
                key: s(key),
                message,
            },
        }
    }
}

impl ObjectStore for Prefixed {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        Box::pin(async move {
            self.inner
                .get(&self.full(key))
                .await
                .map_err(|e| self.strip(e))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            self.inner
                .put(&self.full(key), data, condition)
                .await
                .map_err(|e| self.strip(e))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        Box::pin(async move {
            self.inner
                .delete(&self.full(key))
                .await
                .map_err(|e| self.strip(e))
        })
    }

    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        Box::pin(async move {
            let full: Vec<String> = keys.iter().map(|k| self.full(k)).collect();
            let failed = self
                .inner
                .delete_batch(&full)
                .await
                .map_err(|e| self.strip(e))?;
            Ok(failed
                .into_iter()
                .map(|k| {
                    k.strip_prefix(&self.prefix)
                        .map(str::to_string)
                        .unwrap_or(k)
                })
                .collect())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        Box::pin(async move {
            let listed = self
                .inner
                .list(&self.full(prefix))
                .await
                .map_err(|e| self.strip(e))?;
            Ok(listed
                .into_iter()
                .filter_map(|l| {
                    l.key.strip_prefix(&self.prefix).map(|k| Listed {
                        key: k.to_string(),
                        size: l.size,
                    })
                })
                .collect())
        })
    }

    fn bulk_delete_limit(&self) -> usize {
        self.inner.bulk_delete_limit()
    }

    fn get_to_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<u64, ObjError>> {
        Box::pin(async move {
            self.inner
                .get_to_file(&self.full(key), path)
                .await
                .map_err(|e| self.strip(e))
        })
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            self.inner
                .put_file(&self.full(key), path)
                .await
                .map_err(|e| self.strip(e))
        })
    }

    fn prepare(&self, keys: Vec<String>) {
        self.inner
            .prepare(keys.iter().map(|k| self.full(k)).collect())
    }

    fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.inner.describe(),
            self.prefix.trim_end_matches('/')
        )
    }
}

/// Retries transient failures with exponential backoff. Precondition
/// failures and fatal errors are returned at once: a conditional write that
/// lost is never retried blindly.
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
    attempts: u32,
    first_backoff: Duration,
    /// Where retries are counted, if anywhere.
    metrics: Option<Arc<Metrics>>,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>, attempts: u32, first_backoff: Duration) -> Retrying {
        Retrying {
            inner,
            attempts: attempts.max(1),
            first_backoff,
            metrics: None,
        }
    }

    /// Counts each retry in `netsy_retries_total{operation="object_storage"}`.
    pub fn counted(self, metrics: Arc<Metrics>) -> Retrying {
        Retrying {
            metrics: Some(metrics),
            ..self
        }
    }

    async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, ObjError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ObjError>>,
    {
        let mut backoff = self.first_backoff;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    log::warn!("object storage: {e}; retrying in {backoff:?}");
                    if let Some(m) = &self.metrics {
                        m.count_retry("object_storage");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

impl ObjectStore for Retrying {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        Box::pin(self.run(move || self.inner.get(key)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(self.run(move || self.inner.put(key, data.clone(), condition.clone())))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        Box::pin(self.run(move || self.inner.delete(key)))
    }

    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        Box::pin(self.run(move || self.inner.delete_batch(keys)))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        Box::pin(self.run(move || self.inner.list(prefix)))
    }

    fn bulk_delete_limit(&self) -> usize {
        self.inner.bulk_delete_limit()
    }

    fn get_to_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<u64, ObjError>> {
        Box::pin(self.run(move || self.inner.get_to_file(key, path)))
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(self.run(move || self.inner.put_file(key, path)))
    }

    fn prepare(&self, keys: Vec<String>) {
        self.inner.prepare(keys)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Records every attempt in the object-storage metrics (counts, durations,
/// sizes by kind of object).
pub struct Measured {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
}

/// The kind label of a key: chunk, snapshot, or metadata (coordination files).
fn kind_of(key: &str) -> &'static str {
    if key.contains("chunks/") {
        "chunk"
    } else if key.contains("snapshots/") || key.ends_with(".netsy") {
        "snapshot"
    } else {
        "metadata"
    }
}

impl Measured {
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: Arc<Metrics>) -> Measured {
        Measured { inner, metrics }
    }

    fn wrote<T>(&self, key: &str, size: u64, started: std::time::Instant, r: &Result<T, ObjError>) {
        let m = &self.metrics;
        let result = match r {
            Ok(_) => "success",
            Err(ObjError::PreconditionFailed(_)) | Err(ObjError::Conflict(_)) => {
                "precondition_failed"
            }
            Err(_) => "error",
        };
        let kind = kind_of(key);
        let (count, duration, bytes) = m.object_storage_write_handles.get((kind, result), || {
            let l = labels(&[("kind", kind), ("mode", "sync"), ("result", result)]);
            (
                m.object_storage_writes.get_or_create(&l).clone(),
                m.object_storage_write_duration.get_or_create(&l).clone(),
                m.object_storage_write_bytes
                    .get_or_create(&labels(&[("kind", kind), ("mode", "sync")]))
                    .clone(),
            )
        });
        count.inc();
        duration.observe(started.elapsed().as_secs_f64());
        if r.is_ok() {
            bytes.observe(size as f64);
        }
    }

    fn read<T>(&self, started: std::time::Instant, r: &Result<T, ObjError>) {
        let m = &self.metrics;
        let result = match r {
            Ok(_) => "success",
            Err(ObjError::NotFound(_)) => "not_found",
            Err(_) => "error",
        };
        let l = labels(&[("result", result)]);
        m.object_storage_reads.get_or_create(&l).inc();
        m.object_storage_read_duration
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
    }
}

impl ObjectStore for Measured {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        Box::pin(async move {
            let t = std::time::Instant::now();
            let r = self.inner.get(key).await;
            self.read(t, &r);
            r
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            let (t, size) = (std::time::Instant::now(), data.len() as u64);
            let r = self.inner.put(key, data, condition).await;
            self.wrote(key, size, t, &r);
            r
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        self.inner.delete(key)
    }

    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        self.inner.delete_batch(keys)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        self.inner.list(prefix)
    }

    fn bulk_delete_limit(&self) -> usize {
        self.inner.bulk_delete_limit()
    }

    fn get_to_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<u64, ObjError>> {
        Box::pin(async move {
            let t = std::time::Instant::now();
            let r = self.inner.get_to_file(key, path).await;
            self.read(t, &r);
            r
        })
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        Box::pin(async move {
            let t = std::time::Instant::now();
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let r = self.inner.put_file(key, path).await;
            self.wrote(key, size, t, &r);
            r
        })
    }

    fn prepare(&self, keys: Vec<String>) {
        self.inner.prepare(keys)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Builds the configured provider, wrapped with retries and the key prefix.
/// `env` gives the AWS_* variables (injectable for tests).
pub fn from_config(
    cfg: &StorageConfig,
    env: &dyn Fn(&str) -> Option<String>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn ObjectStore>, String> {
    let base: Arc<dyn ObjectStore> = match cfg.provider {
        Provider::Fs => Arc::new(
            fs::FsStore::open(Path::new(&cfg.path)).map_err(|e| format!("storage.path: {e}"))?,
        ),
        Provider::S3 => Arc::new(s3::S3Store::from_config(cfg, env)?),
    };
    let retrying: Arc<dyn ObjectStore> = Arc::new(
        Retrying::new(
            Arc::new(Measured::new(base, metrics.clone())),
            4,
            Duration::from_millis(100),
        )
        .counted(metrics.clone()),
    );
    Ok(if cfg.key_prefix.is_empty() {
        retrying
    } else {
        Arc::new(Prefixed::new(retrying, &cfg.key_prefix))
    })
}

thread_local! {
    static BLOCKING_IO_ALLOWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lets providers do their file I/O on this thread (a thread of its own
/// that may block, such as the commit thread) instead of handing it to
/// the runtime's blocking pool and back.
pub fn allow_blocking_io_on_this_thread() {
    BLOCKING_IO_ALLOWED.with(|a| a.set(true));
}

/// Allows blocking file I/O on this thread until dropped (a runtime
/// worker committing a write itself, which waits for that I/O anyway).
pub struct BlockingIoAllowed {
    before: bool,
}

impl BlockingIoAllowed {
    pub fn here() -> BlockingIoAllowed {
        BlockingIoAllowed {
            before: BLOCKING_IO_ALLOWED.with(|a| a.replace(true)),
        }
    }
}

impl Drop for BlockingIoAllowed {
    fn drop(&mut self) {
        BLOCKING_IO_ALLOWED.with(|a| a.set(self.before));
    }
}

fn blocking_io_allowed_here() -> bool {
    BLOCKING_IO_ALLOWED.with(|a| a.get())
}

/// CRC-64/XZ, slice-by-16: ETags and the fs provider's journal.
static CRC64: crc::Crc<u64, crc::Table<16>> = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);

/// ETag of content for providers that make their own: CRC-64/XZ and length.
pub fn content_etag(data: &[u8]) -> String {
    format!("{:016x}-{:x}", CRC64.checksum(data), data.len())
}

#[cfg(test)]
pub(crate) mod tests;
