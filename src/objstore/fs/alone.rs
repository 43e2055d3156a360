//! A new journal's inode, alone in its inode table block. On ext4 without a
//! journal (this project's machines), every flush of a file writes the
//! block of its inode when that block is dirty, and any of the 16 inodes in
//! it dirties it: with the spare directory or SQLite's WAL beside the
//! journal, each write's flush was two device writes in series. The
//! journal is made from a new inode that opens a block whose other inodes
//! went, in order, to empty files made after it, which never change.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Holds the empty files that fill the journal's inode table block.
pub const NEIGHBOURS_DIR: &str = ".netsy-journal-neighbours";
/// Inodes per inode table block: ext4's 256-byte inodes in 4 KiB blocks.
const INODES_PER_BLOCK: u64 = 16;
/// New inodes tried before giving up (where they are not handed out in
/// order, or blocks have slots taken).
const TRIES: usize = 8 * INODES_PER_BLOCK as usize;

/// Makes the journal at `journal` (absent) from an inode that opens its
/// block, once every other inode of the block went to an empty file made
/// after it. Another process's journal made meanwhile wins: this one's
/// files go. Best effort: when no such block comes, or the filesystem is
/// not ext4, it makes nothing, and the caller creates the journal as any
/// file (as it does when this fails).
pub fn make_journal(root: &Path, journal: &Path) -> std::io::Result<()> {
    if !is_ext4(root) {
        return Ok(());
    }
    let dir = root.join(NEIGHBOURS_DIR);
    super::make_dir(&dir)?;
    let mut made = Made::new(dir);
    let Some((first, block)) = made.block_of_its_own()? else {
        return Ok(());
    };
    match fs::hard_link(&first, journal) {
        Ok(()) => {
            let _ = fs::remove_file(&first);
            made.keep_block(block);
            Ok(())
        }
        // Another process made the journal first: it is the one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The block that `inos`, the inode numbers of the last files made (one
/// block's worth), fill in order from its first slot, if they do.
fn fills_a_block(inos: &[u64]) -> Option<u64> {
    let block = inos.first()?.checked_sub(1)? / INODES_PER_BLOCK;
    let in_order = (block * INODES_PER_BLOCK + 1..).zip(inos);
    (inos.len() == INODES_PER_BLOCK as usize
        && in_order.into_iter().all(|(want, ino)| want == *ino))
    .then_some(block)
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
        let path = self.dir.join(super::unique_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let ino = file.metadata()?.ino();
        self.files.push((path.clone(), ino));
        Ok((path, ino))
    }

    /// New files until one's inode opens an inode table block and the 15
    /// made after it fill the rest of that block: the first one's name and
    /// the block. A slot of the block already taken, or freed too recently
    /// to be handed out again, sends one of them elsewhere, and the search
    /// goes on.
    fn block_of_its_own(&mut self) -> std::io::Result<Option<(PathBuf, u64)>> {
        while self.files.len() < TRIES {
            self.one()?;
            let made = self.files.len();
            let Some(last) = made.checked_sub(INODES_PER_BLOCK as usize) else {
                continue;
            };
            let inos: Vec<u64> = self.files[last..].iter().map(|f| f.1).collect();
            if let Some(block) = fills_a_block(&inos) {
                return Ok(Some((self.files[last].0.clone(), block)));
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
    fn a_block_is_taken_only_when_the_files_fill_it_in_order_from_its_start() {
        let block = |first: u64| (first..first + 16).collect::<Vec<u64>>();
        assert_eq!(fills_a_block(&block(33)), Some(2));
        assert_eq!(fills_a_block(&block(1)), Some(0));
        // Not at a block's first slot.
        assert_eq!(fills_a_block(&block(34)), None);
        // A slot taken by another file: one of them went past the block.
        let mut gap = block(33);
        gap[7] = 49;
        assert_eq!(fills_a_block(&gap), None);
        // Fewer than a block's worth.
        assert_eq!(fills_a_block(&block(33)[..15]), None);
        assert_eq!(fills_a_block(&[]), None);
    }

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
        let Ok(ino) = fs::metadata(&journal).map(|m| m.ino()) else {
            // Not ext4, or no block of its own came (other tests make and
            // remove files meanwhile): nothing made, nothing left behind.
            assert!(neighbours.is_empty(), "{neighbours:?} left");
            return;
        };
        // Its inode opens a block whose every other inode is a file kept
        // for it.
        assert_eq!(
            (ino - 1) % INODES_PER_BLOCK,
            0,
            "inode {ino} opens no block"
        );
        let mut block: Vec<u64> = neighbours.clone();
        block.push(ino);
        block.sort();
        assert_eq!(fills_a_block(&block), Some((ino - 1) / INODES_PER_BLOCK));
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
