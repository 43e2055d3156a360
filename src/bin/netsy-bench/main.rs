//! netsy-bench: measures netsy (and, side by side, a real etcd) on the same
//! machine with the same client: put, range, txn-put, watch-latency and a
//! Kubernetes-like mix. `--compare` alternates netsy and etcd runs and
//! prints medians and ratios; `--smoke` checks every mode quickly for
//! correctness (CI).

mod check;
mod cluster;
mod failover;
mod procfs;
mod restore;
mod stats;
mod watcher;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use netsy::launch::{self, NetsyLaunch};
use stats::{median, Report};
use workload::{Load, Mode};

const USAGE: &str =
    "usage: netsy-bench MODE [options]    MODE: put | range | txn-put | watch-latency | k8s
       netsy-bench --smoke
       netsy-bench failover [--rounds N] [--moto] [--speedup N] [--json]
                 a 3-node cluster; SIGKILL of the Primary, the Elector, a node that is
                 both: seconds until writes are acknowledged again (N samples of each)
       netsy-bench restore [--records N] [--chunked N] [--chunk-records N] [--moto] [--json]
                 a bucket of N records (1000000; a snapshot, then the last --chunked
                 (100000) in chunks of --chunk-records (1000)): seconds until a fresh
                 node has loaded them from the bucket alone
       netsy-bench memory [--records N] [--moto] [--json]
                 N keys (100000) of --val-size bytes (1024) put by --clients (64):
                 the node's peak and steady RSS after the writes and after a restart

target (default: start a fresh netsy --dev):
  --endpoint HOST:PORT    a running server
  --compare               run netsy and etcd alternately, print medians and ratios
  --rounds N              compare rounds (3)
  --netsy-bin PATH        netsy to start (default: next to this binary)
  --netsy-config FILE     start netsy with --config FILE (e.g. an S3 bucket)
  --moto                  start netsy on a fresh bucket of a local moto S3 server
                          (quorum 0: every write is a synchronous S3 put)
  --moto-bin PATH         moto_server to start (default: .tools/bin/moto_server)
  --cluster N             with --compare: N netsy nodes (quorum -1; a shared directory,
                          or moto with --moto) against an N-member etcd; load on the
                          Primary and on etcd's leader
  --etcd-bin PATH         etcd to start (default: .tools/bin/etcd)
  --netsy-endpoint, --etcd-endpoint HOST:PORT   compare against running servers
load:
  --conns N (1)  --clients N (1)  --total N (requests; default 2000)  --duration SECS
  --rate OPS/S (0 = unlimited)  --warmup SECS (1)
  --key-size N (32)  --val-size N (256)  --key-space N (random keys; 0 = sequential)
  --keys N (range: keys under the prefix, 0 = one key; 1000)  --limit N (0)
  --watchers N (watch-latency: 100)
  --idle-watchers N       N watch streams, on the run's connections, on prefixes it never
                          writes, open throughout (kube-apiserver keeps one per resource; 0)
output:
  --json";

