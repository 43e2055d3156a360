//! The workloads: each opens its connections, prepares its data (not
//! measured), runs a warm-up (not measured), then measures operations until
//! the request total or the duration is reached. With `Load::check` (smoke)
//! each also keeps what it wrote or read and checks it after the timed
//! phase (see check.rs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use netsy::grpc::Channel;
use netsy::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use netsy::pb::etcdserverpb::request_op::Request;
use netsy::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use netsy::pb::mvccpb::{event::EventType, Event, KeyValue};
use netsy::store::keyrange::prefix_end;

use crate::check;
use crate::procfs;
use crate::stats::{Report, Stats};
use crate::watcher::Watcher;

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
    /// Watch streams on prefixes the run never writes, open throughout.
    pub idle_watchers: usize,
    /// Key prefix of this run (runs must not see each other's keys).
    pub prefix: String,
    /// Keep what the run wrote and read, and check it after the timed
    /// phase (smoke). Assumes the prefix starts empty.
    pub check: bool,
    /// mTLS for endpoints that need it (a netsy cluster).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The server's process, when this machine runs it: the CPU time it
    /// uses during the measured phase is reported per operation.
    pub server_pid: Option<u32>,
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

/// The value a workload writes for operation `tag`: the tag in decimal,
/// then filler up to `size` bytes (cut at `size`). Each write's value names
/// the write, so a read or an event shows which write it came from.
pub fn value(tag: u64, size: usize) -> Bytes {
    let mut v = format!("{tag:020}:").into_bytes();
    v.resize(size, b'v');
    Bytes::from(v)
}

pub fn key(prefix: &str, i: u64, size: usize) -> Bytes {
    let mut k = format!("{prefix}{i:012}");
    while k.len() < size {
        k.push('x');
    }
    Bytes::from(k)
}

