//! etcd's Range semantics over keys already selected at one revision:
//! validation, the revision to read at, filters, sorting, limit, count and
//! more. Pure: the caller supplies the keys and a way to load values.

use crate::grpc::Status;
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::RangeRequest;
use crate::pb::mvccpb::KeyValue;
use crate::store::KvEntry;

use super::errors;

/// Checks a Range request the way etcd does before executing it.
pub fn validate(req: &RangeRequest) -> Result<(), Status> {
    if req.key.is_empty() {
        return Err(errors::empty_key());
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(errors::invalid_sort_option());
    }
    if req.limit < 0 {
        return Err(errors::negative_limit());
    }
    Ok(())
}

/// The revision a read happens at: 0 means `current`; above it is a future
/// revision; below the compaction revision it is gone.
pub fn read_revision(requested: i64, current: i64, compacted: i64) -> Result<i64, Status> {
    if requested > current {
        return Err(errors::future_revision());
    }
    let at = if requested <= 0 { current } else { requested };
    if at < compacted {
        return Err(errors::compacted());
    }
    Ok(at)
}

/// Keys gathered from the store for one Range.
pub struct Selection {
    pub entries: Vec<KvEntry>,
    /// Every live key in the range at the read revision.
    pub count: i64,
}

/// Gathers keys in ascending key order, keeping only as many as the answer
/// can need (etcd fetches limit + 1 unless it must sort or filter).
pub fn select(req: &RangeRequest, keys: impl Iterator<Item = KvEntry>) -> Selection {
    let needs_all = req.sort_order != SortOrder::None as i32
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let keep = if req.count_only {
        0
    } else if needs_all || req.limit == 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
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

/// The answer to a Range: kvs (values loaded unless keys_only), more, count.
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// Applies filters, sort and limit, then loads the values still needed.
pub fn finish(
    req: &RangeRequest,
    selection: Selection,
    load_values: impl FnOnce(&mut [KvEntry]) -> Result<(), Status>,
) -> Result<RangeResult, Status> {
    let Selection { mut entries, count } = selection;
    if req.count_only {
        return Ok(RangeResult {
            kvs: Vec::new(),
            more: false,
            count,
        });
    }
    if req.max_mod_revision != 0 {
        entries.retain(|e| e.rev.revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        entries.retain(|e| e.rev.revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        entries.retain(|e| e.rev.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        entries.retain(|e| e.rev.create_revision >= req.min_create_revision);
    }
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
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
    if req.limit > 0 && entries.len() > req.limit as usize {
        entries.truncate(req.limit as usize);
        more = true;
    }
    if !req.keys_only {
        if let Some(load) = load_values.take() {
            load(&mut entries)?;
        }
    }
    let kvs = entries
        .iter()
        .map(|e| {
            let mut kv = e.to_key_value();
            if req.keys_only {
                kv.value = Default::default();
            }
            kv
        })
        .collect();
    Ok(RangeResult { kvs, more, count })
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

    fn run(req: &RangeRequest) -> RangeResult {
        let sel = select(req, data().into_iter());
        finish(req, sel, |_| Ok(())).unwrap()
    }

    fn keys(r: &RangeResult) -> Vec<String> {
        r.kvs
            .iter()
            .map(|k| String::from_utf8_lossy(&k.key).into_owned())
            .collect()
    }

    #[test]
    fn limit_gives_count_of_all_and_more() {
        let r = run(&RangeRequest {
            key: "a".into(),
            limit: 2,
            ..Default::default()
        });
        assert_eq!(keys(&r), ["a", "b"]);
        assert!(r.more);
        assert_eq!(r.count, 4);
        let r = run(&RangeRequest {
            key: "a".into(),
            limit: 4,
            ..Default::default()
        });
        assert!(!r.more);
    }

    #[test]
    fn count_only_and_keys_only() {
        let r = run(&RangeRequest {
            key: "a".into(),
            count_only: true,
            ..Default::default()
        });
        assert!(r.kvs.is_empty());
        assert_eq!(r.count, 4);
        assert!(!r.more);
        let r = run(&RangeRequest {
            key: "a".into(),
            keys_only: true,
            ..Default::default()
        });
        assert!(r.kvs.iter().all(|k| k.value.is_empty()));
        assert_eq!(r.kvs[0].mod_revision, 5);
    }

    #[test]
    fn sorts_by_each_target_with_stable_ties() {
        let by = |target: SortTarget, order: SortOrder| {
            keys(&run(&RangeRequest {
                key: "a".into(),
                sort_target: target as i32,
                sort_order: order as i32,
                ..Default::default()
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
        let r = run(&RangeRequest {
            key: "a".into(),
            min_mod_revision: 4,
            limit: 1,
            ..Default::default()
        });
        assert_eq!(keys(&r), ["a"]);
        assert!(r.more);
        assert_eq!(r.count, 4);
        let r = run(&RangeRequest {
            key: "a".into(),
            max_create_revision: 3,
            ..Default::default()
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
        assert_eq!(
            read_revision(4, 10, 5).unwrap_err().message,
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(
            read_revision(11, 10, 5).unwrap_err().message,
            "etcdserver: mvcc: required revision is a future revision"
        );
    }

    #[test]
    fn validation_texts() {
        assert_eq!(
            validate(&RangeRequest::default()).unwrap_err().message,
            "etcdserver: key is not provided"
        );
        let neg = RangeRequest {
            key: "a".into(),
            limit: -1,
            ..Default::default()
        };
        assert_eq!(
            validate(&neg).unwrap_err().message,
            "limit must be non-negative"
        );
        let bad = RangeRequest {
            key: "a".into(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            validate(&bad).unwrap_err().message,
            "etcdserver: invalid sort option"
        );
    }
}
