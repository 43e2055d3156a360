//! A directory as object storage: the embedded default. Keys are paths under
//! the root. Writes go to a temporary file that is fsynced and then moved
//! into place, so readers never see partial objects and a crash leaves the
//! old object or the new one. Create-only uses a no-replace rename (fails
//! if the target exists, atomically, across processes); If-Match compares
//! and replaces under an exclusive lock file shared by every process.

mod spares;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use spares::Spares;

use super::{content_etag, BoxFut, Condition, Listed, ObjError, Object, ObjectStore};

const TMP_DIR: &str = ".netsy-tmp";
const LOCK_FILE: &str = ".netsy-lock";

pub struct FsStore {
    dir: Arc<Dir>,
}

/// What every file operation of one store shares.
struct Dir {
    root: PathBuf,
    /// Directories known to exist durably (created and their parent
    /// fsynced), so a write does not stat or create them again.
    known_dirs: Mutex<HashSet<PathBuf>>,
    spares: Spares,
}

/// Spare files kept ready so a write need not allocate one.
const SPARES_READY: usize = 8;

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
        let spares = Spares::new(&root.join(TMP_DIR));
        spares.remove_stale();
        Ok(FsStore {
            dir: Arc::new(Dir {
                root: root.to_path_buf(),
                known_dirs: Mutex::new(HashSet::new()),
                spares,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.dir.root
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

impl Dir {
    fn tmp_name(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(TMP_DIR)
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Writes `data` to a temporary file (a spare when there is one),
    /// fsynced.
    fn write_temp(&self, key: &str, data: &[u8]) -> Result<PathBuf, ObjError> {
        let (tmp, mut f) = match self.spares.take() {
            Some(spare) => spare,
            None => {
                let tmp = self.tmp_name();
                let f =
                    File::create(&tmp).map_err(|e| fatal(key, "creating a temporary file", e))?;
                (tmp, f)
            }
        };
        let written = f.write_all(data).and_then(|()| f.sync_data());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(fatal(key, "writing a temporary file", e));
        }
        Ok(tmp)
    }

    /// Makes sure `dir` exists durably: every directory this creates is
    /// made durable by an fsync of its parent.
    fn ensure_dir(&self, dir: &Path, key: &str) -> Result<(), ObjError> {
        if self.known_dirs.lock().is_ok_and(|k| k.contains(dir)) {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = dir;
        while cur != self.root && !cur.is_dir() {
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
        if let Ok(mut k) = self.known_dirs.lock() {
            k.insert(dir.to_path_buf());
        }
        Ok(())
    }

    /// The directory of a key's file, created if needed.
    fn dir_for(&self, key: &str) -> Result<(PathBuf, PathBuf), ObjError> {
        let path = path_of(&self.root, key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir, key)?;
        Ok((path, dir))
    }

    fn write(&self, key: &str, data: &[u8], condition: &Condition) -> Result<String, ObjError> {
        let (path, dir) = self.dir_for(key)?;
        let tmp = self.write_temp(key, data)?;
        let result = match condition {
            Condition::None => {
                fs::rename(&tmp, &path).map_err(|e| fatal(key, "renaming into place", e))
            }
            Condition::IfAbsent => match create_only(&tmp, &path) {
                Ok(true) => Ok(()),
                Ok(false) => Err(ObjError::PreconditionFailed(key.to_string())),
                Err(e) => Err(fatal(key, "moving into place", e)),
            },
            Condition::IfMatch(etag) => self.replace_if_match(key, &tmp, &path, etag),
        };
        if let Err(e) = &result {
            let _ = fs::remove_file(&tmp);
            // The directory was removed behind our back: forget it so the
            // next write creates it again.
            if matches!(e, ObjError::Fatal { .. }) {
                if let Ok(mut k) = self.known_dirs.lock() {
                    k.remove(&dir);
                }
            }
        }
        result?;
        fsync_dir(&dir).map_err(|e| fatal(key, "fsync of the directory", e))?;
        Ok(content_etag(data))
    }

    /// Compare-and-swap under the lock file every process shares.
    fn replace_if_match(
        &self,
        key: &str,
        tmp: &Path,
        path: &Path,
        etag: &str,
    ) -> Result<(), ObjError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(LOCK_FILE))
            .map_err(|e| fatal(key, "opening the lock file", e))?;
        lock.lock().map_err(|e| fatal(key, "locking", e))?;
        let outcome = match read(&self.root, key) {
            Ok(current) if current.etag == etag => {
                fs::rename(tmp, path).map_err(|e| fatal(key, "renaming into place", e))
            }
            Ok(_) | Err(ObjError::NotFound(_)) => {
                Err(ObjError::PreconditionFailed(key.to_string()))
            }
            Err(e) => Err(e),
        };
        let _ = lock.unlock();
        outcome
    }

    /// Removes a key's file (its inode is kept as a spare when possible).
    fn delete(&self, key: &str) -> Result<(), ObjError> {
        let path = path_of(&self.root, key)?;
        self.spares
            .recycle(&path)
            .map_err(|e| fatal(key, "deleting", e))
    }

    fn put_file(&self, key: &str, src: &Path) -> Result<String, ObjError> {
        let (dest, dir) = self.dir_for(key)?;
        let tmp = self.tmp_name();
        let copied = fs::copy(src, &tmp)
            .map_err(|e| fatal(key, "copying", e))
            .and_then(|_| {
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| fatal(key, "fsync", e))
            })
            .and_then(|()| {
                fs::rename(&tmp, &dest).map_err(|e| fatal(key, "renaming into place", e))
            });
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        copied?;
        fsync_dir(&dir).map_err(|e| fatal(key, "fsync of the directory", e))?;
        Ok(String::new())
    }
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
        f: impl FnOnce(&Dir) -> Result<T, ObjError> + Send + 'static,
    ) -> Result<T, ObjError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir))
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
        Box::pin(self.blocking(key, move |d| read(&d.root, &k)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        let k = key.to_string();
        Box::pin(self.blocking(key, move |d| d.write(&k, &data, &condition)))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        let k = key.to_string();
        Box::pin(self.blocking(key, move |d| d.delete(&k)))
    }

    fn delete_batch<'a>(&'a self, keys: &'a [String]) -> BoxFut<'a, Result<Vec<String>, ObjError>> {
        let keys = keys.to_vec();
        Box::pin(self.blocking("", move |d| {
            Ok(keys.into_iter().filter(|k| d.delete(k).is_err()).collect())
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        let p = prefix.to_string();
        Box::pin(self.blocking(prefix, move |d| list(&d.root, &p)))
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
        Box::pin(self.blocking(key, move |d| {
            let src = path_of(&d.root, &k)?;
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
        Box::pin(self.blocking(key, move |d| d.put_file(&k, &src)))
    }

    /// Creates the keys' directories and tops up the spare files, in the
    /// background.
    fn prepare(&self, keys: Vec<String>) {
        let dir = self.dir.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn_blocking(move || {
            for key in keys {
                let _ = dir.dir_for(&key);
            }
            dir.spares.fill(SPARES_READY);
        });
    }

    fn describe(&self) -> String {
        format!("fs:{}", self.dir.root.display())
    }
}
