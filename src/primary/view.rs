//! The state a batch of txns is evaluated against: the committed index with
//! the batch's earlier writes laid over it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;

use crate::store::{KeyIndex, KeyRange, KvEntry, Store, StoreError};

use super::txn::KvView;

pub struct BatchView<'a> {
    index: &'a KeyIndex,
    store: &'a Store,
    /// Revision the index reflects (committed).
    base: i64,
    /// Newest revision including staged writes.
    current: i64,
    compacted: i64,
    /// Keys written in this batch: Some = live, None = deleted.
    pending: BTreeMap<Bytes, Option<KvEntry>>,
    /// Leases granted and revoked earlier in this batch.
    granted_leases: HashSet<i64>,
    revoked_leases: HashSet<i64>,
    /// The writes of the txn being evaluated, newest last, until accepted.
    undo: Vec<Undo>,
}

struct Undo {
    key: Bytes,
    previous: Option<Option<KvEntry>>,
    current: i64,
}

impl<'a> BatchView<'a> {
    pub fn new(index: &'a KeyIndex, store: &'a Store) -> BatchView<'a> {
        let base = store.committed_revision();
        BatchView {
            index,
            store,
            base,
            current: base,
            compacted: store.compacted_revision(),
            pending: BTreeMap::new(),
            granted_leases: HashSet::new(),
            revoked_leases: HashSet::new(),
            undo: Vec::new(),
        }
    }

    /// Makes the writes of the txn just evaluated final.
    pub fn accept(&mut self) {
        self.undo.clear();
    }

    pub fn grant_lease(&mut self, id: i64) {
        self.revoked_leases.remove(&id);
        self.granted_leases.insert(id);
    }

    pub fn revoke_lease(&mut self, id: i64) {
        self.granted_leases.remove(&id);
        self.revoked_leases.insert(id);
    }

    /// Live keys attached to `lease`, the batch's writes included,
    /// ascending.
    pub fn leased_keys(&self, lease: i64) -> Vec<Bytes> {
        let staged = self
            .pending
            .iter()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.rev.lease == lease))
            .map(|(k, _)| k.clone());
        let candidates: BTreeSet<Bytes> = self
            .index
            .attached(lease)
            .into_iter()
            .chain(staged)
            .collect();
        candidates
            .into_iter()
            .filter(|k| match self.pending.get(k) {
                Some(entry) => entry.as_ref().is_some_and(|e| e.rev.lease == lease),
                None => true,
            })
            .collect()
    }

    pub fn raise_compaction(&mut self, revision: i64) {
        self.compacted = self.compacted.max(revision);
    }

    /// Committed keys merged with the batch's writes, ascending.
    fn merged(&self, range: &KeyRange) -> Vec<KvEntry> {
        let mut out = Vec::new();
        let mut committed = self.index.scan(range, self.base).peekable();
        let staged: Vec<(&Bytes, &Option<KvEntry>)> = match range.bounds() {
            Some(b) => self.pending.range::<[u8], _>(b).collect(),
            None => Vec::new(),
        };
        let mut staged = staged.into_iter().peekable();
        loop {
            let order = match (committed.peek(), staged.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(c), Some((k, _))) => c.key.as_ref().cmp(k.as_ref()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(c) = committed.next() {
                        out.push(KvEntry::from_entry(&c));
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((_, Some(e))) = staged.next() {
                        out.push(e.clone());
                    }
                }
                std::cmp::Ordering::Equal => {
                    committed.next();
                    if let Some((_, Some(e))) = staged.next() {
                        out.push(e.clone());
                    }
                }
            }
        }
        out
    }
}

impl KvView for BatchView<'_> {
    fn current_revision(&self) -> i64 {
        self.current
    }

    fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    fn scan(&self, range: &KeyRange, at: i64) -> Result<Vec<KvEntry>, StoreError> {
        if at == self.current && !self.pending.is_empty() {
            Ok(self.merged(range))
        } else if at <= self.base {
            Ok(self
                .index
                .scan(range, at)
                .map(|e| KvEntry::from_entry(&e))
                .collect())
        } else {
            Err(StoreError::FutureRevision)
        }
    }

    fn load_values(&self, entries: &mut [KvEntry]) -> Result<(), StoreError> {
        self.store.load_values(entries)
    }

    fn lease_exists(&self, id: i64) -> bool {
        !self.revoked_leases.contains(&id)
            && (self.granted_leases.contains(&id) || self.store.lease_exists(id))
    }

    fn stage(&mut self, key: Bytes, entry: Option<KvEntry>, revision: i64) {
        let previous = self.pending.insert(key.clone(), entry);
        self.undo.push(Undo {
            key,
            previous,
            current: self.current,
        });
        self.current = revision;
    }

    fn unstage(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo.previous {
                Some(prev) => {
                    self.pending.insert(undo.key, prev);
                }
                None => {
                    self.pending.remove(&undo.key);
                }
            }
            self.current = undo.current;
        }
    }
}
