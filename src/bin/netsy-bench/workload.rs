//! The workloads: each opens its connections, prepares its data (not
//! measured), runs a warm-up (not measured), then measures operations until
//! the request total or the duration is reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use netsy::grpc::Channel;
use netsy::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use netsy::pb::etcdserverpb::request_op::Request;
use netsy::pb::etcdserverpb::watch_request::RequestUnion;
use netsy::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use netsy::store::keyrange::prefix_end;

use crate::stats::{Report, Stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Put,
    Range,
    TxnPut,
    WatchLatency,
    K8s,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "put" => Mode::Put,
            "range" => Mode::Range,
            "txn-put" => Mode::TxnPut,
            "watch-latency" => Mode::WatchLatency,
            "k8s" => Mode::K8s,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Put => "put",
            Mode::Range => "range",
            Mode::TxnPut => "txn-put",
            Mode::WatchLatency => "watch-latency",
            Mode::K8s => "k8s",
        }
    }
}

/// Everything a run needs to know.
#[derive(Clone, Debug)]
pub struct Load {
    pub mode: Mode,
    pub conns: usize,
    pub clients: usize,
    /// Stop after this many measured operations (0: use the duration).
    pub total: u64,
    pub duration: Duration,
    pub warmup: Duration,
    /// Operations per second over all clients; 0 is unlimited.
    pub rate: f64,
    pub key_size: usize,
    pub val_size: usize,
    /// Random keys in [0, key_space); 0 means sequential keys.
    pub key_space: u64,
    /// Range: keys under the prefix; 0 ranges one key.
    pub range_keys: u64,
    pub limit: i64,
    pub watchers: usize,
    /// Key prefix of this run (runs must not see each other's keys).
    pub prefix: String,
}

const KV_RANGE: &str = "/etcdserverpb.KV/Range";
/// watch-latency: writes started but not yet answered, at most.
const MAX_WRITES_IN_FLIGHT: usize = 256;
const KV_PUT: &str = "/etcdserverpb.KV/Put";
const KV_TXN: &str = "/etcdserverpb.KV/Txn";

/// A tiny xorshift generator: enough for keys and op mixes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn key(prefix: &str, i: u64, size: usize) -> Bytes {
    let mut k = format!("{prefix}{i:012}");
    while k.len() < size {
        k.push('x');
    }
    Bytes::from(k)
}

pub async fn connect(endpoint: &str, conns: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..conns.max(1) {
        out.push(Channel::connect(endpoint).await.map_err(err)?);
    }
    Ok(out)
}

/// Runs `op` on `clients` tasks until the budget is used up, with an
/// optional shared rate. Returns merged stats and the measured time.
async fn drive<F, Fut>(load: &Load, budget: u64, duration: Duration, op: F) -> (Stats, Duration)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let per_client = if load.rate > 0.0 {
        Some(Duration::from_secs_f64(load.clients as f64 / load.rate))
    } else {
        None
    };
    let mut tasks = Vec::new();
    for c in 0..load.clients.max(1) {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut ticker = per_client.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if (budget > 0 && i >= budget) || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                let r = op(c, i).await;
                stats.record(t0.elapsed(), r);
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for t in tasks {
        if let Ok(s) = t.await {
            total.merge(s);
        }
    }
    (total, started.elapsed())
}

/// Warms up, then measures.
async fn warm_then_measure<F, Fut>(load: &Load, op: F) -> (Stats, Duration)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    if !load.warmup.is_zero() {
        let warm = op.clone();
        let offset = u64::MAX / 2;
        drive(load, 0, load.warmup, move |c, i| warm(c, offset + i)).await;
    }
    let duration = if load.total > 0 {
        Duration::from_secs(3600)
    } else {
        load.duration
    };
    drive(load, load.total, duration, op).await
}

pub async fn run(load: &Load, endpoint: &str, target: &str) -> Result<Report, String> {
    let channels = Arc::new(connect(endpoint, load.conns).await?);
    let (stats, elapsed) = match load.mode {
        Mode::Put => put(load, channels).await,
        Mode::Range => range(load, channels).await?,
        Mode::TxnPut => txn_put(load, channels).await,
        Mode::WatchLatency => return watch_latency(load, channels, target).await,
        Mode::K8s => k8s(load, channels).await?,
    };
    Ok(Report::new(load.mode.name(), target, stats, elapsed))
}

