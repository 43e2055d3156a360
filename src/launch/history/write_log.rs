//! The history of writes, one per revision, as the store finally holds it
//! (read back at the end of a run) or as the clients were told (their
//! acknowledged writes, complete only when no write's outcome is unknown).
//! Reads, watches and the final state are compared against it.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::operation::{Kv, Operation, Outcome, Request, Revision};

/// One write: a key set to a value, or deleted, at a revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub revision: Revision,
    pub key: String,
    pub change: Change,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    Put { value: String },
    Delete,
}

/// A live key in a final dump of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    pub value: String,
    pub mod_revision: Revision,
}

/// Writes ordered by revision, with each key's versions worked out.
#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    entries: Vec<Entry>,
    /// Indexes into `entries` per key, ascending.
    by_key: BTreeMap<String, Vec<usize>>,
}

#[derive(Clone, Debug)]
struct Entry {
    write: Write,
    /// For a put: the key's create revision and version after it.
    create_revision: Revision,
    version: i64,
    /// The key's previous write.
    previous: Option<usize>,
}

impl WriteLog {
    /// The log of these writes; two writes at one revision are refused (a
    /// netsy revision is one record).
    pub fn new(mut writes: Vec<Write>) -> Result<WriteLog, String> {
        writes.sort_by_key(|w| w.revision);
        if let Some(pair) = writes.windows(2).find(|p| p[0].revision == p[1].revision) {
            return Err(format!(
                "revision {} holds two writes: {} and {}",
                pair[0].revision, pair[0], pair[1]
            ));
        }
        let mut log = WriteLog::default();
        for write in writes {
            let index = log.entries.len();
            let indexes = log.by_key.entry(write.key.clone()).or_default();
            let previous = indexes.last().copied();
            let before = previous.map(|p| &log.entries[p]);
            let (create_revision, version) = match (&write.change, before) {
                (Change::Delete, _) => (0, 0),
                (Change::Put { .. }, Some(before)) if before.version > 0 => {
                    (before.create_revision, before.version + 1)
                }
                (Change::Put { .. }, _) => (write.revision, 1),
            };
            indexes.push(index);
            log.entries.push(Entry {
                write,
                create_revision,
                version,
                previous,
            });
        }
        Ok(log)
    }