pub async fn connect(
    endpoint: &str,
    conns: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..conns.max(1) {
        let channel = match tls {
            Some(tls) => Channel::connect_tls(endpoint, tls.clone(), "127.0.0.1").await,
            None => Channel::connect(endpoint).await,
        };
        out.push(channel.map_err(err)?);
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
        match t.await {
            Ok(s) => total.merge(s),
            Err(e) => total.record(Duration::ZERO, Err(format!("a client task failed: {e}"))),
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
    let cpu = || load.server_pid.and_then(|pid| procfs::cpu_time(pid).ok());
    let before = cpu();
    let (mut stats, elapsed) = drive(load, load.total, duration, op).await;
    if let (Some(before), Some(after)) = (before, cpu()) {
        stats.server_cpu = Some((
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        ));
    }
    (stats, elapsed)
}

/// What one run measured and, with `Load::check`, the verdict of its checks.
struct Outcome {
    stats: Stats,
    elapsed: Duration,
    /// Replaces operations per second (watch-latency: writes per second).
    throughput: Option<f64>,
    check: Result<(), String>,
}

impl Outcome {
    fn new((stats, elapsed): (Stats, Duration), check: Result<(), String>) -> Outcome {
        Outcome {
            stats,
            elapsed,
            throughput: None,
            check,
        }
    }
}

pub async fn run(load: &Load, endpoint: &str, target: &str) -> Result<Report, String> {
    let channels = Arc::new(connect(endpoint, load.conns, load.tls.as_ref()).await?);
    let idle = idle_watchers(load, &channels).await?;
    let mut out = match load.mode {
        Mode::Put => put(load, channels).await?,
        Mode::Range => range(load, channels).await?,
        Mode::TxnPut => txn_put(load, channels).await?,
        Mode::WatchLatency => watch_latency(load, channels).await?,
        Mode::K8s => k8s(load, channels).await?,
    };
    let stray: u64 = idle.iter().map(Watcher::counted).sum();
    if stray > 0 {
        out.stats.errors += stray;
        out.stats
            .first_error
            .get_or_insert(format!("{stray} events on prefixes the run never wrote"));
    }
    drop(idle);
    let mut report = Report::new(load.mode.name(), target, out.stats, out.elapsed);
    if let Some(t) = out.throughput {
        report.throughput = t;
    }
    if load.check {
        report.check = Some(out.check);
    }
    Ok(report)
}

/// Opens `load.idle_watchers` watch streams, spread over the channels, each
/// on a prefix of its own that the run never writes: what a kube-apiserver
/// holds (one watch per resource) while the writes go on. Every event they
/// get is counted, and is an error.
async fn idle_watchers(load: &Load, channels: &[Channel]) -> Result<Vec<Watcher>, String> {
    let mut open = Vec::with_capacity(load.idle_watchers);
    for i in 0..load.idle_watchers {
        let prefix = format!("{}idle/{i}/", load.prefix);
        let watcher = Watcher::start(
            &channels[i % channels.len()],
            &prefix,
            0,
            false,
            false,
            |_, events| events.len() as u64,
        )
        .await?;
        open.push(watcher);
    }
    Ok(open)
}

/// Per-client logs for the checks (None unless `load.check`): each client
/// appends to its own, so the clients never wait for each other.
type Logs<T> = Option<Arc<Vec<Mutex<Vec<T>>>>>;

fn logs<T>(load: &Load) -> Logs<T> {
    load.check.then(|| {
        Arc::new(
            (0..load.clients.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        )
    })
}

fn log<T>(logs: &Logs<T>, client: usize, entry: impl FnOnce() -> T) {
    if let Some(l) = logs {
        if let Ok(mut l) = l[client].lock() {
            l.push(entry());
        }
    }
}

fn drain<T>(logs: &[Mutex<Vec<T>>]) -> Vec<T> {
    logs.iter()
        .flat_map(|l| {
            l.lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        })
        .collect()
}

fn header_revision(h: &Option<netsy::pb::etcdserverpb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// One acknowledged put for the checks: key, value tag, revision.
type PutEntry = (Bytes, u64, i64);

/// What the prefix must hold after the logged puts (the last value per key,
/// create revision, version), against what it holds: every key, every
/// field, and the count. Nothing to check when nothing was logged.
async fn check_puts(
    ch: &Channel,
    prefix: &str,
    val_size: usize,
    written: &Logs<PutEntry>,
) -> Result<(), String> {
    let Some(logs) = written else {
        return Ok(());
    };
    let mut writes = drain(logs);
    if writes.is_empty() {
        return Err("no write was acknowledged".into());
    }
    check::distinct_revisions(writes.iter().map(|w| w.2).collect())?;
    writes.sort_by_key(|w| w.2);
    let mut model: BTreeMap<Bytes, KeyValue> = BTreeMap::new();
    for (k, tag, rev) in writes {
        let kv = model.entry(k.clone()).or_insert_with(|| KeyValue {
            key: k,
            create_revision: rev,
            ..Default::default()
        });
        kv.mod_revision = rev;
        kv.version += 1;
        kv.value = value(tag, val_size);
    }
    let expected: Vec<KeyValue> = model.into_values().collect();
    let got = check::read_prefix(ch, prefix).await?;
    check::check_kvs(&expected, &got).map_err(|e| format!("read back: {e}"))?;
    let counted: RangeResponse = ch
        .unary(
            KV_RANGE,
            &RangeRequest {
                key: Bytes::from(prefix.to_string()),
                range_end: Bytes::from(prefix_end(prefix.as_bytes())),
                count_only: true,
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
    if counted.count != expected.len() as i64 || !counted.kvs.is_empty() {
        return Err(format!(
            "count_only range says {} keys ({} returned), expected {}",
            counted.count,
            counted.kvs.len(),
            expected.len()
        ));
    }
    Ok(())
}

async fn put(load: &Load, channels: Arc<Vec<Channel>>) -> Result<Outcome, String> {
    let (prefix, key_size, val_size) = (load.prefix.clone(), load.key_size, load.val_size);
    let (space, seed) = (load.key_space, 7);
    let rngs: Arc<Vec<Mutex<Rng>>> = Arc::new(
        (0..load.clients.max(1))
            .map(|c| Mutex::new(Rng::new(seed + c as u64)))
            .collect(),
    );
    let written = logs::<PutEntry>(load);
    let (ch0, log_to) = (channels[0].clone(), written.clone());
    let measured = warm_then_measure(load, move |c, i| {
        let ch = channels[c % channels.len()].clone();
        let k = if space > 0 {
            let r = rngs[c].lock().map(|mut r| r.below(space)).unwrap_or(0);
            key(&prefix, r, key_size)
        } else {
            key(&prefix, i, key_size)
        };
        let logged = log_to.is_some().then(|| k.clone());
        let log_to = log_to.clone();
        async move {
            let r: PutResponse = ch
                .unary(
                    KV_PUT,
                    &PutRequest {
                        key: k,
                        value: value(i, val_size),
                        ..Default::default()
                    },
                )
                .await
                .map_err(err)?;
            if let Some(k) = logged {
                log(&log_to, c, || (k, i, header_revision(&r.header)));
            }
            Ok(())
        }
    })
    .await;
    let check = check_puts(&ch0, &load.prefix, val_size, &written).await;
    Ok(Outcome::new(measured, check))
}

/// Writes keys 0..n under the prefix, key i with `value(i)` (preparation,
/// not measured). Returns each key's revision.
pub async fn populate(
    ch: &Channel,
    prefix: &str,
    n: u64,
    key_size: usize,
    val_size: usize,
) -> Result<Vec<i64>, String> {
    let mut revisions = Vec::with_capacity(n as usize);
    let mut pending = Vec::new();
    for i in 0..n {
        let (ch, k, v) = (ch.clone(), key(prefix, i, key_size), value(i, val_size));
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
        if pending.len() >= 64 || i + 1 == n {
            for p in pending.drain(..) {
                let r = p.await.map_err(err)?.map_err(err)?;
                revisions.push(header_revision(&r.header));
            }
        }
    }
    Ok(revisions)
}

async fn range(load: &Load, channels: Arc<Vec<Channel>>) -> Result<Outcome, String> {
    let keys = load.range_keys.max(1);
    let revisions = populate(
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
    let answers = logs::<RangeResponse>(load);
    let log_to = answers.clone();
    let measured = warm_then_measure(load, move |c, _| {
        let ch = channels[c % channels.len()].clone();
        let req = req.clone();
        let log_to = log_to.clone();
        async move {
            let r: RangeResponse = ch.unary(KV_RANGE, &req).await.map_err(err)?;
            if r.kvs.len() as u64 != expected {
                return Err(format!(
                    "range returned {} keys, expected {expected}",
                    r.kvs.len()
                ));
            }
            log(&log_to, c, || r);
            Ok(())
        }
    })
    .await;
    let Some(answers) = answers else {
        return Ok(Outcome::new(measured, Ok(())));
    };
    // Every answer, warm-up included, against the keys loaded.
    let kvs: Vec<KeyValue> = (0..expected)
        .map(|i| KeyValue {
            key: key(&load.prefix, i, load.key_size),
            value: value(i, load.val_size),
            create_revision: revisions[i as usize],
            mod_revision: revisions[i as usize],
            version: 1,
            lease: 0,
        })
        .collect();
    let (count, more) = (keys as i64, expected < keys);
    let answers = drain(&answers);
    let check = if answers.is_empty() {
        Err("no range was answered".into())
    } else {
        answers.iter().enumerate().try_for_each(|(n, r)| {
            check::check_range(r, &kvs, count, more).map_err(|e| format!("range answer {n}: {e}"))
        })
    };
    Ok(Outcome::new(measured, check))
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
    Ok(header_revision(&r.header))
}

async fn txn_put(load: &Load, channels: Arc<Vec<Channel>>) -> Result<Outcome, String> {
    // Each client owns one key: the first op creates it, the rest update it.
    let revisions: Arc<Vec<Mutex<i64>>> =
        Arc::new((0..load.clients.max(1)).map(|_| Mutex::new(0)).collect());
    let (prefix, key_size, val_size) = (load.prefix.clone(), load.key_size, load.val_size);
    let written = logs::<PutEntry>(load);
    let (ch0, log_to) = (channels[0].clone(), written.clone());
    let measured = warm_then_measure(load, move |c, i| {
        let ch = channels[c % channels.len()].clone();
        let (revisions, log_to) = (revisions.clone(), log_to.clone());
        let k = key(&prefix, c as u64, key_size);
        async move {
            let rev = revisions[c].lock().map(|r| *r).unwrap_or(0);
            let new = k8s_write(&ch, &k, value(i, val_size), rev).await?;
            if let Ok(mut r) = revisions[c].lock() {
                *r = new;
            }
            log(&log_to, c, || (k, i, new));
            Ok(())
        }
    })
    .await;
    let check = check_puts(&ch0, &load.prefix, val_size, &written).await;
    Ok(Outcome::new(measured, check))
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One watch-latency write: its key, value and revision (or error).
struct Written {
    key: Bytes,
    value: Bytes,
    revision: Result<i64, String>,
}

/// When a watch-latency value says it was sent: `{nanos}:` then filler;
/// warm-up writes put `w` first.
enum Sent {
    At(u64),
    Warmup,
    Unknown,
}

fn sent(value: &[u8]) -> Sent {
    if value.first() == Some(&b'w') {
        return Sent::Warmup;
    }
    // The digits before the first ':' (read without a pass over the
    // filler: this runs a million times a second).
    let mut nanos: u64 = 0;
    for (i, b) in value.iter().enumerate() {
        match b {
            b'0'..=b'9' => match nanos.checked_mul(10) {
                Some(n) => nanos = n + u64::from(b - b'0'),
                None => return Sent::Unknown,
            },
            b':' if i > 0 => return Sent::At(nanos),
            _ => return Sent::Unknown,
        }
    }
    Sent::Unknown
}

/// watch-latency's writer: one put per tick of the rate, each started
/// without waiting for the previous one (so the rate holds when a write
/// takes longer than the interval), `count` of them or until `until`.
/// Write `first + n` goes to key `(first + n) % 1000`; each value carries
/// its send time.
async fn paced_writes(
    load: &Load,
    channels: &[Channel],
    first: u64,
    count: u64,
    until: Option<Instant>,
) -> Result<(Vec<Written>, Stats), String> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let mut writers = Vec::new();
    let mut keys = Vec::new();
    for n in 0..count {
        ticker.tick().await;
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let permit = in_flight.clone().acquire_owned().await.map_err(err)?;
        let i = first + n;
        let ch = channels[i as usize % channels.len()].clone();
        let key = key(&load.prefix, i % 1000, load.key_size);
        let warm = if until.is_some() { "w" } else { "" };
        let mut v = format!("{warm}{}:", now_nanos()).into_bytes();
        v.resize(load.val_size.max(v.len()), b'v');
        let value = Bytes::from(v);
        keys.push((key.clone(), value.clone()));
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
            (
                t0.elapsed(),
                r.map(|r| header_revision(&r.header)).map_err(err),
            )
        }));
    }
    let mut stats = Stats::default();
    let mut written = Vec::with_capacity(writers.len());
    for ((key, value), w) in keys.into_iter().zip(writers) {
        let (took, revision) = w.await.unwrap_or_else(|e| (Duration::ZERO, Err(err(e))));
        stats.record(took, revision.as_ref().map(drop).map_err(Clone::clone));
        written.push(Written {
            key,
            value,
            revision,
        });
    }
    Ok((written, stats))
}

async fn watch_latency(load: &Load, channels: Arc<Vec<Channel>>) -> Result<Outcome, String> {
    let watchers = load.watchers.max(1);
    let writes = if load.total > 0 {
        load.total
    } else {
        (load.rate.max(1.0) * load.duration.as_secs_f64()) as u64
    };
    // Each watcher times the measured events (not the warm-up's) into its
    // own stats and counts them.
    let mut open = Vec::with_capacity(watchers);
    let mut delivered = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let into = stats.clone();
        let watcher = Watcher::start(
            &channels[w % channels.len()],
            &load.prefix,
            0,
            false,
            load.check,
            move |now, events| {
                let Ok(mut s) = into.lock() else { return 0 };
                let mut measured = 0;
                for e in events {
                    let latency = match sent(e.value()) {
                        Sent::Warmup => continue,
                        Sent::At(t) => Ok(Duration::from_nanos(now.saturating_sub(t))),
                        Sent::Unknown => Err("an event whose value is not a send time"),
                    };
                    measured += 1;
                    match latency {
                        Ok(l) => s.record(l, Ok(())),
                        Err(e) => s.record(Duration::ZERO, Err(e.to_string())),
                    }
                }
                measured
            },
        )
        .await?;
        open.push(watcher);
        delivered.push(stats);
    }
    // Warm-up: the same writes at the same rate, neither timed nor counted.
    let mut written = Vec::new();
    if !load.warmup.is_zero() {
        let until = Instant::now() + load.warmup;
        let (w, _) = paced_writes(load, &channels, 0, u64::MAX, Some(until)).await?;
        written = w;
    }
    let started = Instant::now();
    let (w, write_stats) =
        paced_writes(load, &channels, written.len() as u64, writes, None).await?;
    written.extend(w);
    let deadline = Instant::now() + Duration::from_secs(30);
    for watcher in open.iter_mut() {
        watcher
            .wait_for(writes, deadline.saturating_duration_since(Instant::now()))
            .await;
    }
    let elapsed = started.elapsed();
    let mut stats = Stats::default();
    for d in &delivered {
        if let Ok(d) = d.lock() {
            stats.merge(d.clone());
        }
    }
    let expected = writes * watchers as u64;
    let got: u64 = open.iter().map(|w| w.counted()).sum();
    if got < expected {
        stats.errors += expected - got;
        stats
            .first_error
            .get_or_insert(format!("{got} of {expected} events delivered"));
    }
    if write_stats.errors > 0 {
        stats.errors += write_stats.errors;
        stats.first_error = stats.first_error.or(write_stats.first_error);
    }
    let check = if load.check {
        check_watchers(&written, &mut open).await
    } else {
        Ok(())
    };
    Ok(Outcome {
        stats,
        elapsed,
        // ops/s is writes per second; latencies are per delivery.
        throughput: Some(writes as f64 / elapsed.as_secs_f64().max(1e-9)),
        check,
    })
}

/// The events every watcher must have received for these puts on a prefix
/// that started empty: all of them, in revision order, versions counted.
fn put_events(written: &[Written]) -> Result<Vec<Event>, String> {
    let failed = written.iter().filter(|w| w.revision.is_err()).count();
    if failed > 0 {
        return Err(format!(
            "{failed} writes failed, so the events cannot be checked"
        ));
    }
    let mut ordered: Vec<(i64, &Written)> = written
        .iter()
        .filter_map(|w| w.revision.as_ref().ok().map(|r| (*r, w)))
        .collect();
    check::distinct_revisions(ordered.iter().map(|o| o.0).collect())?;
    ordered.sort_by_key(|o| o.0);
    let mut keys: BTreeMap<Bytes, (i64, i64)> = BTreeMap::new();
    Ok(ordered
        .into_iter()
        .map(|(rev, w)| {
            let (create, version) = keys.entry(w.key.clone()).or_insert((rev, 0));
            *version += 1;
            Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: w.key.clone(),
                    value: w.value.clone(),
                    create_revision: *create,
                    mod_revision: rev,
                    version: *version,
                    lease: 0,
                }),
                prev_kv: None,
            }
        })
        .collect())
}

