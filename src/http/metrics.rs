//! The metrics registry: the reference implementation's metric names and
//! labels (bounded labels only, base units), plus gRPC server and process
//! metrics, rendered as Prometheus text. A node makes one and hands it down
//! to every layer that records something; nothing reaches it through a
//! global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Prometheus' default buckets, in seconds.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Object sizes: 1 KiB to 100 MiB.
const BYTE_BUCKETS: [f64; 6] = [
    1024.0,
    10240.0,
    102400.0,
    1048576.0,
    10485760.0,
    104857600.0,
];

fn seconds() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

fn bytes() -> Histogram {
    Histogram::new(BYTE_BUCKETS)
}

/// The gRPC metrics of one method that every successful call records,
/// resolved once: a family lookup builds its label set (owned strings),
/// hashes it and takes a lock, three times per call.
#[derive(Clone)]
pub struct GrpcMethod {
    pub started: Counter,
    pub handled_ok: Counter,
    pub handling_seconds: Histogram,
}

/// A request's metric handles (by default its counter and duration
/// histogram), by label values known at compile time, resolved from their
/// families on first use: later requests build no label sets and take no
/// family locks.
pub struct RequestHandles<V = (Counter, Histogram)> {
    resolved: std::sync::RwLock<HashMap<(&'static str, &'static str), V>>,
}

impl<V> Default for RequestHandles<V> {
    fn default() -> Self {
        RequestHandles {
            resolved: Default::default(),
        }
    }
}

impl<V: Clone> RequestHandles<V> {
    /// The handles of `key`; `make` resolves them the first time.
    pub fn get(&self, key: (&'static str, &'static str), make: impl FnOnce() -> V) -> V {
        if let Some(found) = self.resolved.read().ok().and_then(|r| r.get(&key).cloned()) {
            return found;
        }
        let made = make();
        if let Ok(mut r) = self.resolved.write() {
            r.insert(key, made.clone());
        }
        made
    }
}

impl RequestHandles {
    /// Counts a request of `kind` by its outcome in `counts` (labels kind
    /// and result) and observes its duration in `durations` (label kind),
    /// through handles resolved once per pair.
    pub fn observe(
        &self,
        counts: &Count,
        durations: &Hist,
        (kind, outcome): (&'static str, &'static str),
        seconds: f64,
    ) {
        let (count, duration) = self.get((kind, outcome), || {
            (
                counts
                    .get_or_create(&labels(&[("kind", kind), ("result", outcome)]))
                    .clone(),
                durations.get_or_create(&labels(&[("kind", kind)])).clone(),
            )
        });
        count.inc();
        duration.observe(seconds);
    }
}

type Hist = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;
type Count = Family<Vec<(String, String)>, Counter>;
type Gauges = Family<Vec<(String, String)>, Gauge>;
type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Label sets are small vectors of (name, value) pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub version: String,
    pub cluster_id: String,
    pub node_id: String,
    pub quorum_config: String,
}

