//! Linearizability of the operations under etcd's model, checked key by key.
//!
//! Revisions are global, but every operation here touches one key (a List
//! is split into one read per key, including "absent" for the written keys
//! under its prefix that it did not return), so the history splits per key
//! and each key's part is searched for a linearization (`search`). The
//! revision counter ties the keys together: within a key, revisions must
//! grow along the order (a read at header revision R sees every write up to
//! R, a write's revision exceeds every revision before it; `model`), and
//! across keys [`check_revision_order`] makes revisions grow with real time.
//!
//! Left to `reads`, as they are not real-time reads: serializable reads
//! and reads pinned to a revision.
//!
//! A custom search rather than a general tester (such as stateright's
//! `LinearizabilityTester`, which searches without memoisation, allows one
//! unfinished operation per client, and needs each answer to be computed
//! by the model): here the state carries revision *bounds* (a write whose
//! outcome is unknown has an unknown revision, narrowed when a later read
//! shows it), clients keep going after a timeout, and the search prunes
//! with revisions. With the final history, unknown outcomes are settled
//! before the search ([`resolve_unknown`]); without it, many unknown writes
//! on one busy key can make the search give up ([`Check::SearchLimit`]).

mod model;
mod search;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::operation::{describe, Kv, Operation, Outcome, Request, Response, Revision};
use super::well_formed::is_well_formed;
use super::write_log::{change_of, Change, WriteLog};
use super::{Check, Violation};
use model::{Action, KeyChange, KeyHistory, KeyOp, Precondition, Seen};
use search::search;

/// How far the search may go on one key before calling it undecided.
#[derive(Clone, Copy, Debug)]
pub struct SearchLimits {
    pub max_steps_per_key: u64,
}

impl Default for SearchLimits {
    fn default() -> SearchLimits {
        SearchLimits {
            max_steps_per_key: 5_000_000,
        }
    }
}

/// Revision order across keys, then a linearization per key.
pub fn check(ops: &[Operation]) -> Vec<Violation> {
    check_with(ops, None, SearchLimits::default())
}

/// As [`check`]; given the final history, writes with unknown outcomes are
/// first looked up in it (see [`resolve_unknown`]), which spares the
/// search guessing whether and where they happened.
pub fn check_with(
    ops: &[Operation],
    history: Option<&WriteLog>,
    limits: SearchLimits,
) -> Vec<Violation> {
    let resolved = history
        .map(|log| resolve_unknown(ops, log))
        .unwrap_or_default();
    let mut violations = check_revision_order(ops);
    for (key, history) in split_by_key(ops, &resolved) {
        if let Err(failure) = search(&history, limits) {
            violations.push(failure.violation(&key, &history, ops));
        }
    }
    violations
}

/// What the final history says of a write whose outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// It holds the write, at this revision.
    Happened(Revision),
    /// It does not hold the write.
    DidNotHappen,
}

/// Looks up each write with an unknown outcome in the final history: a
/// write there that no acknowledged operation explains, of the same key
/// and change, is this operation's if it is the only such operation and
/// the only such write; with none, the operation did not happen. Anything
/// ambiguous (two unknown deletes of one key, a value written twice) stays
/// unknown. Values unique per write make nearly everything resolvable.
pub fn resolve_unknown(ops: &[Operation], log: &WriteLog) -> HashMap<usize, Resolved> {
    let acknowledged: HashSet<Revision> = ops
        .iter()
        .filter_map(Operation::acknowledged_write)
        .collect();
    let mut unexplained: HashMap<(&str, &Change), Vec<Revision>> = HashMap::new();
    for write in log.writes() {
        if !acknowledged.contains(&write.revision) {
            unexplained
                .entry((write.key.as_str(), &write.change))
                .or_default()
                .push(write.revision);
        }
    }
    let changes: Vec<Option<Change>> = ops.iter().map(|op| change_of(&op.request)).collect();
    let mut unknown: HashMap<(&str, &Change), Vec<usize>> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        if !matches!(op.outcome, Outcome::Unknown { .. }) {
            continue;
        }
        if let (Some(key), Some(change)) = (op.request.key(), &changes[index]) {
            unknown.entry((key, change)).or_default().push(index);
        }
    }
    let mut resolved = HashMap::new();
    for (write, indexes) in unknown {
        match (
            unexplained.get(&write).map(Vec::as_slice),
            indexes.as_slice(),
        ) {
            (None, _) => {
                for index in indexes {
                    resolved.insert(index, Resolved::DidNotHappen);
                }
            }
            (Some([revision]), [index]) => {
                resolved.insert(*index, Resolved::Happened(*revision));
            }
            _ => {}
        }
    }
    resolved
}

