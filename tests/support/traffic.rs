//! Kubernetes-shaped traffic with a recorded history, for the fault suite:
//! clients create, update (MOD compare), delete, get (default, pinned and
//! serializable) and list keys under one prefix through any node (a
//! client's creates carry a lease it was granted, as Kubernetes' events
//! do), each
//! operation recorded with its invocation and response times and its
//! outcome (ok, failed, or unknown when the answer never came); watchers on
//! every node record every event. The recording goes to the checkers in
//! `netsy::launch::history`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use netsy::launch::history::{
    Change, EventKind, Kv, Operation, Outcome, Recording, Request, Response, StoredValue,
    WatchEvent, WatchStream, Watched, Write,
};

/// How long one request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes a client for node `i` (clients reconnect through it after errors).
pub type Connect =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Option<Client>> + Send>> + Send + Sync>;

/// A running traffic generator.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    operations: Arc<Mutex<Vec<Operation>>>,
    /// Every lease a client was granted, and every time a write was told
    /// one of them was not found.
    leases: Arc<Mutex<Leases>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    watchers: Vec<tokio::task::JoinHandle<WatchStream>>,
    prefix: String,
}

fn kv(k: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: String::from_utf8_lossy(k.value()).into_owned(),
        mod_revision: k.mod_revision(),
        create_revision: k.create_revision(),
        version: k.version(),
    }
}

/// The clients' leases: granted for far longer than a run, so none may
/// expire or go missing, whatever the fault.
#[derive(Default)]
struct Leases {
    granted: Vec<i64>,
    not_found: Vec<String>,
}

/// A lease's time to live: longer than any run.
const LEASE_TTL: i64 = 3600;

/// A tiny deterministic generator (xorshift), seeded per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// An error that proves the request did nothing (etcd refused it before
/// doing anything); anything else may or may not have happened.
fn refused(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    [
        "InvalidArgument",
        "FailedPrecondition",
        "OutOfRange",
        "NotFound",
    ]
    .iter()
    .any(|code| text.contains(code))
}

