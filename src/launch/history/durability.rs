//! Durability: a write the server acknowledged is never lost. Each
//! acknowledged write has its own revision, is in the final history at that
//! revision, and the final state holds it unless a later write replaced it;
//! and nothing is in the history or the final state that no operation could
//! have written (a write reported as failed that happened anyway). Writes
//! are traced to operations by key and value, so the generator should make
//! every written value unique.

use std::collections::{BTreeMap, HashMap};

use super::operation::{describe, Operation, Outcome, Revision};
use super::write_log::{change_of, Change, StoredValue, Write, WriteLog};
use super::{Check, Violation};

/// No revision acknowledged to two different writes.
pub fn check_revisions_unique(ops: &[Operation]) -> Vec<Violation> {
    let mut owner: HashMap<Revision, usize> = HashMap::new();
    let mut violations = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let Some(revision) = op.acknowledged_write() else {
            continue;
        };
        if let Some(&first) = owner.get(&revision) {
            violations.push(Violation::new(
                Check::Durability,
                vec![first, index],
                format!(
                    "revision {revision} was acknowledged to two writes: {} and {}",
                    describe(first, &ops[first]),
                    describe(index, op)
                ),
            ));
        } else {
            owner.insert(revision, index);
        }
    }
    violations
}

/// An acknowledged write as the history should hold it.
struct Acknowledged {
    index: usize,
    write: Write,
}

fn acknowledged(ops: &[Operation]) -> Vec<Acknowledged> {
    ops.iter()
        .enumerate()
        .filter_map(|(index, op)| {
            Some(Acknowledged {
                index,
                write: Write {
                    revision: op.acknowledged_write()?,
                    key: op.request.key()?.to_string(),
                    change: change_of(&op.request)?,
                },
            })
        })
        .collect()
}

/// Operations that may have made `change` to `key` (acknowledged or
/// unknown), and those reported failed.
fn writers(ops: &[Operation], key: &str, change: &Change) -> (Vec<usize>, Vec<usize>) {
    let mut may = Vec::new();
    let mut failed = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        if op.request.key() != Some(key) || change_of(&op.request).as_ref() != Some(change) {
            continue;
        }
        match &op.outcome {
            Outcome::Failed { .. } => failed.push(index),
            _ if op.may_have_written() => may.push(index),
            _ => {}
        }
    }
    (may, failed)
}

/// A phantom write's message: which failed operations it resembles.
fn phantom(ops: &[Operation], what: String, failed: Vec<usize>) -> Violation {
    let blame = match failed.first() {
        Some(&index) => format!("; {} was reported failed", describe(index, &ops[index])),
        None => String::new(),
    };
    Violation::new(
        Check::Durability,
        failed,
        format!("{what}, which no operation that may have happened wrote{blame}"),
    )
}

/// The final state holds each key's latest acknowledged write, or a later
/// one some operation may have made; with the final history, the two dumps
/// agree.
pub fn check_final_state(
    ops: &[Operation],
    state: &BTreeMap<String, StoredValue>,
    log: Option<&WriteLog>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut latest: BTreeMap<&str, &Acknowledged> = BTreeMap::new();
    let acknowledged = acknowledged(ops);
    for write in &acknowledged {
        let key = write.write.key.as_str();
        if latest
            .get(key)
            .is_none_or(|l| l.write.revision < write.write.revision)
        {
            latest.insert(key, write);
        }
    }
    for (key, write) in &latest {
        let op = describe(write.index, &ops[write.index]);
        let revision = write.write.revision;
        let problem = match (state.get(*key), &write.write.change) {
            (Some(stored), _) if stored.mod_revision < revision => Some(format!(
                "{op} was acknowledged at revision {revision}, but the final state has {key} = {:?} from revision {}",
                stored.value, stored.mod_revision
            )),
            (Some(stored), Change::Put { value })
                if stored.mod_revision == revision && stored.value != *value =>
            {
                Some(format!(
                    "{op} was acknowledged at revision {revision}, but the final state has {key} = {:?} at that revision",
                    stored.value
                ))
            }
            (Some(stored), Change::Delete) if stored.mod_revision == revision => Some(format!(
                "{op} deleted {key} at revision {revision}, but the final state has {key} = {:?} from that revision",
                stored.value
            )),
            (None, Change::Put { .. }) => {
                let (deleters, _) = writers(ops, key, &Change::Delete);
                let later_delete = deleters
                    .iter()
                    .any(|&d| ops[d].acknowledged_write().is_none_or(|r| r > revision));
                (!later_delete).then(|| {
                    format!("{op} was acknowledged at revision {revision}, but {key} is missing from the final state")
                })
            }
            _ => None,
        };
        if let Some(problem) = problem {
            violations.push(Violation::new(
                Check::Durability,
                vec![write.index],
                problem,
            ));
        }
    }
    // What the final state holds beyond the acknowledged writes must come
    // from some operation that may have happened.
    for (key, stored) in state {
        if latest
            .get(key.as_str())
            .is_some_and(|l| l.write.revision >= stored.mod_revision)
        {
            continue;
        }
        let change = Change::Put {
            value: stored.value.clone(),
        };
        let (may, failed) = writers(ops, key, &change);
        if may.is_empty() {
            violations.push(phantom(
                ops,
                format!(
                    "the final state has {key} = {:?} from revision {}",
                    stored.value, stored.mod_revision
                ),
                failed,
            ));
        }
    }
    if let Some(log) = log {
        let from_log = log.final_state();
        let keys: std::collections::BTreeSet<&String> =
            from_log.keys().chain(state.keys()).collect();
        for key in keys {
            let (dumped, logged) = (state.get(key), from_log.get(key));
            if dumped != logged {
                let shown = |s: Option<&StoredValue>| {
                    s.map_or_else(
                        || "absent".to_string(),
                        |s| format!("{:?} from revision {}", s.value, s.mod_revision),
                    )
                };
                violations.push(Violation::new(
                    Check::Durability,
                    Vec::new(),
                    format!(
                        "the final state has {key} {} but the final history leaves it {}",
                        shown(dumped),
                        shown(logged)
                    ),
                ));
            }
        }
    }
    violations
}

