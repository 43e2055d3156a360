//! The fs provider's journal: one file every writing process appends to
//! under an exclusive lock. A small object is durable once its record (key
//! and contents) is flushed here; its own file is then moved into place
//! without a flush of its own, and a crash of the machine that loses that
//! file is repaired from the journal when the store is next opened. One
//! flush of an append per write, instead of a file flush plus a directory
//! flush in series.
//!
//! Layout: a header block (magic, epoch, end of the records when it was
//! written; each locker reads on from the end it last saw), then records
//! from HEADER_SIZE on. A record is `len u32 | crc u64 | body` with body
//! `epoch u64 | kind u8 | key_len u32 | key | data` and the CRC-64/XZ of the
//! body. Records end at the first one that is cut, fails its CRC or belongs
//! to another epoch. A checkpoint flushes the whole filesystem and starts a
//! new (random) epoch, which empties the journal.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Seek;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::super::CRC64;

pub const JOURNAL_FILE: &str = ".netsy-journal";

/// Room for the header; records start here.
const HEADER_SIZE: u64 = 4096;
const HEADER_LEN: usize = 40;
const MAGIC: &[u8; 8] = b"NETSYJN1";
const PREFIX_LEN: usize = 12;

/// The journal is checkpointed when a record would take it past this.
pub const JOURNAL_LIMIT: u64 = 16 << 20;
/// Past this, a thread of its own flushes the filesystem ahead of the
/// checkpoint, outside the lock: the checkpoint's own flush, which every
/// writer waits for, then finds little left to write (at 16 clients it
/// took 74-335 ms when it found everything, 24-39 ms after a flush ahead).
const PREFLUSH_AT: u64 = JOURNAL_LIMIT / 4 * 3;
/// Larger objects are flushed in their own file instead (see Record::Durable).
pub const INLINE_LIMIT: usize = 1 << 20;
/// The file is grown ahead of the records by this much at a time, with
/// zeros (where records end): a flush of an append that stays inside the
/// file writes its data only, where one that grows the file must also write
/// the file's size (some 60-90 µs more per flush on ext4).
const GROW_STEP: u64 = 1 << 20;

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// Its file now holds these contents.
    Put { key: String, data: Cow<'a, [u8]> },
    /// Its file was flushed on its own (a large object): earlier records
    /// of the key no longer say what it holds.
    Durable { key: String },
    /// Its file was removed.
    Delete { key: String },
}

