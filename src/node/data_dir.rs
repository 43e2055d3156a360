//! One process per data directory: an exclusive lock on
//! `{data_dir}/netsy.lock`, taken before the node writes anything and held
//! until the process ends (the kernel releases it even after SIGKILL). The
//! holder's pid is written into the file so a refused start can name it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The file of the lock.
pub const LOCK_FILE: &str = "netsy.lock";

/// Held while the node runs.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data directory's lock, or says who holds it.
pub fn lock(dir: &Path) -> Result<DataDirLock, String> {
    let named = |e: std::io::Error| format!("NETSY_DATA_DIR {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(named)?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(named)?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !taken {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => String::new(),
            pid => format!(" (pid {pid})"),
        };
        return Err(format!(
            "NETSY_DATA_DIR {} is in use by another netsy process{holder}",
            dir.display()
        ));
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .and_then(|()| file.flush())
        .map_err(named)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let refused = lock(dir.path()).unwrap_err();
        assert_eq!(
            refused,
            format!(
                "NETSY_DATA_DIR {} is in use by another netsy process (pid {})",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(held);
        assert!(lock(dir.path()).is_ok(), "released with its holder");
    }
}
