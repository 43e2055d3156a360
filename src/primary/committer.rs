//! Group commit: one thread takes every write waiting in its queue,
//! evaluates them in order against the state including earlier writes of
//! the same batch, makes the batch durable in one SQLite transaction, then
//! publishes it and answers every caller together. Each txn keeps its own
//! revision and its own compare result.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::etcd::errors;
use crate::grpc::Status;
use crate::pb::etcdserverpb::{TxnRequest, TxnResponse};
use crate::store::{Batch, LeaseChange, Store};
use crate::watch::{Event, WatchHub};

use super::txn::{self, KvView};
use super::view::{store_status, BatchView};

/// Largest number of commands folded into one commit.
const MAX_BATCH: usize = 1024;

/// etcd's largest lease TTL in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's smallest granted TTL with default election settings.
pub const MIN_LEASE_TTL: i64 = 2;

enum Command {
    Txn {
        request: TxnRequest,
        reply: oneshot::Sender<Result<TxnResponse, Status>>,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
        reply: oneshot::Sender<Result<(i64, i64), Status>>,
    },
    Compact {
        revision: i64,
        reply: oneshot::Sender<Result<(), Status>>,
    },
}

enum Reply {
    Txn(
        oneshot::Sender<Result<TxnResponse, Status>>,
        Result<TxnResponse, Status>,
    ),
    Lease(
        oneshot::Sender<Result<(i64, i64), Status>>,
        Result<(i64, i64), Status>,
    ),
    Compact(oneshot::Sender<Result<(), Status>>, Result<(), Status>),
}

impl Reply {
    fn fail_if_ok(&mut self, status: &Status) {
        match self {
            Reply::Txn(_, r @ Ok(_)) => *r = Err(status.clone()),
            Reply::Lease(_, r @ Ok(_)) => *r = Err(status.clone()),
            Reply::Compact(_, r @ Ok(_)) => *r = Err(status.clone()),
            _ => {}
        }
    }

    fn send(self) {
        // A caller that gave up (client went away) no longer listens.
        match self {
            Reply::Txn(tx, r) => drop(tx.send(r)),
            Reply::Lease(tx, r) => drop(tx.send(r)),
            Reply::Compact(tx, r) => drop(tx.send(r)),
        }
    }
}

/// The handle the API layer writes through; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

fn stopped() -> Status {
    Status::unavailable("netsy: the write path is shutting down")
}

impl Writer {
    /// Evaluates and commits a txn (Put and DeleteRange come as one-op txns).
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        txn::validate(&request)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Txn { request, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Creates a lease; `id` 0 asks for a fresh id. Returns (id, granted TTL).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), Status> {
        if ttl > MAX_LEASE_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::LeaseGrant { id, ttl, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Compacts history up to `revision` (inclusive of nothing newer).
    pub async fn compact(&self, revision: i64) -> Result<(), Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Compact { revision, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Starts the commit thread. It stops when every [`Writer`] is dropped.
pub fn start(
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    leader_id: String,
) -> (Writer, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let committer = Committer {
        store,
        hub,
        leader_id,
        rx,
        ids: LeaseIds::new(),
    };
    let handle = std::thread::Builder::new()
        .name("netsy-committer".into())
        .spawn(move || committer.run())
        .unwrap_or_else(|e| panic!("cannot start the commit thread: {e}"));
    (Writer { tx }, handle)
}

struct Committer {
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    leader_id: String,
    rx: mpsc::Receiver<Command>,
    ids: LeaseIds,
}

impl Committer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut commands = vec![first];
            while commands.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            self.commit(commands);
        }
        log::debug!("commit thread stopped");
    }

    fn commit(&mut self, commands: Vec<Command>) {
        let mut batch = Batch::default();
        let mut events = Vec::new();
        let mut replies = Vec::with_capacity(commands.len());
        {
            let index = self.store.index();
            let mut view = BatchView::new(&index, &self.store);
            for command in commands {
                match command {
                    Command::Txn { request, reply } => {
                        let result = txn::evaluate(&request, &mut view, &self.leader_id);
                        view.accept();
                        let result = result.map(|evaluated| {
                            if let Some(w) = evaluated.write {
                                let prev = w.prev.as_ref().map(|p| p.to_key_value());
                                events.push(Event::from_record(&w.record, prev));
                                batch.records.push(w.record);
                            }
                            evaluated.response
                        });
                        replies.push(Reply::Txn(reply, result));
                    }
                    Command::LeaseGrant { id, ttl, reply } => {
                        let result = if id != 0 && view.lease_exists(id) {
                            Err(errors::lease_exists())
                        } else {
                            let id = if id != 0 {
                                id
                            } else {
                                self.ids.fresh(|c| view.lease_exists(c))
                            };
                            let ttl = ttl.max(MIN_LEASE_TTL);
                            view.granted_leases.insert(id);
                            batch.leases.push(LeaseChange::Grant { id, ttl });
                            Ok((id, ttl))
                        };
                        replies.push(Reply::Lease(reply, result));
                    }
                    Command::Compact { revision, reply } => {
                        let result = if revision <= view.compacted_revision() {
                            Err(errors::compacted())
                        } else if revision > view.current_revision() {
                            Err(errors::future_revision())
                        } else {
                            view.raise_compaction(revision);
                            batch.compaction = Some(revision);
                            Ok(())
                        };
                        replies.push(Reply::Compact(reply, result));
                    }
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = self.store.persist(&batch) {
                log::error!(
                    "committing {} records to the local database failed: {e}",
                    batch.records.len()
                );
                // Nothing was published: every answer of this batch may have
                // read the unpersisted writes, so all fail.
                let status = store_status(e);
                for r in &mut replies {
                    r.fail_if_ok(&status);
                }
            } else {
                let discarded = self.store.publish(&batch);
                self.hub.publish(events, self.store.committed_revision());
                if !discarded.is_empty() {
                    if let Err(e) = self.store.discard_values(&discarded) {
                        log::warn!(
                            "compaction could not discard {} old values: {e}",
                            discarded.len()
                        );
                    }
                }
            }
        }
        for r in replies {
            r.send();
        }
    }
}

/// Lease ids: positive, unique, not guessable from the TTL.
struct LeaseIds {
    state: u64,
}

impl LeaseIds {
    fn new() -> LeaseIds {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        LeaseIds { state: seed | 1 }
    }

    fn fresh(&mut self, taken: impl Fn(i64) -> bool) -> i64 {
        loop {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let id = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 1) as i64;
            if id > 0 && !taken(id) {
                return id;
            }
        }
    }
}
