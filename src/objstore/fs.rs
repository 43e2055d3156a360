//! A directory as object storage: the embedded default. Keys are paths under
//! the root. Writes go to a temporary file that is fsynced and then moved
//! into place, so readers never see partial objects and a crash leaves the
//! old object or the new one. Create-only uses a hard link (fails if the
//! target exists, atomically, across processes); If-Match compares and
//! replaces under an exclusive lock file shared by every process.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{content_etag, BoxFut, Condition, Listed, ObjError, Object, ObjectStore};

const TMP_DIR: &str = ".netsy-tmp";
const LOCK_FILE: &str = ".netsy-lock";

pub struct FsStore {
    root: Arc<PathBuf>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn fatal(key: &str, what: &str, e: std::io::Error) -> ObjError {
    ObjError::Fatal {
        key: key.to_string(),
        message: format!("{what}: {e}"),
    }
}

impl FsStore {
    /// Uses (and creates if needed) `root`.
    pub fn open(root: &Path) -> Result<FsStore, String> {
        fs::create_dir_all(root.join(TMP_DIR))
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        Ok(FsStore {
            root: Arc::new(root.to_path_buf()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The file of a key; refuses keys that would escape the root.
fn path_of(root: &Path, key: &str) -> Result<PathBuf, ObjError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.starts_with(".netsy-"));
    if bad {
        return Err(ObjError::Fatal {
            key: key.to_string(),
            message: "invalid object key".into(),
        });
    }
    Ok(root.join(key))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to a fresh temporary file, fsynced.
fn write_temp(root: &Path, key: &str, data: &[u8]) -> Result<PathBuf, ObjError> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = root
        .join(TMP_DIR)
        .join(format!("{}-{n}", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| fatal(key, "creating a temporary file", e))?;
    f.write_all(data).map_err(|e| fatal(key, "writing", e))?;
    f.sync_all().map_err(|e| fatal(key, "fsync", e))?;
    Ok(tmp)
}

fn read(root: &Path, key: &str) -> Result<Object, ObjError> {
    let path = path_of(root, key)?;
    match fs::read(&path) {
        Ok(data) => Ok(Object {
            etag: content_etag(&data),
            data: Bytes::from(data),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ObjError::NotFound(key.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(ObjError::NotFound(key.to_string()))
        }
        Err(e) => Err(fatal(key, "reading", e)),
    }
}

fn write(root: &Path, key: &str, data: &[u8], condition: &Condition) -> Result<String, ObjError> {
    let path = path_of(root, key)?;
    let dir = path.parent().unwrap_or(root).to_path_buf();
    fs::create_dir_all(&dir).map_err(|e| fatal(key, "creating the directory", e))?;
    let tmp = write_temp(root, key, data)?;
    let result = match condition {
        Condition::None => {
            fs::rename(&tmp, &path).map_err(|e| fatal(key, "renaming into place", e))
        }
        Condition::IfAbsent => {
            // link(2) fails with EEXIST if the key exists: atomic create-only.
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ObjError::PreconditionFailed(key.to_string()))
                }
                Err(e) => Err(fatal(key, "linking into place", e)),
            }
        }
        Condition::IfMatch(etag) => {
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(root.join(LOCK_FILE))
                .map_err(|e| fatal(key, "opening the lock file", e))?;
            lock.lock().map_err(|e| fatal(key, "locking", e))?;
            let outcome = match read(root, key) {
                Ok(current) if &current.etag == etag => {
                    fs::rename(&tmp, &path).map_err(|e| fatal(key, "renaming into place", e))
                }
                Ok(_) | Err(ObjError::NotFound(_)) => {
                    Err(ObjError::PreconditionFailed(key.to_string()))
                }
                Err(e) => Err(e),
            };
            let _ = lock.unlock();
            outcome
        }
    };
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(&dir).map_err(|e| fatal(key, "fsync of the directory", e))?;
    Ok(content_etag(data))
}

fn list(root: &Path, prefix: &str) -> Result<Vec<Listed>, ObjError> {
    // Walk only the directory the prefix points into.
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if start_rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(start_rel)
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory =>
            {
                continue
            }
            Err(e) => return Err(fatal(prefix, "listing", e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| fatal(prefix, "listing", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".netsy-") {
                continue;
            }
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| fatal(prefix, "listing", e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                let key = rel
                    .to_string_lossy()
                    .replace(std::path::MAIN_SEPARATOR, "/");
                if key.starts_with(prefix) {
                    out.push(Listed {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

impl FsStore {
    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&Path) -> Result<T, ObjError> + Send + 'static,
    ) -> Result<T, ObjError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| ObjError::Fatal {
                key: key.to_string(),
                message: format!("file task failed: {e}"),
            })?
    }
}

impl ObjectStore for FsStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        let k = key.to_string();
        Box::pin(self.blocking(key, move |root| read(root, &k)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        let k = key.to_string();
        Box::pin(self.blocking(key, move |root| write(root, &k, &data, &condition)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        let k = key.to_string();
        Box::pin(self.blocking(key, move |root| {
            let path = path_of(root, &k)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(fatal(&k, "deleting", e)),
            }
        }))
    }

    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        let keys = keys.to_vec();
        Box::pin(self.blocking("", move |root| {
            let mut failed = Vec::new();
            for k in keys {
                let gone = path_of(root, &k).map(|p| match fs::remove_file(p) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                });
                if gone != Ok(true) {
                    failed.push(k);
                }
            }
            Ok(failed)
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        let p = prefix.to_string();
        Box::pin(self.blocking(prefix, move |root| list(root, &p)))
    }

    fn bulk_delete_limit(&self) -> usize {
        1000
    }

    fn get_to_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<u64, ObjError>> {
        let (k, dest) = (key.to_string(), path.to_path_buf());
        Box::pin(self.blocking(key, move |root| {
            let src = path_of(root, &k)?;
            match fs::copy(&src, &dest) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ObjError::NotFound(k)),
                Err(e) => Err(fatal(&k, "copying", e)),
            }
        }))
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        let (k, src) = (key.to_string(), path.to_path_buf());
        Box::pin(self.blocking(key, move |root| {
            let dest = path_of(root, &k)?;
            let dir = dest.parent().unwrap_or(root).to_path_buf();
            fs::create_dir_all(&dir).map_err(|e| fatal(&k, "creating the directory", e))?;
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = root
                .join(TMP_DIR)
                .join(format!("{}-{n}", std::process::id()));
            fs::copy(&src, &tmp).map_err(|e| fatal(&k, "copying", e))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| fatal(&k, "fsync", e))?;
            fs::rename(&tmp, &dest).map_err(|e| fatal(&k, "renaming into place", e))?;
            fsync_dir(&dir).map_err(|e| fatal(&k, "fsync of the directory", e))?;
            Ok(String::new())
        }))
    }

    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }
}