async fn put(load: &Load, channels: Arc<Vec<Channel>>) -> (Stats, Duration) {
    let value = Bytes::from(vec![b'v'; load.val_size]);
    let (prefix, key_size, space, seed) = (load.prefix.clone(), load.key_size, load.key_space, 7);
    let rngs: Arc<Vec<Mutex<Rng>>> = Arc::new(
        (0..load.clients.max(1))
            .map(|c| Mutex::new(Rng::new(seed + c as u64)))
            .collect(),
    );
    warm_then_measure(load, move |c, i| {
        let ch = channels[c % channels.len()].clone();
        let k = if space > 0 {
            let r = rngs[c].lock().map(|mut r| r.below(space)).unwrap_or(0);
            key(&prefix, r, key_size)
        } else {
            key(&prefix, i, key_size)
        };
        let value = value.clone();
        async move {
            ch.unary::<_, PutResponse>(
                KV_PUT,
                &PutRequest {
                    key: k,
                    value,
                    ..Default::default()
                },
            )
            .await
            .map(drop)
            .map_err(err)
        }
    })
    .await
}

/// Writes `n` keys under the prefix (preparation, not measured).
pub async fn populate(
    ch: &Channel,
    prefix: &str,
    n: u64,
    key_size: usize,
    val_size: usize,
) -> Result<(), String> {
    let value = Bytes::from(vec![b'v'; val_size]);
    let mut pending = Vec::new();
    for i in 0..n {
        let (ch, k, v) = (ch.clone(), key(prefix, i, key_size), value.clone());
        pending.push(tokio::spawn(async move {
            ch.unary::<_, PutResponse>(
                KV_PUT,
                &PutRequest {
                    key: k,
                    value: v,
                    ..Default::default()
                },
            )
            .await
        }));
        if pending.len() >= 64 {
            for p in pending.drain(..) {
                p.await.map_err(err)?.map_err(err)?;
            }
        }
    }
    for p in pending {
        p.await.map_err(err)?.map_err(err)?;
    }
    Ok(())
}

async fn range(load: &Load, channels: Arc<Vec<Channel>>) -> Result<(Stats, Duration), String> {
    let keys = load.range_keys.max(1);
    populate(
        &channels[0],
        &load.prefix,
        keys,
        load.key_size,
        load.val_size,
    )
    .await?;
    let req = if load.range_keys == 0 {
        RangeRequest {
            key: key(&load.prefix, 0, load.key_size),
            ..Default::default()
        }
    } else {
        RangeRequest {
            key: Bytes::from(load.prefix.clone()),
            range_end: Bytes::from(prefix_end(load.prefix.as_bytes())),
            limit: load.limit,
            ..Default::default()
        }
    };
    let expected = if load.limit > 0 {
        (load.limit as u64).min(keys)
    } else {
        keys
    };
    Ok(warm_then_measure(load, move |c, _| {
        let ch = channels[c % channels.len()].clone();
        let req = req.clone();
        async move {
            let r: RangeResponse = ch.unary(KV_RANGE, &req).await.map_err(err)?;
            if r.kvs.len() as u64 != expected {
                return Err(format!(
                    "range returned {} keys, expected {expected}",
                    r.kvs.len()
                ));
            }
            Ok(())
        }
    })
    .await)
}

fn txn(compare: Compare, success: Request, failure: Option<Request>) -> TxnRequest {
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(success),
        }],
        failure: failure
            .map(|f| vec![RequestOp { request: Some(f) }])
            .unwrap_or_default(),
    }
}

fn mod_equals(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

/// A Kubernetes-shaped write: create if `rev` is 0, else update at `rev`
/// with the current object as the failure read. Returns the new revision.
async fn k8s_write(ch: &Channel, key: &Bytes, value: Bytes, rev: i64) -> Result<i64, String> {
    let put = Request::RequestPut(PutRequest {
        key: key.clone(),
        value,
        ..Default::default()
    });
    let failure = (rev > 0).then(|| {
        Request::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })
    });
    let r: TxnResponse = ch
        .unary(KV_TXN, &txn(mod_equals(key, rev), put, failure))
        .await
        .map_err(err)?;
    if !r.succeeded {
        return Err(format!("txn compare failed at revision {rev}"));
    }
    Ok(r.header.map_or(0, |h| h.revision))
}

