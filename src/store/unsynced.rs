//! The mark of a local database written without flushes: `db.sqlite3-
//! unsynced`, holding the id of the boot that wrote it. Batches the bucket
//! already holds are committed to SQLite with synchronous=OFF; a process
//! crash loses nothing of them (the kernel keeps the pages), but a machine
//! that went down meanwhile may have lost or torn pages of the database. A
//! later boot that finds the mark rebuilds the store from the bucket.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

pub const MARK_FILE: &str = "db.sqlite3-unsynced";

/// The running kernel's boot id (Linux); None where there is none, and
/// then the store never commits without flushes.
pub fn current_boot() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// What a database's mark says to a store opened on boot `boot`.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// No mark: every write reached the disk.
    Flushed,
    /// This boot wrote without flushes: the kernel still holds the pages.
    ThisBoot,
    /// Another boot (or one this store cannot tell) wrote without flushes.
    AnotherBoot(String),
}

/// Reads the mark in `dir`.
pub fn left(dir: &Path, boot: Option<&str>) -> std::io::Result<Left> {
    match fs::read_to_string(dir.join(MARK_FILE)) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Left::Flushed),
        Err(e) => Err(e),
        Ok(marked) => {
            let marked = marked.trim();
            Ok(if boot == Some(marked) {
                Left::ThisBoot
            } else {
                Left::AnotherBoot(marked.to_string())
            })
        }
    }
}

/// Puts the mark down, durably, before the first write without flushes. A
/// mark cut short by a crash names no boot, which counts as another's.
pub fn mark(dir: &Path, boot: &str) -> std::io::Result<()> {
    let mut file = File::create(dir.join(MARK_FILE))?;
    file.write_all(boot.as_bytes())?;
    file.sync_all()?;
    File::open(dir)?.sync_all()
}

/// Flushes the database and its WAL (everything written without flushes so
/// far), then takes the mark away.
pub fn clear(dir: &Path, database: &Path) -> std::io::Result<()> {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    for file in [database, Path::new(&wal)] {
        match File::open(file) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::remove_file(dir.join(MARK_FILE)) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_this_boots_or_another_s_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite3");
        fs::write(&db, b"pages").unwrap();
        assert_eq!(left(dir.path(), Some("boot-a")).unwrap(), Left::Flushed);
        mark(dir.path(), "boot-a").unwrap();
        assert_eq!(left(dir.path(), Some("boot-a")).unwrap(), Left::ThisBoot);
        assert_eq!(
            left(dir.path(), Some("boot-b")).unwrap(),
            Left::AnotherBoot("boot-a".into())
        );
        // Without a boot id of its own a store cannot tell: not its boot.
        assert_eq!(
            left(dir.path(), None).unwrap(),
            Left::AnotherBoot("boot-a".into())
        );
        clear(dir.path(), &db).unwrap();
        assert_eq!(left(dir.path(), Some("boot-b")).unwrap(), Left::Flushed);
        // Clearing twice, or without a WAL, is fine.
        clear(dir.path(), &db).unwrap();
    }

    #[test]
    fn a_mark_cut_short_counts_as_another_boots() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MARK_FILE), b"").unwrap();
        assert_eq!(
            left(dir.path(), Some("boot-a")).unwrap(),
            Left::AnotherBoot(String::new())
        );
    }
}