impl Traffic {
    /// Starts `clients` clients spread over `nodes` nodes on `keys` keys
    /// under `prefix`, and one watcher per node from `start_revision`.
    pub async fn start(
        connect: Connect,
        nodes: usize,
        clients: usize,
        keys: usize,
        prefix: &str,
        start_revision: i64,
    ) -> Traffic {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let operations = Arc::new(Mutex::new(Vec::new()));
        let mut watchers = Vec::new();
        for node in 0..nodes {
            let connect = connect.clone();
            let stop = stop.clone();
            let prefix = prefix.to_string();
            watchers.push(tokio::spawn(async move {
                watch(connect, node, prefix, start_revision, stop).await
            }));
        }
        let leases: Arc<Mutex<Leases>> = Arc::default();
        let mut tasks = Vec::new();
        for id in 0..clients {
            let connect = connect.clone();
            let stop = stop.clone();
            let operations = operations.clone();
            let leases = leases.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let mut c = Worker {
                    id: id as u32,
                    node: id % nodes,
                    nodes,
                    connect,
                    client: None,
                    rng: Rng(0x9e37_79b9 ^ ((id as u64 + 1) * 0x1000_0001)),
                    seen: HashMap::new(),
                    sequence: 0,
                    start,
                    lease: None,
                    leases,
                };
                while !stop.load(Ordering::Relaxed) {
                    let op = c.step(&prefix, keys).await;
                    if let Ok(mut all) = operations.lock() {
                        all.push(op);
                    }
                }
            }));
        }
        Traffic {
            stop,
            operations,
            leases,
            clients: tasks,
            watchers,
            prefix: prefix.to_string(),
        }
    }

    /// Operations recorded so far that succeeded.
    pub fn acknowledged(&self) -> usize {
        self.operations
            .lock()
            .map(|o| {
                o.iter()
                    .filter(|o| o.request.is_write() && matches!(o.outcome, Outcome::Ok(_)))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stops the clients, lets every watcher catch up with the history as
    /// `reader` has it at the end, and returns the recording with the
    /// final state and history read through `reader`.
    pub async fn finish(self, reader: &mut Client) -> Recording {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.clients {
            let _ = t.await;
        }
        let history = read_history(reader, &self.prefix).await;
        let last = history.last().map_or(0, |w| w.revision);
        let mut watches = Vec::new();
        for w in self.watchers {
            if let Ok(mut stream) = w.await {
                stream.caught_up_to = stream.caught_up_to.map(|c| c.min(last));
                watches.push(stream);
            }
        }
        let final_state = read_state(reader, &self.prefix, false).await;
        check_leases(&self.leases, reader).await;
        let operations = std::mem::take(&mut *self.operations.lock().unwrap());
        Recording {
            operations,
            watches,
            final_state: Some(final_state),
            history: Some(history),
        }
    }
}

/// Every lease granted is still there (none expired, none lost by a
/// failover), and no write was told one was missing. Panics otherwise.
async fn check_leases(leases: &Mutex<Leases>, reader: &mut Client) {
    let (granted, not_found) = match leases.lock() {
        Ok(l) => (l.granted.clone(), l.not_found.clone()),
        Err(_) => panic!("a client panicked holding the lease list"),
    };
    assert!(
        not_found.is_empty(),
        "writes were told a granted lease was missing: {not_found:?}"
    );
    for id in granted {
        let ttl = reader
            .lease_time_to_live(id, None)
            .await
            .map(|r| r.ttl())
            .unwrap_or(-1);
        assert!(ttl > 0, "lease {id:x} was granted and is gone (ttl {ttl})");
    }
}

/// The live keys under `prefix` (a serializable read answers from the
/// node's own store), with the revision the answer was taken at.
pub async fn read_state(
    reader: &mut Client,
    prefix: &str,
    serializable: bool,
) -> BTreeMap<String, StoredValue> {
    let mut opts = GetOptions::new().with_prefix();
    if serializable {
        opts = opts.with_serializable();
    }
    let got = reader.get(prefix, Some(opts)).await.unwrap();
    got.kvs()
        .iter()
        .map(|k| {
            let kv = kv(k);
            let stored = StoredValue {
                value: kv.value,
                mod_revision: kv.mod_revision,
            };
            (kv.key, stored)
        })
        .collect()
}

/// Every write under `prefix`, from a watch replaying history from
/// revision 1 up to the current revision (a progress answer at or past it,
/// which netsy sends only after every event before it, ends the replay).
pub async fn read_history(reader: &mut Client, prefix: &str) -> Vec<Write> {
    let now = reader
        .get(prefix, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let opts = WatchOptions::new().with_prefix().with_start_revision(1);
    let (mut watcher, mut stream) = reader.watch(prefix, Some(opts)).await.unwrap();
    watcher.request_progress().await.unwrap();
    let mut writes = Vec::new();
    loop {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("history replay in time")
            .unwrap()
            .expect("the history watch ended early");
        for e in resp.events() {
            let Some(k) = e.kv() else { continue };
            let change = match e.event_type() {
                EventType::Put => Change::Put {
                    value: String::from_utf8_lossy(k.value()).into_owned(),
                },
                EventType::Delete => Change::Delete,
            };
            writes.push(Write {
                revision: k.mod_revision(),
                key: String::from_utf8_lossy(k.key()).into_owned(),
                change,
            });
        }
        let progress = !resp.created() && resp.events().is_empty();
        if progress {
            if resp.header().map_or(0, |h| h.revision()) >= now {
                return writes;
            }
            watcher.request_progress().await.unwrap();
        }
    }
}

/// One watcher on node `node`: every event from `start` until stopped.
async fn watch(
    connect: Connect,
    node: usize,
    prefix: String,
    start: i64,
    stop: Arc<AtomicBool>,
) -> WatchStream {
    let mut stream = WatchStream {
        client: 10_000 + node as u32,
        watched: Watched::Prefix {
            prefix: prefix.clone(),
        },
        start_revision: start,
        prev_kv: true,
        events: Vec::new(),
        cancelled: None,
        caught_up_to: None,
    };
    let Some(mut client) = connect(node).await else {
        return stream;
    };
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(start);
    let Ok((_w, mut events)) = client.watch(prefix.as_str(), Some(opts)).await else {
        return stream;
    };
    let mut last = start - 1;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), events.message()).await;
        let resp = match next {
            Err(_) => continue,
            Ok(Ok(Some(resp))) => resp,
            // The stream ended (its node died): what it saw stands.
            Ok(_) => break,
        };
        if resp.canceled() {
            stream.cancelled = Some(netsy::launch::history::WatchCancel {
                compact_revision: resp.compact_revision(),
                reason: resp.cancel_reason().to_string(),
            });
            break;
        }
        for e in resp.events() {
            let Some(k) = e.kv() else { continue };
            last = k.mod_revision();
            stream.events.push(WatchEvent {
                kind: match e.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                },
                kv: kv(k),
                prev_kv: e.prev_kv().map(kv),
            });
        }
    }
    stream.caught_up_to = Some(last);
    stream
}

