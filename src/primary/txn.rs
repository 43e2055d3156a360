//! One etcd Txn as the write path sees it (already validated by the API
//! layer) and its evaluation against a view of the current state: pure, no
//! I/O of its own. Put and DeleteRange arrive as one-op txns. A txn may
//! write at most one key, because each revision is one record.

use bytes::Bytes;

use crate::store::query::{self, RangeQuery, RangeResult};
use crate::store::{KeyRange, KvEntry, Record, Rev, StoreError, Timestamp};

use super::error::WriteError;

/// The state a txn reads: committed data plus earlier txns of the batch.
pub trait KvView {
    /// Revision of the newest state in the view.
    fn current_revision(&self) -> i64;
    fn compacted_revision(&self) -> i64;
    /// Live keys in `range` as of `at` (<= current), ascending by key.
    fn scan(&self, range: &KeyRange, at: i64) -> Result<Vec<KvEntry>, StoreError>;
    /// Loads values missing from entries (older revisions).
    fn load_values(&self, entries: &mut [KvEntry]) -> Result<(), StoreError>;
    fn lease_exists(&self, id: i64) -> bool;
    /// Makes a write at `revision` visible to later reads of the view.
    fn stage(&mut self, key: Bytes, entry: Option<KvEntry>, revision: i64);
    /// Forgets the last staged write (its txn failed after staging).
    fn unstage(&mut self);
}

/// A conditional write: if every compare holds, the success ops run,
/// otherwise the failure ops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub range: KeyRange,
    pub target: Target,
    pub result: CompareResult,
}

/// What a compare looks at, with the value it compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Bytes),
    Lease(i64),
    /// A target etcd does not know: the compare fails.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    NotEqual,
    Greater,
    Less,
    /// A result etcd does not know: the compare fails.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Range(RangeQuery),
    Put(Put),
    /// Deletes one key (the only kind of delete one record can express).
    Delete {
        key: Bytes,
        prev_kv: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Put {
    pub key: Bytes,
    pub value: Bytes,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

impl Txn {
    /// A Put as the one-op txn it is evaluated as.
    pub fn put(p: Put) -> Txn {
        Txn {
            success: vec![Op::Put(p)],
            ..Txn::default()
        }
    }
}

/// A txn's answer: which branch ran, the revision after it, and one result
/// per op of that branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    pub succeeded: bool,
    pub revision: i64,
    pub responses: Vec<OpResult>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A read at `revision` (the state as of this op).
    Range { revision: i64, result: RangeResult },
    /// `prev` only when the put asked for it.
    Put {
        revision: i64,
        prev: Option<KvEntry>,
    },
    /// `prev` only when the delete asked for it.
    Delete {
        revision: i64,
        deleted: i64,
        prev: Vec<KvEntry>,
    },
}

/// The single write a txn made, with the key's state before it.
#[derive(Debug)]
pub struct Write {
    pub record: Record,
    pub prev: Option<KvEntry>,
}

/// A txn's answer and its write, if any.
#[derive(Debug)]
pub struct Evaluated {
    pub outcome: TxnOutcome,
    pub write: Option<Write>,
}

/// Who writes and when: stamped into every record a txn makes.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub leader_id: &'a str,
    pub now: Timestamp,
}

/// Evaluates a validated txn against `view`.
pub fn evaluate(
    txn: &Txn,
    view: &mut dyn KvView,
    stamp: Stamp<'_>,
) -> Result<Evaluated, WriteError> {
    let begin = view.current_revision();
    let mut succeeded = true;
    for c in &txn.compare {
        if !compare(c, &*view, begin)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    check_ops(ops, &*view, begin)?;

    let mut write: Option<Write> = None;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let current = if write.is_some() { begin + 1 } else { begin };
        let result = match op {
            Op::Range(q) => read_range(q, &*view, current),
            Op::Put(p) => put(p, view, begin + 1, stamp).map(|(result, w)| {
                write = Some(w);
                result
            }),
            Op::Delete { key, prev_kv } => {
                delete(key, *prev_kv, view, begin, stamp).map(|(result, w)| {
                    write = w;
                    result
                })
            }
        };
        match result {
            Ok(r) => responses.push(r),
            Err(e) => {
                if write.is_some() {
                    view.unstage();
                }
                return Err(e);
            }
        }
    }
    let revision = if write.is_some() { begin + 1 } else { begin };
    Ok(Evaluated {
        outcome: TxnOutcome {
            succeeded,
            revision,
            responses,
        },
        write,
    })
}

/// etcd's compare: every key in the compare's range must satisfy it; an
/// absent key compares as zero, except for VALUE, which then fails.
fn compare(c: &Compare, view: &dyn KvView, at: i64) -> Result<bool, WriteError> {
    let mut entries = view.scan(&c.range, at)?;
    let is_value = matches!(c.target, Target::Value(_));
    if entries.is_empty() {
        if is_value {
            return Ok(false);
        }
        return Ok(compare_one(c, None));
    }
    if is_value {
        view.load_values(&mut entries)?;
    }
    Ok(entries.iter().all(|e| compare_one(c, Some(e))))
}

