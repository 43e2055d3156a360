//! In-memory key index in front of SQLite (after etcd's mvcc index): for
//! every key, the revisions that are still readable plus the latest value.
//! Reads at the latest revision never touch SQLite; older reads learn which
//! revision to fetch without scanning history.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use super::keyrange::KeyRange;
use super::record::Record;

/// What the index keeps about one revision of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rev {
    pub revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub deleted: bool,
}

#[derive(Debug, Default)]
struct History {
    /// Ascending by revision.
    revs: Vec<Rev>,
    /// The value of the last revision when it is live.
    value: Option<Bytes>,
}

impl History {
    /// Position of the newest revision at or below `at`.
    fn at(&self, at: i64) -> Option<usize> {
        let n = self.revs.partition_point(|r| r.revision <= at);
        n.checked_sub(1)
    }
}

/// One key as seen at a revision.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub key: &'a Bytes,
    pub rev: Rev,
    /// The value when `rev` is the key's latest revision; older values live
    /// only in SQLite.
    pub value: Option<&'a Bytes>,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Bytes, History>,
    /// For each lease, the keys whose latest revision is live and attached
    /// to it (what a revoke deletes), kept as records arrive.
    leased: HashMap<i64, BTreeSet<Bytes>>,
}

impl KeyIndex {
    pub fn new() -> KeyIndex {
        KeyIndex::default()
    }

    /// Number of keys with any readable history.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds a record; records must arrive in revision order. The internal
    /// record is not a client key and is skipped. `keep_value` lets a bulk
    /// load attach values later with [`KeyIndex::set_latest_value`].
    pub fn apply(&mut self, record: &Record) {
        if record.is_internal() {
            return;
        }
        let history = self.keys.entry(record.key.clone()).or_default();
        if let Some(last) = history.revs.last() {
            detach(&mut self.leased, &record.key, last);
        }
        if !record.deleted && record.lease != 0 {
            let keys = self.leased.entry(record.lease).or_default();
            keys.insert(record.key.clone());
        }
        history.revs.push(Rev {
            revision: record.revision,
            create_revision: record.create_revision,
            version: record.version,
            lease: record.lease,
            deleted: record.deleted,
        });
        history.value = if record.deleted {
            None
        } else {
            record.value.clone()
        };
    }

    /// Attaches the value of a key's latest revision (bulk loading).
    pub fn set_latest_value(&mut self, key: &[u8], revision: i64, value: Bytes) {
        if let Some(h) = self.keys.get_mut(key) {
            if h.revs
                .last()
                .is_some_and(|r| r.revision == revision && !r.deleted)
            {
                h.value = Some(value);
            }
        }
    }

    /// Latest live revisions whose value is not loaded yet (bulk loading).
    pub fn missing_values(&self) -> Vec<i64> {
        self.keys
            .values()
            .filter(|h| h.value.is_none())
            .filter_map(|h| h.revs.last().filter(|r| !r.deleted).map(|r| r.revision))
            .collect()
    }