impl Record<'_> {
    fn kind(&self) -> u8 {
        match self {
            Record::Put { .. } => 1,
            Record::Durable { .. } => 2,
            Record::Delete { .. } => 3,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Record::Put { key, .. } | Record::Durable { key } | Record::Delete { key } => key,
        }
    }

    /// The record's bytes up to its contents, and its contents: written
    /// as two pieces so an object's contents are not copied once more.
    fn encode(&self, epoch: u64) -> (Vec<u8>, &[u8]) {
        let key = self.key().as_bytes();
        let data: &[u8] = match self {
            Record::Put { data, .. } => data,
            _ => &[],
        };
        let body_len = 8 + 1 + 4 + key.len() + data.len();
        let mut head = Vec::with_capacity(PREFIX_LEN + 13 + key.len());
        head.extend_from_slice(&(body_len as u32).to_le_bytes());
        head.extend_from_slice(&[0; 8]);
        head.extend_from_slice(&epoch.to_le_bytes());
        head.push(self.kind());
        head.extend_from_slice(&(key.len() as u32).to_le_bytes());
        head.extend_from_slice(key);
        let mut crc = CRC64.digest();
        crc.update(&head[PREFIX_LEN..]);
        crc.update(data);
        head[4..12].copy_from_slice(&crc.finalize().to_le_bytes());
        (head, data)
    }

    /// How many bytes the record takes in the journal.
    fn encoded_len(&self) -> u64 {
        let data = match self {
            Record::Put { data, .. } => data.len(),
            _ => 0,
        };
        (PREFIX_LEN + 13 + self.key().len() + data) as u64
    }

    /// The record at the start of `buf`, with its length; None where the
    /// records end.
    fn decode(buf: &[u8], epoch: u64) -> Option<(Record<'_>, usize)> {
        let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        let crc = u64::from_le_bytes(buf.get(4..12)?.try_into().ok()?);
        let body = buf.get(PREFIX_LEN..PREFIX_LEN.checked_add(len)?)?;
        if len < 13 || CRC64.checksum(body) != crc {
            return None;
        }
        if u64::from_le_bytes(body[..8].try_into().ok()?) != epoch {
            return None;
        }
        let kind = body[8];
        let key_len = u32::from_le_bytes(body[9..13].try_into().ok()?) as usize;
        let key = std::str::from_utf8(body.get(13..13usize.checked_add(key_len)?)?)
            .ok()?
            .to_string();
        let data = &body[13 + key_len..];
        let record = match kind {
            1 => Record::Put {
                key,
                data: Cow::Borrowed(data),
            },
            2 => Record::Durable { key },
            3 => Record::Delete { key },
            _ => return None,
        };
        Some((record, PREFIX_LEN + len))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    epoch: u64,
    /// Where the records ended when the header was written (a checkpoint):
    /// appends do not rewrite it, so writers read on past it.
    end: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        out[16..24].copy_from_slice(&self.end.to_le_bytes());
        let crc = CRC64.checksum(&out[..24]);
        out[24..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_LEN || &buf[..8] != MAGIC {
            return None;
        }
        let crc = u64::from_le_bytes(buf[24..32].try_into().ok()?);
        if CRC64.checksum(&buf[..24]) != crc {
            return None;
        }
        let header = Header {
            epoch: u64::from_le_bytes(buf[8..16].try_into().ok()?),
            end: u64::from_le_bytes(buf[16..24].try_into().ok()?),
        };
        (header.end >= HEADER_SIZE).then_some(header)
    }
}

/// A fresh epoch: random enough that records of an earlier one (left in
/// the file after a checkpoint, or after a header that was cut) never match.
fn new_epoch(old: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = CRC64.checksum(
        &[
            nanos.to_le_bytes(),
            u64::from(std::process::id()).to_le_bytes(),
        ]
        .concat(),
    );
    if mixed == old || mixed == 0 {
        mixed.wrapping_add(1)
    } else {
        mixed
    }
}

pub struct Journal {
    file: File,
    /// The file is known to be at least this long (grown with zeros).
    grown_to: AtomicU64,
    /// The epoch whose records last passed PREFLUSH_AT in this process.
    preflushed: AtomicU64,
    /// Orders this process's threads (the file lock orders processes).
    threads: Mutex<Threads>,
    freed: Condvar,
}

struct Threads {
    /// A thread of this process holds the journal.
    busy: bool,
    /// Where this process last saw the records end.
    seen: Header,
    /// Threads waiting for the turn: the turn is handed on without a
    /// wake (a system call) when there is none.
    waiting: usize,
}

/// The journal, locked against every other writer. `header.end` is where
/// the records end, found by reading on from where this process (or the
/// header, written only at a checkpoint) last saw them end. It may be
/// handed to another thread (a write finished where it was not started).
pub struct Held<'a> {
    journal: &'a Journal,
    header: Header,
    /// Given back after the file lock (fields drop after `drop`).
    turn: Turn<'a>,
}

/// This process's turn at the journal, given back when dropped; the file
/// lock is taken on top of it.
struct Turn<'a> {
    journal: &'a Journal,
    /// Where the records end when the turn is given back.
    seen: Header,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // A poisoned lock still hands the turn on (nothing in it can be
        // half-changed: two plain fields).
        let mut threads = self
            .journal
            .threads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        threads.busy = false;
        threads.seen = self.seen;
        let waiting = threads.waiting > 0;
        drop(threads);
        if waiting {
            self.journal.freed.notify_one();
        }
    }
}