/// Every acknowledged write is in the final history at its revision, and
/// every write there comes from an operation that may have happened.
pub fn check_history(ops: &[Operation], log: &WriteLog) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut acknowledged_at: HashMap<Revision, usize> = HashMap::new();
    for write in acknowledged(ops) {
        acknowledged_at.insert(write.write.revision, write.index);
        let logged = log.at(write.write.revision);
        if logged != Some(&write.write) {
            let found = logged.map_or_else(
                || "no write there".to_string(),
                |w| format!("{w} there instead"),
            );
            violations.push(Violation::new(
                Check::Durability,
                vec![write.index],
                format!(
                    "{} was acknowledged at revision {}, but the final history has {found}",
                    describe(write.index, &ops[write.index]),
                    write.write.revision
                ),
            ));
        }
    }
    for write in log.writes() {
        if acknowledged_at.contains_key(&write.revision) {
            continue;
        }
        let (may, failed) = writers(ops, &write.key, &write.change);
        // Acknowledged writers have their own revision; this one is free.
        let unknown_writer = may
            .iter()
            .any(|&index| matches!(ops[index].outcome, Outcome::Unknown { .. }));
        if !unknown_writer {
            violations.push(phantom(
                ops,
                format!("the final history has {write}"),
                failed,
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::launch::history::operation::Response;

    fn stored(value: &str, mod_revision: Revision) -> StoredValue {
        StoredValue {
            value: value.into(),
            mod_revision,
        }
    }

    fn ops() -> Vec<Operation> {
        vec![
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/b", "1"), written(3)),
            op(2, 20, 30, put("/c", "1"), unknown()),
            op(
                1,
                40,
                50,
                delete("/b", None),
                ok(Response::Delete {
                    succeeded: true,
                    deleted: true,
                    revision: 5,
                    current: None,
                }),
            ),
            op(2, 40, 50, put("/d", "1"), failed()),
        ]
    }

    fn final_state(entries: &[(&str, StoredValue)]) -> BTreeMap<String, StoredValue> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_durable_history_is_accepted() {
        let ops = ops();
        let log = WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/b", "1"),
            log_put(4, "/c", "1"),
            log_delete(5, "/b"),
        ])
        .unwrap();
        let state = final_state(&[("/a", stored("1", 2)), ("/c", stored("1", 4))]);
        assert!(check_revisions_unique(&ops).is_empty());
        let violations = check_final_state(&ops, &state, Some(&log));
        assert!(violations.is_empty(), "{violations:#?}");
        let violations = check_history(&ops, &log);
        assert!(violations.is_empty(), "{violations:#?}");
        // The unknown put need not have happened.
        let log = WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/b", "1"),
            log_delete(5, "/b"),
        ])
        .unwrap();
        let state = final_state(&[("/a", stored("1", 2))]);
        assert!(check_final_state(&ops, &state, Some(&log)).is_empty());
        assert!(check_history(&ops, &log).is_empty());
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        let ops = ops();
        let state = final_state(&[]);
        let violations = check_final_state(&ops, &state, None);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].operations, [0]);
        assert!(
            violations[0].message.contains(
                "#0 (client 1 at 0.000–0.000 ms: put /a = \"1\" → ok, revision 2) was acknowledged at revision 2, but /a is missing from the final state"
            ),
            "{}",
            violations[0].message
        );
        // Rolled back to an older value.
        let ops = vec![
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), written(3)),
        ];
        let violations = check_final_state(&ops, &final_state(&[("/a", stored("1", 2))]), None);
        assert_eq!(violations[0].operations, [1]);
        assert!(violations[0].message.contains("from revision 2"));
    }

    #[test]
    fn a_write_missing_from_the_history_is_rejected() {
        let ops = ops();
        let log = WriteLog::new(vec![log_put(2, "/a", "1"), log_delete(5, "/b")]).unwrap();
        let violations = check_history(&ops, &log);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert!(violations[0]
            .message
            .contains("the final history has no write there"));
    }

    #[test]
    fn a_failed_write_that_happened_is_rejected() {
        let ops = ops();
        let log = WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/b", "1"),
            log_delete(5, "/b"),
            log_put(6, "/d", "1"),
        ])
        .unwrap();
        let violations = check_history(&ops, &log);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].operations, [4]);
        assert!(
            violations[0]
                .message
                .contains("put /d = \"1\" at 6, which no operation"),
            "{}",
            violations[0].message
        );
        let state = final_state(&[("/a", stored("1", 2)), ("/d", stored("1", 6))]);
        let violations = check_final_state(&ops, &state, None);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].operations, [4]);
    }

    #[test]
    fn a_revision_acknowledged_twice_is_rejected() {
        let ops = vec![
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(2, 0, 10, put("/b", "1"), written(2)),
        ];
        let violations = check_revisions_unique(&ops);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].operations, [0, 1]);
    }

    #[test]
    fn the_final_state_and_history_must_agree() {
        let ops = ops();
        let log = WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/b", "1"),
            log_delete(5, "/b"),
        ])
        .unwrap();
        let state = final_state(&[("/a", stored("1", 2)), ("/b", stored("1", 3))]);
        let violations = check_final_state(&ops, &state, Some(&log));
        assert!(
            violations.iter().any(|v| v.message.contains("the final state has /b \"1\" from revision 3 but the final history leaves it absent")),
            "{violations:#?}"
        );
    }
}