struct Worker {
    id: u32,
    node: usize,
    nodes: usize,
    connect: Connect,
    client: Option<Client>,
    rng: Rng,
    /// The last mod revision this client saw per key (for updates).
    seen: HashMap<String, i64>,
    sequence: u64,
    start: Instant,
    /// This client's lease, once granted.
    lease: Option<i64>,
    leases: Arc<Mutex<Leases>>,
}

impl Worker {
    /// This client's lease, asked for when it has none yet (a failed
    /// grant is asked again at the next create).
    async fn lease(&mut self) -> Option<i64> {
        if self.lease.is_none() {
            let c = self.client.as_mut()?;
            let granted =
                tokio::time::timeout(REQUEST_TIMEOUT, c.lease_grant(LEASE_TTL, None)).await;
            if let Ok(Ok(g)) = granted {
                self.lease = Some(g.id());
                if let Ok(mut l) = self.leases.lock() {
                    l.granted.push(g.id());
                }
            }
        }
        self.lease
    }

    fn ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    async fn step(&mut self, prefix: &str, keys: usize) -> Operation {
        let key = format!("{prefix}{:03}", self.rng.below(keys as u64));
        self.sequence += 1;
        let value = format!("c{}-{}", self.id, self.sequence);
        let request = match self.rng.below(10) {
            0 | 1 => Request::Create { key, value },
            2..=4 => Request::Update {
                expected_mod_revision: self.seen.get(&key).copied().unwrap_or(0),
                key,
                value,
            },
            5 => Request::Delete {
                expected_mod_revision: self.seen.get(&key).copied(),
                key,
            },
            6 | 7 => Request::Get {
                key,
                revision: None,
                serializable: false,
            },
            _ => Request::List {
                prefix: prefix.to_string(),
                revision: None,
                limit: 10,
                serializable: false,
            },
        };
        let invoked_at_ns = self.ns();
        if self.client.is_none() {
            self.client = (self.connect)(self.node).await;
        }
        let lease = match request {
            Request::Create { .. } => self.lease().await,
            _ => None,
        };
        let result = match self.client.as_mut() {
            None => Err(None),
            Some(c) => tokio::time::timeout(REQUEST_TIMEOUT, send(c, &request, lease))
                .await
                .unwrap_or(Err(None)),
        };
        if let Err(Some(e)) = &result {
            if e.to_string().contains("lease not found") {
                if let Ok(mut l) = self.leases.lock() {
                    l.not_found
                        .push(format!("client {}, lease {lease:x?}: {e}", self.id));
                }
            }
        }
        let returned_at_ns = self.ns();
        let outcome = match result {
            Ok(response) => {
                self.learn(&response);
                Outcome::Ok(response)
            }
            Err(Some(e)) if refused(&e) => Outcome::Failed {
                error: e.to_string(),
            },
            Err(e) => {
                // Reconnect, maybe to another node, for the next request.
                self.client = None;
                self.node = (self.node + 1) % self.nodes;
                Outcome::Unknown {
                    error: e.map_or("timed out or no connection".into(), |e| e.to_string()),
                }
            }
        };
        Operation {
            client: self.id,
            invoked_at_ns,
            returned_at_ns,
            request,
            outcome,
        }
    }

