//! A directory as object storage: the embedded default. Keys are paths under
//! the root. Writes go to a temporary file that is moved into place, so
//! readers never see partial objects. A small object is made durable by one
//! flushed append to the journal, every writing process's shared log, before
//! it is moved into place; conditions are checked under the journal's lock,
//! so create-only and If-Match hold across processes. Opening the store
//! repairs, from the journal, files a machine crash lost.

mod alone;
mod journal;
mod spares;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;

use journal::{Journal, Record, INLINE_LIMIT};
use spares::Spares;

use super::{content_etag, BoxFut, Condition, Listed, ObjError, Object, ObjectStore};

const TMP_DIR: &str = ".netsy-tmp";

pub struct FsStore {
    dir: Arc<Dir>,
    /// The thread that prepares keys' directories and tops up the spares.
    preparer: Mutex<Preparer>,
    /// How often the preparing thread was handed work.
    preparer_wakes: AtomicU64,
}

enum Preparer {
    NotStarted,
    Running(mpsc::Sender<Vec<String>>),
    /// It could not be started: writes make what they need themselves.
    Unavailable,
}

/// What every file operation of one store shares.
struct Dir {
    root: PathBuf,
    /// Directories known to exist, so a write does not stat or create them
    /// again. (Their durability is the journal's: a repair creates them.)
    known_dirs: Mutex<HashSet<PathBuf>>,
    spares: Spares,
    journal: Journal,
}

/// Spare files kept ready so a write need not allocate one: the preparing
/// thread tops them up to SPARES_READY once fewer than SPARES_LOW are left
/// (woken every few writes, not every one).
pub(crate) const SPARES_READY: usize = 16;
const SPARES_LOW: usize = 8;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file name no other file made by this or another process has:
/// `{pid}-{n}`.
fn unique_name() -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

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
        let journal = Journal::open(root)
            .map_err(|e| format!("cannot open the journal in {}: {e}", root.display()))?;
        let dir = Dir {
            root: root.to_path_buf(),
            known_dirs: Mutex::new(HashSet::new()),
            spares,
            journal,
        };
        dir.repair()
            .map_err(|e| format!("cannot repair {} from its journal: {e}", root.display()))?;
        Ok(FsStore {
            dir: Arc::new(dir),
            preparer: Mutex::new(Preparer::NotStarted),
            preparer_wakes: AtomicU64::new(0),
        })
    }

    /// Hands `keys` to the preparing thread, started by the first call. It
    /// works at idle priority: what it has not done in time a write does
    /// itself, and it must not delay a reply on the same core. It ends with
    /// the store. A thread that cannot start is reported once.
    fn send_to_preparer(&self, keys: Vec<String>) {
        let Ok(mut slot) = self.preparer.lock() else {
            return;
        };
        if let Preparer::NotStarted = *slot {
            *slot = match self.start_preparer() {
                Ok(tx) => Preparer::Running(tx),
                Err(e) => {
                    log::warn!("cannot start the fs provider's preparing thread: {e}");
                    Preparer::Unavailable
                }
            };
        }
        if let Preparer::Running(tx) = &*slot {
            self.preparer_wakes.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(keys);
        }
    }

    fn start_preparer(&self) -> std::io::Result<mpsc::Sender<Vec<String>>> {
        let (tx, rx) = mpsc::channel::<Vec<String>>();
        let dir = self.dir.clone();
        crate::background::spawn(
            "netsy-fs-prepare",
            crate::background::NICE_IDLE,
            move || {
                while let Ok(mut keys) = rx.recv() {
                    // Requests that queued meanwhile are served together.
                    while let Ok(more) = rx.try_recv() {
                        keys.extend(more);
                    }
                    for key in keys {
                        let _ = dir.dir_for(&key);
                    }
                    dir.spares.fill(SPARES_READY);
                }
            },
        )?;
        Ok(tx)
    }

    #[cfg(test)]
    pub(crate) fn preparer_wakes(&self) -> u64 {
        self.preparer_wakes.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn spares_available(&self) -> usize {
        self.dir.spares.available()
    }

    pub fn root(&self) -> &Path {
        &self.dir.root
    }
}