pub struct Metrics {
    registry: Registry,
    /// The Elector's metrics, exported only while this node is the Elector.
    elector_group: Registry,
    elector_active: std::sync::atomic::AtomicBool,
    pub info: Family<InfoLabels, Gauge>,
    pub state_health: Gauges,
    pub state_elector: Gauges,
    pub state_primary: Gauges,
    pub process_start_time: Gauge,
    pub latest_revision: Gauge,
    pub committed_revision: Gauge,
    pub compaction_revision: Gauge,
    pub loading_stage_duration: Hist,
    pub loading_restarts: Count,
    pub local_db_rebuilds: Count,
    pub client_requests: Count,
    /// `client_requests` and `client_request_duration` by (kind, result).
    pub client_request_handles: RequestHandles,
    pub client_request_duration: Hist,
    pub watchers: Gauge,
    pub watches: Gauge,
    /// What this node answers GetMinWatchRevision.
    pub watch_min_revision: Gauge,
    pub object_storage_writes: Count,
    pub object_storage_write_duration: Hist,
    /// `object_storage_writes`, `object_storage_write_duration` and
    /// `object_storage_write_bytes` of synchronous writes by (kind, result).
    pub object_storage_write_handles: RequestHandles<(Counter, Histogram, Histogram)>,
    pub object_storage_write_bytes: Hist,
    pub object_storage_reads: Count,
    pub object_storage_read_duration: Hist,
    pub retries: Count,
    pub compaction_duration: Hist,
    pub primary_write_path: Gauges,
    pub primary_write_transactions: Count,
    /// `primary_write_transactions` and `primary_write_duration` by (path,
    /// result).
    pub primary_write_handles: RequestHandles,
    pub primary_write_duration: Hist,
    pub primary_object_storage_revision: Gauge,
    pub primary_quorum_rollbacks: Count,
    pub primary_compactions: Count,
    pub primary_compaction_coordination_duration: Hist,
    pub primary_compaction_confirmation_failures: Count,
    /// Quorum batches: one replication round each (not in the reference).
    pub primary_replication_rounds: Counter,
    pub primary_required_receipts: Gauge,
    pub primary_healthy_replicas: Gauge,
    pub primary_replication_streams: Gauge,
    pub primary_chunk_buffer_records: Gauge,
    pub primary_chunk_buffer_bytes: Gauge,
    pub primary_chunk_buffer_flushes: Count,
    pub replica_proxy_requests: Count,
    pub replica_proxy_request_duration: Hist,
    pub replica_proxy_handles: RequestHandles,
    /// Peer calls linearizable reads on a replica made (not in the
    /// reference): one serves every read waiting when it starts.
    pub replica_read_index_calls: Counter,
    pub primary_snapshot_creations: Count,
    pub primary_snapshot_creation_duration: Hist,
    pub primary_snapshot_age: Gauge,
    pub primary_snapshot_cleanup_runs: Count,
    pub primary_snapshot_cleanup_chunks_deleted: Counter,
    pub elector_registered_nodes: Gauge,
    pub elector_healthy_nodes: Gauge,
    pub elector_degraded_nodes: Gauge,
    pub elector_primary_elections: Count,
    pub elector_primary_election_failures: Count,
    pub elector_primary_election_duration: Hist,
    pub elector_primary_election_contacts: Count,
    pub elector_auto_deregistrations: Counter,
    pub node_registration_duration: Hist,
    pub grpc_started: Count,
    pub grpc_handled: Count,
    pub grpc_handling_seconds: Hist,
    /// [`GrpcMethod`]s by request path (only paths the router serves).
    grpc_methods: std::sync::RwLock<std::collections::HashMap<String, GrpcMethod>>,
    /// When the last snapshot was written (Unix seconds; 0 before the
    /// first), for `netsy_primary_snapshot_age_seconds` at each scrape.
    last_snapshot_unix: AtomicI64,
    /// Called before each scrape to refresh values read from elsewhere.
    hooks: Mutex<Vec<ScrapeHook>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The gRPC handles of the method at `path` (`service`/`method`).
    pub fn grpc_method(&self, path: &str, service: &str, method: &str) -> GrpcMethod {
        if let Some(h) = self
            .grpc_methods
            .read()
            .ok()
            .and_then(|m| m.get(path).cloned())
        {
            return h;
        }
        let base = [("grpc_service", service), ("grpc_method", method)];
        let mut ok = labels(&base);
        ok.push(("grpc_code".to_string(), "OK".to_string()));
        let h = GrpcMethod {
            started: self.grpc_started.get_or_create(&labels(&base)).clone(),
            handled_ok: self.grpc_handled.get_or_create(&ok).clone(),
            handling_seconds: self
                .grpc_handling_seconds
                .get_or_create(&labels(&base))
                .clone(),
        };
        if let Ok(mut m) = self.grpc_methods.write() {
            m.insert(path.to_string(), h.clone());
        }
        h
    }

