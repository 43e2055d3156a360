//! The pure heart of group commit: a batch of commands, evaluated in order
//! against a view of the store (each seeing the writes of the ones before
//! it) at a given time, becomes one [`Batch`] to make durable, the watch
//! events it will publish, and one reply per command. No I/O and no clock
//! of its own: the committer drives it.

use crate::store::{Batch, KeyRange, LeaseChange, Timestamp};
use crate::watch::Event;

use super::error::WriteError;
use super::txn::{self, KvView, Stamp, Txn, TxnOutcome};
use super::view::BatchView;

/// etcd's largest lease TTL in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's smallest granted TTL with default election settings.
pub const MIN_LEASE_TTL: i64 = 2;

/// What the write path is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Txn(Txn),
    /// Records a lease (its id is chosen and stored in the bucket before).
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Deletes every key attached to a lease (one delete record each),
    /// then the lease.
    LeaseRevoke {
        id: i64,
    },
    /// Compacts history up to a revision.
    Compact {
        revision: i64,
    },
}

/// The answer to one command, in the order of the commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Txn(Result<TxnOutcome, WriteError>),
    /// (id, granted TTL).
    LeaseGrant(Result<(i64, i64), WriteError>),
    /// The revision after the deletes.
    LeaseRevoke(Result<i64, WriteError>),
    Compact(Result<(), WriteError>),
}

impl Reply {
    /// Turns a success into `error` (the batch it belonged to failed).
    pub fn fail(&mut self, error: &WriteError) {
        match self {
            Reply::Txn(r @ Ok(_)) => *r = Err(error.clone()),
            Reply::LeaseGrant(r @ Ok(_)) => *r = Err(error.clone()),
            Reply::LeaseRevoke(r @ Ok(_)) => *r = Err(error.clone()),
            Reply::Compact(r @ Ok(_)) => *r = Err(error.clone()),
            _ => {}
        }
    }

    pub fn is_ok(&self) -> bool {
        match self {
            Reply::Txn(r) => r.is_ok(),
            Reply::LeaseGrant(r) => r.is_ok(),
            Reply::LeaseRevoke(r) => r.is_ok(),
            Reply::Compact(r) => r.is_ok(),
        }
    }
}

/// One evaluated batch.
#[derive(Debug, Default)]
pub struct Evaluated {
    pub batch: Batch,
    /// The batch's changes as watchers will see them, ascending.
    pub events: Vec<Event>,
    pub replies: Vec<Reply>,
}

impl Evaluated {
    /// Takes a txn's writes into the batch, with their watch events.
    fn add(&mut self, writes: Vec<txn::Write>) {
        for w in writes {
            self.events.push(Event::from_record(&w.record, w.prev));
            self.batch.records.push(w.record);
        }
    }
}

/// The evaluator; `leader_id` is stamped into every record.
pub struct WriteCore {
    leader_id: String,
}

impl WriteCore {
    pub fn new(leader_id: &str) -> WriteCore {
        WriteCore {
            leader_id: leader_id.to_string(),
        }
    }

    /// Evaluates `commands` in order against `view` at time `now`. A
    /// failed compare or a refused command affects only its own reply.
    pub fn evaluate(
        &mut self,
        commands: impl IntoIterator<Item = Command>,
        view: &mut BatchView<'_>,
        now: Timestamp,
    ) -> Evaluated {
        let stamp = Stamp {
            leader_id: &self.leader_id,
            now,
        };
        let mut out = Evaluated::default();
        for command in commands {
            let reply = match command {
                Command::Txn(t) => {
                    let result = txn::evaluate(&t, view, stamp);
                    view.accept();
                    Reply::Txn(result.map(|evaluated| {
                        out.add(evaluated.writes);
                        evaluated.outcome
                    }))
                }
                Command::LeaseGrant { id, ttl } => {
                    Reply::LeaseGrant(if id == 0 || view.lease_exists(id) {
                        Err(WriteError::LeaseExists)
                    } else {
                        let ttl = ttl.max(MIN_LEASE_TTL);
                        view.grant_lease(id);
                        out.batch.leases.push(LeaseChange::Grant { id, ttl });
                        Ok((id, ttl))
                    })
                }
                Command::LeaseRevoke { id } => {
                    Reply::LeaseRevoke(revoke(id, view, stamp, &mut out))
                }
                Command::Compact { revision } => {
                    Reply::Compact(if revision <= view.compacted_revision() {
                        Err(WriteError::Compacted)
                    } else if revision > view.current_revision() {
                        Err(WriteError::FutureRevision)
                    } else {
                        view.raise_compaction(revision);
                        out.batch.compaction = Some(revision);
                        Ok(())
                    })
                }
            };
            out.replies.push(reply);
        }
        out
    }
}