/// Whether `condition` holds for `key` (whose file is `path`); checked
/// under the journal's lock.
fn check(root: &Path, key: &str, path: &Path, condition: &Condition) -> Result<(), ObjError> {
    let refused = || Err(ObjError::PreconditionFailed(key.to_string()));
    match condition {
        Condition::None => Ok(()),
        Condition::IfAbsent if fs::symlink_metadata(path).is_ok() => refused(),
        Condition::IfAbsent => Ok(()),
        Condition::IfMatch(etag) => match read(root, key) {
            Ok(current) if current.etag == *etag => Ok(()),
            Ok(_) | Err(ObjError::NotFound(_)) => refused(),
            Err(e) => Err(e),
        },
    }
}

/// A small object's write between [`Dir::stage`] and [`Staged::finish`]:
/// the journal stays locked, so no other writer sees or takes the key.
struct Staged<'d> {
    dir: &'d Dir,
    held: journal::Held<'d>,
    key: String,
    /// Written after the record, while the device writes it.
    tmp: Option<PathBuf>,
    path: PathBuf,
    /// In place: nothing to take back when dropped.
    placed: bool,
}

impl Staged<'_> {
    /// Flushes the journal record, then moves the file into place.
    fn finish(mut self) -> Result<(), ObjError> {
        let key = &self.key;
        self.held.flush().map_err(|e| Dir::journal_error(key, e))?;
        let renamed = match &self.tmp {
            Some(tmp) => fs::rename(tmp, &self.path),
            None => Err(ErrorKind::NotFound.into()),
        };
        if let Err(e) = renamed {
            let e = fatal(key, "renaming into place", e);
            if let Some(parent) = self.path.parent() {
                self.dir.forget_dir_after(&e, parent);
            }
            return Err(e);
        }
        self.placed = true;
        Ok(())
    }
}

impl Drop for Staged<'_> {
    /// Not finished (its future was cancelled, or it failed): the write did
    /// not happen. The temporary file goes, and a flushed record taking the
    /// object back follows its own, so a repair does not bring it back.
    /// Where no such record can be written, a checkpoint flushes every file
    /// as it is and empties the journal, the abandoned record with it.
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
        let appended = match taken_back(&self.key, &self.path) {
            Some(back) => self.held.append(&back, true).is_ok(),
            None => false,
        };
        if !appended {
            let _ = self.held.checkpoint();
        }
    }
}

/// The record that undoes a write of `key` that did not happen: the key
/// goes back to what its file (at `path`, untouched by that write) holds.
/// A key overwritten (If-Match: the election lock, discovery) keeps its
/// object after a repair, instead of losing it to a removal record. None
/// when the file is not one this store wrote, or cannot be read.
fn taken_back(key: &str, path: &Path) -> Option<Record<'static>> {
    use std::io::Read;
    let key = key.to_string();
    let meta = match fs::symlink_metadata(path) {
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Some(Record::Delete { key })
        }
        Err(_) => return None,
        Ok(meta) => meta,
    };
    if !meta.is_file() {
        return None;
    }
    // A large object was flushed in its own file.
    if meta.len() > INLINE_LIMIT as u64 {
        return Some(Record::Durable { key });
    }
    // A small one may be durable only through its record, which is now
    // behind the abandoned one: its contents again.
    let mut data = Vec::new();
    File::open(path)
        .and_then(|f| f.take(INLINE_LIMIT as u64 + 1).read_to_end(&mut data))
        .ok()?;
    if data.len() > INLINE_LIMIT {
        return None;
    }
    Some(Record::Put {
        key,
        data: Cow::Owned(data),
    })
}