impl Journal {
    pub fn open(root: &Path) -> std::io::Result<Journal> {
        let path = root.join(JOURNAL_FILE);
        if !path.exists() {
            // Best effort: where it fails, the journal is made as any file
            // below (and a directory that takes no files fails there).
            let _ = super::alone::make_journal(root, &path);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // The journal's own name must survive a crash before any record
        // in it counts (a new file's flush does not flush its directory).
        File::open(root)?.sync_all()?;
        Ok(Journal {
            file,
            grown_to: AtomicU64::new(0),
            preflushed: AtomicU64::new(0),
            threads: Mutex::new(Threads {
                busy: false,
                seen: Header { epoch: 0, end: 0 },
                waiting: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// Flushes the filesystem on a thread of its own (best effort: where the
    /// thread cannot start, the checkpoint flushes everything itself).
    fn preflush(&self) {
        let Ok(file) = self.file.try_clone() else {
            return;
        };
        let started = crate::background::spawn(
            "netsy-fs-preflush",
            crate::background::NICE_IDLE,
            move || {
                if let Err(e) = sync_filesystem(&file) {
                    log::debug!("flushing the fs provider's files ahead of a checkpoint: {e}");
                }
            },
        );
        if let Err(e) = started {
            log::debug!("cannot start the fs provider's flush ahead of a checkpoint: {e}");
        }
    }

    #[cfg(test)]
    fn preflushed_epoch(&self) -> u64 {
        self.preflushed.load(Ordering::Relaxed)
    }

    /// This process's turn, waiting for it unless `wait` is false.
    fn turn(&self, wait: bool) -> std::io::Result<Option<Turn<'_>>> {
        let poisoned = |_| std::io::Error::other("journal lock poisoned");
        let mut threads = self.threads.lock().map_err(poisoned)?;
        while threads.busy {
            if !wait {
                return Ok(None);
            }
            threads.waiting += 1;
            let woken = self.freed.wait(threads);
            threads = woken.map_err(poisoned)?;
            threads.waiting -= 1;
        }
        threads.busy = true;
        Ok(Some(Turn {
            journal: self,
            seen: threads.seen,
        }))
    }

    /// Takes the lock. A journal without a valid header (new, or its header
    /// cut by a crash during a checkpoint, which comes only after the flush
    /// of everything) holds nothing, and is given a header.
    pub fn lock(&self) -> std::io::Result<Held<'_>> {
        match self.turn(true)? {
            Some(turn) => self.lock_file(turn),
            None => Err(std::io::Error::other("journal turn not given")),
        }
    }

    /// The lock, unless another thread of this process holds it (that
    /// thread may be the caller's own, with a write staged).
    pub fn try_lock(&self) -> std::io::Result<Option<Held<'_>>> {
        match self.turn(false)? {
            Some(turn) => self.lock_file(turn).map(Some),
            None => Ok(None),
        }
    }

    fn lock_file<'a>(&'a self, turn: Turn<'a>) -> std::io::Result<Held<'a>> {
        self.file.lock()?;
        let mut buf = [0u8; HEADER_LEN];
        let read = self.file.read_at(&mut buf, 0).unwrap_or(0);
        let header = match Header::decode(&buf[..read]) {
            Some(h) => h,
            None => {
                let fresh = Header {
                    epoch: new_epoch(0),
                    end: HEADER_SIZE,
                };
                let written = self
                    .file
                    .write_all_at(&fresh.encode(), 0)
                    .and_then(|()| self.file.sync_all());
                if let Err(e) = written {
                    let _ = self.file.unlock();
                    return Err(e);
                }
                fresh
            }
        };
        let seen = turn.seen;
        let from = if seen.epoch == header.epoch {
            seen.end.max(header.end)
        } else {
            header.end
        };
        let end = match self.records_end(from, header.epoch) {
            Ok(end) => end,
            Err(e) => {
                let _ = self.file.unlock();
                return Err(e);
            }
        };
        Ok(Held {
            journal: self,
            header: Header { end, ..header },
            turn,
        })
    }

    /// Where the records of `epoch` that continue at `from` end: another
    /// process may have appended since this one last looked.
    fn records_end(&self, mut from: u64, epoch: u64) -> std::io::Result<u64> {
        let mut buf = Vec::new();
        while let Some((_, used)) = read_record(&self.file, from, epoch, &mut buf)? {
            from += used as u64;
        }
        Ok(from)
    }
}

/// The record of `epoch` at `at` (read into `buf`), with its length; None
/// where the records end. The length and epoch are read first: after a
/// checkpoint an end is usually followed by an older epoch's record, not
/// worth reading whole.
fn read_record<'b>(
    file: &File,
    at: u64,
    epoch: u64,
    buf: &'b mut Vec<u8>,
) -> std::io::Result<Option<(Record<'b>, usize)>> {
    let mut start = [0u8; PREFIX_LEN + 8];
    if read_up_to(file, &mut start, at)? < start.len() {
        return Ok(None);
    }
    let body_len = u64::from(u32::from_le_bytes([start[0], start[1], start[2], start[3]]));
    let mut record_epoch = [0u8; 8];
    record_epoch.copy_from_slice(&start[PREFIX_LEN..]);
    let record_epoch = u64::from_le_bytes(record_epoch);
    if record_epoch != epoch || body_len > JOURNAL_LIMIT {
        return Ok(None);
    }
    buf.resize(PREFIX_LEN + body_len as usize, 0);
    let read = read_up_to(file, buf, at)?;
    Ok(Record::decode(&buf[..read], epoch))
}

impl Held<'_> {
    /// The records of the current epoch, in order, with their contents.
    #[cfg(test)]
    pub fn records(&self) -> std::io::Result<Vec<Record<'static>>> {
        let mut out = Vec::new();
        self.each_record(|record, _| {
            out.push(match record {
                Record::Put { key, data } => Record::Put {
                    key: key.clone(),
                    data: Cow::Owned(data.to_vec()),
                },
                Record::Durable { key } => Record::Durable { key: key.clone() },
                Record::Delete { key } => Record::Delete { key: key.clone() },
            })
        })?;
        Ok(out)
    }