/// Each watcher against every write, warm-up included.
async fn check_watchers(written: &[Written], open: &mut [Watcher]) -> Result<(), String> {
    let expected = put_events(written)?;
    for (n, watcher) in open.iter_mut().enumerate() {
        let got = watcher
            .finish(Duration::from_secs(10))
            .await
            .map_err(|e| format!("watcher {n}: {e}"))?;
        check::check_events(&expected, &got).map_err(|e| format!("watcher {n}: {e}"))?;
    }
    Ok(())
}

/// One object a k8s client owns, as the server must hold it.
#[derive(Clone)]
struct Object {
    key: Bytes,
    value: Bytes,
    create: i64,
    rev: i64,
    version: i64,
}

impl Object {
    fn kv(&self) -> KeyValue {
        KeyValue {
            key: self.key.clone(),
            value: self.value.clone(),
            create_revision: self.create,
            mod_revision: self.rev,
            version: self.version,
            lease: 0,
        }
    }
}

type Objects = Vec<Object>;

/// Value tags of the seeded k8s objects (operations use their index).
const SEED_TAG: u64 = u64::MAX / 4;

fn random_name(r: &mut Rng) -> String {
    (0..5).map(|_| (b'a' + r.below(26) as u8) as char).collect()
}

fn all_objects(owned: &[Mutex<Objects>]) -> Vec<KeyValue> {
    let mut kvs: Vec<KeyValue> = owned
        .iter()
        .flat_map(|o| o.lock().map(|o| o.clone()).unwrap_or_default())
        .map(|o| o.kv())
        .collect();
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    kvs
}

