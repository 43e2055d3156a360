//! One etcd Txn as the write path sees it (already validated by the API
//! layer) and its evaluation against a view of the current state: pure, no
//! I/O of its own. Put and DeleteRange arrive as one-op txns. Every write is
//! one record at its own revision: a txn writing n keys (or a range delete
//! of n keys) takes n consecutive revisions, all in one batch, so they
//! become visible together.

use bytes::Bytes;

use crate::store::query::{self, RangeQuery, RangeResult};
use crate::store::record::detached;
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
    /// Forgets every write staged by the txn being evaluated (it failed).
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
    /// Deletes every live key in the range, one record each.
    Delete {
        range: KeyRange,
        prev_kv: bool,
    },
    /// A nested txn: its compares are decided with the outer ones, against
    /// the state before the outer txn (as etcd decides them).
    Txn(Txn),
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
    Range {
        revision: i64,
        result: RangeResult,
    },
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
    Txn(TxnOutcome),
}

/// One write a txn made, with the key's state before it.
#[derive(Debug)]
pub struct Write {
    pub record: Record,
    pub prev: Option<KvEntry>,
}

/// A txn's answer and its writes, in revision order.
#[derive(Debug)]
pub struct Evaluated {
    pub outcome: TxnOutcome,
    pub writes: Vec<Write>,
}

/// Who writes and when: stamped into every record a txn makes.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub leader_id: &'a str,
    pub now: Timestamp,
}

/// Which branch each txn takes: decided for the whole txn, nested ones
/// included, before any op runs.
struct Path {
    succeeded: bool,
    /// One per nested txn of the chosen branch, in order.
    nested: Vec<Path>,
}

/// Evaluates a validated txn against `view`; on an error nothing it staged
/// stays in the view.
pub fn evaluate(
    txn: &Txn,
    view: &mut dyn KvView,
    stamp: Stamp<'_>,
) -> Result<Evaluated, WriteError> {
    let begin = view.current_revision();
    let path = choose(txn, &*view, begin)?;
    check_ops(txn, &path, &*view, begin)?;
    let mut writes = Vec::new();
    match run(txn, &path, view, stamp, &mut writes) {
        Ok(outcome) => Ok(Evaluated { outcome, writes }),
        Err(e) => {
            view.unstage();
            Err(e)
        }
    }
}

fn choose(txn: &Txn, view: &dyn KvView, at: i64) -> Result<Path, WriteError> {
    let mut succeeded = true;
    for c in &txn.compare {
        if !compare(c, view, at)? {
            succeeded = false;
            break;
        }
    }
    let nested = branch(txn, succeeded)
        .iter()
        .filter_map(|op| match op {
            Op::Txn(t) => Some(choose(t, view, at)),
            _ => None,
        })
        .collect::<Result<Vec<Path>, WriteError>>()?;
    Ok(Path { succeeded, nested })
}

fn branch(txn: &Txn, succeeded: bool) -> &[Op] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// Runs the chosen branch: each op sees the writes before it; each write
/// takes the next revision.
fn run(
    txn: &Txn,
    path: &Path,
    view: &mut dyn KvView,
    stamp: Stamp<'_>,
    writes: &mut Vec<Write>,
) -> Result<TxnOutcome, WriteError> {
    let ops = branch(txn, path.succeeded);
    let mut nested = path.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let current = view.current_revision();
        responses.push(match op {
            Op::Range(q) => read_range(q, &*view, current)?,
            Op::Put(p) => {
                let (result, write) = put(p, view, current + 1, stamp)?;
                writes.push(write);
                result
            }
            Op::Delete { range, prev_kv } => delete(range, *prev_kv, view, stamp, writes)?,
            Op::Txn(t) => {
                let path = nested
                    .next()
                    .ok_or_else(|| WriteError::Store("a nested txn without its path".into()))?;
                OpResult::Txn(run(t, path, view, stamp, writes)?)
            }
        });
    }
    Ok(TxnOutcome {
        succeeded: path.succeeded,
        revision: view.current_revision(),
        responses,
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

/// etcd's pre-execution checks of the chosen branches: read revisions,
/// leases and the keys that ignore_value/ignore_lease need, all against the
/// state before the txn.
fn check_ops(txn: &Txn, path: &Path, view: &dyn KvView, begin: i64) -> Result<(), WriteError> {
    let mut nested = path.nested.iter();
    for op in branch(txn, path.succeeded) {
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
            Op::Txn(t) => {
                if let Some(path) = nested.next() {
                    check_ops(t, path, view, begin)?;
                }
            }
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
        detached(&p.value)
    };
    // Kept by the index and the watch ring: not as a slice of the request.
    let key = detached(&p.key);
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
        key: key.clone(),
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
        key.clone(),
        Some(KvEntry {
            key,
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

/// Deletes every live key in `range`, each at the next revision.
fn delete(
    range: &KeyRange,
    prev_kv: bool,
    view: &mut dyn KvView,
    stamp: Stamp<'_>,
    writes: &mut Vec<Write>,
) -> Result<OpResult, WriteError> {
    let mut doomed = view.scan(range, view.current_revision())?;
    // Watchers get each deleted key's previous value.
    view.load_values(&mut doomed)?;
    for prev in &doomed {
        let revision = view.current_revision() + 1;
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
        writes.push(Write {
            record,
            prev: Some(prev.clone()),
        });
    }
    Ok(OpResult::Delete {
        revision: view.current_revision(),
        deleted: doomed.len() as i64,
        prev: if prev_kv { doomed } else { vec![] },
    })
}