    /// Visits the records of the current epoch in order, each with where
    /// its contents start in the journal ([`Held::contents`]), reading one
    /// record at a time (a full journal is not held in memory).
    pub fn each_record(&self, mut visit: impl FnMut(&Record<'_>, u64)) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut at = HEADER_SIZE;
        while let Some((record, used)) =
            read_record(&self.journal.file, at, self.header.epoch, &mut buf)?
        {
            let contents = match &record {
                Record::Put { data, .. } => data.len(),
                _ => 0,
            };
            visit(&record, at + (used - contents) as u64);
            at += used as u64;
        }
        Ok(())
    }

    /// `len` bytes of the journal from `at` (a record's contents).
    pub fn contents(&self, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut data = vec![0u8; len];
        self.journal.file.read_exact_at(&mut data, at)?;
        Ok(data)
    }

    /// Appends a record; with `flush`, it (and every record before it) is
    /// durable when this returns. A full journal is checkpointed first.
    pub fn append(&mut self, record: &Record, flush: bool) -> std::io::Result<()> {
        let len = record.encoded_len();
        if self.header.end + len > JOURNAL_LIMIT && self.header.end > HEADER_SIZE {
            self.checkpoint()?;
            return self.append(record, flush);
        }
        self.grow_past(self.header.end + len)?;
        let (head, data) = record.encode(self.header.epoch);
        let file = &self.journal.file;
        file.write_all_at(&head, self.header.end)?;
        file.write_all_at(data, self.header.end + head.len() as u64)?;
        self.header.end += len;
        // The header is not rewritten: the next locker reads on from where
        // it last saw the end (one page flushed per append, not two).
        if flush {
            file.sync_data()?;
        }
        if self.header.end >= PREFLUSH_AT {
            let epoch = self.header.epoch;
            if self.journal.preflushed.swap(epoch, Ordering::Relaxed) != epoch {
                self.journal.preflush();
            }
        }
        Ok(())
    }

    /// Makes the file at least `end` long, growing it with zeros to the
    /// next GROW_STEP. Only under the lock: zeros written past the end
    /// another process last saw would otherwise cut its records.
    fn grow_past(&self, end: u64) -> std::io::Result<()> {
        let grown_to = &self.journal.grown_to;
        if end <= grown_to.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut file = &self.journal.file;
        // Its length by seeking (appends use offsets, not the position),
        // not by asking for its attributes: see the fs provider's spares.
        let mut len = file.seek(std::io::SeekFrom::End(0))?;
        if len < end {
            let target = end.div_ceil(GROW_STEP) * GROW_STEP;
            let zeros = vec![0u8; (target - len).min(GROW_STEP) as usize];
            while len < target {
                let piece = (target - len).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..piece], len)?;
                len += piece as u64;
            }
        }
        grown_to.store(len, Ordering::Relaxed);
        Ok(())
    }

    /// Appends a record without flushing it, and starts writing it to the
    /// disk; [`Held::flush`] later waits for it. Lets the caller do other
    /// work while the device writes.
    pub fn append_started(&mut self, record: &Record) -> std::io::Result<()> {
        let at = self.header.end;
        self.append(record, false)?;
        if self.header.end > at {
            start_writeback(&self.journal.file, at, self.header.end - at);
        }
        Ok(())
    }

    /// Makes every record appended so far durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.journal.file.sync_data()
    }

    /// Flushes the whole filesystem (every object file and directory this
    /// journal covers), then empties the journal by starting a new epoch.
    pub fn checkpoint(&mut self) -> std::io::Result<()> {
        self.flush_filesystem()?;
        let fresh = Header {
            epoch: new_epoch(self.header.epoch),
            end: HEADER_SIZE,
        };
        self.journal.file.write_all_at(&fresh.encode(), 0)?;
        self.journal.file.sync_data()?;
        self.header = fresh;
        Ok(())
    }

    /// Flushes everything written to the journal's filesystem.
    fn flush_filesystem(&self) -> std::io::Result<()> {
        sync_filesystem(&self.journal.file)
    }

    /// Whether the journal holds any record.
    pub fn is_empty(&self) -> bool {
        self.header.end == HEADER_SIZE
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let _ = self.journal.file.unlock();
        self.turn.seen = self.header;
    }
}