/// Creates `dir` and whatever of its parents is missing. What is already
/// there counts as a directory without being looked at (unlike
/// `create_dir_all`): on Linux a directory whose times were asked for gets
/// a fine-grained time when a file is next moved into it, and that moves
/// every file's next time on, the journal's too, whose flush must then
/// write its inode as well. Something else there fails the write that
/// follows.
fn make_dir(dir: &Path) -> std::io::Result<()> {
    let create = || match fs::create_dir(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        made => made,
    };
    match create() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                make_dir(parent)?;
            }
            create()
        }
        made => made,
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

impl Dir {
    fn tmp_name(&self) -> PathBuf {
        self.root.join(TMP_DIR).join(unique_name())
    }

    /// Writes `data` to a temporary file (a spare when there is one),
    /// flushed only with `flush`.
    fn write_temp(&self, key: &str, data: &[u8], flush: bool) -> Result<PathBuf, ObjError> {
        let (tmp, mut f) = match self.spares.take() {
            Some(spare) => spare,
            None => {
                let tmp = self.tmp_name();
                let f =
                    File::create(&tmp).map_err(|e| fatal(key, "creating a temporary file", e))?;
                (tmp, f)
            }
        };
        let written = f
            .write_all(data)
            .and_then(|()| if flush { f.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(fatal(key, "writing a temporary file", e));
        }
        Ok(tmp)
    }

    /// Makes sure `dir` exists. Not flushed: a journaled object's repair
    /// creates its directories again, and a large object flushes its own.
    fn ensure_dir(&self, dir: &Path, key: &str) -> Result<(), ObjError> {
        if self.known_dirs.lock().is_ok_and(|k| k.contains(dir)) {
            return Ok(());
        }
        make_dir(dir).map_err(|e| fatal(key, "creating the directory", e))?;
        if let Ok(mut k) = self.known_dirs.lock() {
            k.insert(dir.to_path_buf());
        }
        Ok(())
    }

    /// Whether the directory of a key's file is known to exist.
    fn knows_dir_for(&self, key: &str) -> bool {
        let Ok(path) = path_of(&self.root, key) else {
            return true;
        };
        let dir = path.parent().unwrap_or(&self.root);
        self.known_dirs.lock().is_ok_and(|k| k.contains(dir))
    }

    /// The directory of a key's file, created if needed.
    fn dir_for(&self, key: &str) -> Result<(PathBuf, PathBuf), ObjError> {
        let path = path_of(&self.root, key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir, key)?;
        Ok((path, dir))
    }

    fn journal_error(key: &str, e: std::io::Error) -> ObjError {
        fatal(key, "writing the journal", e)
    }

    /// Writes an object on this thread: a small one in two halves
    /// back to back, a large one flushed in its own file.
    fn write(&self, key: &str, data: &[u8], condition: &Condition) -> Result<String, ObjError> {
        if data.len() > INLINE_LIMIT {
            return self.write_flushed(key, data, condition);
        }
        let held = self
            .journal
            .lock()
            .map_err(|e| Self::journal_error(key, e))?;
        self.stage(held, key, data, condition)?.finish()?;
        Ok(content_etag(data))
    }

    /// A large object: flushed in its own file, then moved into place.
    fn write_flushed(
        &self,
        key: &str,
        data: &[u8],
        condition: &Condition,
    ) -> Result<String, ObjError> {
        let (path, dir) = self.dir_for(key)?;
        let tmp = self.write_temp(key, data, true)?;
        let result = self.place_flushed(key, &tmp, &path, condition);
        if let Err(e) = &result {
            let _ = fs::remove_file(&tmp);
            self.forget_dir_after(e, &dir);
        }
        result?;
        Ok(content_etag(data))
    }

    /// The first half of a small object's write, under the journal's lock
    /// (`held`): the condition checked, its journal record appended and the
    /// record's disk write started, then its temporary file written while
    /// the device writes. [`Staged::finish`] flushes the record and moves
    /// the file into place; the caller may do other work in between (the
    /// commit thread appends to SQLite).
    fn stage<'d>(
        &'d self,
        mut held: journal::Held<'d>,
        key: &str,
        data: &[u8],
        condition: &Condition,
    ) -> Result<Staged<'d>, ObjError> {
        let (path, dir) = self.dir_for(key)?;
        let record = Record::Put {
            key: key.to_string(),
            data: Cow::Borrowed(data),
        };
        let appended = check(&self.root, key, &path, condition).and_then(|()| {
            held.append_started(&record)
                .map_err(|e| Self::journal_error(key, e))
        });
        if let Err(e) = appended {
            self.forget_dir_after(&e, &dir);
            return Err(e);
        }
        let mut staged = Staged {
            dir: self,
            held,
            key: key.to_string(),
            tmp: None,
            path,
            placed: false,
        };
        // On failure the staged write drops, and its record is taken back.
        staged.tmp = Some(self.write_temp(key, data, false)?);
        Ok(staged)
    }

    /// A directory removed behind our back is forgotten, so the next write
    /// creates it again.
    fn forget_dir_after(&self, e: &ObjError, dir: &Path) {
        if matches!(e, ObjError::Fatal { .. }) {
            if let Ok(mut k) = self.known_dirs.lock() {
                k.remove(dir);
            }
        }
    }

    /// Moves a temporary file flushed on its own into place under the
    /// journal's lock, if `condition` holds: its directories are flushed,
    /// and the journal told that its earlier records of the key no longer
    /// count.
    fn place_flushed(
        &self,
        key: &str,
        tmp: &Path,
        path: &Path,
        condition: &Condition,
    ) -> Result<(), ObjError> {
        let mut held = self
            .journal
            .lock()
            .map_err(|e| Self::journal_error(key, e))?;
        check(&self.root, key, path, condition)?;
        fs::rename(tmp, path).map_err(|e| fatal(key, "renaming into place", e))?;
        // Its own directories only: a flush of the whole filesystem here
        // (under the lock) stalled every small write behind all the dirty
        // data of the machine.
        self.flush_dirs(path)
            .map_err(|e| fatal(key, "flushing its directories", e))?;
        held.append(
            &Record::Durable {
                key: key.to_string(),
            },
            true,
        )
        .map_err(|e| Self::journal_error(key, e))
    }

    /// Flushes every directory from the file's up to the root, so its name
    /// and those of directories created unflushed on the way are durable.
    fn flush_dirs(&self, file: &Path) -> std::io::Result<()> {
        let mut dir = file.parent();
        while let Some(d) = dir {
            File::open(d)?.sync_all()?;
            if d == self.root {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Removes a key's file (its inode is kept as a spare when possible).
    /// Not flushed: like a file removal, a machine crash may undo it.
    fn delete(&self, key: &str) -> Result<(), ObjError> {
        let path = path_of(&self.root, key)?;
        let mut held = self
            .journal
            .lock()
            .map_err(|e| Self::journal_error(key, e))?;
        self.spares
            .recycle(&path)
            .map_err(|e| fatal(key, "deleting", e))?;
        held.append(
            &Record::Delete {
                key: key.to_string(),
            },
            false,
        )
        .map_err(|e| Self::journal_error(key, e))
    }

    fn put_file(&self, key: &str, src: &Path) -> Result<String, ObjError> {
        let (dest, _) = self.dir_for(key)?;
        let tmp = self.tmp_name();
        let copied = fs::copy(src, &tmp)
            .map_err(|e| fatal(key, "copying", e))
            .and_then(|_| {
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| fatal(key, "fsync", e))
            })
            .and_then(|()| self.place_flushed(key, &tmp, &dest, &Condition::None));
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        copied?;
        Ok(String::new())
    }

    /// Brings every file the journal speaks for back to what it says (a
    /// machine crash may have lost files moved into place since the last
    /// checkpoint, or left them empty), flushes, and empties the journal.
    fn repair(&self) -> std::io::Result<()> {
        let mut held = self.journal.lock()?;
        if held.is_empty() {
            return Ok(());
        }
        // The last record of each key, without its contents (read from the
        // journal only where a file is compared or rewritten).
        let mut last: HashMap<String, LastRecord> = HashMap::new();
        held.each_record(|record, at| {
            let last_record = match record {
                Record::Put { data, .. } => LastRecord::Put {
                    at,
                    len: data.len(),
                },
                Record::Delete { .. } => LastRecord::Delete,
                Record::Durable { .. } => LastRecord::Durable,
            };
            last.insert(record.key().to_string(), last_record);
        })?;
        let mut repaired = 0;
        for (key, record) in last {
            // A key that no longer maps to a file under the root is skipped.
            let Ok(path) = path_of(&self.root, &key) else {
                continue;
            };
            match record {
                LastRecord::Put { at, len } => {
                    let data = held.contents(at, len)?;
                    if fs::read(&path).is_ok_and(|current| current == data) {
                        continue;
                    }
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    let tmp = self.tmp_name();
                    fs::write(&tmp, &data)?;
                    fs::rename(&tmp, &path)?;
                    repaired += 1;
                }
                LastRecord::Delete => {
                    if fs::symlink_metadata(&path).is_ok() {
                        fs::remove_file(&path)?;
                        repaired += 1;
                    }
                }
                LastRecord::Durable => {}
            }
        }
        if repaired > 0 {
            log::warn!(
                "{}: {repaired} object(s) repaired from the journal (lost or cut by a crash)",
                self.root.display()
            );
        }
        // Everything the journal held is now in its files: flush them all,
        // then start an empty journal.
        held.checkpoint()
    }
}

/// What a key's last journal record says, its contents left in the journal.
enum LastRecord {
    Put { at: u64, len: usize },
    Delete,
    Durable,
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
        on_pool(key, self.dir.clone(), f).await
    }
}