/// Revisions grow with real time: an operation invoked after another
/// returned answers a revision at least as high (higher, for a write, whose
/// revision is new). Serializable reads are exempt.
pub fn check_revision_order(ops: &[Operation]) -> Vec<Violation> {
    struct Timed {
        index: usize,
        invoked: u64,
        returned: u64,
        revision: Revision,
        wrote: bool,
    }
    let timed: Vec<Timed> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !op.request.is_serializable() && is_well_formed(op))
        .filter_map(|(index, op)| {
            let response = op.response()?;
            Some(Timed {
                index,
                invoked: op.invoked_at_ns,
                returned: op.returned_at_ns,
                revision: response.revision(),
                wrote: response.wrote(),
            })
        })
        .collect();
    let mut by_return: Vec<&Timed> = timed.iter().collect();
    by_return.sort_by_key(|t| t.returned);
    let mut by_invocation: Vec<&Timed> = timed.iter().collect();
    by_invocation.sort_by_key(|t| t.invoked);

    let mut violations = Vec::new();
    // The highest revision among operations that returned so far.
    let mut highest: Option<&Timed> = None;
    let mut returned = by_return.iter().peekable();
    for later in by_invocation {
        while let Some(earlier) = returned.next_if(|t| t.returned < later.invoked) {
            if highest.is_none_or(|h| earlier.revision > h.revision) {
                highest = Some(earlier);
            }
        }
        let Some(earlier) = highest else { continue };
        let behind = later.revision < earlier.revision
            || (later.wrote && later.revision == earlier.revision);
        if behind {
            violations.push(Violation::new(
                Check::RevisionOrder,
                vec![earlier.index, later.index],
                format!(
                    "{} answered revision {} although {} had returned revision {} before it began",
                    describe(later.index, &ops[later.index]),
                    later.revision,
                    describe(earlier.index, &ops[earlier.index]),
                    earlier.revision
                ),
            ));
        }
    }
    violations
}

// ---- Splitting the history per key -------------------------------------

fn split_by_key(
    ops: &[Operation],
    resolved: &HashMap<usize, Resolved>,
) -> BTreeMap<String, KeyHistory> {
    // Keys some request writes: a List that does not return one of them
    // under its prefix says it was absent.
    let written: BTreeSet<&str> = ops
        .iter()
        .filter(|op| op.request.is_write())
        .filter_map(|op| op.request.key())
        .collect();
    let mut histories: BTreeMap<String, KeyHistory> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        if !is_well_formed(op) {
            continue;
        }
        let (returned, response, happened) = match (&op.outcome, resolved.get(&index)) {
            (Outcome::Ok(response), _) => (Some(op.returned_at_ns), Some(response), None),
            (Outcome::Unknown { .. }, Some(Resolved::DidNotHappen)) => continue,
            (Outcome::Unknown { .. }, resolution) if op.request.is_write() => {
                let happened = match resolution {
                    Some(Resolved::Happened(revision)) => Some(*revision),
                    _ => None,
                };
                (None, None, happened)
            }
            // Known not to have happened, or a read that told nothing.
            _ => continue,
        };
        let mut add = |key: &str, action: &dyn Fn(&mut KeyHistory) -> Option<Action>| {
            let history = histories.entry(key.to_string()).or_default();
            if let Some(mut action) = action(history) {
                if let (Action::Write { revision, .. }, Some(happened)) = (&mut action, happened) {
                    *revision = Some(happened);
                }
                history.ops.push(KeyOp {
                    op: index,
                    invoked: op.invoked_at_ns,
                    returned,
                    required: returned.is_some() || happened.is_some(),
                    action,
                });
            }
        };
        match (&op.request, response) {
            (
                Request::Get {
                    revision: Some(_), ..
                },
                _,
            )
            | (
                Request::List {
                    revision: Some(_), ..
                },
                _,
            ) => {}
            _ if op.request.is_serializable() => {}
            (Request::List { prefix, .. }, Some(Response::List { kvs, revision })) => {
                let returned: HashMap<&str, &Kv> =
                    kvs.iter().map(|kv| (kv.key.as_str(), kv)).collect();
                let keys: BTreeSet<&str> = written
                    .range(prefix.as_str()..)
                    .take_while(|key| key.starts_with(prefix.as_str()))
                    .copied()
                    .chain(returned.keys().copied())
                    .collect();
                for key in keys {
                    let kv = returned.get(key).copied();
                    add(key, &|h| {
                        Some(Action::Read {
                            seen: h.seen(kv),
                            revision: *revision,
                        })
                    });
                }
            }
            (request, response) => {
                let Some(key) = request.key() else { continue };
                add(key, &|h| key_action(h, request, response));
            }
        }
    }
    histories
}