    pub fn new() -> Metrics {
        let mut r = Registry::default();
        macro_rules! reg {
            ($name:expr, $help:expr, $metric:expr) => {{
                let m = $metric;
                r.register($name, $help, m.clone());
                m
            }};
        }
        let mut e = Registry::default();
        macro_rules! reg_e {
            ($name:expr, $help:expr, $metric:expr) => {{
                let m = $metric;
                e.register($name, $help, m.clone());
                m
            }};
        }
        let hist = || Hist::new_with_constructor(seconds as fn() -> Histogram);
        let m = Metrics {
            info: reg!(
                "netsy_info",
                "Build and configuration of this node",
                Family::default()
            ),
            state_health: reg!(
                "netsy_state_health",
                "Health state (one-hot)",
                Gauges::default()
            ),
            state_elector: reg!(
                "netsy_state_elector",
                "Elector state (one-hot)",
                Gauges::default()
            ),
            state_primary: reg!(
                "netsy_state_primary",
                "Primary state (one-hot)",
                Gauges::default()
            ),
            process_start_time: reg!(
                "netsy_process_start_time_seconds",
                "Process start, Unix seconds",
                Gauge::default()
            ),
            latest_revision: reg!(
                "netsy_latest_revision",
                "Highest revision in the local database",
                Gauge::default()
            ),
            committed_revision: reg!(
                "netsy_committed_revision",
                "Highest revision visible to clients",
                Gauge::default()
            ),
            compaction_revision: reg!(
                "netsy_compaction_revision",
                "Accepted compaction revision",
                Gauge::default()
            ),
            loading_stage_duration: reg!(
                "netsy_loading_stage_duration_seconds",
                "Duration of loading stages",
                hist()
            ),
            loading_restarts: reg!(
                "netsy_loading_restarts",
                "Restarts of the loading routine",
                Count::default()
            ),
            local_db_rebuilds: reg!(
                "netsy_local_db_rebuilds",
                "Local databases rebuilt from object storage",
                Count::default()
            ),
            client_requests: reg!(
                "netsy_client_requests",
                "Client API requests",
                Count::default()
            ),
            client_request_duration: reg!(
                "netsy_client_request_duration_seconds",
                "Client API request duration",
                hist()
            ),
            watchers: reg!("netsy_watchers", "Open watch streams", Gauge::default()),
            watches: reg!("netsy_watches", "Active watches", Gauge::default()),
            watch_min_revision: reg!(
                "netsy_watch_min_revision",
                "Lowest revision an active watch still needs (the committed revision without watches)",
                Gauge::default()
            ),
            object_storage_writes: reg!(
                "netsy_object_storage_writes",
                "Object storage writes",
                Count::default()
            ),
            object_storage_write_duration: reg!(
                "netsy_object_storage_write_duration_seconds",
                "Object storage write duration",
                hist()
            ),
            object_storage_write_bytes: reg!(
                "netsy_object_storage_write_bytes",
                "Object storage write sizes",
                Family::new_with_constructor(bytes as fn() -> Histogram)
            ),
            object_storage_reads: reg!(
                "netsy_object_storage_reads",
                "Object storage reads",
                Count::default()
            ),
            object_storage_read_duration: reg!(
                "netsy_object_storage_read_duration_seconds",
                "Object storage read duration",
                hist()
            ),
            retries: reg!("netsy_retries", "Retried operations", Count::default()),
            compaction_duration: reg!(
                "netsy_compaction_duration_seconds",
                "Local compaction duration",
                hist()
            ),
            primary_write_path: reg!(
                "netsy_primary_write_path",
                "Write path in use (one-hot)",
                Gauges::default()
            ),
            primary_write_transactions: reg!(
                "netsy_primary_write_transactions",
                "Write transactions",
                Count::default()
            ),
            primary_write_duration: reg!(
                "netsy_primary_write_duration_seconds",
                "Write transaction duration",
                hist()
            ),
            primary_object_storage_revision: reg!(
                "netsy_primary_object_storage_revision",
                "Highest revision durable in object storage",
                Gauge::default()
            ),
            primary_quorum_rollbacks: reg!(
                "netsy_primary_quorum_rollbacks",
                "Quorum writes rolled back",
                Count::default()
            ),
            primary_compactions: reg!(
                "netsy_primary_compactions",
                "Cluster compaction cycles that were not skipped",
                Count::default()
            ),
            primary_compaction_coordination_duration: reg!(
                "netsy_primary_compaction_coordination_duration_seconds",
                "Duration of cluster compaction cycles",
                hist()
            ),
            primary_compaction_confirmation_failures: reg!(
                "netsy_primary_compaction_confirmation_failures",
                "Compaction notices a node did not confirm",
                Count::default()
            ),
            primary_replication_rounds: reg!(
                "netsy_primary_replication_rounds",
                "Batches made durable by replica receipts",
                Counter::default()
            ),
            primary_required_receipts: reg!(
                "netsy_primary_required_receipts",
                "Replica receipts a quorum write needs",
                Gauge::default()
            ),
            primary_healthy_replicas: reg!(
                "netsy_primary_healthy_replicas",
                "Replicas eligible to count towards a quorum",
                Gauge::default()
            ),
            primary_replication_streams: reg!(
                "netsy_primary_replication_streams",
                "Open Follow streams",
                Gauge::default()
            ),
            primary_chunk_buffer_records: reg!(
                "netsy_primary_chunk_buffer_records",
                "Quorum-committed records waiting for the bucket",
                Gauge::default()
            ),
            primary_chunk_buffer_bytes: reg!(
                "netsy_primary_chunk_buffer_bytes",
                "Encoded size of the buffered records",
                Gauge::default()
            ),
            primary_chunk_buffer_flushes: reg!(
                "netsy_primary_chunk_buffer_flushes",
                "Chunk buffer flushes",
                Count::default()
            ),
            replica_proxy_requests: reg!(
                "netsy_replica_proxy_requests",
                "Writes a replica forwarded to the Primary",
                Count::default()
            ),
            replica_proxy_request_duration: reg!(
                "netsy_replica_proxy_request_duration_seconds",
                "Duration of forwarded writes",
                hist()
            ),
            replica_read_index_calls: reg!(
                "netsy_replica_read_index_calls",
                "Calls for the Primary's committed revision made for linearizable reads",
                Counter::default()
            ),
            primary_snapshot_creations: reg!(
                "netsy_primary_snapshot_creations",
                "Snapshots written",
                Count::default()
            ),
            primary_snapshot_creation_duration: reg!(
                "netsy_primary_snapshot_creation_duration_seconds",
                "Snapshot creation duration",
                hist()
            ),
            primary_snapshot_age: reg!(
                "netsy_primary_snapshot_age_seconds",
                "Age of the latest snapshot",
                Gauge::default()
            ),
            primary_snapshot_cleanup_runs: reg!(
                "netsy_primary_snapshot_cleanup_runs",
                "Chunk cleanup runs",
                Count::default()
            ),
            primary_snapshot_cleanup_chunks_deleted: reg!(
                "netsy_primary_snapshot_cleanup_chunks_deleted",
                "Chunk objects deleted by cleanup",
                Counter::default()
            ),
            elector_registered_nodes: reg_e!(
                "netsy_elector_registered_nodes",
                "Nodes in the Elector's map",
                Gauge::default()
            ),
            elector_healthy_nodes: reg_e!(
                "netsy_elector_healthy_nodes",
                "Healthy nodes in the Elector's map",
                Gauge::default()
            ),
            elector_degraded_nodes: reg_e!(
                "netsy_elector_degraded_nodes",
                "Degraded nodes in the Elector's map",
                Gauge::default()
            ),
            elector_primary_elections: reg_e!(
                "netsy_elector_primary_elections",
                "Primary elections run",
                Count::default()
            ),
            elector_primary_election_failures: reg_e!(
                "netsy_elector_primary_election_failures",
                "Primary elections that failed",
                Count::default()
            ),
            elector_primary_election_duration: reg_e!(
                "netsy_elector_primary_election_duration_seconds",
                "Primary election duration",
                hist()
            ),
            elector_primary_election_contacts: reg_e!(
                "netsy_elector_primary_election_contacts",
                "Nodes asked for their state during Primary elections",
                Count::default()
            ),
            elector_auto_deregistrations: reg_e!(
                "netsy_elector_auto_deregistrations",
                "Nodes removed after the deregistration timeout",
                Counter::default()
            ),
            node_registration_duration: reg!(
                "netsy_node_registration_duration_seconds",
                "Time to register with the Elector",
                hist()
            ),
            grpc_started: reg!(
                "grpc_server_started",
                "gRPC calls started",
                Count::default()
            ),
            grpc_handled: reg!(
                "grpc_server_handled",
                "gRPC calls completed",
                Count::default()
            ),
            grpc_handling_seconds: reg!(
                "grpc_server_handling_seconds",
                "gRPC call duration",
                hist()
            ),
            grpc_methods: Default::default(),
            last_snapshot_unix: AtomicI64::new(0),
            hooks: Mutex::new(Vec::new()),
            registry: Registry::default(),
            elector_group: Registry::default(),
            elector_active: std::sync::atomic::AtomicBool::new(false),
            client_request_handles: RequestHandles::default(),
            replica_proxy_handles: RequestHandles::default(),
            object_storage_write_handles: RequestHandles::default(),
            primary_write_handles: RequestHandles::default(),
        };
        Metrics {
            registry: r,
            elector_group: e,
            ..m
        }
    }