/// Runs `f` on the runtime's blocking pool.
async fn on_pool<T: Send + 'static>(
    key: &str,
    dir: Arc<Dir>,
    f: impl FnOnce(&Dir) -> Result<T, ObjError> + Send + 'static,
) -> Result<T, ObjError> {
    tokio::task::spawn_blocking(move || f(&dir))
        .await
        .map_err(|e| ObjError::Fatal {
            key: key.to_string(),
            message: format!("file task failed: {e}"),
        })?
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
        if super::blocking_io_allowed_here() && data.len() <= INLINE_LIMIT {
            // On this thread, in two halves: the caller (the commit thread)
            // does its own work while the device writes the record, and no
            // thread hand-off comes between the write and the caller.
            let dir = self.dir.clone();
            return Box::pin(async move {
                // Unless another thread of this process holds the journal
                // (it may be this one, with a write staged).
                let held = dir
                    .journal
                    .try_lock()
                    .map_err(|e| Dir::journal_error(&k, e))?;
                if let Some(held) = held {
                    let staged = dir.stage(held, &k, &data, &condition)?;
                    yield_once().await;
                    staged.finish()?;
                    return Ok(content_etag(&data));
                }
                let key = k.clone();
                on_pool(&key, dir.clone(), move |d| d.write(&k, &data, &condition)).await
            });
        }
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
    /// background. The thread is woken only when the first key's directory
    /// is not made yet or spares run low: it then makes every directory
    /// asked for, so with keys asked for ahead it wakes every few writes.
    fn prepare(&self, keys: Vec<String>) {
        let ready = keys.first().is_none_or(|k| self.dir.knows_dir_for(k))
            && self.dir.spares.available() >= SPARES_LOW;
        if !ready {
            self.send_to_preparer(keys);
        }
    }

    fn describe(&self) -> String {
        format!("fs:{}", self.dir.root.display())
    }
}

/// Returns Pending once (waking at once), so whoever polls the future may
/// do other work before it goes on.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_dir_creates_missing_parents_and_accepts_what_is_there() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        make_dir(&deep).unwrap();
        assert!(deep.is_dir());
        make_dir(&deep).unwrap();
        make_dir(&root.path().join("a/b/d")).unwrap();
        assert!(root.path().join("a/b/d").is_dir());
        // Under a file nothing can be made.
        fs::write(root.path().join("f"), b"x").unwrap();
        assert!(make_dir(&root.path().join("f/g")).is_err());
    }
}
