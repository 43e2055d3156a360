//! Reads against the final history: every answer that shows keys (a Get, a
//! List, the else branch of a failed compare) must show them exactly as the
//! history has them at the revision read — the pinned revision, or else the
//! header's. This is the check for reads pinned to a past revision and for
//! serializable reads, which the real-time search leaves out; for the
//! others it restates the search's verdict against the history the store
//! finally holds. Serializable reads are also checked for their revisions:
//! per client they never go back, and they never exceed what was written.

use std::collections::{BTreeMap, HashMap};

use super::operation::{describe, ClientId, Kv, Operation, Request, Response, Revision};
use super::well_formed::is_well_formed;
use super::write_log::WriteLog;
use super::{Check, Violation};

/// How many differing keys a List message lists.
const DIFFERENCES_SHOWN: usize = 5;

/// Every read answer equals `log` at the revision it read.
pub fn check_against_log(ops: &[Operation], log: &WriteLog) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let Some(response) = op.response().filter(|_| is_well_formed(op)) else {
            continue;
        };
        let header = response.revision();
        let at = op.request.pinned_revision().unwrap_or(header);
        let problem = match (&op.request, response) {
            (Request::Get { key, .. }, Response::Get { kv, .. }) => {
                differs(key, kv.as_ref(), log, at)
            }
            (
                Request::Update { key, .. },
                Response::Update {
                    succeeded: false,
                    current,
                    ..
                },
            )
            | (
                Request::Delete { key, .. },
                Response::Delete {
                    succeeded: false,
                    current,
                    ..
                },
            ) => differs(key, current.as_ref(), log, at),
            (
                Request::Create { key, .. },
                Response::Create {
                    succeeded: false, ..
                },
            ) => log
                .kv_at(key, at)
                .is_none()
                .then(|| format!("the history has {key} absent at revision {at}")),
            (
                Request::Delete { key, .. },
                Response::Delete {
                    deleted: false,
                    succeeded: true,
                    ..
                },
            ) => log.kv_at(key, at).map(|kv| {
                format!("nothing was deleted, but the history has {kv} at revision {at}")
            }),
            (Request::List { prefix, .. }, Response::List { kvs, .. }) => {
                list_differs(prefix, kvs, log, at)
            }
            _ => None,
        };
        if let Some(problem) = problem {
            violations.push(Violation::new(
                Check::Snapshot,
                vec![index],
                format!("{}: {problem}", describe(index, op)),
            ));
        }
    }
    violations
}

fn differs(key: &str, seen: Option<&Kv>, log: &WriteLog, at: Revision) -> Option<String> {
    let expected = log.kv_at(key, at);
    (seen != expected.as_ref()).then(|| match expected {
        Some(kv) => format!("the history has {kv} at revision {at}"),
        None => format!("the history has {key} absent at revision {at}"),
    })
}

fn list_differs(prefix: &str, seen: &[Kv], log: &WriteLog, at: Revision) -> Option<String> {
    let expected: BTreeMap<&str, Kv> = log
        .keys_with_prefix(prefix)
        .filter_map(|key| Some((key, log.kv_at(key, at)?)))
        .collect();
    let seen: BTreeMap<&str, &Kv> = seen.iter().map(|kv| (kv.key.as_str(), kv)).collect();
    let mut differences: Vec<String> = Vec::new();
    for (key, kv) in &expected {
        match seen.get(key) {
            None => differences.push(format!("misses {kv}")),
            Some(got) if *got != kv => differences.push(format!("has {got} instead of {kv}")),
            Some(_) => {}
        }
    }
    for (key, kv) in &seen {
        if !expected.contains_key(key) {
            differences.push(format!("has {kv}, absent in the history"));
        }
    }
    if differences.is_empty() {
        return None;
    }
    let total = differences.len();
    differences.truncate(DIFFERENCES_SHOWN);
    let more = if total > DIFFERENCES_SHOWN {
        format!(" and {} more", total - DIFFERENCES_SHOWN)
    } else {
        String::new()
    };
    Some(format!(
        "against the history at revision {at} the list {}{more}",
        differences.join("; ")
    ))
}