    /// Adds a function run before each scrape.
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut h) = self.hooks.lock() {
            h.push(Box::new(hook));
        }
    }

    /// Sets a one-hot family: `current` 1, the others 0.
    pub fn one_hot(family: &Gauges, label: &str, all: &[&str], current: &str) {
        for s in all {
            family
                .get_or_create(&labels(&[(label, s)]))
                .set(i64::from(*s == current));
        }
    }

    /// Counts one retry of `operation` in `netsy_retries_total`.
    pub fn count_retry(&self, operation: &str) {
        self.retries
            .get_or_create(&labels(&[("operation", operation)]))
            .inc();
    }

    /// Shows or hides the Elector's metrics (role-scoped, as the
    /// reference's: they exist only while this node is the Elector).
    pub fn set_elector_group(&self, shown: bool) {
        self.elector_active.store(shown, Ordering::Release);
    }

    /// Notes that a snapshot was written at `unix_seconds`.
    pub fn snapshot_taken(&self, unix_seconds: i64) {
        self.last_snapshot_unix
            .store(unix_seconds, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        if let Ok(hooks) = self.hooks.lock() {
            for h in hooks.iter() {
                h(self);
            }
        }
        let last = self.last_snapshot_unix.load(Ordering::Relaxed);
        if last > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            self.primary_snapshot_age.set(now - last);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        if self.elector_active.load(Ordering::Acquire) {
            let _ =
                prometheus_client::encoding::text::encode_registry(&mut out, &self.elector_group);
        }
        out.push_str(&process_metrics());
        out.push_str("# EOF\n");
        out
    }
}