    fn learn(&mut self, response: &Response) {
        let mut note = |k: &Kv| {
            self.seen.insert(k.key.clone(), k.mod_revision);
        };
        match response {
            Response::Get { kv: Some(k), .. } => note(k),
            Response::List { kvs, .. } => kvs.iter().for_each(&mut note),
            Response::Update {
                current: Some(k), ..
            }
            | Response::Delete {
                current: Some(k), ..
            } => note(k),
            _ => {}
        }
    }
}

/// Sends one request as kube-apiserver would shape it (a create with the
/// client's lease, if it has one).
async fn send(
    c: &mut Client,
    request: &Request,
    lease: Option<i64>,
) -> Result<Response, Option<etcd_client::Error>> {
    let get_current = |key: &str| TxnOp::get(key, None);
    let current = |r: &etcd_client::TxnResponse| {
        r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().map(kv),
            _ => None,
        })
    };
    let revision = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    Ok(match request {
        Request::Put { key, value } => {
            let r = c.put(key.as_str(), value.as_str(), None).await?;
            Response::Put {
                revision: revision(r.header()),
            }
        }
        Request::Create { key, value } => {
            let options = lease.map(|id| PutOptions::new().with_lease(id));
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), options)]);
            let r = c.txn(txn).await?;
            Response::Create {
                succeeded: r.succeeded(),
                revision: revision(r.header()),
            }
        }
        Request::Update {
            key,
            value,
            expected_mod_revision,
        } => {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    *expected_mod_revision,
                )])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                .or_else([get_current(key)]);
            let r = c.txn(txn).await?;
            Response::Update {
                succeeded: r.succeeded(),
                revision: revision(r.header()),
                current: if r.succeeded() { None } else { current(&r) },
            }
        }
        Request::Delete {
            key,
            expected_mod_revision,
        } => {
            let compare = expected_mod_revision
                .map(|m| Compare::mod_revision(key.as_str(), CompareOp::Equal, m));
            let txn = Txn::new()
                .when(compare.into_iter().collect::<Vec<_>>())
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([get_current(key)]);
            let r = c.txn(txn).await?;
            let deleted = r.op_responses().into_iter().any(|op| match op {
                TxnOpResponse::Delete(d) => d.deleted() > 0,
                _ => false,
            });
            Response::Delete {
                succeeded: r.succeeded(),
                deleted,
                revision: revision(r.header()),
                current: if r.succeeded() { None } else { current(&r) },
            }
        }
        Request::Get { key, .. } => {
            let r = c.get(key.as_str(), None).await?;
            Response::Get {
                kv: r.kvs().first().map(kv),
                revision: revision(r.header()),
            }
        }
        Request::List { prefix, limit, .. } => {
            // Paged, every page pinned to the first page's revision.
            let mut kvs = Vec::new();
            let mut from = prefix.clone();
            let mut at = 0;
            loop {
                let mut opts = GetOptions::new()
                    .with_range(prefix_end(prefix))
                    .with_limit(*limit);
                if at > 0 {
                    opts = opts.with_revision(at);
                }
                let r = c.get(from.as_str(), Some(opts)).await?;
                if at == 0 {
                    at = revision(r.header());
                }
                kvs.extend(r.kvs().iter().map(kv));
                match (r.more(), kvs.last()) {
                    (true, Some(last)) => from = format!("{}\0", last.key),
                    _ => break,
                }
            }
            Response::List { kvs, revision: at }
        }
    })
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