fn compare_one(c: &Compare, e: Option<&KvEntry>) -> bool {
    use std::cmp::Ordering;
    let rev = e.map(|e| e.rev);
    let ord: Ordering = match &c.target {
        Target::Value(want) => {
            let have: &[u8] = e.and_then(|e| e.value.as_deref()).unwrap_or(&[]);
            have.cmp(want)
        }
        Target::Version(want) => rev.map_or(0, |r| r.version).cmp(want),
        Target::Create(want) => rev.map_or(0, |r| r.create_revision).cmp(want),
        Target::Mod(want) => rev.map_or(0, |r| r.revision).cmp(want),
        Target::Lease(want) => rev.map_or(0, |r| r.lease).cmp(want),
        Target::Unknown => return false,
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::Unknown => false,
    }
}

/// etcd's pre-execution checks of the chosen branch: read revisions, leases
/// and the keys that ignore_value/ignore_lease need.
fn check_ops(ops: &[Op], view: &dyn KvView, begin: i64) -> Result<(), WriteError> {
    for op in ops {
        match op {
            Op::Range(q) => {
                query::read_revision(q.revision, begin, view.compacted_revision())?;
            }
            Op::Put(p) => {
                if (p.ignore_value || p.ignore_lease) && latest(view, &p.key, begin)?.is_none() {
                    return Err(WriteError::KeyNotFound);
                }
                if p.lease != 0 && !view.lease_exists(p.lease) {
                    return Err(WriteError::LeaseNotFound);
                }
            }
            Op::Delete { .. } => {}
        }
    }
    Ok(())
}

fn latest(view: &dyn KvView, key: &Bytes, at: i64) -> Result<Option<KvEntry>, WriteError> {
    let mut found = view.scan(&KeyRange::Single(key.clone()), at)?;
    match found.pop() {
        Some(mut e) => {
            view.load_values(std::slice::from_mut(&mut e))?;
            Ok(Some(e))
        }
        None => Ok(None),
    }
}

/// A Range op inside a txn.
fn read_range(q: &RangeQuery, view: &dyn KvView, current: i64) -> Result<OpResult, WriteError> {
    let at = query::read_revision(q.revision, current, view.compacted_revision())?;
    let keys = view.scan(&q.range, at)?;
    let selection = query::select(q, keys.into_iter());
    let result = query::finish(q, selection, |e| view.load_values(e))?;
    Ok(OpResult::Range {
        revision: current,
        result,
    })
}

fn put(
    p: &Put,
    view: &mut dyn KvView,
    revision: i64,
    stamp: Stamp<'_>,
) -> Result<(OpResult, Write), WriteError> {
    let prev = latest(&*view, &p.key, revision - 1)?;
    let value = if p.ignore_value {
        prev.as_ref()
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    } else {
        p.value.clone()
    };
    let lease = if p.ignore_lease {
        prev.as_ref().map_or(0, |e| e.rev.lease)
    } else {
        p.lease
    };
    let (created, create_revision, prev_revision, version) = match &prev {
        Some(e) => (
            false,
            e.rev.create_revision,
            e.rev.revision,
            e.rev.version + 1,
        ),
        None => (true, revision, 0, 1),
    };
    let record = Record {
        revision,
        key: p.key.clone(),
        created,
        deleted: false,
        create_revision,
        prev_revision,
        version,
        lease,
        dek: 0,
        value: Some(value.clone()),
        created_at: stamp.now,
        compacted_at: None,
        leader_id: stamp.leader_id.to_string(),
        replicated_at: None,
    };
    view.stage(
        p.key.clone(),
        Some(KvEntry {
            key: p.key.clone(),
            rev: Rev {
                revision,
                create_revision,
                version,
                lease,
                deleted: false,
            },
            value: Some(value),
        }),
        revision,
    );
    let result = OpResult::Put {
        revision,
        prev: if p.prev_kv { prev.clone() } else { None },
    };
    Ok((result, Write { record, prev }))
}

fn delete(
    key: &Bytes,
    prev_kv: bool,
    view: &mut dyn KvView,
    begin: i64,
    stamp: Stamp<'_>,
) -> Result<(OpResult, Option<Write>), WriteError> {
    let Some(prev) = latest(&*view, key, begin)? else {
        let result = OpResult::Delete {
            revision: begin,
            deleted: 0,
            prev: vec![],
        };
        return Ok((result, None));
    };
    let revision = begin + 1;
    let record = Record {
        revision,
        key: prev.key.clone(),
        created: false,
        deleted: true,
        create_revision: prev.rev.create_revision,
        prev_revision: prev.rev.revision,
        version: 0,
        lease: 0,
        dek: 0,
        value: None,
        created_at: stamp.now,
        compacted_at: None,
        leader_id: stamp.leader_id.to_string(),
        replicated_at: None,
    };
    view.stage(prev.key.clone(), None, revision);
    let result = OpResult::Delete {
        revision,
        deleted: 1,
        prev: if prev_kv { vec![prev.clone()] } else { vec![] },
    };
    Ok((
        result,
        Some(Write {
            record,
            prev: Some(prev),
        }),
    ))
}