/// The Kubernetes-like mix: each client lists the prefix, watches from the
/// list revision + 1, then writes 75% updates, 15% deletes, 10% creates.
async fn k8s(load: &Load, channels: Arc<Vec<Channel>>) -> Result<Outcome, String> {
    let prefix = format!("{}registry/pods/default/", load.prefix);
    let val_size = load.val_size;
    // Seed objects so updates and deletes have something to work on.
    let clients = load.clients.max(1);
    let owned: Arc<Vec<Mutex<Objects>>> =
        Arc::new((0..clients).map(|_| Mutex::new(Vec::new())).collect());
    let mut rng = Rng::new(42);
    let mut tag = SEED_TAG;
    for c in 0..clients {
        for _ in 0..20 {
            let k = Bytes::from(format!("{prefix}{c}-{}", random_name(&mut rng)));
            let v = value(tag, val_size);
            tag += 1;
            let rev = k8s_write(&channels[0], &k, v.clone(), 0).await?;
            owned[c].lock().map_err(err)?.push(Object {
                key: k,
                value: v,
                create: rev,
                rev,
                version: 1,
            });
        }
    }
    let seeded = all_objects(&owned);
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
    let list_rev = header_revision(&list.header);
    let mut watchers = Vec::with_capacity(clients);
    for c in 0..clients {
        let ch = &channels[c % channels.len()];
        watchers.push(
            Watcher::start(ch, &prefix, list_rev + 1, true, load.check, |_, events| {
                events.len() as u64
            })
            .await?,
        );
    }
    let rngs: Arc<Vec<Mutex<Rng>>> = Arc::new(
        (0..clients)
            .map(|c| Mutex::new(Rng::new(100 + c as u64)))
            .collect(),
    );
    // With checks: the event each acknowledged write must produce.
    let events = logs::<Event>(load);
    let (ch0, owned_after, log_to) = (channels[0].clone(), owned.clone(), events.clone());
    let measured = warm_then_measure(load, move |c, i| {
        let ch = channels[c % channels.len()].clone();
        let (owned, rngs, prefix, log_to) =
            (owned.clone(), rngs.clone(), prefix.clone(), log_to.clone());
        let value = value(i, val_size);
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
                (0..=74, Some(old)) => {
                    let rev = k8s_write(&ch, &old.key, value.clone(), old.rev).await?;
                    let new = Object {
                        value,
                        rev,
                        version: old.version + 1,
                        ..old.clone()
                    };
                    log(&log_to, c, || Event {
                        r#type: EventType::Put as i32,
                        kv: Some(new.kv()),
                        prev_kv: Some(old.kv()),
                    });
                    let mut mine = owned[c].lock().map_err(err)?;
                    if let Some(e) = mine.iter_mut().find(|e| e.key == new.key) {
                        *e = new;
                    }
                }
                (75..=89, Some(old)) => {
                    let k = &old.key;
                    let del = Request::RequestDeleteRange(DeleteRangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    });
                    let read = Request::RequestRange(RangeRequest {
                        key: k.clone(),
                        ..Default::default()
                    });
                    let r: TxnResponse = ch
                        .unary(KV_TXN, &txn(mod_equals(k, old.rev), del, Some(read)))
                        .await
                        .map_err(err)?;
                    if !r.succeeded {
                        return Err("delete compare failed".into());
                    }
                    log(&log_to, c, || Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: k.clone(),
                            mod_revision: header_revision(&r.header),
                            ..Default::default()
                        }),
                        prev_kv: Some(old.kv()),
                    });
                    owned[c].lock().map_err(err)?.retain(|e| e.key != *k);
                }
                _ => {
                    let k = Bytes::from(format!("{prefix}{c}-{name}"));
                    let rev = k8s_write(&ch, &k, value.clone(), 0).await?;
                    let new = Object {
                        key: k,
                        value,
                        create: rev,
                        rev,
                        version: 1,
                    };
                    log(&log_to, c, || Event {
                        r#type: EventType::Put as i32,
                        kv: Some(new.kv()),
                        prev_kv: None,
                    });
                    owned[c].lock().map_err(err)?.push(new);
                }
            }
            Ok(())
        }
    })
    .await;
    let check = match &events {
        Some(events) => {
            let k = K8sCheck {
                prefix: &load.prefix,
                list: &list,
                seeded: &seeded,
                events: drain(events),
                objects: all_objects(&owned_after),
            };
            k.run(&ch0, &mut watchers).await
        }
        None => Ok(()),
    };
    Ok(Outcome::new(measured, check))
}