    /// The key as of revision `at`, None if absent or deleted then.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Entry<'_>> {
        let (k, h) = self.keys.get_key_value(key)?;
        entry_at(k, h, at)
    }

    /// Live keys in `range` as of `at`, in ascending key order.
    pub fn scan<'a>(&'a self, range: &KeyRange, at: i64) -> impl Iterator<Item = Entry<'a>> + 'a {
        let iter = range.bounds().map(|b| self.keys.range::<[u8], _>(b));
        iter.into_iter()
            .flatten()
            .filter_map(move |(k, h)| entry_at(k, h, at))
    }

    /// Forgets every revision above `revision` (they become tentative
    /// again). Returns the revisions that are now some key's latest live
    /// one and need their value attached ([`KeyIndex::set_latest_value`]).
    pub fn remove_above(&mut self, revision: i64) -> Vec<(Bytes, i64)> {
        let mut need_values = Vec::new();
        let leased = &mut self.leased;
        self.keys.retain(|key, h| {
            let keep = h.revs.partition_point(|r| r.revision <= revision);
            if keep == h.revs.len() {
                return true;
            }
            if let Some(last) = h.revs.last() {
                detach(leased, key, last);
            }
            h.revs.truncate(keep);
            h.value = None;
            match h.revs.last() {
                None => false,
                Some(last) => {
                    if !last.deleted {
                        need_values.push((key.clone(), last.revision));
                        if last.lease != 0 {
                            leased.entry(last.lease).or_default().insert(key.clone());
                        }
                    }
                    true
                }
            }
        });
        need_values
    }

    /// Keys whose latest revision is live and attached to `lease`,
    /// ascending.
    pub fn attached(&self, lease: i64) -> Vec<Bytes> {
        self.leased
            .get(&lease)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Discards history that compaction at `at` makes unreadable: for each
    /// key every revision older than its newest one at or below `at`, and
    /// that newest one too when it is a tombstone. Returns the discarded
    /// revisions so the caller can mark them compacted in SQLite.
    pub fn compact(&mut self, at: i64) -> Vec<i64> {
        let mut discarded = Vec::new();
        self.keys.retain(|_, h| {
            let Some(i) = h.at(at) else { return true };
            let keep_from = if h.revs[i].deleted { i + 1 } else { i };
            discarded.extend(h.revs[..keep_from].iter().map(|r| r.revision));
            h.revs.drain(..keep_from);
            !h.revs.is_empty()
        });
        discarded.sort_unstable();
        discarded
    }
}

/// Forgets that `key` is attached through its revision `rev` (it is no
/// longer the key's latest).
fn detach(leased: &mut HashMap<i64, BTreeSet<Bytes>>, key: &Bytes, rev: &Rev) {
    if rev.deleted || rev.lease == 0 {
        return;
    }
    if let Some(keys) = leased.get_mut(&rev.lease) {
        keys.remove(key);
        if keys.is_empty() {
            leased.remove(&rev.lease);
        }
    }
}

