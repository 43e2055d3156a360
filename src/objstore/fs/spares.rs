//! Spare files for the fs provider: files of deleted objects, and files
//! made ahead of time, reused for new objects so that a write allocates no
//! inode on its path. Allocation can cost far more than the write itself
//! (ext4 without a journal scans past every inode freed in the last minute,
//! six while their inode table blocks are unwritten).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Most spares one process keeps; more deleted files are removed.
const MAX_SPARES: usize = 4096;

/// Temporary and spare files of a process that no longer runs are removed
/// at start once they are this old.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// This process's spare files, all empty, in the provider's temporary
/// directory.
pub struct Spares {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    counter: AtomicU64,
}

impl Spares {
    pub fn new(dir: &Path) -> Spares {
        Spares {
            dir: dir.to_path_buf(),
            free: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        }
    }

    fn fresh_name(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("spare-{}-{n}", std::process::id()))
    }

    pub fn available(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }

    /// A spare opened for writing, empty; None when there is none.
    pub fn take(&self) -> Option<(PathBuf, File)> {
        loop {
            let path = self.free.lock().ok()?.pop()?;
            // Another process may have removed it (see STALE_AFTER). Not
            // opened with O_TRUNC: on ext4 truncating makes the close start
            // writing the file back at once, competing with the journal's
            // flush; a spare is empty, and one that is not is emptied.
            let Ok(mut f) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            // Its length by seeking, not by asking for its attributes: on
            // Linux, a file whose times were asked for gets a fine-grained
            // time when it is next written, which moves every file's next
            // time on, the journal's too, whose flush must then write its
            // inode as well.
            let empty = match f.seek(SeekFrom::End(0)) {
                Ok(0) => true,
                _ => f.set_len(0).is_ok() && f.rewind().is_ok(),
            };
            if empty {
                return Some((path, f));
            }
        }
    }

    /// Removes the object file at `path`, keeping its inode as a spare when
    /// there is room. Ok when the file is gone (or never existed).
    pub fn recycle(&self, path: &Path) -> std::io::Result<()> {
        if self.available() >= MAX_SPARES {
            return remove_if_present(path);
        }
        let spare = self.fresh_name();
        match fs::rename(path, &spare) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        // The key is gone; free the blocks now, keep the inode.
        let emptied = OpenOptions::new()
            .write(true)
            .open(&spare)
            .and_then(|f| f.set_len(0));
        match (emptied, self.free.lock()) {
            (Ok(()), Ok(mut free)) => free.push(spare),
            _ => {
                let _ = fs::remove_file(&spare);
            }
        }
        Ok(())
    }

    /// Makes new spares until `low` are available.
    pub fn fill(&self, low: usize) {
        while self.available() < low {
            let path = self.fresh_name();
            if File::create(&path).is_err() {
                return;
            }
            match self.free.lock() {
                Ok(mut free) => free.push(path),
                Err(_) => return,
            }
        }
    }

    /// Removes spares and unfinished temporary files that processes which
    /// no longer run left more than STALE_AFTER ago.
    pub fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let cutoff = SystemTime::now() - STALE_AFTER;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner(&name).is_none_or(running) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The process id in a temporary ("{pid}-{n}") or spare
/// ("spare-{pid}-{n}") file name.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("spare-").unwrap_or(name);
    rest.split('-').next()?.parse().ok()
}

/// Whether a process with this id runs (on this host, in our pid
/// namespace); true when unsure.
fn running(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn deleted_files_become_empty_spares_that_writes_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        let object = dir.path().join("object");
        fs::write(&object, b"old contents").unwrap();
        spares.recycle(&object).unwrap();
        assert!(!object.exists(), "the key is gone");
        spares.recycle(&object).unwrap(); // already gone: fine
        assert_eq!(spares.available(), 1);
        let (path, mut f) = spares.take().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "emptied");
        f.write_all(b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(spares.take().is_none());
    }

    #[test]
    fn a_spare_written_behind_our_back_is_emptied_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        spares.fill(1);
        let name = fs::read_dir(dir.path()).unwrap().flatten().next().unwrap();
        fs::write(name.path(), b"left over").unwrap();
        let (path, mut f) = spares.take().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
        // And what is written next starts at its beginning.
        std::io::Write::write_all(&mut f, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn fill_tops_up_and_a_vanished_spare_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        spares.fill(3);
        assert_eq!(spares.available(), 3);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        fs::remove_file(names[0].path()).unwrap();
        assert!(spares.take().is_some());
        assert!(spares.take().is_some());
        assert!(spares.take().is_none(), "the removed one was skipped");
    }

    #[test]
    fn only_old_files_of_processes_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::new(dir.path());
        let gone = u32::try_from(libc::pid_t::MAX).unwrap();
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        let make = |name: &str, mtime: SystemTime| {
            let f = File::create(dir.path().join(name)).unwrap();
            f.set_modified(mtime).unwrap();
        };
        make(&format!("spare-{gone}-1"), old);
        make(&format!("{gone}-2"), old);
        make(&format!("{gone}-3"), SystemTime::now());
        make(&format!("spare-{}-4", std::process::id()), old);
        make("unrelated", old);
        spares.remove_stale();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            format!("{gone}-3"),
            format!("spare-{}-4", std::process::id()),
            "unrelated".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