/// Reads into `buf` from `at` until it is full or the file ends; returns
/// how much was read.
fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], at + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// Starts the disk write of a range of `file` without waiting for it (a
/// hint: the flush that follows is what makes it durable).
fn start_writeback(file: &File, at: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
            return;
        };
        // SAFETY: plain system call on an open descriptor; no memory passed.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

/// Flushes everything written to the filesystem that holds `file`.
fn sync_filesystem(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call's duration.
        if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        // SAFETY: sync has no arguments and cannot fail.
        unsafe { libc::sync() };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, data: &[u8]) -> Record<'static> {
        Record::Put {
            key: key.into(),
            data: Cow::Owned(data.to_vec()),
        }
    }

    #[test]
    fn records_read_back_in_order_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            let mut held = journal.lock().unwrap();
            assert!(held.is_empty());
            held.append(&put("a/1", b"one"), true).unwrap();
            held.append(&Record::Delete { key: "a/1".into() }, false)
                .unwrap();
            held.append(&Record::Durable { key: "b".into() }, true)
                .unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        let held = journal.lock().unwrap();
        assert_eq!(
            held.records().unwrap(),
            vec![
                put("a/1", b"one"),
                Record::Delete { key: "a/1".into() },
                Record::Durable { key: "b".into() },
            ]
        );
    }

    #[test]
    fn the_file_grows_ahead_of_its_records_with_zeros_that_end_them() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let len = || journal.file.metadata().unwrap().len();
        {
            let mut held = journal.lock().unwrap();
            held.append(&put("a", b"one"), true).unwrap();
            assert_eq!(len(), GROW_STEP);
            // A record that does not fit grows the file by whole steps.
            let big = vec![7u8; GROW_STEP as usize];
            held.append(&put("b", &big), true).unwrap();
            assert_eq!(len(), 2 * GROW_STEP);
            held.append(&put("c", b"three"), true).unwrap();
            assert_eq!(len(), 2 * GROW_STEP);
        }
        let again = Journal::open(dir.path()).unwrap();
        let held = again.lock().unwrap();
        let keys: Vec<String> = held
            .records()
            .unwrap()
            .iter()
            .map(|r| r.key().to_string())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn records_end_at_a_cut_or_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut held = journal.lock().unwrap();
        held.append(&put("a", b"first"), true).unwrap();
        let second_at = held.header.end;
        held.append(&put("b", b"second"), true).unwrap();
        held.append(&put("c", b"third"), true).unwrap();
        // One flipped byte in the second record's contents.
        let mut byte = [0u8; 1];
        let at = second_at + PREFIX_LEN as u64 + 14;
        journal.file.read_exact_at(&mut byte, at).unwrap();
        journal.file.write_all_at(&[byte[0] ^ 1], at).unwrap();
        assert_eq!(held.records().unwrap(), vec![put("a", b"first")]);
        // A record cut short (the file ends inside it).
        journal.file.set_len(second_at + 5).unwrap();
        assert_eq!(held.records().unwrap(), vec![put("a", b"first")]);
    }

    #[test]
    fn a_checkpoint_empties_the_journal_and_old_records_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut held = journal.lock().unwrap();
        held.append(&put("a", b"old"), true).unwrap();
        held.append(&put("b", b"old"), true).unwrap();
        held.checkpoint().unwrap();
        assert!(held.records().unwrap().is_empty());
        // The first new record overwrites the first old one; the second old
        // one is still in the file, of the old epoch.
        held.append(&put("c", b"new"), true).unwrap();
        assert_eq!(held.records().unwrap(), vec![put("c", b"new")]);
    }

    #[test]
    fn a_full_journal_checkpoints_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut held = journal.lock().unwrap();
        let big = vec![7u8; INLINE_LIMIT];
        let per_journal = (JOURNAL_LIMIT - HEADER_SIZE) / (INLINE_LIMIT as u64 + 100);
        for i in 0..per_journal {
            held.append(&put(&format!("k{i}"), &big), false).unwrap();
        }
        assert_eq!(held.records().unwrap().len() as u64, per_journal);
        held.append(&put("last", b"x"), false).unwrap();
        held.append(&put("over", &big), true).unwrap();
        assert_eq!(
            held.records().unwrap(),
            vec![put("over", &big)],
            "the journal was checkpointed, then took the record"
        );
    }

    #[test]
    fn a_journal_three_quarters_full_is_flushed_ahead_once_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut held = journal.lock().unwrap();
        let big = vec![7u8; INLINE_LIMIT];
        let mut i = 0;
        while held.header.end + INLINE_LIMIT as u64 + 100 < PREFLUSH_AT {
            held.append(&put(&format!("k{i}"), &big), false).unwrap();
            i += 1;
        }
        assert_eq!(journal.preflushed_epoch(), 0, "not yet three quarters");
        held.append(&put("past", &big), false).unwrap();
        let first = held.header.epoch;
        assert_eq!(journal.preflushed_epoch(), first);
        held.checkpoint().unwrap();
        assert_ne!(held.header.epoch, first);
        held.append(&put("small", b"x"), false).unwrap();
        assert_eq!(journal.preflushed_epoch(), first, "the new epoch is empty");
        while held.header.end < PREFLUSH_AT {
            held.append(&put(&format!("k{i}"), &big), false).unwrap();
            i += 1;
        }
        assert_eq!(journal.preflushed_epoch(), held.header.epoch);
    }

    #[test]
    fn a_cut_header_means_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        {
            let mut held = journal.lock().unwrap();
            held.append(&put("a", b"x"), true).unwrap();
        }
        journal.file.write_all_at(&[0u8; 8], 0).unwrap();
        let held = journal.lock().unwrap();
        assert!(held.is_empty());
        assert!(held.records().unwrap().is_empty());
    }

    #[test]
    fn openings_taking_turns_append_after_each_others_records() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path()).unwrap();
        let second = Journal::open(dir.path()).unwrap();
        let append = |j: &Journal, key: &str, data: &[u8]| {
            j.lock().unwrap().append(&put(key, data), true).unwrap()
        };
        append(&first, "a", b"1");
        append(&second, "b", b"2");
        append(&second, "c", b"3");
        // The first opening last saw the end after "a".
        append(&first, "d", b"4");
        let expected = vec![
            put("a", b"1"),
            put("b", b"2"),
            put("c", b"3"),
            put("d", b"4"),
        ];
        assert_eq!(second.lock().unwrap().records().unwrap(), expected);
        // After a checkpoint the old epoch's records do not count as ends.
        first.lock().unwrap().checkpoint().unwrap();
        append(&second, "e", b"5");
        append(&first, "f", b"6");
        let third = Journal::open(dir.path()).unwrap();
        let held = third.lock().unwrap();
        assert_eq!(
            held.records().unwrap(),
            vec![put("e", b"5"), put("f", b"6")]
        );
        let end = held.header.end;
        assert_eq!(end, HEADER_SIZE + put("e", b"5").encoded_len() * 2);
    }

    #[test]
    fn threads_of_one_process_take_turns_and_a_held_journal_may_change_threads() {
        fn movable<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut held = journal.lock().unwrap();
        movable(&held);
        assert!(
            journal.try_lock().unwrap().is_none(),
            "a second thread's turn while the first holds the journal"
        );
        held.append(&put("a", b"1"), false).unwrap();
        // Finished on another thread than the one that took it.
        std::thread::scope(|s| {
            s.spawn(move || {
                held.append(&put("b", b"2"), true).unwrap();
                drop(held);
            });
        });
        let again = journal
            .try_lock()
            .unwrap()
            .expect("the turn was given back");
        assert_eq!(
            again.records().unwrap(),
            vec![put("a", b"1"), put("b", b"2")]
        );
        assert_eq!(
            again.header.end,
            HEADER_SIZE + put("a", b"1").encoded_len() * 2,
            "this process saw where the other thread left the end"
        );
    }

    #[test]
    fn a_thread_waiting_for_its_turn_is_woken_when_it_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let journal = std::sync::Arc::new(Journal::open(dir.path()).unwrap());
        let held = journal.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Not a scoped thread: one never woken must fail the test, not hang it.
        let waiter = {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let mut h = journal.lock().unwrap();
                h.append(&put("waited", b"1"), false).unwrap();
                tx.send(()).unwrap();
            })
        };
        // Given back only once the other thread waits for it: a turn given
        // back with nobody waiting wakes nobody.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while journal.threads.lock().unwrap().waiting == 0 {
            assert!(std::time::Instant::now() < deadline, "never waited");
            std::thread::yield_now();
        }
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiting thread was not woken");
        waiter.join().unwrap();
    }

    #[test]
    fn a_second_opening_waits_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path()).unwrap();
        let second = Journal::open(dir.path()).unwrap();
        let held = first.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut h = second.lock().unwrap();
                h.append(&put("second", b"2"), true).unwrap();
                tx.send(()).unwrap();
            });
            assert!(
                rx.recv_timeout(std::time::Duration::from_millis(200))
                    .is_err(),
                "the second opening appended while the first held the lock"
            );
            drop(held);
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        });
    }
}