struct K8sCheck<'a> {
    prefix: &'a str,
    /// The list before the run, and the objects seeded before it.
    list: &'a RangeResponse,
    seeded: &'a [KeyValue],
    /// The event of every acknowledged write of the run.
    events: Vec<Event>,
    /// The objects the clients own after the run.
    objects: Vec<KeyValue>,
}

impl K8sCheck<'_> {
    async fn run(mut self, ch: &Channel, watchers: &mut [Watcher]) -> Result<(), String> {
        let prefix = format!("{}registry/pods/default/", self.prefix);
        let n = self.seeded.len() as i64;
        check::check_range(self.list, self.seeded, n, false)
            .map_err(|e| format!("the list before the run: {e}"))?;
        let list_rev = header_revision(&self.list.header);
        let last_seed = self.seeded.iter().map(|kv| kv.mod_revision).max();
        if last_seed.unwrap_or(0) > list_rev {
            return Err(format!(
                "the list before the run is at revision {list_rev}, before the last seeded write ({})",
                last_seed.unwrap_or(0)
            ));
        }
        let revision = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        check::distinct_revisions(self.events.iter().map(revision).collect())?;
        self.events.sort_by_key(revision);
        let want = self.events.len() as u64;
        for (c, w) in watchers.iter_mut().enumerate() {
            w.wait_for(want, Duration::from_secs(30)).await;
            let got = w
                .finish(Duration::from_secs(10))
                .await
                .map_err(|e| format!("watcher {c}: {e}"))?;
            check::check_events(&self.events, &got)
                .map_err(|e| format!("watcher {c} (from revision {}): {e}", list_rev + 1))?;
        }
        let now = check::read_prefix(ch, &prefix).await?;
        check::check_kvs(&self.objects, &now).map_err(|e| format!("the list after the run: {e}"))
    }
}
