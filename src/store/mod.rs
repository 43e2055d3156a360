//! Local MVCC store: SQLite keeps every record (one row per revision,
//! history kept, compaction nulls values), durably or, for batches the
//! bucket holds, under the mark of [`unsynced`]; an in-memory key index
//! answers reads without scanning history. The etcd layer never sees SQL.

pub mod checkpoint;
pub mod index;
pub mod keyrange;
pub mod query;
pub mod record;
pub mod sqlite;
pub mod unsynced;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use bytes::Bytes;
use rusqlite::Connection;

pub use index::{Entry, KeyIndex, Rev};
pub use keyrange::KeyRange;
pub use query::{RangeQuery, RangeResult, SortOrder, SortTarget};
pub use record::{Record, Timestamp};
pub use sqlite::{LeaseChange, LeaseRow};

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    Io(std::io::Error),
    SchemaVersion {
        found: i64,
        expected: i64,
    },
    Integrity {
        count: i64,
        latest: i64,
    },
    /// A value needed for a read was discarded by compaction.
    Compacted,
    /// A read asked for a revision newer than the store's.
    FutureRevision,
    /// Appended records must continue the latest revision.
    NotNext {
        expected: i64,
        found: i64,
    },
    /// Committed revisions are final; only tentative ones can be discarded.
    DiscardCommitted {
        above: i64,
        committed: i64,
    },
    /// An import needs every local revision committed first.
    Tentative {
        committed: i64,
    },
    /// An imported record does not continue the local revisions.
    Gap {
        expected: i64,
        found: i64,
    },
    /// An imported record differs from the one stored at its revision.
    Conflict {
        revision: i64,
    },
    /// The database was written without flushes under another boot: the
    /// machine went down meanwhile, and pages may be lost or torn.
    LeftUnsynced {
        boot: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
            StoreError::Io(e) => write!(f, "{e}"),
            StoreError::SchemaVersion { found, expected } => write!(
                f,
                "schema version mismatch: database is version {found}, expected {expected}"
            ),
            StoreError::Integrity { count, latest } => write!(
                f,
                "integrity error: total records ({count}) does not match latest revision ({latest})"
            ),
            StoreError::Compacted => write!(f, "mvcc: required revision has been compacted"),
            StoreError::FutureRevision => {
                write!(f, "mvcc: required revision is a future revision")
            }
            StoreError::NotNext { expected, found } => write!(
                f,
                "append out of order: expected revision {expected}, got {found}"
            ),
            StoreError::DiscardCommitted { above, committed } => write!(
                f,
                "cannot discard revisions above {above}: revision {committed} is committed"
            ),
            StoreError::Tentative { committed } => write!(
                f,
                "revisions above {committed} are tentative: commit or discard them first"
            ),
            StoreError::Gap { expected, found } => {
                write!(f, "revision gap: expected revision {expected}, got {found}")
            }
            StoreError::Conflict { revision } => {
                write!(f, "replicate conflict: revision {revision} already exists with different contents")
            }
            StoreError::LeftUnsynced { boot } => write!(
                f,
                "the database was written without flushes before the machine restarted \
                 (boot {boot:?}, see {})",
                unsynced::MARK_FILE
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// One key read from the store: its revision metadata and, when loaded,
/// its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: Bytes,
    pub rev: Rev,
    pub value: Option<Bytes>,
}

impl KvEntry {
    pub fn from_entry(e: &Entry<'_>) -> KvEntry {
        KvEntry {
            key: e.key.clone(),
            rev: e.rev,
            value: e.value.cloned(),
        }
    }

    /// The key as one record left it (a tombstone for a delete).
    pub fn from_record(r: &Record) -> KvEntry {
        KvEntry {
            key: r.key.clone(),
            rev: Rev {
                revision: r.revision,
                create_revision: r.create_revision,
                version: r.version,
                lease: r.lease,
                deleted: r.deleted,
            },
            value: r.value.clone(),
        }
    }
}

/// Everything one commit makes durable at once.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub leases: Vec<LeaseChange>,
    pub compaction: Option<i64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.leases.is_empty() && self.compaction.is_none()
    }
}

/// How many imported records are published to the index at a time; an
/// import at least this large also shrinks the write-ahead log afterwards.
const IMPORT_PUBLISH_BATCH: usize = 10_000;

/// Where the writer checkpoints while it commits without flushes (SQLite's
/// default): a copy in memory, cheap enough to keep the WAL short, so its
/// pages are written over in the page cache instead of reaching the disk.
const UNFLUSHED_CHECKPOINT_PAGES: i64 = 1000;

/// Receives the records of one [`Store::import_all`], inside its transaction.
pub struct Importer<'c> {
    tx: sqlite::ImportTx<'c>,
    /// The revision the next new record must have.
    next: i64,
}

impl Importer<'_> {
    /// Adds consecutive records; ones already stored must be the same write.
    /// A conflict at the first record changes nothing, so the caller may
    /// skip those records and go on.
    pub fn add(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut next = self.next;
        for r in records {
            if r.revision < next {
                continue;
            }
            if r.revision != next {
                return Err(StoreError::Gap {
                    expected: next,
                    found: r.revision,
                });
            }
            next += 1;
        }
        match self.tx.insert(records)? {
            Ok(()) => {
                self.next = next;
                Ok(())
            }
            Err(sqlite::ImportConflict::Different(revision)) => {
                Err(StoreError::Conflict { revision })
            }
        }
    }
}

/// A batch appended but not yet committed.
struct Pending {
    /// The revision the batch ends at (the latest revision when it holds
    /// no records).
    upto: i64,
    batch: Batch,
}

/// Takes from the pending batches everything up to `revision`: whole
/// batches, and the first records of a batch that `revision` cuts (its
/// lease and compaction changes wait for the rest of it).
fn take_upto(pending: &mut VecDeque<Pending>, revision: i64) -> Vec<Batch> {
    let mut ready = Vec::new();
    while let Some(first) = pending.front_mut() {
        if first.upto <= revision {
            ready.extend(pending.pop_front().map(|p| p.batch));
            continue;
        }
        let cut = first
            .batch
            .records
            .partition_point(|r| r.revision <= revision);
        if cut > 0 {
            ready.push(Batch {
                records: first.batch.records.drain(..cut).collect(),
                ..Batch::default()
            });
        }
        break;
    }
    ready
}