async fn txn_put(load: &Load, channels: Arc<Vec<Channel>>) -> (Stats, Duration) {
    // Each client owns one key: the first op creates it, the rest update it.
    let revisions: Arc<Vec<Mutex<i64>>> =
        Arc::new((0..load.clients.max(1)).map(|_| Mutex::new(0)).collect());
    let value = Bytes::from(vec![b'v'; load.val_size]);
    let (prefix, key_size) = (load.prefix.clone(), load.key_size);
    warm_then_measure(load, move |c, _| {
        let ch = channels[c % channels.len()].clone();
        let (revisions, value) = (revisions.clone(), value.clone());
        let k = key(&prefix, c as u64, key_size);
        async move {
            let rev = revisions[c].lock().map(|r| *r).unwrap_or(0);
            let new = k8s_write(&ch, &k, value, rev).await?;
            if let Ok(mut r) = revisions[c].lock() {
                *r = new;
            }
            Ok(())
        }
    })
    .await
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Opens a watch on the prefix; returns the stream once created (the
/// sender must live as long as the watch).
async fn open_watch(
    ch: &Channel,
    prefix: &str,
    start_revision: i64,
    prev_kv: bool,
) -> Result<
    (
        netsy::grpc::client::CallSender,
        netsy::grpc::client::CallReceiver,
    ),
    String,
> {
    let mut call = ch
        .start("/etcdserverpb.Watch/Watch", None)
        .await
        .map_err(err)?;
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::from(prefix.to_string()),
            range_end: Bytes::from(prefix_end(prefix.as_bytes())),
            start_revision,
            prev_kv,
            ..Default::default()
        })),
    };
    call.sender.send(&create).await.map_err(err)?;
    let mut receiver = call.receiver;
    let created: Option<WatchResponse> = receiver.next().await.map_err(err)?;
    match created {
        Some(r) if r.created => Ok((call.sender, receiver)),
        other => Err(format!("watch was not created: {other:?}")),
    }
}

async fn watch_latency(
    load: &Load,
    channels: Arc<Vec<Channel>>,
    target: &str,
) -> Result<Report, String> {
    let watchers = load.watchers.max(1);
    let writes = if load.total > 0 {
        load.total
    } else {
        (load.rate.max(1.0) * load.duration.as_secs_f64()) as u64
    };
    let delivered = Arc::new(Mutex::new(Stats::default()));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let (tx, mut rx) =
            open_watch(&channels[w % channels.len()], &load.prefix, 0, false).await?;
        let (delivered, received) = (delivered.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            let _open = tx;
            let mut local = Stats::default();
            let mut seen = 0u64;
            while seen < writes {
                match rx.next::<WatchResponse>().await {
                    Ok(Some(resp)) => {
                        let now = now_nanos();
                        for e in resp.events {
                            let sent =
                                e.kv.as_ref()
                                    .and_then(|kv| {
                                        std::str::from_utf8(&kv.value)
                                            .ok()?
                                            .split(':')
                                            .next()?
                                            .parse::<u64>()
                                            .ok()
                                    })
                                    .unwrap_or(now);
                            local.record(Duration::from_nanos(now.saturating_sub(sent)), Ok(()));
                            seen += 1;
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => break,
                }
            }
            if let Ok(mut d) = delivered.lock() {
                d.merge(local);
            }
        }));
    }
    // Writes at the configured rate, each started on its tick without
    // waiting for the previous one (so the rate holds even when a write
    // takes longer than the interval); each value carries its send time.
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let mut writers = Vec::with_capacity(writes as usize);
    let pad = "v".repeat(load.val_size.saturating_sub(21));
    for i in 0..writes {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await.map_err(err)?;
        let ch = channels[i as usize % channels.len()].clone();
        let key = key(&load.prefix, i % 1000, load.key_size);
        let value = Bytes::from(format!("{}:{pad}", now_nanos()));
        writers.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = ch
                .unary::<_, PutResponse>(
                    KV_PUT,
                    &PutRequest {
                        key,
                        value,
                        ..Default::default()
                    },
                )
                .await;
            drop(permit);
            (t0.elapsed(), r.map(drop).map_err(err))
        }));
    }
    let mut write_stats = Stats::default();
    for w in writers {
        match w.await {
            Ok((took, r)) => write_stats.record(took, r),
            Err(e) => write_stats.record(Duration::ZERO, Err(e.to_string())),
        }
    }
    let expected = writes * watchers as u64;
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let elapsed = started.elapsed();
    let mut stats = delivered.lock().map(|d| d.clone()).unwrap_or_default();
    let got = received.load(Ordering::Relaxed);
    if wait.is_err() || got < expected {
        stats.errors += expected.saturating_sub(got);
        stats
            .first_error
            .get_or_insert(format!("{got} of {expected} events delivered"));
    }
    if write_stats.errors > 0 {
        stats.errors += write_stats.errors;
        stats.first_error = stats.first_error.or(write_stats.first_error);
    }
    let mut report = Report::new(load.mode.name(), target, stats, elapsed);
    // Throughput here is writes per second; latencies are per delivery.
    report.throughput = writes as f64 / elapsed.as_secs_f64();
    Ok(report)
}