/// Records a duration in seconds since `start`.
pub fn observe_since(h: &Histogram, start: Instant) {
    h.observe(start.elapsed().as_secs_f64());
}

/// process_* metrics read from /proc (Linux; empty elsewhere).
fn process_metrics() -> String {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return String::new();
    };
    // Fields after the command name, which is in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return String::new();
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Indices are field numbers minus 3 (pid and comm come first).
    let ticks = 100.0;
    let cpu = (num(11) + num(12)) / ticks;
    let threads = num(17);
    let start_ticks = num(19);
    let vsize = num(20);
    let rss_pages = num(21);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|v| v.parse::<f64>().ok())
                })
        })
        .unwrap_or(0.0);
    format!(
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
         # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
         # TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {vsize}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP process_max_fds Maximum number of open file descriptors.\n\
         # TYPE process_max_fds gauge\nprocess_max_fds {max_fds}\n\
         # HELP process_threads Number of OS threads in the process.\n\
         # TYPE process_threads gauge\nprocess_threads {threads}\n\
         # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
        rss_pages * 4096.0,
        boot + start_ticks / ticks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_request_handles_count_in_their_families() {
        let m = Metrics::new();
        for _ in 0..2 {
            let (count, duration) = m.primary_write_handles.get(("sync", "success"), || {
                let l = labels(&[("path", "sync"), ("result", "success")]);
                (
                    m.primary_write_transactions.get_or_create(&l).clone(),
                    m.primary_write_duration.get_or_create(&l).clone(),
                )
            });
            count.inc();
            duration.observe(0.001);
        }
        let (other, _) = m
            .primary_write_handles
            .get(("sync", "error"), || (Counter::default(), seconds()));
        other.inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"netsy_primary_write_transactions_total{path="sync",result="success"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"netsy_primary_write_duration_seconds_count{path="sync",result="success"} 2"#
        ));
    }
}