/// Drops from the pending batches everything above `revision`: whole
/// batches, and the last records of a batch that `revision` cuts, together
/// with that batch's lease and compaction changes (the batch is no longer
/// whole).
fn drop_above(pending: &mut VecDeque<Pending>, revision: i64) {
    while let Some(last) = pending.back_mut() {
        if last.upto <= revision {
            break;
        }
        let cut = last
            .batch
            .records
            .partition_point(|r| r.revision <= revision);
        if cut == 0 {
            pending.pop_back();
            continue;
        }
        last.batch.records.truncate(cut);
        last.batch.leases.clear();
        last.batch.compaction = None;
        last.upto = revision;
        break;
    }
}

pub struct Store {
    path: PathBuf,
    index: RwLock<KeyIndex>,
    /// Appended batches above the committed revision, oldest first.
    pending: Mutex<VecDeque<Pending>>,
    writer: Mutex<Connection>,
    /// The writer commits batches the bucket holds without an fsync at the
    /// moment; read and changed only under the writer lock.
    relaxed: std::sync::atomic::AtomicBool,
    /// This boot's id: where there is one, those commits (and the writer's
    /// checkpoints) flush nothing, under the mark of [`unsynced`];
    /// elsewhere they are synchronous=NORMAL.
    boot: Option<String>,
    /// The mark is down (changed only under the writer lock).
    marked: std::sync::atomic::AtomicBool,
    readers: Mutex<Vec<Connection>>,
    checkpoints: checkpoint::Checkpointer,
    latest: AtomicI64,
    committed: AtomicI64,
    compacted: AtomicI64,
    leases: RwLock<BTreeMap<i64, LeaseRow>>,
    /// Changes to rows already written (values nulled by a compaction,
    /// rows undone) started and finished. See [`Store::rewrites`].
    rewrites_started: AtomicU64,
    rewrites_finished: AtomicU64,
}

impl Drop for Store {
    /// A store closed cleanly leaves no mark, so the next boot keeps it.
    fn drop(&mut self) {
        let conn = match self.writer.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = self.unmark(&conn) {
            log::warn!("flushing the local database at close failed: {e}");
        }
    }
}

