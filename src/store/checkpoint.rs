//! Folds the SQLite WAL into the database file on a thread of its own, so
//! the commit thread never waits for a checkpoint's copying and its two
//! fsyncs (SQLite's automatic checkpoint runs inside the commit that
//! crosses the threshold: one write in a few hundred waited milliseconds).
//!
//! The writer still checkpoints itself past WRITER_CHECKPOINT_PAGES: a
//! checkpoint running beside steady writes rarely catches the WAL's last
//! frame, and only a fully copied WAL starts again from its beginning.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// Where the writer's own (automatic) checkpoint takes over, in pages.
pub const WRITER_CHECKPOINT_PAGES: i64 = 8192;

/// Work between two background checkpoints, in quarter pages of WAL: a
/// commit writes about four pages (table, index and their parents), a
/// record about a quarter more (estimated from how often SQLite's own
/// checkpoint ran under single puts and 64-client batches); so about
/// a thousand pages, SQLite's own default. And the shortest pause between
/// two checkpoints (each costs two fsyncs).
const WORK_PER_CHECKPOINT: u64 = 4096;
const COMMIT_WORK: u64 = 16;
const PAUSE: Duration = Duration::from_millis(50);

/// The writer's side: counts commits and wakes the thread.
pub struct Checkpointer {
    /// Taken when dropped: the thread then ends.
    wake: Option<mpsc::SyncSender<()>>,
    work: AtomicU64,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread with its own connection to the database at `path`
    /// (already in WAL mode). It ends, its connection closed, before the
    /// Checkpointer's drop returns.
    pub fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        // Syncs the WAL before copying it and the database after (NORMAL
        // and FULL checkpoints both do).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let done = Arc::new(AtomicU64::new(0));
        let counted = done.clone();
        let thread =
            crate::background::spawn("netsy-checkpoint", crate::background::NICE_LOW, move || {
                while woken.recv().is_ok() {
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Ok(()) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => log::warn!("checkpointing the local database failed: {e}"),
                    }
                    std::thread::sleep(PAUSE);
                }
            })?;
        Ok(Checkpointer {
            wake: Some(wake),
            work: AtomicU64::new(0),
            done,
            thread: Some(thread),
        })
    }

    /// After a commit of `records`: once enough work has gathered the
    /// thread is woken (if it is busy, it goes on with the next when done).
    pub fn committed(&self, records: usize) {
        let work = COMMIT_WORK + records as u64;
        let before = self.work.fetch_add(work, Ordering::Relaxed);
        if (before + work) / WORK_PER_CHECKPOINT != before / WORK_PER_CHECKPOINT {
            if let Some(wake) = &self.wake {
                let _ = wake.try_send(());
            }
        }
    }

    /// Checkpoints the thread has finished.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    /// Ends the thread and waits for it, so the store's last connection is
    /// closed when the store is: SQLite removes the WAL and its index by
    /// name as the last connection closes, and a rebuild puts a new
    /// database under those names right after setting the old one aside.
    fn drop(&mut self) {
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