    /// The writes the clients were told about. Refused when some write's
    /// outcome is unknown (it may have taken a revision the log would
    /// lack) or two acknowledged writes claim one revision.
    pub fn from_acknowledged(ops: &[Operation]) -> Result<WriteLog, String> {
        let unknown = ops
            .iter()
            .filter(|op| op.request.is_write() && matches!(op.outcome, Outcome::Unknown { .. }))
            .count();
        if unknown > 0 {
            return Err(format!(
                "{unknown} writes have an unknown outcome, so the acknowledged writes are not the whole history"
            ));
        }
        let writes = ops
            .iter()
            .filter_map(|op| {
                let revision = op.acknowledged_write()?;
                Some(Write {
                    revision,
                    key: op.request.key()?.to_string(),
                    change: change_of(&op.request)?,
                })
            })
            .collect();
        WriteLog::new(writes)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every write, by revision.
    pub fn writes(&self) -> impl Iterator<Item = &Write> {
        self.entries.iter().map(|e| &e.write)
    }

    pub fn last_revision(&self) -> Option<Revision> {
        self.entries.last().map(|e| e.write.revision)
    }

    /// The write at a revision.
    pub fn at(&self, revision: Revision) -> Option<&Write> {
        self.index_of(revision).map(|i| &self.entries[i].write)
    }

    /// The writes with revisions in `from..=to`.
    pub fn between(&self, from: Revision, to: Revision) -> impl Iterator<Item = &Write> {
        let start = self.entries.partition_point(|e| e.write.revision < from);
        self.entries[start..]
            .iter()
            .take_while(move |e| e.write.revision <= to)
            .map(|e| &e.write)
    }

    /// The key as a read at `revision` sees it (None: absent).
    pub fn kv_at(&self, key: &str, revision: Revision) -> Option<Kv> {
        let indexes = self.by_key.get(key)?;
        let n = indexes.partition_point(|&i| self.entries[i].write.revision <= revision);
        let latest = indexes.get(n.checked_sub(1)?)?;
        self.kv_of(*latest)
    }

    /// The key as the write at `revision` left it (None for a delete or no
    /// write there).
    pub fn kv_written_at(&self, revision: Revision) -> Option<Kv> {
        self.kv_of(self.index_of(revision)?)
    }

    /// The key as it was just before the write at `revision`: what a watch
    /// event's prev_kv must be.
    pub fn kv_before(&self, revision: Revision) -> Option<Kv> {
        let previous = self.entries[self.index_of(revision)?].previous?;
        self.kv_of(previous)
    }

    /// Every key the log writes, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }

    /// The keys the log writes that start with `prefix`, in order.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.by_key
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(key, _)| key.as_str())
            .take_while(move |key| key.starts_with(prefix))
    }

    /// The live keys after the last write.
    pub fn final_state(&self) -> BTreeMap<String, StoredValue> {
        self.by_key
            .values()
            .filter_map(|indexes| self.kv_of(*indexes.last()?))
            .map(|kv| {
                (
                    kv.key,
                    StoredValue {
                        value: kv.value,
                        mod_revision: kv.mod_revision,
                    },
                )
            })
            .collect()
    }

    fn index_of(&self, revision: Revision) -> Option<usize> {
        self.entries
            .binary_search_by_key(&revision, |e| e.write.revision)
            .ok()
    }

    fn kv_of(&self, index: usize) -> Option<Kv> {
        let entry = &self.entries[index];
        match &entry.write.change {
            Change::Put { value } => Some(Kv {
                key: entry.write.key.clone(),
                value: value.clone(),
                mod_revision: entry.write.revision,
                create_revision: entry.create_revision,
                version: entry.version,
            }),
            Change::Delete => None,
        }
    }
}

/// What a write request stores when it takes effect.
pub fn change_of(request: &Request) -> Option<Change> {
    match request {
        Request::Delete { .. } => Some(Change::Delete),
        _ => request.written_value().map(|value| Change::Put {
            value: value.to_string(),
        }),
    }
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.change {
            Change::Put { value } => write!(f, "put {} = {value:?} at {}", self.key, self.revision),
            Change::Delete => write!(f, "delete {} at {}", self.key, self.revision),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: Revision, key: &str, value: &str) -> Write {
        Write {
            revision,
            key: key.into(),
            change: Change::Put {
                value: value.into(),
            },
        }
    }

    fn delete(revision: Revision, key: &str) -> Write {
        Write {
            revision,
            key: key.into(),
            change: Change::Delete,
        }
    }

    #[test]
    fn versions_restart_after_a_delete() {
        let log = WriteLog::new(vec![
            put(4, "a", "3"),
            put(2, "a", "1"),
            put(3, "a", "2"),
            delete(5, "a"),
            put(6, "a", "4"),
        ])
        .unwrap();
        let kv = log.kv_at("a", 4).unwrap();
        assert_eq!(
            (kv.value.as_str(), kv.create_revision, kv.version),
            ("3", 2, 3)
        );
        assert_eq!(log.kv_at("a", 5), None);
        assert_eq!(log.kv_at("a", 1), None);
        let kv = log.kv_at("a", 100).unwrap();
        assert_eq!((kv.create_revision, kv.version), (6, 1));
        assert_eq!(log.kv_before(5).unwrap().mod_revision, 4);
        assert_eq!(log.kv_before(6), None);
        assert_eq!(log.kv_before(2), None);
        assert_eq!(log.between(3, 5).count(), 3);
        assert_eq!(log.final_state()["a"].mod_revision, 6);
    }

    #[test]
    fn two_writes_at_one_revision_are_refused() {
        let err = WriteLog::new(vec![put(2, "a", "1"), put(2, "b", "1")]).unwrap_err();
        assert!(err.contains("revision 2 holds two writes"), "{err}");
    }
}