struct Options {
    load: Load,
    endpoint: Option<String>,
    compare: bool,
    rounds: usize,
    netsy_bin: PathBuf,
    netsy_config: Option<PathBuf>,
    moto: bool,
    moto_bin: PathBuf,
    etcd_bin: PathBuf,
    netsy_endpoint: Option<String>,
    etcd_endpoint: Option<String>,
    json: bool,
    smoke: bool,
    failover: bool,
    /// NETSY_TEST_ELECTION_SPEEDUP for failover runs.
    speedup: Option<u32>,
    /// Cluster size for `--compare` (0: single nodes).
    cluster: usize,
    /// `restore` or `memory`, when that is the mode.
    node_bench: Option<NodeBench>,
    records: Option<u64>,
    chunked: u64,
    chunk_records: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeBench {
    Restore,
    Memory,
}

fn defaults() -> Options {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
        .unwrap_or_default();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Options {
        load: Load {
            mode: Mode::Put,
            conns: 1,
            clients: 1,
            total: 2000,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: 0.0,
            key_size: 32,
            val_size: 256,
            key_space: 0,
            range_keys: 1000,
            limit: 0,
            watchers: 100,
            idle_watchers: 0,
            prefix: "/bench/".into(),
            check: false,
            tls: None,
            server_pid: None,
        },
        endpoint: None,
        compare: false,
        rounds: 3,
        netsy_bin: exe_dir.join("netsy"),
        netsy_config: None,
        moto: false,
        moto_bin: repo.join(".tools/bin/moto_server"),
        etcd_bin: repo.join(".tools/bin/etcd"),
        netsy_endpoint: None,
        etcd_endpoint: None,
        json: false,
        smoke: false,
        failover: false,
        speedup: None,
        cluster: 0,
        node_bench: None,
        records: None,
        chunked: 100_000,
        chunk_records: 1000,
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = defaults();
    let mut it = args.iter();
    let mut mode_set = false;
    let mut seen = Vec::new();
    while let Some(a) = it.next() {
        seen.push(a.clone());
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let num = |name: &str, v: String| {
            v.parse::<f64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--endpoint" => o.endpoint = Some(val(a)?),
            "--compare" => o.compare = true,
            "--rounds" => o.rounds = num(a, val(a)?)? as usize,
            "--netsy-bin" => o.netsy_bin = PathBuf::from(val(a)?),
            "--netsy-config" => o.netsy_config = Some(PathBuf::from(val(a)?)),
            "--moto" => o.moto = true,
            "--moto-bin" => o.moto_bin = PathBuf::from(val(a)?),
            "--etcd-bin" => o.etcd_bin = PathBuf::from(val(a)?),
            "--netsy-endpoint" => o.netsy_endpoint = Some(val(a)?),
            "--etcd-endpoint" => o.etcd_endpoint = Some(val(a)?),
            "--conns" => o.load.conns = num(a, val(a)?)? as usize,
            "--clients" => o.load.clients = num(a, val(a)?)? as usize,
            "--total" => o.load.total = num(a, val(a)?)? as u64,
            "--duration" => {
                o.load.duration = Duration::from_secs_f64(num(a, val(a)?)?);
                o.load.total = 0;
            }
            "--rate" => o.load.rate = num(a, val(a)?)?,
            "--warmup" => o.load.warmup = Duration::from_secs_f64(num(a, val(a)?)?),
            "--key-size" => o.load.key_size = num(a, val(a)?)? as usize,
            "--val-size" => o.load.val_size = num(a, val(a)?)? as usize,
            "--key-space" => o.load.key_space = num(a, val(a)?)? as u64,
            "--keys" => o.load.range_keys = num(a, val(a)?)? as u64,
            "--limit" => o.load.limit = num(a, val(a)?)? as i64,
            "--watchers" => o.load.watchers = num(a, val(a)?)? as usize,
            "--idle-watchers" => o.load.idle_watchers = num(a, val(a)?)? as usize,
            "--json" => o.json = true,
            "--smoke" => o.smoke = true,
            "--speedup" => o.speedup = Some(num(a, val(a)?)? as u32),
            "--cluster" => o.cluster = num(a, val(a)?)? as usize,
            "--records" => o.records = Some(num(a, val(a)?)? as u64),
            "--chunked" => o.chunked = num(a, val(a)?)? as u64,
            "--chunk-records" => o.chunk_records = num(a, val(a)?)? as u64,
            "failover" if !mode_set => {
                o.failover = true;
                mode_set = true;
            }
            "restore" | "memory" if !mode_set => {
                o.node_bench = Some(if a == "restore" {
                    NodeBench::Restore
                } else {
                    NodeBench::Memory
                });
                mode_set = true;
            }
            "-h" | "--help" => return Err(String::new()),
            m if !mode_set && !m.starts_with('-') => {
                o.load.mode = Mode::parse(m).ok_or_else(|| format!("unknown mode {m:?}"))?;
                mode_set = true;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.node_bench == Some(NodeBench::Memory) {
        // SPEC §11's memory figure: 1 KiB values, written by many clients.
        let unset = |flag: &str| !seen.iter().any(|s| s == flag);
        if unset("--val-size") {
            o.load.val_size = 1024;
        }
        if unset("--clients") {
            o.load.clients = 64;
        }
        if unset("--conns") {
            o.load.conns = 4;
        }
    }
    if !mode_set && !o.smoke {
        return Err("a mode is required".into());
    }
    if o.cluster > 0 && !o.compare {
        return Err("--cluster needs --compare".into());
    }
    if o.moto && o.netsy_config.is_some() {
        return Err("--moto and --netsy-config exclude each other".into());
    }
    if o.load.mode == Mode::WatchLatency && o.load.rate == 0.0 {
        o.load.rate = 100.0;
    }
    Ok(o)
}

/// How to start netsy, and what must live as long as it: with `--moto`, a
/// moto server with a fresh bucket and the config that points at it.
struct NetsyTarget {
    launch: NetsyLaunch,
    _moto: Option<(launch::Moto, launch::TempDir)>,
}

fn netsy_target(o: &Options) -> Result<NetsyTarget, String> {
    if !o.moto {
        let env = [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_S3_USE_PATH_STYLE",
        ]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
        return Ok(NetsyTarget {
            launch: NetsyLaunch {
                config: o.netsy_config.clone(),
                env,
            },
            _moto: None,
        });
    }
    let moto = launch::Moto::start(&o.moto_bin)?;
    moto.create_bucket("netsy-bench")?;
    let dir = launch::TempDir::new("bench-config")?;
    let config = dir.path().join("netsy.jsonc");
    std::fs::write(
        &config,
        r#"{
  "cluster_id": "bench",
  "storage": {"provider": "s3", "bucket_name": "netsy-bench"},
  "heartbeat_interval": "1s",
  "replication": {"quorum": 0}
}
"#,
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    Ok(NetsyTarget {
        launch: NetsyLaunch {
            config: Some(config),
            env: moto.env(),
        },
        _moto: Some((moto, dir)),
    })
}

fn print(reports: &[Report], json: bool) {
    if json {
        let all: Vec<_> = reports.iter().map(Report::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        return;
    }
    println!("{}", Report::header());
    for r in reports {
        println!("{}", r.line());
        if let Some(e) = &r.first_error {
            println!("    first error: {e}");
        }
    }
}

async fn single(o: &Options) -> Result<bool, String> {
    let target = netsy_target(o)?;
    let (_server, endpoint) = match &o.endpoint {
        Some(e) => (None, e.clone()),
        None => {
            let s = launch::start_netsy_with(&o.netsy_bin, &target.launch).await?;
            let addr = s.addr.clone();
            (Some(s), addr)
        }
    };
    let mut load = o.load.clone();
    load.server_pid = _server.as_ref().map(launch::Server::pid);
    let report = workload::run(&load, &endpoint, "netsy").await?;
    print(std::slice::from_ref(&report), o.json);
    Ok(report.errors == 0)
}

async fn compare(o: &Options) -> Result<bool, String> {
    if o.cluster > 0 {
        let bucket = cluster::bucket(&o.moto_bin, o.moto, "bench")?;
        let netsy = cluster::start_netsy(&o.netsy_bin, bucket, o.cluster, -1).await?;
        let (_etcd, etcd_addr) = cluster::start_etcd(&o.etcd_bin, o.cluster).await?;
        let netsy_target = Target {
            addr: netsy.primary_addr.clone(),
            tls: Some(netsy.tls.clone()),
            pid: None,
        };
        return compare_rounds(o, netsy_target, Target::plain(etcd_addr, None)).await;
    }
    let target = netsy_target(o)?;
    let (_netsy, netsy_addr) = match &o.netsy_endpoint {
        Some(e) => (None, e.clone()),
        None => {
            let s = launch::start_netsy_with(&o.netsy_bin, &target.launch).await?;
            let a = s.addr.clone();
            (Some(s), a)
        }
    };
    let (_etcd, etcd_addr) = match &o.etcd_endpoint {
        Some(e) => (None, e.clone()),
        None => {
            let s = launch::start_etcd(&o.etcd_bin).await?;
            let a = s.addr.clone();
            (Some(s), a)
        }
    };
    let netsy_pid = _netsy.as_ref().map(launch::Server::pid);
    let etcd_pid = _etcd.as_ref().map(launch::Server::pid);
    compare_rounds(
        o,
        Target::plain(netsy_addr, netsy_pid),
        Target::plain(etcd_addr, etcd_pid),
    )
    .await
}

/// A server the rounds run against.
struct Target {
    addr: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Its process, when this run started it (its CPU time is counted).
    pid: Option<u32>,
}

impl Target {
    fn plain(addr: String, pid: Option<u32>) -> Target {
        Target {
            addr,
            tls: None,
            pid,
        }
    }
}

/// Alternating netsy and etcd runs; prints each and the medians.
async fn compare_rounds(o: &Options, netsy: Target, etcd: Target) -> Result<bool, String> {
    let mut reports = Vec::new();
    for round in 0..o.rounds.max(1) {
        // A/B/A/B, swapping who goes first each round.
        let order = if round % 2 == 0 {
            [("netsy", &netsy), ("etcd", &etcd)]
        } else {
            [("etcd", &etcd), ("netsy", &netsy)]
        };
        for (name, target) in order {
            let mut load = o.load.clone();
            load.prefix = format!("/bench/r{round}/");
            load.tls = target.tls.clone();
            load.server_pid = target.pid;
            let r = workload::run(&load, &target.addr, name).await?;
            if !o.json {
                println!("round {}: {}", round + 1, r.line());
            }
            reports.push(r);
        }
    }
    let pick = |target: &str, f: fn(&Report) -> f64| {
        median(
            reports
                .iter()
                .filter(|r| r.target == target)
                .map(f)
                .collect(),
        )
    };
    let (nt, et) = (
        pick("netsy", |r| r.throughput),
        pick("etcd", |r| r.throughput),
    );
    let (np99, ep99) = (pick("netsy", |r| r.p99_ms), pick("etcd", |r| r.p99_ms));
    let (np50, ep50) = (pick("netsy", |r| r.p50_ms), pick("etcd", |r| r.p50_ms));
    // Server CPU per operation, where every run of the target counted it.
    let cpu = |target: &str| -> Option<f64> {
        let runs = reports.iter().filter(|r| r.target == target);
        let counted: Option<Vec<f64>> = runs.map(|r| r.server_cpu_us.map(|c| c.1)).collect();
        counted.filter(|v| !v.is_empty()).map(median)
    };
    let (ncpu, ecpu) = (cpu("netsy"), cpu("etcd"));
    let cpu_ratio = ncpu.zip(ecpu).map(|(n, e)| n / e.max(1e-9));
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    if o.json {
        let all: Vec<_> = reports.iter().map(Report::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "mode": o.load.mode.name(), "rounds": o.rounds, "runs": all,
                "median": {"netsy": {"throughput": nt, "p50_ms": np50, "p99_ms": np99,
                                     "server_cpu_us_per_op": ncpu},
                           "etcd": {"throughput": et, "p50_ms": ep50, "p99_ms": ep99,
                                    "server_cpu_us_per_op": ecpu}},
                "ratio": {"throughput": nt / et.max(1e-9), "p99": np99 / ep99.max(1e-9),
                          "server_cpu": cpu_ratio},
            }))
            .unwrap_or_default()
        );
    } else {
        println!(
            "\n{} median over {} rounds: netsy {:.1} ops/s (p50 {:.3} ms, p99 {:.3} ms) | etcd {:.1} ops/s (p50 {:.3} ms, p99 {:.3} ms)",
            o.load.mode.name(),
            o.rounds,
            nt,
            np50,
            np99,
            et,
            ep50,
            ep99
        );
        println!(
            "ratio netsy/etcd: throughput {:.2}x, p99 latency {:.2}x",
            nt / et.max(1e-9),
            np99 / ep99.max(1e-9)
        );
        if let (Some(n), Some(e), Some(r)) = (ncpu, ecpu, cpu_ratio) {
            println!("server CPU per operation: netsy {n:.1} µs | etcd {e:.1} µs | ratio {r:.2}x");
        }
    }
    Ok(errors == 0)
}

/// One smoke run: a mode and the load it runs with.
struct SmokeRun {
    name: &'static str,
    mode: Mode,
    clients: usize,
    total: u64,
    key_space: u64,
    range_keys: u64,
    limit: i64,
}

const fn smoke_run(name: &'static str, mode: Mode, clients: usize, total: u64) -> SmokeRun {
    SmokeRun {
        name,
        mode,
        clients,
        total,
        key_space: 0,
        range_keys: 100,
        limit: 0,
    }
}

/// Every mode, a few hundred requests each after a short warm-up, against
/// a fresh netsy, each on its own prefix; checks what was written, read and
/// delivered (see check.rs). No timing is judged.
async fn smoke(o: &Options) -> Result<bool, String> {
    let target = netsy_target(o)?;
    let server = launch::start_netsy_with(&o.netsy_bin, &target.launch).await?;
    let runs = [
        smoke_run("put", Mode::Put, 8, 300),
        // Random keys among 40: overwrites, so the last value must win.
        SmokeRun {
            key_space: 40,
            ..smoke_run("put-overwrite", Mode::Put, 8, 300)
        },
        SmokeRun {
            range_keys: 0,
            ..smoke_run("range-1-key", Mode::Range, 4, 200)
        },
        smoke_run("range-100-keys", Mode::Range, 4, 200),
        SmokeRun {
            limit: 30,
            ..smoke_run("range-100-keys-limit-30", Mode::Range, 4, 200)
        },
        smoke_run("txn-put", Mode::TxnPut, 8, 200),
        smoke_run("watch-latency", Mode::WatchLatency, 1, 50),
        smoke_run("k8s", Mode::K8s, 4, 200),
    ];
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for run in runs {
        let mut load = o.load.clone();
        load.mode = run.mode;
        load.clients = run.clients;
        load.conns = 2;
        load.total = run.total;
        load.warmup = Duration::from_millis(200);
        load.key_space = run.key_space;
        load.range_keys = run.range_keys;
        load.limit = run.limit;
        load.watchers = 10;
        load.rate = if run.mode == Mode::WatchLatency {
            500.0
        } else {
            0.0
        };
        load.prefix = format!("/smoke/{}/", run.name);
        load.check = true;
        let mut r = workload::run(&load, &server.addr, "netsy").await?;
        r.mode = run.name.to_string();
        if r.errors > 0 {
            let first = r.first_error.as_deref().unwrap_or("");
            failures.push(format!("{}: {} errors, first: {first}", run.name, r.errors));
        } else if r.ops == 0 {
            failures.push(format!("{}: no operation completed", run.name));
        }
        match &r.check {
            Some(Ok(())) => {}
            Some(Err(e)) => failures.push(format!("{}: {e}", run.name)),
            None => failures.push(format!("{}: not checked", run.name)),
        }
        reports.push(r);
    }
    print(&reports, o.json);
    // The node benchmarks, small: a restore must serve every record, a
    // restarted node every key written before.
    for which in [NodeBench::Restore, NodeBench::Memory] {
        let mut options = node_bench_options(o, which);
        options.records = 2000;
        options.chunked = 500;
        options.chunk_records = 100;
        options.load.prefix = "/smoke/node/".into();
        let outcome = match which {
            NodeBench::Restore => restore::restore(&options).await,
            NodeBench::Memory => restore::memory(&options).await,
        };
        let name = if which == NodeBench::Restore {
            "restore"
        } else {
            "memory"
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{name}: errors or missing keys")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    for f in &failures {
        println!("smoke: {}", f.replace('\n', " "));
    }
    let ok = failures.is_empty();
    println!(
        "smoke: {}",
        if ok {
            "ok (every mode's results checked)"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}

fn launch_options(o: &Options) -> cluster::LaunchOptions<'_> {
    cluster::LaunchOptions {
        netsy_bin: &o.netsy_bin,
        moto_bin: &o.moto_bin,
        moto: o.moto,
        json: o.json,
    }
}

/// What `restore` and `memory` run with, SPEC §11's sizes unless given.
fn node_bench_options(o: &Options, which: NodeBench) -> restore::NodeBenchOptions<'_> {
    let records = match which {
        NodeBench::Restore => o.records.unwrap_or(1_000_000),
        NodeBench::Memory => o.records.unwrap_or(100_000),
    };
    restore::NodeBenchOptions {
        launch: launch_options(o),
        records,
        chunk_records: o.chunk_records,
        chunked: o.chunked.min(records),
        load: o.load.clone(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        if o.failover {
            failover::run(&failover::FailoverOptions {
                launch: launch_options(&o),
                rounds: o.rounds,
                speedup: o.speedup,
            })
            .await
        } else if let Some(which) = o.node_bench {
            let options = node_bench_options(&o, which);
            match which {
                NodeBench::Restore => restore::restore(&options).await,
                NodeBench::Memory => restore::memory(&options).await,
            }
        } else if o.smoke {
            smoke(&o).await
        } else if o.compare {
            compare(&o).await
        } else {
            single(&o).await
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
