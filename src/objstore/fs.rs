//! A directory as object storage: the embedded default. Keys are paths under
//! the root. Writes go to a temporary file that is fsynced and then moved
//! into place, so readers never see partial objects and a crash leaves the
//! old object or the new one. Create-only uses a hard link (fails if the
//! target exists, atomically, across processes); If-Match compares and
//! replaces under an exclusive lock file shared by every process.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{content_etag, BoxFut, Condition, Listed, ObjError, Object, ObjectStore};

const TMP_DIR: &str = ".netsy-tmp";
const LOCK_FILE: &str = ".netsy-lock";

pub struct FsStore {
    root: Arc<PathBuf>,
    /// Directories known to exist durably (created and their parent
    /// fsynced), so a write does not stat or create them again.
    known_dirs: Arc<Mutex<HashSet<PathBuf>>>,
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
            known_dirs: Arc::new(Mutex::new(HashSet::new())),
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
    f.sync_data().map_err(|e| fatal(key, "fsync", e))?;
    Ok(tmp)
}

/// Makes sure `dir` (under `root`) exists durably: every directory this
/// creates is made durable by an fsync of its parent.
fn ensure_dir(
    root: &Path,
    dir: &Path,
    known: &Mutex<HashSet<PathBuf>>,
    key: &str,
) -> Result<(), ObjError> {
    if known.lock().map(|k| k.contains(dir)).unwrap_or(false) {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while cur != root && !cur.is_dir() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fatal(key, "creating the directory", e)),
        }
        if let Some(parent) = d.parent() {
            fsync_dir(parent).map_err(|e| fatal(key, "fsync of the directory", e))?;
        }
    }
    if let Ok(mut k) = known.lock() {
        k.insert(dir.to_path_buf());
    }
    Ok(())
}

/// Moves `tmp` to `path` only if `path` does not exist (atomic
/// create-only). Ok(false) when it exists.
fn create_only(tmp: &Path, path: &Path) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let from = std::ffi::CString::new(tmp.as_os_str().as_bytes())?;
        let to = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: both are valid NUL-terminated paths for the call's duration.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EEXIST) => return Ok(false),
            // Filesystems without RENAME_NOREPLACE: fall back to link(2).
            Some(libc::EINVAL) | Some(libc::ENOSYS) => {}
            _ => return Err(err),
        }
    }
    let linked = fs::hard_link(tmp, path);
    let _ = fs::remove_file(tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
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

fn write(
    root: &Path,
    known: &Mutex<HashSet<PathBuf>>,
    key: &str,
    data: &[u8],
    condition: &Condition,
) -> Result<String, ObjError> {
    let path = path_of(root, key)?;
    let dir = path.parent().unwrap_or(root).to_path_buf();
    ensure_dir(root, &dir, known, key)?;
    let tmp = write_temp(root, key, data)?;
    let result = match condition {
        Condition::None => {
            fs::rename(&tmp, &path).map_err(|e| fatal(key, "renaming into place", e))
        }
        Condition::IfAbsent => match create_only(&tmp, &path) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ObjError::PreconditionFailed(key.to_string())),
            Err(e) => Err(fatal(key, "moving into place", e)),
        },
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
    if let Err(e) = &result {
        let _ = fs::remove_file(&tmp);
        // The directory was removed behind our back: forget it so the
        // next write creates it again.
        if matches!(e, ObjError::Fatal { .. }) {
            if let Ok(mut k) = known.lock() {
                k.remove(&dir);
            }
        }
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
        let (k, known) = (key.to_string(), self.known_dirs.clone());
        Box::pin(self.blocking(key, move |root| write(root, &known, &k, &data, &condition)))
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
        let (k, src, known) = (key.to_string(), path.to_path_buf(), self.known_dirs.clone());
        Box::pin(self.blocking(key, move |root| {
            let dest = path_of(root, &k)?;
            let dir = dest.parent().unwrap_or(root).to_path_buf();
            ensure_dir(root, &dir, &known, &k)?;
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

    fn prepare(&self, keys: Vec<String>) {
        let (root, known) = (self.root.clone(), self.known_dirs.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn_blocking(move || {
            for key in keys {
                if let Ok(path) = path_of(&root, &key) {
                    let dir = path.parent().unwrap_or(&root).to_path_buf();
                    let _ = ensure_dir(&root, &dir, &known, &key);
                }
            }
        });
    }

    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }
}