/// Deletes the keys attached to lease `id` as of the view, one delete
/// record each, then the lease.
fn revoke(
    id: i64,
    view: &mut BatchView<'_>,
    stamp: Stamp<'_>,
    out: &mut Evaluated,
) -> Result<i64, WriteError> {
    if !view.lease_exists(id) {
        return Err(WriteError::LeaseNotFound);
    }
    let deletes = view.leased_keys(id).into_iter().map(|key| txn::Op::Delete {
        range: KeyRange::Single(key),
        prev_kv: false,
    });
    let delete = Txn {
        success: deletes.collect(),
        ..Txn::default()
    };
    let evaluated = txn::evaluate(&delete, view, stamp)?;
    view.accept();
    out.add(evaluated.writes);
    view.revoke_lease(id);
    out.batch.leases.push(LeaseChange::Revoke { id });
    Ok(view.current_revision())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::primary::txn::{Compare, CompareResult, Op, OpResult, Put, Target};
    use crate::store::{KeyRange, KvEntry, RangeQuery, Record, Store};

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    fn put(k: &str, v: &str) -> Command {
        Command::Txn(Txn::put(Put {
            key: key(k),
            value: key(v),
            ..Put::default()
        }))
    }

    /// Kubernetes' shape: put if the key's mod revision is `rev`, else read it.
    fn put_if_mod(k: &str, rev: i64, v: &str) -> Command {
        Command::Txn(Txn {
            compare: vec![Compare {
                range: KeyRange::Single(key(k)),
                target: Target::Mod(rev),
                result: CompareResult::Equal,
            }],
            success: vec![Op::Put(Put {
                key: key(k),
                value: key(v),
                ..Put::default()
            })],
            failure: vec![Op::Range(RangeQuery::new(KeyRange::Single(key(k))))],
        })
    }

    /// A store holding the internal record and a=1 at revision 2.
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut core = WriteCore::new("n1");
        let first = Batch {
            records: vec![Record::internal("n1")],
            ..Batch::default()
        };
        store.append_committed(first).unwrap();
        let a = evaluate(&mut core, &store, vec![put("a", "1")]);
        store.append_committed(a.batch).unwrap();
        (dir, store)
    }

    fn evaluate(core: &mut WriteCore, store: &Store, commands: Vec<Command>) -> Evaluated {
        let index = store.index();
        let mut view = BatchView::new(&index, store);
        core.evaluate(
            commands,
            &mut view,
            Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            },
        )
    }

    /// (key, mod revision, value) of one entry.
    type Kv = (Bytes, i64, Option<Bytes>);

    fn range_of(reply: &Reply) -> (bool, i64, Vec<Kv>) {
        let Reply::Txn(Ok(outcome)) = reply else {
            panic!("not a successful txn: {reply:?}");
        };
        let Some(OpResult::Range { result, .. }) = outcome.responses.first() else {
            panic!("no range in {outcome:?}");
        };
        let kvs = result
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.rev.revision, e.value.clone()))
            .collect();
        (outcome.succeeded, outcome.revision, kvs)
    }

    /// Whether `part` points into `whole`'s memory.
    fn inside(part: &[u8], whole: &[u8]) -> bool {
        let range = whole.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    #[test]
    fn a_put_keeps_nothing_that_points_into_its_request() {
        let (_dir, store) = store();
        let mut core = WriteCore::new("n1");
        let request = Bytes::from(vec![b'v'; 4096]);
        let (k, v) = (request.slice(0..8), request.slice(8..1032));
        let out = evaluate(
            &mut core,
            &store,
            vec![Command::Txn(Txn::put(Put {
                key: k.clone(),
                value: v.clone(),
                ..Put::default()
            }))],
        );
        let record = &out.batch.records[0];
        assert_eq!((&record.key, record.value.as_ref()), (&k, Some(&v)));
        let event = &out.events[0].kv;
        let kept = [
            &record.key[..],
            record.value.as_deref().unwrap_or_default(),
            &event.key[..],
            event.value.as_deref().unwrap_or_default(),
        ];
        assert!(
            kept.iter().all(|b| !inside(b, &request)),
            "a slice of the request would keep its whole buffer alive"
        );
        store.append_committed(out.batch).unwrap();
        let index = store.index();
        let entry = index.get(&k, i64::MAX).unwrap();
        assert!(!inside(entry.key, &request));
        assert!(!inside(entry.value.unwrap(), &request));
    }

    #[test]
    fn a_failed_compare_in_the_middle_affects_only_its_own_txn() {
        let (_dir, store) = store();
        let mut core = WriteCore::new("n1");
        let out = evaluate(
            &mut core,
            &store,
            vec![
                put("b", "1"),
                put_if_mod("a", 99, "lost"),
                put("c", "1"),
                // b was created earlier in this batch: a create now fails
                // and reads b as the batch left it.
                put_if_mod("b", 0, "lost"),
                put_if_mod("a", 2, "2"),
            ],
        );
        let revisions: Vec<i64> = out.batch.records.iter().map(|r| r.revision).collect();
        assert_eq!(revisions, [3, 4, 5], "b, c, then a's update");
        assert!(out.batch.records.iter().all(|r| r.leader_id == "n1"
            && r.created_at
                == Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5
                }));
        let values: Vec<&[u8]> = out
            .batch
            .records
            .iter()
            .map(|r| r.value.as_deref().unwrap_or_default())
            .collect();
        assert_eq!(values, [&b"1"[..], b"1", b"2"]);

        assert!(out.replies.iter().all(Reply::is_ok));
        assert_eq!(
            range_of(&out.replies[1]),
            (false, 3, vec![(key("a"), 2, Some(key("1")))]),
            "the failed compare read a at the revision the batch had reached"
        );
        assert_eq!(
            range_of(&out.replies[3]),
            (false, 4, vec![(key("b"), 3, Some(key("1")))])
        );
        let Reply::Txn(Ok(update)) = &out.replies[4] else {
            panic!("{:?}", out.replies[4]);
        };
        assert!(update.succeeded);
        assert_eq!(update.revision, 5);

        let events: Vec<(i64, Option<i64>)> = out
            .events
            .iter()
            .map(|e| (e.revision(), e.prev.as_ref().map(|p| p.rev.revision)))
            .collect();
        assert_eq!(events, [(3, None), (4, None), (5, Some(2))]);
    }

    #[test]
    fn refused_commands_write_nothing_and_the_rest_go_on() {
        let (_dir, store) = store();
        let mut core = WriteCore::new("n1");
        let with_lease = Command::Txn(Txn::put(Put {
            key: key("x"),
            lease: 42,
            ..Put::default()
        }));
        let out = evaluate(
            &mut core,
            &store,
            vec![
                with_lease.clone(),
                Command::Compact { revision: 9 },
                Command::LeaseGrant { id: 42, ttl: 1 },
                Command::LeaseGrant { id: 42, ttl: 60 },
                with_lease,
                Command::Compact { revision: 2 },
            ],
        );
        assert_eq!(
            out.replies[..4],
            [
                Reply::Txn(Err(WriteError::LeaseNotFound)),
                Reply::Compact(Err(WriteError::FutureRevision)),
                Reply::LeaseGrant(Ok((42, MIN_LEASE_TTL))),
                Reply::LeaseGrant(Err(WriteError::LeaseExists)),
            ]
        );
        assert!(
            out.replies[4].is_ok(),
            "the lease granted in this batch counts"
        );
        assert_eq!(out.replies[5], Reply::Compact(Ok(())));
        assert_eq!(out.batch.records.len(), 1);
        assert_eq!(out.batch.compaction, Some(2));
        assert_eq!(
            out.batch.leases,
            [LeaseChange::Grant {
                id: 42,
                ttl: MIN_LEASE_TTL
            }]
        );
    }

    #[test]
    fn a_txn_writing_several_keys_takes_one_revision_per_write_in_one_batch() {
        let (_dir, store) = store();
        let mut core = WriteCore::new("n1");
        let setup = evaluate(&mut core, &store, vec![put("b", "1"), put("c", "1")]);
        store.append_committed(setup.batch).unwrap();
        // a=1 (2), b=1 (3), c=1 (4).
        let multi = Command::Txn(Txn {
            compare: vec![Compare {
                range: KeyRange::Single(key("a")),
                target: Target::Mod(2),
                result: CompareResult::Equal,
            }],
            success: vec![
                Op::Put(Put {
                    key: key("x"),
                    value: key("1"),
                    ..Put::default()
                }),
                Op::Delete {
                    range: KeyRange::new(&key("a"), &key("c")),
                    prev_kv: true,
                },
                Op::Range(RangeQuery::new(KeyRange::new(&key("a"), &key("z")))),
                Op::Txn(Txn {
                    compare: vec![Compare {
                        // Decided before the outer txn's writes: b exists.
                        range: KeyRange::Single(key("b")),
                        target: Target::Version(1),
                        result: CompareResult::Equal,
                    }],
                    success: vec![Op::Put(Put {
                        key: key("y"),
                        value: key("nested"),
                        ..Put::default()
                    })],
                    failure: vec![],
                }),
            ],
            failure: vec![],
        });
        let out = evaluate(&mut core, &store, vec![multi, put("z", "after")]);
        let Reply::Txn(Ok(outcome)) = &out.replies[0] else {
            panic!("{:?}", out.replies[0]);
        };
        assert!(outcome.succeeded);
        assert_eq!(outcome.revision, 8, "x=5, a deleted 6, b deleted 7, y=8");
        let OpResult::Delete {
            revision,
            deleted,
            prev,
        } = &outcome.responses[1]
        else {
            panic!("{:?}", outcome.responses[1]);
        };
        assert_eq!((*revision, *deleted), (7, 2));
        assert_eq!(
            prev.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            [key("a"), key("b")]
        );
        let OpResult::Range { revision, result } = &outcome.responses[2] else {
            panic!("{:?}", outcome.responses[2]);
        };
        let seen: Vec<(Bytes, i64)> = result
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.rev.revision))
            .collect();
        assert_eq!(*revision, 7);
        assert_eq!(
            seen,
            [(key("c"), 4), (key("x"), 5)],
            "reads see the txn's earlier writes"
        );
        assert!(matches!(&outcome.responses[3], OpResult::Txn(t) if t.succeeded));
        let revisions: Vec<i64> = out.batch.records.iter().map(|r| r.revision).collect();
        assert_eq!(revisions, [5, 6, 7, 8, 9], "consecutive, then the next txn");
        let events: Vec<(i64, bool)> = out
            .events
            .iter()
            .map(|e| (e.revision(), e.is_delete()))
            .collect();
        assert_eq!(
            events,
            [(5, false), (6, true), (7, true), (8, false), (9, false)]
        );
    }

    #[test]
    fn a_failed_txn_leaves_none_of_its_writes_in_the_view() {
        let (_dir, store) = store();
        let index = store.index();
        let mut view = BatchView::new(&index, &store);
        let entry = |k: &str, revision| KvEntry {
            key: key(k),
            rev: crate::store::Rev {
                revision,
                create_revision: revision,
                version: 1,
                lease: 0,
                deleted: false,
            },
            value: Some(key("v")),
        };
        view.stage(key("x"), Some(entry("x", 3)), 3);
        view.accept();
        view.stage(key("y"), Some(entry("y", 4)), 4);
        view.stage(key("a"), None, 5);
        view.unstage();
        assert_eq!(view.current_revision(), 3);
        let all = KeyRange::new(&key("a"), &key("z"));
        let keys: Vec<Bytes> = view
            .scan(&all, 3)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, [key("a"), key("x")], "a is back, y is gone, x stays");
    }

    #[test]
    fn revoke_deletes_each_attached_key_committed_or_staged_then_the_lease() {
        let (_dir, store) = store();
        let mut core = WriteCore::new("n1");
        let put_leased = |k: &str, lease| {
            Command::Txn(Txn::put(Put {
                key: key(k),
                value: key("v"),
                lease,
                ..Put::default()
            }))
        };
        let first = evaluate(
            &mut core,
            &store,
            vec![
                Command::LeaseGrant { id: 42, ttl: 60 },
                put_leased("b", 42),
                put_leased("c", 42),
            ],
        );
        store.append_committed(first.batch).unwrap();
        // Committed b and c (revisions 3, 4); this batch attaches d,
        // detaches c, then revokes.
        let out = evaluate(
            &mut core,
            &store,
            vec![
                put_leased("d", 42),
                put("c", "no lease"),
                Command::LeaseRevoke { id: 42 },
                put_leased("e", 42),
                Command::LeaseRevoke { id: 42 },
                Command::LeaseRevoke { id: 7 },
            ],
        );
        assert_eq!(out.replies[2], Reply::LeaseRevoke(Ok(8)));
        for i in [3, 4, 5] {
            assert!(
                matches!(
                    &out.replies[i],
                    Reply::Txn(Err(WriteError::LeaseNotFound))
                        | Reply::LeaseRevoke(Err(WriteError::LeaseNotFound))
                ),
                "after the revoke the lease is gone: {:?}",
                out.replies[i]
            );
        }
        let deleted: Vec<(i64, Bytes, Option<i64>)> = out
            .events
            .iter()
            .filter(|e| e.is_delete())
            .map(|e| {
                (
                    e.revision(),
                    e.kv.key.clone(),
                    e.prev.as_ref().map(|p| p.rev.revision),
                )
            })
            .collect();
        assert_eq!(
            deleted,
            [(7, key("b"), Some(3)), (8, key("d"), Some(5))],
            "one delete record per attached key, with the previous version"
        );
        assert_eq!(out.batch.records.len(), 4);
        assert_eq!(out.batch.leases, [LeaseChange::Revoke { id: 42 }]);
    }
}