fn entry_at<'a>(key: &'a Bytes, h: &'a History, at: i64) -> Option<Entry<'a>> {
    let i = h.at(at)?;
    let rev = h.revs[i];
    if rev.deleted {
        return None;
    }
    let value = if i + 1 == h.revs.len() {
        h.value.as_ref()
    } else {
        None
    };
    Some(Entry { key, rev, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::Timestamp;

    fn rec(revision: i64, key: &str, deleted: bool, value: &str) -> Record {
        Record {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            created: false,
            deleted,
            create_revision: revision,
            prev_revision: 0,
            version: if deleted { 0 } else { 1 },
            lease: 0,
            dek: 0,
            value: if deleted {
                None
            } else {
                Some(Bytes::copy_from_slice(value.as_bytes()))
            },
            created_at: Timestamp::default(),
            compacted_at: None,
            leader_id: "n".into(),
            replicated_at: None,
        }
    }

    fn keys_at(ix: &KeyIndex, range: &KeyRange, at: i64) -> Vec<(String, i64)> {
        ix.scan(range, at)
            .map(|e| (String::from_utf8_lossy(e.key).into_owned(), e.rev.revision))
            .collect()
    }

    #[test]
    fn reads_at_each_revision() {
        let mut ix = KeyIndex::new();
        ix.apply(&Record::internal("n"));
        ix.apply(&rec(2, "a", false, "1"));
        ix.apply(&rec(3, "b", false, "1"));
        ix.apply(&rec(4, "a", false, "2"));
        ix.apply(&rec(5, "b", true, ""));
        let all = KeyRange::new(&Bytes::from_static(b"\0"), &Bytes::from_static(b"\0"));
        assert_eq!(keys_at(&ix, &all, 1), vec![]);
        assert_eq!(
            keys_at(&ix, &all, 3),
            vec![("a".into(), 2), ("b".into(), 3)]
        );
        assert_eq!(
            keys_at(&ix, &all, 4),
            vec![("a".into(), 4), ("b".into(), 3)]
        );
        assert_eq!(keys_at(&ix, &all, 5), vec![("a".into(), 4)]);
        // Only the latest revision carries its value in memory.
        assert_eq!(
            ix.get(b"a", 5).unwrap().value.map(|v| &v[..]),
            Some(&b"2"[..])
        );
        assert!(ix.get(b"a", 3).unwrap().value.is_none());
        assert!(ix.get(b"b", 9).is_none());
        assert!(
            ix.get(b"_netsy", 9).is_none(),
            "the internal record is invisible"
        );
    }

    #[test]
    fn compaction_keeps_the_newest_revision_at_or_below() {
        let mut ix = KeyIndex::new();
        ix.apply(&rec(2, "a", false, "1"));
        ix.apply(&rec(3, "a", false, "2"));
        ix.apply(&rec(4, "b", false, "1"));
        ix.apply(&rec(5, "b", true, ""));
        ix.apply(&rec(6, "a", false, "3"));
        let discarded = ix.compact(5);
        assert_eq!(discarded, vec![2, 4, 5]);
        assert_eq!(ix.len(), 1, "b was deleted at or below the compaction");
        assert_eq!(ix.get(b"a", 5).unwrap().rev.revision, 3);
        assert_eq!(ix.get(b"a", 6).unwrap().rev.revision, 6);
        assert!(ix.compact(5).is_empty(), "compaction is idempotent");
    }

    #[test]
    fn revisions_above_a_point_can_be_forgotten() {
        let mut ix = KeyIndex::new();
        ix.apply(&rec(2, "a", false, "1"));
        ix.apply(&rec(3, "b", false, "1"));
        ix.apply(&rec(4, "a", false, "2"));
        ix.apply(&rec(5, "c", false, "1"));
        ix.apply(&rec(6, "b", true, ""));
        let need = ix.remove_above(3);
        let need: Vec<(String, i64)> = need
            .into_iter()
            .map(|(k, r)| (String::from_utf8_lossy(&k).into_owned(), r))
            .collect();
        assert_eq!(need, [("a".into(), 2), ("b".into(), 3)]);
        assert!(ix.get(b"c", 9).is_none(), "created above: gone");
        assert_eq!(ix.get(b"a", 9).unwrap().rev.revision, 2);
        assert!(ix.get(b"a", 9).unwrap().value.is_none(), "value to reload");
        ix.set_latest_value(b"a", 2, Bytes::from_static(b"1"));
        assert_eq!(
            ix.get(b"a", 9).unwrap().value.map(|v| &v[..]),
            Some(&b"1"[..])
        );
        assert_eq!(
            ix.get(b"b", 9).unwrap().rev.revision,
            3,
            "the delete is gone"
        );
        assert!(ix.remove_above(3).is_empty(), "nothing above any more");
    }

    #[test]
    fn keys_attached_to_a_lease_follow_each_key_latest_revision() {
        let leased = |revision, key: &str, lease| Record {
            lease,
            ..rec(revision, key, false, "v")
        };
        let names = |keys: Vec<Bytes>| -> Vec<String> {
            keys.iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        let mut ix = KeyIndex::new();
        ix.apply(&leased(2, "b", 7));
        ix.apply(&leased(3, "a", 7));
        ix.apply(&leased(4, "c", 8));
        ix.apply(&leased(5, "c", 7));
        assert_eq!(names(ix.attached(7)), ["a", "b", "c"]);
        assert!(ix.attached(8).is_empty(), "c moved to lease 7");
        ix.apply(&rec(6, "a", false, "no lease"));
        ix.apply(&rec(7, "b", true, ""));
        assert_eq!(
            names(ix.attached(7)),
            ["c"],
            "overwritten and deleted keys leave"
        );
        ix.remove_above(4);
        assert_eq!(
            names(ix.attached(7)),
            ["a", "b"],
            "undone writes restore them"
        );
        assert_eq!(names(ix.attached(8)), ["c"]);
        ix.compact(4);
        assert_eq!(names(ix.attached(7)), ["a", "b"], "compaction keeps latest");
    }

    #[test]
    fn inverted_range_scans_nothing() {
        let mut ix = KeyIndex::new();
        ix.apply(&rec(2, "a", false, "1"));
        let r = KeyRange::new(&Bytes::from_static(b"b"), &Bytes::from_static(b"a"));
        assert_eq!(ix.scan(&r, 9).count(), 0);
    }
}