/// A single-key request's action; None when it cannot have had an effect
/// or told nothing.
fn key_action(
    history: &mut KeyHistory,
    request: &Request,
    response: Option<&Response>,
) -> Option<Action> {
    let read = |history: &mut KeyHistory, kv: Option<&Kv>, revision: Revision| Action::Read {
        seen: history.seen(kv),
        revision,
    };
    let write = |precondition, change, response: Option<&Response>| Action::Write {
        precondition,
        change,
        revision: response.map(Response::revision),
    };
    let compare_mod = |expected: Revision| match expected {
        0 => Precondition::Absent,
        m => Precondition::ModRevision(m),
    };
    Some(match (request, response) {
        (Request::Put { value, .. }, _) => write(
            Precondition::None,
            KeyChange::Put(history.value_id(value)),
            response,
        ),
        (
            Request::Create { value, .. },
            None
            | Some(Response::Create {
                succeeded: true, ..
            }),
        ) => write(
            Precondition::Absent,
            KeyChange::Put(history.value_id(value)),
            response,
        ),
        (Request::Create { .. }, Some(Response::Create { revision, .. })) => Action::Read {
            seen: Seen::Present,
            revision: *revision,
        },
        (
            Request::Update {
                value,
                expected_mod_revision,
                ..
            },
            None
            | Some(Response::Update {
                succeeded: true, ..
            }),
        ) => write(
            compare_mod(*expected_mod_revision),
            KeyChange::Put(history.value_id(value)),
            response,
        ),
        (
            Request::Update { .. },
            Some(Response::Update {
                revision, current, ..
            }),
        ) => read(history, current.as_ref(), *revision),
        (
            Request::Delete {
                expected_mod_revision,
                ..
            },
            None,
        ) => {
            let precondition = match expected_mod_revision {
                None => Precondition::Present,
                Some(expected) => compare_mod(*expected),
            };
            if matches!(precondition, Precondition::Absent) {
                // Deleting an absent key changes nothing.
                return None;
            }
            write(precondition, KeyChange::Delete, None)
        }
        (
            Request::Delete {
                expected_mod_revision,
                ..
            },
            Some(Response::Delete {
                succeeded: true,
                deleted: true,
                ..
            }),
        ) => {
            let precondition = match expected_mod_revision {
                None => Precondition::Present,
                Some(expected) => compare_mod(*expected),
            };
            write(precondition, KeyChange::Delete, response)
        }
        (
            Request::Delete { .. },
            Some(Response::Delete {
                revision, current, ..
            }),
        ) => read(history, current.as_ref(), *revision),
        (Request::Get { .. }, Some(Response::Get { kv, revision })) => {
            read(history, kv.as_ref(), *revision)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn assert_linearizable(ops: &[Operation]) {
        let violations = check(ops);
        assert!(violations.is_empty(), "{violations:#?}");
    }

    /// The first violation's message and the operations it names.
    fn rejected(ops: &[Operation]) -> (String, Vec<usize>) {
        let violations = check(ops);
        let first = violations.first().expect("the history is rejected");
        (first.message.clone(), first.operations.clone())
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        assert_linearizable(&[
            op(1, 0, 10, create("/a", "1"), created(true, 2)),
            op(1, 20, 30, get("/a"), read(Some(kv("/a", "1", 2, 2, 1)), 2)),
            op(
                1,
                40,
                50,
                update("/a", "2", 2),
                ok(Response::Update {
                    succeeded: true,
                    revision: 3,
                    current: None,
                }),
            ),
            op(
                2,
                60,
                70,
                list("/"),
                ok(Response::List {
                    kvs: vec![kv("/a", "2", 3, 2, 2)],
                    revision: 3,
                }),
            ),
            op(
                2,
                80,
                90,
                delete("/a", Some(3)),
                ok(Response::Delete {
                    succeeded: true,
                    deleted: true,
                    revision: 4,
                    current: None,
                }),
            ),
            op(1, 100, 110, get("/a"), read(None, 4)),
        ]);
    }

    #[test]
    fn concurrent_creates_where_one_wins_are_linearizable() {
        assert_linearizable(&[
            op(1, 0, 100, create("/a", "1"), created(false, 3)),
            op(2, 10, 90, create("/a", "2"), created(true, 3)),
            op(3, 20, 80, create("/a", "3"), unknown()),
            op(
                3,
                200,
                210,
                get("/a"),
                read(Some(kv("/a", "2", 3, 3, 1)), 3),
            ),
        ]);
    }

    #[test]
    fn concurrent_creates_that_both_succeed_are_rejected() {
        let (message, named) = rejected(&[
            op(1, 0, 100, create("/a", "1"), created(true, 2)),
            op(2, 10, 90, create("/a", "2"), created(true, 3)),
        ]);
        assert!(message.contains("key /a: not linearizable"), "{message}");
        assert!(message.contains("#1 (client 2"), "{message}");
        assert_eq!(named, [0, 1]);
    }

    #[test]
    fn an_unknown_write_that_happened_is_linearizable() {
        // The put timed out but took effect; a read long after the client
        // gave up shows it, with a revision no answer reported.
        assert_linearizable(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), unknown()),
            op(2, 25, 35, put("/b", "x"), written(3)),
            op(
                2,
                500,
                510,
                get("/a"),
                read(Some(kv("/a", "2", 4, 2, 2)), 5),
            ),
            op(
                2,
                600,
                610,
                get("/a"),
                read(Some(kv("/a", "2", 4, 2, 2)), 5),
            ),
        ]);
    }

    #[test]
    fn an_unknown_write_that_did_not_happen_is_linearizable() {
        assert_linearizable(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), unknown()),
            op(1, 40, 50, update("/a", "3", 2), unknown()),
            op(
                2,
                500,
                510,
                get("/a"),
                read(Some(kv("/a", "1", 2, 2, 1)), 2),
            ),
        ]);
    }

    #[test]
    fn an_unknown_write_seen_then_unseen_is_rejected() {
        // Once a read has seen the unknown write, a later read cannot miss it.
        let (message, named) = rejected(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), unknown()),
            op(
                2,
                500,
                510,
                get("/a"),
                read(Some(kv("/a", "2", 3, 2, 2)), 3),
            ),
            op(
                2,
                600,
                610,
                get("/a"),
                read(Some(kv("/a", "1", 2, 2, 1)), 3),
            ),
        ]);
        assert!(message.contains("#3 (client 2"), "{message}");
        assert!(named.contains(&3), "{named:?}");
    }

    #[test]
    fn a_stale_read_after_a_completed_put_is_rejected() {
        let (message, named) = rejected(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), written(3)),
            op(2, 40, 50, get("/a"), read(Some(kv("/a", "1", 2, 2, 1)), 3)),
        ]);
        assert!(
            message.contains("#2 (client 2 at 0.000–0.000 ms: get /a → /a = \"1\""),
            "{message}"
        );
        assert!(message.contains("leaving /a = \"2\" (mod 3"), "{message}");
        assert_eq!(named, [0, 1, 2]);
    }

    #[test]
    fn concurrent_writes_read_in_an_impossible_order_are_rejected() {
        // Two concurrent puts took revisions 3 and 4, so "y" came last;
        // a read after both cannot see "x".
        let (message, _) = rejected(&[
            op(1, 0, 100, put("/a", "x"), written(3)),
            op(2, 0, 100, put("/a", "y"), written(4)),
            op(
                3,
                200,
                210,
                get("/a"),
                read(Some(kv("/a", "x", 3, 3, 1)), 4),
            ),
        ]);
        assert!(message.contains("#2 (client 3"), "{message}");
    }

    #[test]
    fn a_lost_write_is_rejected() {
        // The update was acknowledged at 3, then the key reads as before it.
        let (message, named) = rejected(&[
            op(1, 0, 10, create("/a", "1"), created(true, 2)),
            op(
                1,
                20,
                30,
                update("/a", "2", 2),
                ok(Response::Update {
                    succeeded: true,
                    revision: 3,
                    current: None,
                }),
            ),
            op(
                2,
                40,
                50,
                list("/"),
                ok(Response::List {
                    kvs: vec![kv("/a", "1", 2, 2, 1)],
                    revision: 4,
                }),
            ),
        ]);
        assert!(message.contains("list /*"), "{message}");
        assert_eq!(named, [0, 1, 2]);
    }

    #[test]
    fn a_list_that_misses_a_live_key_is_rejected() {
        let (message, _) = rejected(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(
                2,
                20,
                30,
                list("/"),
                ok(Response::List {
                    kvs: vec![],
                    revision: 2,
                }),
            ),
        ]);
        assert!(message.contains("key /a"), "{message}");
    }

    #[test]
    fn a_read_with_a_revision_below_an_earlier_answer_is_rejected() {
        let violations = check(&[
            op(1, 0, 10, put("/a", "1"), written(5)),
            op(2, 20, 30, get("/b"), read(None, 4)),
        ]);
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].check, Check::RevisionOrder);
        assert_eq!(violations[0].operations, [0, 1]);
    }

    #[test]
    fn reads_must_match_version_and_create_revision() {
        let (message, _) = rejected(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), written(3)),
            op(2, 40, 50, get("/a"), read(Some(kv("/a", "2", 3, 3, 1)), 3)),
        ]);
        assert!(message.contains("not linearizable"), "{message}");
    }

    #[test]
    fn a_failed_operation_never_takes_effect() {
        let (message, _) = rejected(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), failed()),
            op(2, 40, 50, get("/a"), read(Some(kv("/a", "2", 3, 2, 2)), 3)),
        ]);
        assert!(message.contains("not linearizable"), "{message}");
    }

    #[test]
    fn compare_failures_and_no_op_deletes_are_reads() {
        assert_linearizable(&[
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(
                2,
                20,
                30,
                update("/a", "2", 7),
                ok(Response::Update {
                    succeeded: false,
                    revision: 2,
                    current: Some(kv("/a", "1", 2, 2, 1)),
                }),
            ),
            op(
                2,
                40,
                50,
                delete("/b", None),
                ok(Response::Delete {
                    succeeded: true,
                    deleted: false,
                    revision: 2,
                    current: None,
                }),
            ),
            op(1, 60, 70, create("/a", "3"), created(false, 2)),
        ]);
        // A failed create needs the key to exist.
        let (message, _) = rejected(&[op(1, 0, 10, create("/a", "3"), created(false, 2))]);
        assert!(message.contains("create /a"), "{message}");
    }

    #[test]
    fn an_unknown_write_with_an_unknown_revision_is_pinned_by_later_reads() {
        // The unknown delete happened after revision 2; the read at 3 shows
        // the key absent, so the delete took revision 3 and a put cannot
        // have it too.
        let history = |put_revision| {
            vec![
                op(1, 0, 10, put("/a", "1"), written(2)),
                op(1, 20, 30, delete("/a", None), unknown()),
                op(2, 40, 50, get("/a"), read(None, 3)),
                op(3, 35, 80, put("/a", "2"), written(put_revision)),
            ]
        };
        assert_linearizable(&history(4));
        let violations = check(&history(3));
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].check, Check::Linearizable);
    }

    #[test]
    fn the_final_history_settles_unknown_outcomes() {
        let ops = vec![
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(1, 20, 30, put("/a", "2"), unknown()),
            op(2, 20, 30, put("/a", "3"), unknown()),
            op(2, 100, 110, put("/a", "4"), written(4)),
            op(
                3,
                500,
                510,
                get("/a"),
                read(Some(kv("/a", "4", 4, 2, 2)), 4),
            ),
        ];
        // Version 2 says neither unknown put happened...
        assert_linearizable(&ops);
        // ... but the store's history holds "2" at revision 3.
        let log = WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/a", "2"),
            log_put(4, "/a", "4"),
        ])
        .unwrap();
        assert_eq!(
            resolve_unknown(&ops, &log),
            HashMap::from([(1, Resolved::Happened(3)), (2, Resolved::DidNotHappen)])
        );
        let violations = check_with(&ops, Some(&log), SearchLimits::default());
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert!(violations[0].operations.contains(&4), "{violations:#?}");
    }

    #[test]
    fn a_search_that_runs_out_of_steps_is_undecided_not_passed() {
        let ops = [
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(2, 5, 15, get("/a"), read(Some(kv("/a", "1", 2, 2, 1)), 2)),
        ];
        let violations = check_with(
            &ops,
            None,
            SearchLimits {
                max_steps_per_key: 1,
            },
        );
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].check, Check::SearchLimit);
        assert!(violations[0].message.contains("key /a: gave up after"));
    }

    #[test]
    fn hot_key_with_many_concurrent_clients_is_searched_quickly() {
        // Eight clients hammer one key with overlapping puts and reads.
        let mut ops = Vec::new();
        let mut revision = 1;
        let mut value = String::new();
        for round in 0..150u64 {
            let start = round * 100;
            for client in 0..4u32 {
                revision += 1;
                value = format!("v{revision}");
                ops.push(op(
                    client,
                    start,
                    start + 90,
                    put("/hot", &value),
                    written(revision),
                ));
            }
            let seen = Some(kv("/hot", &value, revision, 2, revision - 1));
            for client in 4..8u32 {
                ops.push(op(
                    client,
                    start + 95,
                    start + 99,
                    get("/hot"),
                    read(seen.clone(), revision),
                ));
            }
        }
        let started = std::time::Instant::now();
        assert_linearizable(&ops);
        assert!(
            started.elapsed().as_secs_f64() < 1.0,
            "{:?}",
            started.elapsed()
        );
    }
}
