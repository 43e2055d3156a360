//! The chunk buffer of the quorum write path: records committed by a quorum
//! of nodes wait here and are uploaded as one chunk when the buffer is big
//! enough, old enough, or the Primary drains. The policy is pure (driven by
//! `now`); the write path does the upload.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Size,
    Age,
    Draining,
    Rollback,
    Manual,
}

#[derive(Debug)]
pub struct ChunkBuffer {
    records: Vec<Record>,
    /// Sum of the records' encoded sizes.
    bytes: usize,
    oldest_at: Option<Instant>,
    flushing: bool,
    /// 0 disables the size trigger.
    size_threshold: usize,
    /// None disables the age trigger.
    age_threshold: Option<Duration>,
}

fn encoded_size(r: &Record) -> usize {
    use prost::Message;
    r.to_proto().encoded_len()
}

impl ChunkBuffer {
    pub fn new(size_threshold_mb: i64, age_threshold_minutes: i64) -> ChunkBuffer {
        ChunkBuffer {
            records: Vec::new(),
            bytes: 0,
            oldest_at: None,
            flushing: false,
            size_threshold: (size_threshold_mb.max(0) as usize) * 1024 * 1024,
            age_threshold: (age_threshold_minutes > 0)
                .then(|| Duration::from_secs(age_threshold_minutes as u64 * 60)),
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a committed record; true when the size trigger fires.
    pub fn append(&mut self, record: Record, now: Instant) -> bool {
        if self.records.is_empty() {
            self.oldest_at = Some(now);
        }
        self.bytes += encoded_size(&record);
        self.records.push(record);
        self.over_size()
    }

    /// Forgets every record (a new Primary's preflight uploads what the
    /// bucket lacks).
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
        self.oldest_at = None;
    }

    pub fn over_size(&self) -> bool {
        self.size_threshold > 0 && self.bytes >= self.size_threshold
    }

    /// What the periodic loop should flush for, if anything.
    pub fn due(&self, now: Instant, draining: bool) -> Option<Trigger> {
        if self.records.is_empty() || self.flushing {
            return None;
        }
        if draining {
            return Some(Trigger::Draining);
        }
        match (self.age_threshold, self.oldest_at) {
            (Some(age), Some(t)) if now.duration_since(t) >= age => Some(Trigger::Age),
            _ => None,
        }
    }

    /// Starts a flush: a copy of the records, unless empty or one is running.
    pub fn begin_flush(&mut self) -> Option<Vec<Record>> {
        if self.records.is_empty() || self.flushing {
            return None;
        }
        self.flushing = true;
        Some(self.records.clone())
    }

    /// Ends a flush of `count` records: on success exactly those leave the
    /// buffer (records appended meanwhile stay); on failure all stay.
    pub fn end_flush(&mut self, count: usize, ok: bool, now: Instant) {
        self.flushing = false;
        if ok {
            let gone: usize = self
                .records
                .drain(..count.min(self.records.len()))
                .map(|r| encoded_size(&r))
                .sum();
            self.bytes -= gone;
            self.oldest_at = if self.records.is_empty() {
                None
            } else {
                Some(now)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Timestamp;
    use bytes::Bytes;

    fn rec(revision: i64, size: usize) -> Record {
        Record {
            revision,
            key: Bytes::from_static(b"k"),
            created: false,
            deleted: false,
            create_revision: 2,
            prev_revision: revision - 1,
            version: 1,
            lease: 0,
            dek: 0,
            value: Some(Bytes::from(vec![b'x'; size])),
            created_at: Timestamp::default(),
            compacted_at: None,
            leader_id: "n".into(),
            replicated_at: None,
        }
    }

    #[test]
    fn size_trigger() {
        let t0 = Instant::now();
        let mut b = ChunkBuffer::new(1, 0);
        assert!(!b.append(rec(2, 600_000), t0));
        assert!(b.append(rec(3, 600_000), t0), "over 1 MiB");
        assert_eq!(
            b.due(t0, false),
            None,
            "size is handled inline, not by the loop"
        );
    }

    #[test]
    fn age_trigger_counts_from_the_oldest_record() {
        let t0 = Instant::now();
        let mut b = ChunkBuffer::new(0, 1);
        assert_eq!(b.due(t0, false), None);
        b.append(rec(2, 1), t0);
        b.append(rec(3, 1), t0 + Duration::from_secs(50));
        assert_eq!(b.due(t0 + Duration::from_secs(59), false), None);
        assert_eq!(
            b.due(t0 + Duration::from_secs(60), false),
            Some(Trigger::Age)
        );
        assert_eq!(b.due(t0, true), Some(Trigger::Draining));
    }

    #[test]
    fn flush_removes_only_what_it_uploaded() {
        let t0 = Instant::now();
        let mut b = ChunkBuffer::new(0, 1);
        b.append(rec(2, 1), t0);
        b.append(rec(3, 1), t0);
        let taken = b.begin_flush().unwrap();
        assert!(b.begin_flush().is_none(), "single flight");
        b.append(rec(4, 1), t0);
        b.end_flush(taken.len(), true, t0);
        assert_eq!(b.len(), 1);
        let taken = b.begin_flush().unwrap();
        b.end_flush(taken.len(), false, t0);
        assert_eq!(b.len(), 1, "a failed flush keeps everything");
    }
}