/// The Kubernetes-like mix: each client lists the prefix, watches from the
/// list revision + 1, then writes 75% updates, 15% deletes, 10% creates.
async fn k8s(load: &Load, channels: Arc<Vec<Channel>>) -> Result<(Stats, Duration), String> {
    let prefix = format!("{}registry/pods/default/", load.prefix);
    let value = Bytes::from(vec![b'p'; load.val_size]);
    // Seed objects so updates and deletes have something to work on.
    let clients = load.clients.max(1);
    let owned: Arc<Vec<Mutex<Objects>>> =
        Arc::new((0..clients).map(|_| Mutex::new(Vec::new())).collect());
    let mut rng = Rng::new(42);
    for c in 0..clients {
        for _ in 0..20 {
            let k = Bytes::from(format!("{prefix}{c}-{}", random_name(&mut rng)));
            let rev = k8s_write(&channels[0], &k, value.clone(), 0).await?;
            owned[c].lock().map_err(err)?.push((k, rev));
        }
    }
    let list: RangeResponse = channels[0]
        .unary(
            KV_RANGE,
            &RangeRequest {
                key: Bytes::from(prefix.clone()),
                range_end: Bytes::from(prefix_end(prefix.as_bytes())),
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
    let list_rev = list.header.map_or(0, |h| h.revision);
    let events = Arc::new(AtomicU64::new(0));
    for c in 0..clients {
        let (tx, mut rx) =
            open_watch(&channels[c % channels.len()], &prefix, list_rev + 1, true).await?;
        let events = events.clone();
        tokio::spawn(async move {
            let _open = tx;
            while let Ok(Some(r)) = rx.next::<WatchResponse>().await {
                events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            }
        });
    }
    let rngs: Arc<Vec<Mutex<Rng>>> = Arc::new(
        (0..clients)
            .map(|c| Mutex::new(Rng::new(100 + c as u64)))
            .collect(),
    );
    let result = warm_then_measure(load, move |c, _| {
        let ch = channels[c % channels.len()].clone();
        let (owned, rngs, value, prefix) =
            (owned.clone(), rngs.clone(), value.clone(), prefix.clone());
        async move {
            let (dice, pick, name) = {
                let mut r = rngs[c].lock().map_err(err)?;
                (r.below(100), r.next(), random_name(&mut r))
            };
            let target = {
                let mine = owned[c].lock().map_err(err)?;
                if mine.is_empty() {
                    None
                } else {
                    Some(mine[(pick % mine.len() as u64) as usize].clone())
                }
            };
            match (dice, target) {
                (0..=74, Some((k, rev))) => {
                    let new = k8s_write(&ch, &k, value, rev).await?;
                    let mut mine = owned[c].lock().map_err(err)?;
                    if let Some(e) = mine.iter_mut().find(|e| e.0 == k) {
                        e.1 = new;
                    }
                }
                (75..=89, Some((k, rev))) => {
                    let del = Request::RequestDeleteRange(DeleteRangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    });
                    let read = Request::RequestRange(RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    });
                    let r: TxnResponse = ch
                        .unary(KV_TXN, &txn(mod_equals(&k, rev), del, Some(read)))
                        .await
                        .map_err(err)?;
                    if !r.succeeded {
                        return Err("delete compare failed".into());
                    }
                    owned[c].lock().map_err(err)?.retain(|e| e.0 != k);
                }
                _ => {
                    let k = Bytes::from(format!("{prefix}{c}-{name}"));
                    let rev = k8s_write(&ch, &k, value, 0).await?;
                    owned[c].lock().map_err(err)?.push((k, rev));
                }
            }
            Ok(())
        }
    })
    .await;
    Ok(result)
}

/// The objects one k8s client owns: (key, last mod revision).
type Objects = Vec<(Bytes, i64)>;

fn random_name(r: &mut Rng) -> String {
    (0..5).map(|_| (b'a' + r.below(26) as u8) as char).collect()
}
