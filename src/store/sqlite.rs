//! The SQLite file `db.sqlite3`: one row per revision (the reference
//! schema), the accepted compaction revisions, and our lease table. WAL with
//! synchronous=FULL, so a commit is on disk when it returns (the store
//! relaxes it for batches the bucket holds, see `Store::append_backed`).

use std::path::Path;

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::record::{Record, Timestamp};
use super::StoreError;

/// Schema version kept in SQLite's user_version (the reference's value).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    revision INTEGER NOT NULL PRIMARY KEY,
    key BLOB NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    dek INTEGER NOT NULL,
    value BLOB,
    created_at TEXT NOT NULL,
    compacted_at TEXT,
    leader_id TEXT NOT NULL,
    replicated_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS records_key_create_rev_prev_rev_uindex
    ON records (key, create_revision, prev_revision);
CREATE TABLE IF NOT EXISTS compactions (
    compaction_revision INTEGER NOT NULL PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER NOT NULL PRIMARY KEY,
    ttl INTEGER NOT NULL,
    granted_at TEXT NOT NULL
);
";

const RECORD_COLUMNS: &str = "revision, key, created, deleted, create_revision, prev_revision, \
     version, lease, dek, value, created_at, compacted_at, leader_id, replicated_at";

/// A change to the lease table, committed with the records of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Grant { id: i64, ttl: i64 },
    Revoke { id: i64 },
}

/// A lease row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: i64,
    pub ttl: i64,
    pub granted_at: Timestamp,
}

/// Opens (creating if needed) the database for writing and checks the
/// schema version.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The checkpoint thread folds the WAL in; the writer only past this.
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        super::checkpoint::WRITER_CHECKPOINT_PAGES,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    match version {
        0 => conn.pragma_update(None, "user_version", SCHEMA_VERSION)?,
        SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::SchemaVersion {
                found: other,
                expected: SCHEMA_VERSION,
            })
        }
    }
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Opens a read-only connection for concurrent reads (WAL readers never
/// block the writer).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn ts_text(t: &Timestamp) -> String {
    t.to_rfc3339()
}

fn row_to_record(row: &Row<'_>) -> rusqlite::Result<Record> {
    let opt_ts = |s: Option<String>| s.as_deref().and_then(Timestamp::parse_rfc3339);
    Ok(Record {
        revision: row.get(0)?,
        key: Bytes::from(row.get::<_, Vec<u8>>(1)?),
        created: row.get::<_, i64>(2)? != 0,
        deleted: row.get::<_, i64>(3)? != 0,
        create_revision: row.get(4)?,
        prev_revision: row.get(5)?,
        version: row.get(6)?,
        lease: row.get(7)?,
        dek: row.get(8)?,
        value: row.get::<_, Option<Vec<u8>>>(9)?.map(Bytes::from),
        created_at: opt_ts(row.get(10)?).unwrap_or_default(),
        compacted_at: opt_ts(row.get(11)?),
        leader_id: row.get(12)?,
        replicated_at: opt_ts(row.get(13)?),
    })
}

/// Runs an INSERT of all 14 columns (in RECORD_COLUMNS order) for `r`.
fn insert_record(stmt: &mut rusqlite::CachedStatement<'_>, r: &Record) -> rusqlite::Result<usize> {
    stmt.execute(params![
        r.revision,
        r.key.as_ref(),
        r.created as i64,
        r.deleted as i64,
        r.create_revision,
        r.prev_revision,
        r.version,
        r.lease,
        r.dek,
        r.value.as_deref(),
        ts_text(&r.created_at),
        r.compacted_at.as_ref().map(ts_text),
        r.leader_id,
        r.replicated_at.as_ref().map(ts_text),
    ])
}

