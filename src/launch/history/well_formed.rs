//! Answers that cannot belong to their request, whatever happened
//! elsewhere: a Get answer to a Put, a key outside the listed prefix, a
//! modification revision above the revision read. These point at the
//! recorder or at a server answering nonsense; the other checks assume they
//! are absent and skip such operations.

use super::operation::{describe, Kv, Operation, Outcome, Request, Response, Revision};
use super::{Check, Violation};

/// One violation per malformed operation.
pub fn check(ops: &[Operation]) -> Vec<Violation> {
    ops.iter()
        .enumerate()
        .filter_map(|(index, op)| {
            let problem = problem(op)?;
            Some(Violation::new(
                Check::WellFormed,
                vec![index],
                format!("{}: {problem}", describe(index, op)),
            ))
        })
        .collect()
}

/// Whether the linearizability and read checks can use the operation.
pub(crate) fn is_well_formed(op: &Operation) -> bool {
    problem(op).is_none()
}

fn problem(op: &Operation) -> Option<String> {
    if op.returned_at_ns < op.invoked_at_ns {
        return Some("returned before it was invoked".into());
    }
    let Outcome::Ok(response) = &op.outcome else {
        return None;
    };
    if response.revision() < 1 {
        return Some("the header revision is below 1".into());
    }
    let header = response.revision();
    match (&op.request, response) {
        (Request::Put { .. }, Response::Put { .. }) => None,
        (Request::Create { .. }, Response::Create { .. }) => None,
        (
            Request::Update {
                key,
                expected_mod_revision,
                ..
            },
            Response::Update {
                succeeded, current, ..
            },
        ) => match (succeeded, current) {
            (true, Some(_)) => Some("a succeeded update also returned the else branch".into()),
            (true, None) => None,
            (false, current) => {
                compare_failed(key, *expected_mod_revision, current.as_ref(), header)
            }
        },
        (
            Request::Delete {
                key,
                expected_mod_revision,
            },
            Response::Delete {
                succeeded,
                deleted,
                current,
                ..
            },
        ) => match (expected_mod_revision, succeeded, deleted) {
            (_, true, _) if current.is_some() => {
                Some("a succeeded delete also returned the else branch".into())
            }
            (None, false, _) => Some("an unconditional delete cannot fail its compare".into()),
            (_, false, true) => Some("a failed compare deleted the key".into()),
            (Some(expected), true, false) if *expected != 0 => Some(format!(
                "the key had mod revision {expected} (the compare held) yet nothing was deleted"
            )),
            (Some(0), true, true) => {
                Some("the key was absent (the compare held) yet it was deleted".into())
            }
            (Some(expected), false, false) => {
                compare_failed(key, *expected, current.as_ref(), header)
            }
            _ => None,
        },
        (Request::Get { key, revision, .. }, Response::Get { kv, .. }) => {
            let read_at = revision.unwrap_or(header);
            if revision.is_some_and(|r| r > header) {
                return Some(format!(
                    "read revision {read_at} above the header's {header}"
                ));
            }
            kv.as_ref().and_then(|kv| kv_problem(kv, key, read_at))
        }
        (
            Request::List {
                prefix, revision, ..
            },
            Response::List { kvs, .. },
        ) => {
            let read_at = revision.unwrap_or(header);
            if revision.is_some_and(|r| r > header) {
                return Some(format!(
                    "read revision {read_at} above the header's {header}"
                ));
            }
            if let Some(pair) = kvs.windows(2).find(|p| p[0].key >= p[1].key) {
                return Some(format!(
                    "keys not in ascending order: {} then {}",
                    pair[0].key, pair[1].key
                ));
            }
            kvs.iter().find_map(|kv| {
                if kv.key.starts_with(prefix.as_str()) {
                    kv_problem(kv, &kv.key, read_at)
                } else {
                    Some(format!("{} is outside the prefix", kv.key))
                }
            })
        }
        _ => Some("the response does not answer this kind of request".into()),
    }
}

/// A compare on the mod revision failed: the else branch must show why.
fn compare_failed(
    key: &str,
    expected: Revision,
    current: Option<&Kv>,
    header: Revision,
) -> Option<String> {
    let actual = current.map_or(0, |kv| kv.mod_revision);
    if actual == expected {
        return Some(format!(
            "the compare on mod revision {expected} failed though the key has it"
        ));
    }
    current.and_then(|kv| kv_problem(kv, key, header))
}

fn kv_problem(kv: &Kv, key: &str, read_at: Revision) -> Option<String> {
    if kv.key != key {
        Some(format!("returned key {} for {key}", kv.key))
    } else if kv.mod_revision > read_at {
        Some(format!(
            "{} has mod revision {} above the revision read, {read_at}",
            kv.key, kv.mod_revision
        ))
    } else if kv.create_revision < 1 || kv.create_revision > kv.mod_revision || kv.version < 1 {
        Some(format!("{kv} is impossible"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn answers_that_do_not_fit_their_request_are_named() {
        let ops = vec![
            op(1, 0, 10, put("/a", "1"), ok(Response::Put { revision: 2 })),
            op(1, 20, 30, put("/a", "2"), ok(got(None, 3))),
            op(
                1,
                40,
                50,
                get("/a"),
                ok(got(Some(kv("/a", "1", 9, 2, 1)), 3)),
            ),
            op(
                1,
                60,
                70,
                update("/a", "3", 2),
                ok(Response::Update {
                    succeeded: false,
                    revision: 3,
                    current: Some(kv("/a", "1", 2, 2, 1)),
                }),
            ),
            op(1, 90, 80, get("/a"), ok(got(None, 3))),
        ];
        let violations = check(&ops);
        let named: Vec<_> = violations.iter().map(|v| v.operations.clone()).collect();
        assert_eq!(
            named,
            [vec![1], vec![2], vec![3], vec![4]],
            "{violations:#?}"
        );
        assert!(violations[1].message.contains("above the revision read"));
        assert!(violations[2]
            .message
            .contains("failed though the key has it"));
    }
}