/// Serializable reads: per client (expected to stay on one node), header
/// revisions never go back; and none is above the highest revision
/// acknowledged anywhere (or `highest_written`, the final history's last
/// revision, when higher: an unknown write may have been the last).
pub fn check_serializable(ops: &[Operation], highest_written: Option<Revision>) -> Vec<Violation> {
    let highest_acknowledged = ops
        .iter()
        .filter(|op| !op.request.is_serializable())
        .filter_map(|op| op.response().map(Response::revision))
        .max();
    let highest = highest_acknowledged.max(highest_written).unwrap_or(0);
    let mut reads: Vec<(usize, &Operation)> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.request.is_serializable() && op.response().is_some())
        .collect();
    reads.sort_by_key(|(_, op)| op.invoked_at_ns);
    let mut violations = Vec::new();
    let mut previous: HashMap<ClientId, (usize, Revision)> = HashMap::new();
    for (index, op) in reads {
        let Some(revision) = op.response().map(Response::revision) else {
            continue;
        };
        if revision > highest {
            violations.push(Violation::new(
                Check::Serializable,
                vec![index],
                format!(
                    "{} read revision {revision}, beyond the highest revision ever written, {highest}",
                    describe(index, op)
                ),
            ));
        }
        if let Some(&(before, before_revision)) = previous.get(&op.client) {
            if revision < before_revision {
                violations.push(Violation::new(
                    Check::Serializable,
                    vec![before, index],
                    format!(
                        "{} read revision {revision}, behind the same client's earlier {}",
                        describe(index, op),
                        describe(before, &ops[before])
                    ),
                ));
            }
        }
        previous.insert(op.client, (index, revision));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn log() -> WriteLog {
        WriteLog::new(vec![
            log_put(2, "/a", "1"),
            log_put(3, "/b", "1"),
            log_put(4, "/a", "2"),
            log_delete(5, "/b"),
        ])
        .unwrap()
    }

    #[test]
    fn reads_pinned_to_a_revision_see_the_latest_write_up_to_it() {
        let ops = [
            op(
                1,
                0,
                10,
                get_at("/a", 3),
                read(Some(kv("/a", "1", 2, 2, 1)), 5),
            ),
            op(1, 20, 30, get_at("/b", 5), read(None, 5)),
            op(
                1,
                40,
                50,
                get_at("/a", 4),
                read(Some(kv("/a", "2", 4, 2, 2)), 5),
            ),
            op(
                1,
                60,
                70,
                Request::List {
                    prefix: "/".into(),
                    revision: Some(3),
                    limit: 1,
                    serializable: false,
                },
                ok(Response::List {
                    kvs: vec![kv("/a", "1", 2, 2, 1), kv("/b", "1", 3, 3, 1)],
                    revision: 5,
                }),
            ),
        ];
        let violations = check_against_log(&ops, &log());
        assert!(violations.is_empty(), "{violations:#?}");
    }

    #[test]
    fn a_pinned_read_that_misses_a_write_is_rejected() {
        let ops = [
            op(
                1,
                0,
                10,
                get_at("/a", 4),
                read(Some(kv("/a", "1", 2, 2, 1)), 5),
            ),
            op(
                1,
                20,
                30,
                Request::List {
                    prefix: "/".into(),
                    revision: Some(4),
                    limit: 1,
                    serializable: false,
                },
                ok(Response::List {
                    kvs: vec![kv("/a", "2", 4, 2, 2)],
                    revision: 5,
                }),
            ),
        ];
        let violations = check_against_log(&ops, &log());
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(
            violations[0]
                .message
                .contains("the history has /a = \"2\" (mod 4, create 2, version 2) at revision 4"),
            "{}",
            violations[0].message
        );
        assert!(
            violations[1].message.contains("misses /b = \"1\""),
            "{}",
            violations[1].message
        );
        assert_eq!(violations[1].operations, [1]);
    }

    #[test]
    fn serializable_reads_never_go_back_nor_run_ahead() {
        let ops = [
            op(1, 0, 10, put("/a", "1"), written(2)),
            op(
                2,
                20,
                30,
                get_serializable("/a"),
                read(Some(kv("/a", "1", 2, 2, 1)), 2),
            ),
            op(2, 40, 50, get_serializable("/a"), read(None, 1)),
            op(
                3,
                40,
                50,
                get_serializable("/a"),
                read(Some(kv("/a", "1", 2, 2, 1)), 9),
            ),
            op(4, 40, 50, get_serializable("/a"), read(None, 1)),
        ];
        let violations = check_serializable(&ops, None);
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert_eq!(violations[0].operations, [1, 2]);
        assert!(violations[0].message.contains("behind the same client's"));
        assert_eq!(violations[1].operations, [3]);
        assert!(violations[1]
            .message
            .contains("beyond the highest revision ever written, 2"));
        assert!(check_serializable(&ops[..2], None).is_empty());
    }
}