/// Inserts records, lease changes and an optional compaction revision in
/// one transaction; returns after the commit is fsynced.
pub fn commit_batch(
    conn: &mut Connection,
    records: &[Record],
    leases: &[LeaseChange],
    compaction: Option<i64>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(&format!(
            "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))?;
        for r in records {
            insert_record(&mut insert, r)?;
        }
        for change in leases {
            match change {
                LeaseChange::Grant { id, ttl } => {
                    tx.prepare_cached(
                        "INSERT INTO leases (id, ttl, granted_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![
                        id,
                        ttl,
                        Timestamp::now().to_rfc3339()
                    ])?;
                }
                LeaseChange::Revoke { id } => {
                    tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?
                        .execute(params![id])?;
                }
            }
        }
        if let Some(rev) = compaction {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO compactions (compaction_revision, created_at) VALUES (?1, ?2)",
            )?
            .execute(params![rev, Timestamp::now().to_rfc3339()])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Outcome of importing records that may already be present.
#[derive(Debug, PartialEq, Eq)]
pub enum ImportConflict {
    /// A different record already holds this revision.
    Different(i64),
}

/// A transaction that inserts records exactly as given (replicas, restore).
/// Nothing is visible to other connections until [`ImportTx::commit`];
/// dropping it uncommitted rolls everything back.
pub struct ImportTx<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl<'c> ImportTx<'c> {
    pub fn begin(conn: &'c mut Connection) -> Result<ImportTx<'c>, StoreError> {
        Ok(ImportTx {
            tx: conn.transaction()?,
        })
    }

    /// Inserts records. A revision that already exists must hold the same
    /// write (idempotent import); otherwise the conflicting revision is
    /// returned and the caller should drop the transaction.
    pub fn insert(&self, records: &[Record]) -> Result<Result<(), ImportConflict>, StoreError> {
        let mut insert = self.tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))?;
        let mut existing = self.tx.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE revision = ?1"
        ))?;
        for r in records {
            let inserted = insert_record(&mut insert, r)?;
            if inserted == 0 {
                let same = existing
                    .query_row([r.revision], row_to_record)
                    .optional()?
                    .is_some_and(|e| e.same_write(r));
                if !same {
                    return Ok(Err(ImportConflict::Different(r.revision)));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Commits (fsynced on return).
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }
}

/// Checkpoints the write-ahead log into the database and truncates it.
pub fn truncate_wal(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// What undoing tentative batches removes or restores.
#[derive(Debug, Default)]
pub struct Undo {
    /// Every record at or above this revision goes.
    pub records_from: i64,
    /// Leases whose grant is undone.
    pub granted: Vec<i64>,
    /// Leases whose revocation is undone (their rows come back).
    pub revoked: Vec<LeaseRow>,
    /// Compaction revisions that were never accepted after all.
    pub compactions: Vec<i64>,
}

/// Undoes tentative batches in one transaction.
pub fn undo(conn: &mut Connection, u: &Undo) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM records WHERE revision >= ?1", [u.records_from])?;
    for id in &u.granted {
        tx.execute("DELETE FROM leases WHERE id = ?1", [id])?;
    }
    for l in &u.revoked {
        tx.execute(
            "INSERT OR REPLACE INTO leases (id, ttl, granted_at) VALUES (?1, ?2, ?3)",
            params![l.id, l.ttl, l.granted_at.to_rfc3339()],
        )?;
    }
    for c in &u.compactions {
        tx.execute(
            "DELETE FROM compactions WHERE compaction_revision = ?1",
            [c],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Records the compaction revision (idempotent).
pub fn persist_compaction(conn: &Connection, revision: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO compactions (compaction_revision, created_at) VALUES (?1, ?2)",
        params![revision, Timestamp::now().to_rfc3339()],
    )?;
    Ok(())
}

/// The compaction revision implied by the rows when none was recorded: one
/// below the lowest uncompacted revision (everything if all are compacted).
pub fn derive_compaction_revision(conn: &Connection) -> Result<i64, StoreError> {
    let lowest: Option<i64> = conn.query_row(
        "SELECT MIN(revision) FROM records WHERE compacted_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(match lowest {
        Some(r) if r <= 1 => 0,
        Some(r) => r - 1,
        None => latest_revision(conn)?,
    })
}

/// Discards the values of the given revisions (compaction). Rows are kept so
/// revisions stay contiguous.
pub fn mark_compacted(conn: &mut Connection, revisions: &[i64]) -> Result<(), StoreError> {
    let now = Timestamp::now().to_rfc3339();
    for batch in revisions.chunks(10_000) {
        let tx = conn.transaction()?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE records SET value = NULL, compacted_at = ?1 WHERE revision = ?2 AND compacted_at IS NULL",
            )?;
            for rev in batch {
                update.execute(params![now, rev])?;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

/// Visits every record in revision order without its value (index build).
pub fn scan_without_values(
    conn: &Connection,
    mut visit: impl FnMut(Record),
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM records ORDER BY revision",
        RECORD_COLUMNS.replace("value", "NULL")
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        visit(row_to_record(row)?);
    }
    Ok(())
}

/// The full record at one revision.
pub fn record_at(conn: &Connection, revision: i64) -> Result<Option<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE revision = ?1"
    ))?;
    Ok(stmt.query_row([revision], row_to_record).optional()?)
}

/// Records with from <= revision <= to, ascending, at most `limit`.
pub fn records_between(
    conn: &Connection,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE revision >= ?1 AND revision <= ?2 ORDER BY revision LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![from, to, limit as i64], row_to_record)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The value stored at a revision and whether compaction discarded it.
pub fn value_at(
    conn: &Connection,
    revision: i64,
) -> Result<Option<(Option<Bytes>, bool)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT value, compacted_at IS NOT NULL FROM records WHERE revision = ?1",
    )?;
    Ok(stmt
        .query_row([revision], |r| {
            Ok((
                r.get::<_, Option<Vec<u8>>>(0)?.map(Bytes::from),
                r.get::<_, bool>(1)?,
            ))
        })
        .optional()?)
}

/// Highest revision, 0 when empty.
pub fn latest_revision(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(revision), 0) FROM records", [], |r| {
            r.get(0)
        })?,
    )
}

/// Number of rows (integrity check: equals the latest revision).
pub fn record_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?)
}

/// Highest accepted compaction revision, 0 when none.
pub fn compaction_revision(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(compaction_revision), 0) FROM compactions",
        [],
        |r| r.get(0),
    )?)
}

/// Replaces the whole lease table in one transaction.
pub fn replace_leases(conn: &mut Connection, rows: &[LeaseRow]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM leases", [])?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO leases (id, ttl, granted_at) VALUES (?1, ?2, ?3)")?;
        for r in rows {
            insert.execute(params![r.id, r.ttl, r.granted_at.to_rfc3339()])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every lease row.
pub fn leases(conn: &Connection) -> Result<Vec<LeaseRow>, StoreError> {
    let mut stmt = conn.prepare("SELECT id, ttl, granted_at FROM leases ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        let granted: String = r.get(2)?;
        Ok(LeaseRow {
            id: r.get(0)?,
            ttl: r.get(1)?,
            granted_at: Timestamp::parse_rfc3339(&granted).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Reclaims free pages: the WAL is folded into the database, the database
/// is rebuilt without free pages, and the WAL is emptied again.
pub fn defragment(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.execute_batch("VACUUM")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// (db_size, db_size_in_use) in bytes.
pub fn db_size(conn: &Connection) -> Result<(i64, i64), StoreError> {
    let page_count: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok((page_count * page_size, (page_count - free) * page_size))
}
