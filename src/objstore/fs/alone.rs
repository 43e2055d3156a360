//! A new journal's inode, alone in its inode table block. On ext4 without a
//! journal (this project's machines), every flush of a file writes the
//! block of its inode when that block is dirty, and any of the 16 inodes in
//! it dirties it: with the spare directory or SQLite's WAL beside the
//! journal, each write's flush was two device writes in series. The
//! journal is made from the first new inode that opens a block, and the
//! block's other inodes go to empty files that never change.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Holds the empty files that fill the journal's inode table block.
pub const NEIGHBOURS_DIR: &str = ".netsy-journal-neighbours";
/// Inodes per inode table block: ext4's 256-byte inodes in 4 KiB blocks.
const INODES_PER_BLOCK: u64 = 16;
/// Names the files made by this process.
static MADE: AtomicU64 = AtomicU64::new(0);
/// New inodes tried before giving up (on other filesystems, or where they
/// are not handed out in order).
const TRIES: usize = 3 * INODES_PER_BLOCK as usize;

/// Makes the journal at `journal` (absent) from an inode that opens its
/// block, the rest of the block filled. Another process's journal made
/// meanwhile wins: this one's files go. Best effort: when no inode opening
/// a block comes, or the filesystem is not ext4, it makes nothing, and the
/// caller creates the journal as any file (as it does when this fails).
pub fn make_journal(root: &Path, journal: &Path) -> std::io::Result<()> {
    if !is_ext4(root) {
        return Ok(());
    }
    let dir = root.join(NEIGHBOURS_DIR);
    super::make_dir(&dir)?;
    let mut made = Made::new(dir);
    let Some(first) = made.until_block_opens()? else {
        return Ok(());
    };
    let block = (first.1 - 1) / INODES_PER_BLOCK;
    for _ in 1..INODES_PER_BLOCK {
        made.one()?;
    }
    match fs::hard_link(&first.0, journal) {
        Ok(()) => {
            let _ = fs::remove_file(&first.0);
            made.keep_block(block);
            Ok(())
        }
        // Another process made the journal first: it is the one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The empty files made, removed when dropped unless kept.
struct Made {
    dir: PathBuf,
    files: Vec<(PathBuf, u64)>,
}

impl Made {
    fn new(dir: PathBuf) -> Made {
        Made {
            dir,
            files: Vec::new(),
        }
    }

    /// A new empty file and its inode number.
    fn one(&mut self) -> std::io::Result<(PathBuf, u64)> {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let ino = file.metadata()?.ino();
        self.files.push((path.clone(), ino));
        Ok((path, ino))
    }

    /// New files until one's inode opens an inode table block.
    fn until_block_opens(&mut self) -> std::io::Result<Option<(PathBuf, u64)>> {
        for _ in 0..TRIES {
            let (path, ino) = self.one()?;
            if ino > 0 && (ino - 1) % INODES_PER_BLOCK == 0 {
                return Ok(Some((path, ino)));
            }
        }
        Ok(None)
    }

    /// Keeps the files in `block`, the journal's neighbours from now on;
    /// the rest go when dropped.
    fn keep_block(&mut self, block: u64) {
        self.files
            .retain(|(_, ino)| ino.saturating_sub(1) / INODES_PER_BLOCK != block);
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for (path, _) in &self.files {
            let _ = fs::remove_file(path);
        }
    }
}

fn is_ext4(root: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        let Ok(dir) = File::open(root) else {
            return false;
        };
        // SAFETY: statfs fills the struct it is given; the descriptor is open.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut stat) } != 0 {
            return false;
        }
        #[allow(clippy::unnecessary_cast)]
        let magic = stat.f_type as i64;
        magic == EXT4_SUPER_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_journal_opens_an_inode_table_block_kept_for_files_that_never_change() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join(".netsy-journal");
        make_journal(dir.path(), &journal).unwrap();
        let neighbours: Vec<u64> = match fs::read_dir(dir.path().join(NEIGHBOURS_DIR)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().metadata().unwrap().ino())
                .collect(),
            Err(_) => Vec::new(),
        };
        if !is_ext4(dir.path()) {
            assert!(!journal.exists() && neighbours.is_empty());
            return;
        }
        let ino = fs::metadata(&journal).unwrap().ino();
        assert_eq!(
            (ino - 1) % INODES_PER_BLOCK,
            0,
            "inode {ino} opens no block"
        );
        let block = (ino - 1) / INODES_PER_BLOCK;
        // Other tests make files meanwhile: some of the block may be theirs,
        // but every file kept is in it, and none of it is the journal's
        // old name.
        assert!(!neighbours.is_empty() && neighbours.len() < INODES_PER_BLOCK as usize);
        for n in &neighbours {
            assert_eq!(
                (n - 1) / INODES_PER_BLOCK,
                block,
                "inode {n} kept outside the block"
            );
            assert_ne!(*n, ino);
        }
        // One made meanwhile by another process wins, and this one's
        // files go.
        fs::write(&journal, b"records").unwrap();
        make_journal(dir.path(), &journal).unwrap();
        assert_eq!(fs::read(&journal).unwrap(), b"records");
        assert_eq!(fs::metadata(&journal).unwrap().ino(), ino);
        let left = fs::read_dir(dir.path().join(NEIGHBOURS_DIR))
            .unwrap()
            .count();
        assert_eq!(left, neighbours.len(), "the losing journal's files stayed");
    }
}
