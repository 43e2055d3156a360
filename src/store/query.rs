//! Range queries with etcd's semantics over keys already selected at one
//! revision: the revision to read at, revision filters, sorting, limit,
//! count and more. Pure: the caller supplies the keys and a way to load
//! values. The etcd layer translates its requests into [`RangeQuery`].

use super::{KeyRange, KvEntry, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortTarget {
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// One range read: which keys, at which revision, and how to shape the
/// answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeQuery {
    pub range: KeyRange,
    /// 0 reads at the current revision.
    pub revision: i64,
    /// 0 is no limit.
    pub limit: i64,
    pub count_only: bool,
    pub keys_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Filters; 0 leaves a bound open.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeQuery {
    /// Every key in `range` at the current revision, ascending.
    pub fn new(range: KeyRange) -> RangeQuery {
        RangeQuery {
            range,
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
            sort_order: SortOrder::None,
            sort_target: SortTarget::Key,
            min_mod_revision: 0,
            max_mod_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
        }
    }
}

/// The revision a read happens at: 0 means `current`; above it is a future
/// revision; below the compaction revision it is gone.
pub fn read_revision(requested: i64, current: i64, compacted: i64) -> Result<i64, StoreError> {
    if requested > current {
        return Err(StoreError::FutureRevision);
    }
    let at = if requested <= 0 { current } else { requested };
    if at < compacted {
        return Err(StoreError::Compacted);
    }
    Ok(at)
}

/// Keys gathered from the store for one range.
pub struct Selection {
    pub entries: Vec<KvEntry>,
    /// Every live key in the range at the read revision.
    pub count: i64,
}

/// Gathers keys in ascending key order, keeping only as many as the answer
/// can need (etcd fetches limit + 1 unless it must sort or filter).
pub fn select(q: &RangeQuery, keys: impl Iterator<Item = KvEntry>) -> Selection {
    let needs_all = q.sort_order != SortOrder::None
        || q.min_mod_revision != 0
        || q.max_mod_revision != 0
        || q.min_create_revision != 0
        || q.max_create_revision != 0;
    let keep = if q.count_only {
        0
    } else if needs_all || q.limit <= 0 {
        usize::MAX
    } else {
        q.limit as usize + 1
    };
    let mut entries = Vec::new();
    let mut count = 0i64;
    for e in keys {
        count += 1;
        if entries.len() < keep {
            entries.push(e);
        }
    }
    Selection { entries, count }
}

/// The answer to a range: the entries (values loaded unless keys_only, in
/// which case they carry none), whether more keys follow, and the count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub entries: Vec<KvEntry>,
    pub more: bool,
    pub count: i64,
}

/// Applies filters, sort and limit, then loads the values still needed.
pub fn finish<E>(
    q: &RangeQuery,
    selection: Selection,
    load_values: impl FnOnce(&mut [KvEntry]) -> Result<(), E>,
) -> Result<RangeResult, E> {
    let Selection { mut entries, count } = selection;
    if q.count_only {
        return Ok(RangeResult {
            entries: Vec::new(),
            more: false,
            count,
        });
    }
    if q.max_mod_revision != 0 {
        entries.retain(|e| e.rev.revision <= q.max_mod_revision);
    }
    if q.min_mod_revision != 0 {
        entries.retain(|e| e.rev.revision >= q.min_mod_revision);
    }
    if q.max_create_revision != 0 {
        entries.retain(|e| e.rev.create_revision <= q.max_create_revision);
    }
    if q.min_create_revision != 0 {
        entries.retain(|e| e.rev.create_revision >= q.min_create_revision);
    }
    let target = q.sort_target;
    let mut order = q.sort_order;
    // Keys already come in ascending key order; etcd sorts ascending by
    // default for other targets.
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    // Sorting by value needs the values first; otherwise load only what the
    // page returns.
    let sort_by_value = order != SortOrder::None && target == SortTarget::Value;
    let mut load_values = Some(load_values);
    if sort_by_value {
        if let Some(load) = load_values.take() {
            load(&mut entries)?;
        }
    }
    if order != SortOrder::None {
        let key_of = |e: &KvEntry| -> SortKey {
            match target {
                SortTarget::Key => SortKey::Bytes(e.key.clone()),
                SortTarget::Version => SortKey::Int(e.rev.version),
                SortTarget::Create => SortKey::Int(e.rev.create_revision),
                SortTarget::Mod => SortKey::Int(e.rev.revision),
                SortTarget::Value => SortKey::Bytes(e.value.clone().unwrap_or_default()),
            }
        };
        // Stable sorts: ties keep ascending key order, as etcd's do.
        match order {
            SortOrder::Descend => entries.sort_by_key(|e| std::cmp::Reverse(key_of(e))),
            _ => entries.sort_by_key(|e| key_of(e)),
        }
    }
    let mut more = false;
    if q.limit > 0 && entries.len() > q.limit as usize {
        entries.truncate(q.limit as usize);
        more = true;
    }
    if q.keys_only {
        for e in &mut entries {
            e.value = None;
        }
    } else if let Some(load) = load_values.take() {
        load(&mut entries)?;
    }
    Ok(RangeResult {
        entries,
        more,
        count,
    })
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Int(i64),
    Bytes(bytes::Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Rev;
    use bytes::Bytes;

    fn kv(key: &str, rev: i64, create: i64, version: i64, value: &str) -> KvEntry {
        KvEntry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            rev: Rev {
                revision: rev,
                create_revision: create,
                version,
                lease: 0,
                deleted: false,
            },
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    fn data() -> Vec<KvEntry> {
        vec![
            kv("a", 5, 2, 2, "z"),
            kv("b", 3, 3, 1, "y"),
            kv("c", 6, 4, 2, "x"),
            kv("d", 4, 4, 1, "w"),
        ]
    }

    fn query() -> RangeQuery {
        RangeQuery::new(KeyRange::new(
            &Bytes::from_static(b"a"),
            &Bytes::from_static(b"\0"),
        ))
    }

    fn run(q: &RangeQuery) -> RangeResult {
        let sel = select(q, data().into_iter());
        finish::<StoreError>(q, sel, |_| Ok(())).unwrap()
    }

    fn keys(r: &RangeResult) -> Vec<String> {
        r.entries
            .iter()
            .map(|k| String::from_utf8_lossy(&k.key).into_owned())
            .collect()
    }

    #[test]
    fn limit_gives_count_of_all_and_more() {
        let r = run(&RangeQuery {
            limit: 2,
            ..query()
        });
        assert_eq!(keys(&r), ["a", "b"]);
        assert!(r.more);
        assert_eq!(r.count, 4);
        let r = run(&RangeQuery {
            limit: 4,
            ..query()
        });
        assert!(!r.more);
    }

    #[test]
    fn count_only_and_keys_only() {
        let r = run(&RangeQuery {
            count_only: true,
            ..query()
        });
        assert!(r.entries.is_empty());
        assert_eq!(r.count, 4);
        assert!(!r.more);
        let r = run(&RangeQuery {
            keys_only: true,
            ..query()
        });
        assert!(r.entries.iter().all(|k| k.value.is_none()));
        assert_eq!(r.entries[0].rev.revision, 5);
    }

    #[test]
    fn sorts_by_each_target_with_stable_ties() {
        let by = |target: SortTarget, order: SortOrder| {
            keys(&run(&RangeQuery {
                sort_target: target,
                sort_order: order,
                ..query()
            }))
        };
        assert_eq!(
            by(SortTarget::Key, SortOrder::Descend),
            ["d", "c", "b", "a"]
        );
        assert_eq!(by(SortTarget::Mod, SortOrder::Ascend), ["b", "d", "a", "c"]);
        assert_eq!(by(SortTarget::Mod, SortOrder::None), ["b", "d", "a", "c"]);
        assert_eq!(
            by(SortTarget::Version, SortOrder::Descend),
            ["a", "c", "b", "d"]
        );
        assert_eq!(
            by(SortTarget::Create, SortOrder::Descend),
            ["c", "d", "b", "a"]
        );
        assert_eq!(
            by(SortTarget::Value, SortOrder::Ascend),
            ["d", "c", "b", "a"]
        );
    }

    #[test]
    fn revision_filters_apply_before_limit_and_not_to_count() {
        let r = run(&RangeQuery {
            min_mod_revision: 4,
            limit: 1,
            ..query()
        });
        assert_eq!(keys(&r), ["a"]);
        assert!(r.more);
        assert_eq!(r.count, 4);
        let r = run(&RangeQuery {
            max_create_revision: 3,
            ..query()
        });
        assert_eq!(keys(&r), ["a", "b"]);
    }

    #[test]
    fn read_revision_rules() {
        assert_eq!(read_revision(0, 10, 0).unwrap(), 10);
        assert_eq!(read_revision(7, 10, 5).unwrap(), 7);
        assert_eq!(
            read_revision(5, 10, 5).unwrap(),
            5,
            "the compaction revision itself is readable"
        );
        assert!(matches!(
            read_revision(4, 10, 5),
            Err(StoreError::Compacted)
        ));
        assert!(matches!(
            read_revision(11, 10, 5),
            Err(StoreError::FutureRevision)
        ));
    }
}