impl Store {
    /// Opens `{data_dir}/db.sqlite3`, checks integrity and builds the index.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_on_boot(data_dir, unsynced::current_boot())
    }

    /// [`Store::open`] on the machine boot `boot` (None: the store cannot
    /// tell boots apart). A database another boot wrote without flushes is
    /// refused ([`StoreError::LeftUnsynced`]): rebuild it from the bucket.
    pub fn open_on_boot(data_dir: &Path, boot: Option<String>) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("db.sqlite3");
        match unsynced::left(data_dir, boot.as_deref())? {
            unsynced::Left::Flushed => {}
            // A process of this boot crashed: the kernel has every page.
            unsynced::Left::ThisBoot => unsynced::clear(data_dir, &path)?,
            unsynced::Left::AnotherBoot(boot) => return Err(StoreError::LeftUnsynced { boot }),
        }
        let mut writer = sqlite::open_writer(&path)?;
        let latest = sqlite::latest_revision(&writer)?;
        let count = sqlite::record_count(&writer)?;
        if count != latest {
            return Err(StoreError::Integrity { count, latest });
        }
        let mut index = KeyIndex::new();
        sqlite::scan_without_values(&writer, |r| index.apply(&r))?;
        let compacted = sqlite::compaction_revision(&writer)?;
        if compacted > 0 {
            // Finishes a compaction that a crash interrupted (idempotent).
            let discarded = index.compact(compacted);
            sqlite::mark_compacted(&mut writer, &discarded)?;
        }
        for rev in index.missing_values() {
            if let Some(r) = sqlite::record_at(&writer, rev)? {
                index.set_latest_value(&r.key, rev, r.value.unwrap_or_default());
            }
        }
        let leases = sqlite::leases(&writer)?
            .into_iter()
            .map(|l| (l.id, l))
            .collect();
        let checkpoints = checkpoint::Checkpointer::start(&path)?;
        log::info!(
            "local store opened: {} records, {} keys, compaction revision {compacted}",
            latest,
            index.len()
        );
        Ok(Store {
            path,
            index: RwLock::new(index),
            pending: Mutex::new(VecDeque::new()),
            writer: Mutex::new(writer),
            relaxed: std::sync::atomic::AtomicBool::new(false),
            boot,
            marked: std::sync::atomic::AtomicBool::new(false),
            readers: Mutex::new(Vec::new()),
            checkpoints,
            latest: AtomicI64::new(latest),
            committed: AtomicI64::new(latest),
            compacted: AtomicI64::new(compacted),
            leases: RwLock::new(leases),
            rewrites_started: AtomicU64::new(0),
            rewrites_finished: AtomicU64::new(0),
        })
    }

    /// How many changes to rows already written there have been, or None
    /// while one is under way: whoever keeps something built from old rows
    /// (the previous snapshot's records) reads it before and after, and may
    /// keep it while it stays the same number.
    pub fn rewrites(&self) -> Option<u64> {
        let finished = self.rewrites_finished.load(Ordering::Acquire);
        let started = self.rewrites_started.load(Ordering::Acquire);
        (started == finished).then_some(started)
    }

    /// Runs `change` (a change to rows already written) counted in
    /// [`Store::rewrites`].
    fn rewriting<T>(&self, change: impl FnOnce() -> T) -> T {
        self.rewrites_started.fetch_add(1, Ordering::AcqRel);
        let result = change();
        self.rewrites_finished.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Highest revision in the local database.
    pub fn latest_revision(&self) -> i64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Highest revision clients may see.
    pub fn committed_revision(&self) -> i64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Highest accepted compaction revision (0 if none).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Read access to the key index. Hold it briefly: writers wait.
    pub fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        match self.index.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Runs `f` with a pooled read-only SQLite connection.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().map(|mut p| p.pop()).unwrap_or(None);
        let conn = match pooled {
            Some(c) => c,
            None => sqlite::open_reader(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < 16 {
                pool.push(conn);
            }
        }
        result
    }

    /// Fills in values the index does not hold (revisions older than the
    /// key's latest) from SQLite.
    pub fn load_values(&self, entries: &mut [KvEntry]) -> Result<(), StoreError> {
        if entries.iter().all(|e| e.value.is_some()) {
            return Ok(());
        }
        self.with_reader(|conn| {
            for e in entries.iter_mut().filter(|e| e.value.is_none()) {
                match sqlite::value_at(conn, e.rev.revision)? {
                    Some((_, true)) | None => return Err(StoreError::Compacted),
                    Some((value, false)) => e.value = Some(value.unwrap_or_default()),
                }
            }
            Ok(())
        })
    }

    /// Records with from <= revision <= to in order (watch replay).
    pub fn records_between(
        &self,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.with_reader(|conn| sqlite::records_between(conn, from, to, limit))
    }

    /// One full record.
    pub fn record_at(&self, revision: i64) -> Result<Option<Record>, StoreError> {
        self.with_reader(|conn| sqlite::record_at(conn, revision))
    }

    /// (db_size, db_size_in_use) in bytes.
    pub fn db_size(&self) -> Result<(i64, i64), StoreError> {
        self.with_reader(sqlite::db_size)
    }

    /// etcd's Defragment in SQLite terms (checkpoint, VACUUM). Writes wait
    /// meanwhile, as they do on etcd.
    pub fn defragment(&self) -> Result<(), StoreError> {
        sqlite::defragment(&*self.writer()?)
    }

    /// A checksum of the history readable at `revision` (0: the committed
    /// one), for comparing members (etcd's HashKV): every key live at the
    /// compaction revision with its value, then every write after it up to
    /// `revision`, in revision order. Nodes holding the same history and
    /// compaction revision give the same hash. Returns (hash, compaction
    /// revision, revision hashed).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), StoreError> {
        const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        /// Records read from SQLite at a time.
        const PAGE: usize = 10_000;
        let (mut base, compacted, at) = {
            let index = self.index();
            let committed = self.committed_revision();
            let compacted = self.compacted_revision();
            let at = if revision <= 0 { committed } else { revision };
            if at > committed {
                return Err(StoreError::FutureRevision);
            }
            if at < compacted {
                return Err(StoreError::Compacted);
            }
            let all = KeyRange::new(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0"));
            let base: Vec<KvEntry> = index
                .scan(&all, compacted)
                .map(|e| KvEntry::from_entry(&e))
                .collect();
            (base, compacted, at)
        };
        self.load_values(&mut base)?;
        let mut digest = CRC.digest();
        let mut feed = |key: &[u8], rev: Rev, value: &[u8]| {
            for n in [rev.revision, rev.create_revision, rev.version, rev.lease] {
                digest.update(&n.to_be_bytes());
            }
            digest.update(&[rev.deleted as u8]);
            digest.update(&(key.len() as u64).to_be_bytes());
            digest.update(key);
            digest.update(&(value.len() as u64).to_be_bytes());
            digest.update(value);
        };
        for e in &base {
            feed(&e.key, e.rev, e.value.as_deref().unwrap_or_default());
        }
        let mut from = compacted + 1;
        while from <= at {
            let page = self.records_between(from, at, PAGE)?;
            let Some(last) = page.last().map(|r| r.revision) else {
                break;
            };
            for r in page.iter().filter(|r| !r.is_internal()) {
                let rev = Rev {
                    revision: r.revision,
                    create_revision: r.create_revision,
                    version: r.version,
                    lease: r.lease,
                    deleted: r.deleted,
                };
                feed(&r.key, rev, r.value.as_deref().unwrap_or_default());
            }
            from = last + 1;
        }
        Ok((digest.finalize(), compacted, at))
    }

    /// Whether a lease exists.
    pub fn lease_exists(&self, id: i64) -> bool {
        self.leases
            .read()
            .map(|l| l.contains_key(&id))
            .unwrap_or(false)
    }

    pub fn lease(&self, id: i64) -> Option<LeaseRow> {
        self.leases.read().ok().and_then(|l| l.get(&id).cloned())
    }

    pub fn lease_ids(&self) -> Vec<i64> {
        self.leases
            .read()
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every lease, ascending by id.
    pub fn leases(&self) -> Vec<LeaseRow> {
        self.leases
            .read()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Committed keys attached to `lease`, ascending.
    pub fn attached_keys(&self, lease: i64) -> Vec<Bytes> {
        self.index().attached(lease)
    }

    /// Makes the lease table exactly `rows` (what the bucket holds when a
    /// node takes the Primary role): call it with no batch in flight.
    pub fn replace_leases(&self, rows: Vec<LeaseRow>) -> Result<(), StoreError> {
        sqlite::replace_leases(&mut *self.writer()?, &rows)?;
        if let Ok(mut leases) = self.leases.write() {
            *leases = rows.into_iter().map(|r| (r.id, r)).collect();
        }
        Ok(())
    }

    /// Appends a batch durably but tentatively: its records, lease changes
    /// and compaction are committed to SQLite (fsynced on return) and the
    /// latest revision advances, but nothing becomes visible to reads,
    /// counts, watches or the key index until [`Store::commit`] reaches it.
    /// Records must continue the latest revision.
    pub fn append(&self, batch: Batch) -> Result<(), StoreError> {
        self.append_flushed(batch, true)
    }

    /// Appends a batch whose records reach object storage before anyone is
    /// told of them (the synchronous route): the SQLite commit is not
    /// fsynced. A crash of the machine may lose it from this database;
    /// the bucket still has it, and preflight takes it back from there
    /// (local-store.md). A process crash loses nothing: the commit is in
    /// the kernel's page cache when this returns.
    pub fn append_backed(&self, batch: Batch) -> Result<(), StoreError> {
        self.append_flushed(batch, false)
    }

    fn append_flushed(&self, batch: Batch, flushed: bool) -> Result<(), StoreError> {
        let mut conn = self.writer_flushing(flushed)?;
        let latest = self.latest_revision();
        for (expected, r) in (latest + 1..).zip(&batch.records) {
            if r.revision != expected {
                return Err(StoreError::NotNext {
                    expected,
                    found: r.revision,
                });
            }
        }
        sqlite::commit_batch(&mut conn, &batch.records, &batch.leases, batch.compaction)?;
        // Unflushed, the writer's own checkpoints cost a copy in memory.
        if !self.marked.load(Ordering::Relaxed) {
            self.checkpoints.committed(batch.records.len());
        }
        let upto = batch.records.last().map_or(latest, |r| r.revision);
        self.pending_batches().push_back(Pending { upto, batch });
        self.latest.store(upto, Ordering::Release);
        Ok(())
    }

    /// Takes records another node ordered (a Primary's stream), tentatively:
    /// revisions at or below the committed one are already final and are
    /// skipped; a tentative revision holding the same write is kept; one
    /// holding a different write is discarded with everything above it
    /// (the Primary's history replaces it); the rest is appended in one
    /// SQLite commit. Records must be consecutive. Returns the highest
    /// revision now known to match the sender's history.
    pub fn replicate(&self, records: &[Record]) -> Result<i64, StoreError> {
        let Some(last) = records.last().map(|r| r.revision) else {
            return Ok(self.committed_revision());
        };
        let committed = self.committed_revision();
        let mut from = records.partition_point(|r| r.revision <= committed);
        let latest = self.latest_revision();
        while let Some(r) = records.get(from).filter(|r| r.revision <= latest) {
            match self.record_at(r.revision)? {
                Some(mine) if mine.same_write(r) => from += 1,
                _ => {
                    self.discard_above(r.revision - 1)?;
                    break;
                }
            }
        }
        let rest: Vec<Record> = records[from..].to_vec();
        if let Some(first) = rest.first() {
            let expected = self.latest_revision() + 1;
            if first.revision != expected {
                return Err(StoreError::Gap {
                    expected,
                    found: first.revision,
                });
            }
            self.append(Batch {
                records: rest,
                ..Batch::default()
            })?;
        }
        Ok(last)
    }

    /// Makes everything appended up to `revision` (at most the latest)
    /// visible: the key index, the lease table and the compaction revision
    /// take it in, then the committed revision moves, all under the index
    /// lock. Returns the revisions a compaction discarded (their values
    /// are still in SQLite: see [`Store::discard_values`]).
    pub fn commit(&self, revision: i64) -> Vec<i64> {
        let revision = revision.min(self.latest_revision());
        let mut pending = self.pending_batches();
        let mut discarded = Vec::new();
        for batch in take_upto(&mut pending, revision) {
            let upto = batch.records.last().map_or(0, |r| r.revision);
            discarded.extend(self.apply(&batch.records, batch.compaction, upto));
            self.apply_leases(&batch.leases);
        }
        // With nothing pending below it (a replica told of a revision it
        // already has), the committed revision still moves.
        let index = self.index_mut();
        self.committed.fetch_max(revision, Ordering::AcqRel);
        drop(index);
        discarded
    }

    /// Appends and commits in one step (what has no one else to wait for,
    /// such as a new cluster's first record). Returns what a compaction
    /// discarded, as [`Store::commit`] does.
    pub fn append_committed(&self, batch: Batch) -> Result<Vec<i64>, StoreError> {
        self.append(batch)?;
        Ok(self.commit(self.latest_revision()))
    }

    /// Applies committed records and a compaction to the index and moves
    /// the committed revision to `upto`, under the index lock so a reader
    /// sees revisions that match the index it scans.
    fn apply(&self, records: &[Record], compaction: Option<i64>, upto: i64) -> Vec<i64> {
        let mut discarded = Vec::new();
        let mut index = self.index_mut();
        for r in records {
            index.apply(r);
        }
        if let Some(c) = compaction {
            discarded = index.compact(c);
            self.compacted.fetch_max(c, Ordering::AcqRel);
        }
        self.committed.fetch_max(upto, Ordering::AcqRel);
        discarded
    }

    fn apply_leases(&self, changes: &[LeaseChange]) {
        if changes.is_empty() {
            return;
        }
        if let Ok(mut leases) = self.leases.write() {
            for change in changes {
                match change {
                    LeaseChange::Grant { id, ttl } => {
                        leases.insert(
                            *id,
                            LeaseRow {
                                id: *id,
                                ttl: *ttl,
                                granted_at: Timestamp::now(),
                            },
                        );
                    }
                    LeaseChange::Revoke { id } => {
                        leases.remove(id);
                    }
                }
            }
        }
    }

    /// Removes every tentative revision above `revision`: the SQLite rows
    /// and the lease and compaction changes appended with them are undone,
    /// and the latest revision goes back to `revision`. Committed revisions
    /// cannot be discarded.
    pub fn discard_above(&self, revision: i64) -> Result<(), StoreError> {
        self.rewriting(|| self.discard_above_counted(revision))
    }

    fn discard_above_counted(&self, revision: i64) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let mut pending = self.pending_batches();
        let committed = self.committed_revision();
        if revision < committed {
            return Err(StoreError::DiscardCommitted {
                above: revision,
                committed,
            });
        }
        let mut undo = sqlite::Undo {
            records_from: revision + 1,
            ..Default::default()
        };
        // The batches `drop_above` takes from: their lease and compaction
        // changes go with them, whole or cut.
        for p in pending.iter().filter(|p| p.upto > revision) {
            for change in &p.batch.leases {
                match change {
                    LeaseChange::Grant { id, .. } => undo.granted.push(*id),
                    LeaseChange::Revoke { id } => undo.revoked.extend(self.lease(*id)),
                }
            }
            undo.compactions.extend(p.batch.compaction);
        }
        // Nothing changes unless SQLite did.
        sqlite::undo(&mut conn, &undo)?;
        drop_above(&mut pending, revision);
        self.latest
            .store(revision.min(self.latest_revision()), Ordering::Release);
        Ok(())
    }

    /// Makes every committed revision above `revision` tentative again:
    /// it leaves the key index and the committed revision goes back to
    /// `revision`, while the rows stay in SQLite to be committed or
    /// discarded later. For rows a node holds beyond what it knows to be
    /// durable (written before a crash, never acknowledged as far as it
    /// knows): nobody reads them until a Primary decides. Nothing may be
    /// pending.
    pub fn demote_above(&self, revision: i64) -> Result<(), StoreError> {
        self.rewriting(|| self.demote_above_counted(revision))
    }

    fn demote_above_counted(&self, revision: i64) -> Result<(), StoreError> {
        let mut pending = self.pending_batches();
        let committed = self.committed_revision();
        if !pending.is_empty() {
            return Err(StoreError::Tentative { committed });
        }
        if revision >= committed {
            return Ok(());
        }
        let records = self.records_between(revision + 1, committed, usize::MAX)?;
        let mut index = self.index_mut();
        for (key, rev) in index.remove_above(revision) {
            if let Some(r) = self.record_at(rev)? {
                index.set_latest_value(&key, rev, r.value.unwrap_or_default());
            }
        }
        self.committed.store(revision, Ordering::Release);
        drop(index);
        log::info!(
            "revisions {}..={committed} are tentative until a Primary decides",
            revision + 1
        );
        pending.push_back(Pending {
            upto: committed,
            batch: Batch {
                records,
                ..Batch::default()
            },
        });
        Ok(())
    }

    fn pending_batches(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        match self.pending.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, KeyIndex> {
        match self.index.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The writer connection, every commit fsynced.
    fn writer(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.writer_flushing(true)
    }

    /// The writer connection, its commits fsynced or not: only a batch the
    /// bucket holds before it is acknowledged may skip the flush.
    fn writer_flushing(
        &self,
        flushed: bool,
    ) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        let conn = match self.writer.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.relaxed.load(Ordering::Acquire) == flushed {
            if flushed {
                self.unmark(&conn)?;
                conn.pragma_update(None, "synchronous", "FULL")?;
            } else if let Some(boot) = &self.boot {
                unsynced::mark(self.dir(), boot)?;
                self.marked.store(true, Ordering::Relaxed);
                conn.pragma_update(None, "synchronous", "OFF")?;
                conn.pragma_update(None, "wal_autocheckpoint", UNFLUSHED_CHECKPOINT_PAGES)?;
            } else {
                conn.pragma_update(None, "synchronous", "NORMAL")?;
            }
            self.relaxed.store(!flushed, Ordering::Release);
        }
        Ok(conn)
    }

    /// Flushes what was written without flushes and takes the mark away;
    /// checkpoints are flushed again (the thread's, and the writer's past
    /// its threshold). Under the writer lock, `conn` its connection.
    fn unmark(&self, conn: &Connection) -> Result<(), StoreError> {
        if self.marked.load(Ordering::Relaxed) {
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(
                None,
                "wal_autocheckpoint",
                checkpoint::WRITER_CHECKPOINT_PAGES,
            )?;
            unsynced::clear(self.dir(), &self.path)?;
            self.marked.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The data directory, which holds the database and its mark.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Imports records written elsewhere (object storage, a Primary), with
    /// their revisions as they are, all in one SQLite transaction: `feed`
    /// hands batches to the [`Importer`] in revision order, and if it or any
    /// batch fails nothing is imported. Records at or below the latest
    /// revision must match what is stored; newer ones must continue it
    /// without a gap. Imported records are committed: once in SQLite they
    /// are applied to the index in batches (readers see the revision rise
    /// batch by batch); an error there comes after the SQLite commit, and
    /// reopening the store rebuilds the index from what was committed.
    /// Every local revision must be committed first.
    pub fn import_all<E: From<StoreError>>(
        &self,
        feed: impl FnOnce(&mut Importer<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.pending_batches().is_empty() {
            let committed = self.committed_revision();
            return Err(StoreError::Tentative { committed }.into());
        }
        let before = self.latest_revision();
        {
            let mut conn = self.writer()?;
            let imported = {
                let mut importer = Importer {
                    tx: sqlite::ImportTx::begin(&mut conn)?,
                    next: before + 1,
                };
                feed(&mut importer)?;
                importer.tx.commit()?;
                importer.next - (before + 1)
            };
            // A large import grows the write-ahead log to its own size, and
            // SQLite keeps the file that large: give the space back.
            if imported >= IMPORT_PUBLISH_BATCH as i64 {
                sqlite::truncate_wal(&conn)?;
            }
        }
        // Apply from the database in bounded batches: a restored snapshot
        // can be far larger than what should sit in memory at once.
        let mut from = before + 1;
        loop {
            let records = self.records_between(from, i64::MAX, IMPORT_PUBLISH_BATCH)?;
            let Some(last) = records.last().map(|r| r.revision) else {
                break;
            };
            from = last + 1;
            self.latest.fetch_max(last, Ordering::AcqRel);
            self.apply(&records, None, last);
        }
        Ok(())
    }

    /// Compacts at `revision` outside any batch (a replica told of its
    /// Primary's compaction): recorded in SQLite, then the index is trimmed
    /// and the discarded values are nulled. Idempotent; `revision` must be
    /// committed here.
    pub fn compact(&self, revision: i64) -> Result<(), StoreError> {
        if revision <= self.compacted_revision() {
            return Ok(());
        }
        if revision > self.committed_revision() {
            return Err(StoreError::FutureRevision);
        }
        sqlite::persist_compaction(&*self.writer()?, revision)?;
        let discarded = {
            let mut index = self.index_mut();
            let discarded = index.compact(revision);
            self.compacted.fetch_max(revision, Ordering::AcqRel);
            discarded
        };
        self.discard_values(&discarded)
    }

    /// Sets the compaction revision after a restore: the recorded one, or
    /// the one the rows imply, recorded from then on. Trims the index.
    pub fn seed_compaction(&self) -> Result<i64, StoreError> {
        let conn = self.writer()?;
        let mut revision = sqlite::compaction_revision(&conn)?;
        if revision == 0 {
            revision = sqlite::derive_compaction_revision(&conn)?;
            if revision > 0 {
                sqlite::persist_compaction(&conn, revision)?;
            }
        }
        drop(conn);
        if revision > 0 {
            let mut index = self.index_mut();
            index.compact(revision);
            self.compacted.fetch_max(revision, Ordering::AcqRel);
        }
        Ok(revision)
    }

    /// Row count equals the latest revision (no gaps).
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        let conn = self.writer()?;
        let latest = sqlite::latest_revision(&conn)?;
        let count = sqlite::record_count(&conn)?;
        if count != latest {
            return Err(StoreError::Integrity { count, latest });
        }
        Ok(())
    }

    /// Every record from `from` to `upto` in revision order, in pages
    /// (snapshots).
    pub fn for_each_record(
        &self,
        mut from: i64,
        upto: i64,
        mut visit: impl FnMut(&Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        while from <= upto {
            let page = self.records_between(from, upto, 10_000)?;
            let Some(last) = page.last().map(|r| r.revision) else {
                break;
            };
            for r in &page {
                visit(r)?;
            }
            from = last + 1;
        }
        Ok(())
    }

    /// Nulls the values compaction made unreachable (rows stay).
    pub fn discard_values(&self, revisions: &[i64]) -> Result<(), StoreError> {
        if revisions.is_empty() {
            return Ok(());
        }
        self.rewriting(|| sqlite::mark_compacted(&mut *self.writer()?, revisions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Revision `revision` of key "k" (created at 2).
    fn put(revision: i64) -> Record {
        Record {
            revision,
            key: Bytes::from_static(b"k"),
            created: revision == 2,
            create_revision: 2,
            prev_revision: if revision == 2 { 0 } else { revision - 1 },
            version: revision - 1,
            value: Some(Bytes::from(format!("v{revision}"))),
            created_at: Timestamp::default(),
            ..Record::internal("n")
        }
    }

    fn batch(records: Vec<Record>) -> Batch {
        Batch {
            records,
            ..Default::default()
        }
    }

    fn visible(store: &Store, at: i64) -> Option<i64> {
        store.index().get(b"k", at).map(|e| e.rev.revision)
    }

    /// The writer's `PRAGMA synchronous`: 0 OFF, 1 NORMAL, 2 FULL.
    fn synchronous(store: &Store) -> i64 {
        let conn = store.writer.lock().unwrap();
        conn.pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    }

    fn mark(dir: &Path, boot: &str) -> unsynced::Left {
        unsynced::left(dir, Some(boot)).unwrap()
    }

    #[test]
    fn only_batches_the_bucket_holds_skip_the_flush() {
        // With a boot id they flush nothing (OFF); without, the WAL's
        // append only (NORMAL).
        for (boot, relaxed) in [(Some("boot-1"), 0), (None, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_on_boot(dir.path(), boot.map(String::from)).unwrap();
            assert_eq!(synchronous(&store), 2);
            store
                .append_backed(batch(vec![Record::internal("n"), put(2)]))
                .unwrap();
            assert_eq!(synchronous(&store), relaxed, "the bucket holds it");
            store.commit(2);
            // Everything else is flushed again, whatever came before.
            store.append(batch(vec![put(3)])).unwrap();
            assert_eq!(synchronous(&store), 2);
            store.append_backed(batch(vec![put(4)])).unwrap();
            store.discard_above(3).unwrap();
            assert_eq!(synchronous(&store), 2, "an undo is flushed");
            store.append_backed(batch(vec![put(4)])).unwrap();
            store.commit(4);
            store.replicate(&[put(5)]).unwrap();
            assert_eq!(synchronous(&store), 2, "a replica's append is flushed");
        }
    }

    #[test]
    fn a_store_written_without_flushes_is_refused_on_another_boot() {
        let dir = tempfile::tempdir().unwrap();
        let boot = |id: &str| Some(id.to_string());
        let store = Store::open_on_boot(dir.path(), boot("boot-1")).unwrap();
        assert_eq!(mark(dir.path(), "boot-1"), unsynced::Left::Flushed);
        store
            .append_backed(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        store.commit(2);
        assert_eq!(mark(dir.path(), "boot-1"), unsynced::Left::ThisBoot);
        // The process dies (no close); the machine keeps running.
        std::mem::forget(store);
        let store = Store::open_on_boot(dir.path(), boot("boot-1")).unwrap();
        assert_eq!(store.latest_revision(), 2, "the kernel kept every page");
        assert_eq!(mark(dir.path(), "boot-1"), unsynced::Left::Flushed);
        store.append_backed(batch(vec![put(3)])).unwrap();
        store.commit(3);
        std::mem::forget(store);
        // The machine restarted too: the pages may be gone.
        match Store::open_on_boot(dir.path(), boot("boot-2")) {
            Err(StoreError::LeftUnsynced { boot }) => assert_eq!(boot, "boot-1"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("opened a store another boot left unflushed"),
        }
        // A store that cannot tell boots apart cannot trust it either.
        assert!(matches!(
            Store::open_on_boot(dir.path(), None),
            Err(StoreError::LeftUnsynced { .. })
        ));
    }

    #[test]
    fn a_flushed_commit_or_a_clean_close_takes_the_mark_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_on_boot(dir.path(), Some("boot-1".into())).unwrap();
        store
            .append_backed(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        store.commit(2);
        store.append(batch(vec![put(3)])).unwrap();
        store.commit(3);
        assert_eq!(mark(dir.path(), "boot-1"), unsynced::Left::Flushed);
        store.append_backed(batch(vec![put(4)])).unwrap();
        store.commit(4);
        assert_eq!(mark(dir.path(), "boot-1"), unsynced::Left::ThisBoot);
        drop(store);
        assert_eq!(mark(dir.path(), "boot-1"), unsynced::Left::Flushed);
        let reopened = Store::open_on_boot(dir.path(), Some("boot-2".into())).unwrap();
        assert_eq!(reopened.latest_revision(), 4);
    }

    #[test]
    fn without_flushes_the_writer_keeps_the_wal_short() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_on_boot(dir.path(), Some("boot-1".into())).unwrap();
        store
            .append_backed(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        for r in 3..5000 {
            store.append_backed(batch(vec![put(r)])).unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("db.sqlite3-wal"))
            .unwrap()
            .len();
        // Some 5,000 commits of a few pages each: far past the threshold
        // of flushed checkpoints (8,192 pages) if nothing folded them in.
        assert!(
            wal < 2 * UNFLUSHED_CHECKPOINT_PAGES as u64 * 4096,
            "the WAL grew to {wal} bytes"
        );
        assert_eq!(store.checkpoints.done(), 0, "no thread, no flushes");
    }

    #[test]
    fn the_wal_is_folded_into_the_database_off_the_commit_thread() {
        // Where commits are flushed at checkpoints (no boot id here).
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_on_boot(dir.path(), None).unwrap();
        let db = dir.path().join("db.sqlite3");
        let size = || std::fs::metadata(&db).unwrap().len();
        let before = size();
        store
            .append_backed(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        // Far fewer pages than the writer's own threshold, but enough
        // commits to wake the checkpoint thread.
        for r in 3..400 {
            store.append_backed(batch(vec![put(r)])).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.checkpoints.done() == 0 || size() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: the database file stayed at {before} bytes"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Every connection, the checkpoint thread's too, is closed when a
    /// store is: the last to close removes the WAL by its name, which a
    /// rebuild reuses at once for a new database.
    #[test]
    fn a_dropped_store_has_closed_the_checkpoint_threads_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_on_boot(dir.path(), None).unwrap();
        store
            .append_backed(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        for r in 3..400 {
            store.append_backed(batch(vec![put(r)])).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.checkpoints.done() == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The thread now pauses after its checkpoint, connection open.
        let wal = dir.path().join("db.sqlite3-wal");
        assert!(wal.exists());
        drop(store);
        assert!(
            !wal.exists(),
            "the WAL outlived the store: a connection was still open"
        );
    }

    #[test]
    fn a_compaction_outside_a_batch_is_recorded_and_trims_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_committed(batch(vec![Record::internal("n"), put(2), put(3)]))
            .unwrap();
        store.append(batch(vec![put(4)])).unwrap();
        assert!(matches!(store.compact(4), Err(StoreError::FutureRevision)));
        store.compact(3).unwrap();
        assert_eq!(store.compacted_revision(), 3);
        assert_eq!(visible(&store, 2), None, "history below 3 is gone");
        assert_eq!(store.record_at(2).unwrap().unwrap().value, None);
        store.compact(2).unwrap();
        assert_eq!(store.compacted_revision(), 3, "never moves back");
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.compacted_revision(), 3, "recorded in SQLite");
    }

    #[test]
    fn replicated_records_keep_matching_tentative_rows_and_replace_different_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_committed(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        // Tentative 3 and 4 from an earlier stream.
        store.append(batch(vec![put(3), put(4)])).unwrap();
        let other = |revision: i64| Record {
            value: Some(Bytes::from_static(b"other")),
            ..put(revision)
        };
        // A replay from 2: 2 is final and skipped, 3 matches and stays,
        // 4 differs: it and everything above go, the stream's 4 and 5 come.
        let upto = store
            .replicate(&[put(2), put(3), other(4), other(5)])
            .unwrap();
        assert_eq!(upto, 5);
        assert_eq!(
            (store.committed_revision(), store.latest_revision()),
            (2, 5)
        );
        let four = store.record_at(4).unwrap().unwrap();
        assert_eq!(four.value.as_deref(), Some(&b"other"[..]));
        store.commit(5);
        assert_eq!(visible(&store, 5), Some(5));
        // Duplicates of committed revisions change nothing; a gap is refused.
        assert_eq!(store.replicate(&[put(5)]).unwrap(), 5);
        let gap = store.replicate(&[put(7)]).unwrap_err();
        assert!(
            matches!(
                gap,
                StoreError::Gap {
                    expected: 6,
                    found: 7
                }
            ),
            "{gap}"
        );
        assert_eq!(store.latest_revision(), 5);
    }

    #[test]
    fn appended_records_stay_invisible_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append(batch(vec![Record::internal("n"), put(2)]))
            .unwrap();
        assert_eq!(store.latest_revision(), 2);
        assert_eq!(store.committed_revision(), 0);
        assert_eq!(visible(&store, 2), None, "tentative: not in the index");
        assert_eq!(
            store.records_between(1, 2, 10).unwrap().len(),
            2,
            "but durable"
        );

        assert!(store.commit(1).is_empty());
        assert_eq!(store.committed_revision(), 1);
        assert_eq!(visible(&store, 2), None);
        store.commit(2);
        assert_eq!(
            (store.committed_revision(), visible(&store, 2)),
            (2, Some(2))
        );

        let grant = Batch {
            leases: vec![LeaseChange::Grant { id: 7, ttl: 10 }],
            ..batch(vec![put(3)])
        };
        store.append(grant).unwrap();
        assert!(
            !store.lease_exists(7),
            "a tentative grant is not a lease yet"
        );
        let gap = store.append(batch(vec![put(5)])).unwrap_err();
        assert!(
            matches!(
                gap,
                StoreError::NotNext {
                    expected: 4,
                    found: 5
                }
            ),
            "{gap}"
        );
        // Committing beyond the latest revision stops at the latest.
        store.commit(9);
        assert_eq!(store.committed_revision(), 3);
        assert!(store.lease_exists(7));
        assert_eq!(visible(&store, 3), Some(3));
    }

    #[test]
    fn discarding_tentative_revisions_undoes_them_durably() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append(batch(vec![Record::internal("n"), put(2), put(3)]))
            .unwrap();
        store.commit(3);
        store
            .append(Batch {
                leases: vec![LeaseChange::Grant { id: 9, ttl: 10 }],
                ..batch(vec![put(4)])
            })
            .unwrap();
        store
            .append(Batch {
                compaction: Some(3),
                ..batch(vec![put(5)])
            })
            .unwrap();
        let refused = store.discard_above(2).unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::DiscardCommitted {
                    above: 2,
                    committed: 3
                }
            ),
            "{refused}"
        );
        assert_eq!(
            store.latest_revision(),
            5,
            "a refused discard changes nothing"
        );

        store.discard_above(3).unwrap();
        assert_eq!(store.latest_revision(), 3);
        assert!(store.records_between(4, 5, 10).unwrap().is_empty());
        // The same revisions can be written again (a retried batch).
        store.append(batch(vec![put(4)])).unwrap();
        store.commit(4);
        assert_eq!(visible(&store, 4), Some(4));
        assert!(!store.lease_exists(9));
        assert_eq!(store.compacted_revision(), 0);

        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.latest_revision(), 4);
        assert!(
            !reopened.lease_exists(9),
            "the discarded grant is gone from SQLite"
        );
        assert_eq!(
            reopened.compacted_revision(),
            0,
            "the discarded compaction is gone from SQLite"
        );
    }

    #[test]
    fn a_commit_or_discard_inside_a_batch_splits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_committed(batch(vec![Record::internal("n")]))
            .unwrap();
        let with_lease = |records| Batch {
            leases: vec![LeaseChange::Grant { id: 5, ttl: 10 }],
            ..batch(records)
        };
        store
            .append(with_lease(vec![put(2), put(3), put(4)]))
            .unwrap();
        store.commit(3);
        assert_eq!(store.committed_revision(), 3);
        assert_eq!(visible(&store, 3), Some(3));
        assert_eq!(visible(&store, 4), Some(3), "4 is not committed yet");
        assert!(!store.lease_exists(5), "the batch is not whole yet");
        store.discard_above(3).unwrap();
        assert_eq!(store.latest_revision(), 3);
        store.commit(4);
        assert_eq!(store.committed_revision(), 3);
        assert!(!store.lease_exists(5), "undone with the rest of its batch");

        store
            .append(with_lease(vec![put(4), put(5), put(6)]))
            .unwrap();
        let refused: Result<(), StoreError> = store.import_all(|_| Ok(()));
        assert!(
            matches!(refused, Err(StoreError::Tentative { committed: 3 })),
            "{refused:?}"
        );
        store.discard_above(4).unwrap();
        assert_eq!(store.latest_revision(), 4);
        store.commit(6);
        assert_eq!(
            (store.committed_revision(), visible(&store, 9)),
            (4, Some(4))
        );
        assert!(!store.lease_exists(5));
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.latest_revision(), 4);
        assert!(!reopened.lease_exists(5));
    }

    #[test]
    fn committed_rows_can_be_made_tentative_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_committed(batch(vec![Record::internal("n"), put(2), put(3), put(4)]))
            .unwrap();
        store.demote_above(2).unwrap();
        assert_eq!(
            (store.latest_revision(), store.committed_revision()),
            (4, 2)
        );
        assert_eq!(visible(&store, 9), Some(2));
        let e = store.index().get(b"k", 9).map(|e| e.value.cloned());
        assert_eq!(e, Some(Some(Bytes::from_static(b"v2"))), "value reloaded");
        // Either committed again (a Primary adopts them) ...
        store.commit(4);
        assert_eq!(visible(&store, 9), Some(4));
        // ... or discarded (the bucket says otherwise).
        store.demote_above(3).unwrap();
        assert!(matches!(
            store.demote_above(1),
            Err(StoreError::Tentative { committed: 3 })
        ));
        store.discard_above(3).unwrap();
        assert_eq!((store.latest_revision(), visible(&store, 9)), (3, Some(3)));
    }

    #[test]
    fn an_import_that_fails_part_way_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed: Result<(), StoreError> = store.import_all(|importer| {
            importer.add(&[Record::internal("n"), put(2), put(3)])?;
            importer.add(&[put(5)]) // a gap
        });
        assert!(
            matches!(
                failed,
                Err(StoreError::Gap {
                    expected: 4,
                    found: 5
                })
            ),
            "{failed:?}"
        );
        assert_eq!(store.latest_revision(), 0);
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().latest_revision(), 0);

        let store = Store::open(dir.path()).unwrap();
        store
            .import_all(|importer| {
                importer.add(&[Record::internal("n"), put(2)])?;
                importer.add(&[put(2), put(3)]) // overlap: the same write again
            })
            .unwrap();
        assert_eq!(store.latest_revision(), 3);
        let conflict = store.import_all(|importer| {
            importer.add(&[Record {
                value: Some(Bytes::from_static(b"other")),
                ..put(3)
            }])
        });
        assert!(
            matches!(conflict, Err(StoreError::Conflict { revision: 3 })),
            "{conflict:?}"
        );
        assert_eq!(store.latest_revision(), 3);
    }

    #[test]
    fn a_large_import_gives_the_write_ahead_log_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let records: Vec<Record> = std::iter::once(Record::internal("n"))
            .chain((2..=IMPORT_PUBLISH_BATCH as i64 + 1).map(put))
            .collect();
        store.import_all(|importer| importer.add(&records)).unwrap();
        assert_eq!(store.latest_revision(), IMPORT_PUBLISH_BATCH as i64 + 1);
        let wal = dir.path().join("db.sqlite3-wal");
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert_eq!(size, 0, "{} after the import", wal.display());
        let got = store.records_between(2, 2, 1).unwrap();
        assert_eq!(got[0].value.as_deref(), Some(&b"v2"[..]));
    }

    #[test]
    fn hash_kv_follows_the_history_and_its_compaction() {
        let history = |last_value: &str| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut records = vec![Record::internal("n"), put(2), put(3)];
            let mut last = put(4);
            last.value = Some(Bytes::from(last_value.to_string()));
            records.push(last);
            store.append_committed(batch(records)).unwrap();
            (dir, store)
        };
        let (_a, a) = history("v4");
        let (_b, b) = history("v4");
        let (_c, c) = history("other");
        let (hash, compacted, at) = a.hash_kv(0).unwrap();
        assert_eq!((compacted, at), (0, 4));
        assert_eq!(b.hash_kv(0).unwrap().0, hash, "same history, same hash");
        assert_ne!(c.hash_kv(0).unwrap().0, hash, "a different value");
        assert_eq!(
            c.hash_kv(3).unwrap().0,
            a.hash_kv(3).unwrap().0,
            "same up to 3"
        );
        assert_ne!(a.hash_kv(3).unwrap().0, hash);
        assert!(matches!(a.hash_kv(5), Err(StoreError::FutureRevision)));
        a.compact(3).unwrap();
        b.compact(3).unwrap();
        assert!(matches!(a.hash_kv(2), Err(StoreError::Compacted)));
        let (after, compacted, _) = a.hash_kv(0).unwrap();
        assert_eq!(compacted, 3);
        assert_eq!(b.hash_kv(0).unwrap().0, after, "compacted alike, same hash");
    }
}
