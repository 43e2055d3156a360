//! `restore` and `memory`: the two figures of SPEC §11 that are about a
//! node rather than a workload. `restore` builds a bucket holding N records
//! (a snapshot and the chunks after it, written directly in the bucket's
//! format) and times a fresh node that loads them from the bucket alone.
//! `memory` writes keys through a node and reports its peak and steady
//! resident memory after the writes and again after a restart.
//!
//! Both run the node as deployed (one node of a launched cluster, mTLS,
//! `replication.quorum: 0`) on a fresh directory bucket, or a moto bucket
//! with `--moto`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procfs::rss;

use bytes::Bytes;
use netsy::config::cluster::ClusterConfig;
use netsy::datafile::{self, Compression, Kind};
use netsy::grpc::Channel;
use netsy::http::metrics::Metrics;
use netsy::log::{keys, ObjectLog};
use netsy::objstore::ObjectStore;
use netsy::pb::etcdserverpb::{RangeRequest, RangeResponse};
use netsy::store::keyrange::prefix_end;
use netsy::store::{Record, Timestamp};
use serde_json::json;

use crate::cluster::{self, Bucket, LaunchOptions, NetsyCluster};
use crate::workload::{self, Load, Mode};

/// Who the records of a built bucket say wrote them.
const WRITER: &str = "bench-writer";

/// How long a node may take to load, or to take writes after a restart.
const PATIENCE: Duration = Duration::from_secs(120);

pub struct NodeBenchOptions<'a> {
    pub launch: LaunchOptions<'a>,
    /// restore: records in the bucket; memory: keys written.
    pub records: u64,
    /// restore: records per chunk after the snapshot.
    pub chunk_records: u64,
    /// restore: records in chunks (the rest are in the snapshot).
    pub chunked: u64,
    /// The load's key and value sizes, connections and clients.
    pub load: Load,
}

/// The key of record `i` (the same keys the put workload writes).
fn record_key(load: &Load, i: u64) -> Bytes {
    workload::key(&load.prefix, i, load.key_size)
}

/// A put of a new key at `revision`, as a Primary would have written it.
fn put_record(revision: i64, key: Bytes, value: Bytes, at: Timestamp) -> Record {
    Record {
        revision,
        key,
        created: true,
        create_revision: revision,
        version: 1,
        value: Some(value),
        created_at: at,
        ..Record::internal(WRITER)
    }
}

/// The bucket's object store, as a node would open it.
fn open_store(bucket: &Bucket) -> Result<Arc<dyn ObjectStore>, String> {
    let text = format!(
        r#"{{"cluster_id": "bench", "storage": {}}}"#,
        bucket.storage
    );
    let config = ClusterConfig::parse(&text).map_err(|p| format!("{p:?}"))?;
    let env = bucket.env.clone();
    let lookup = move |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    netsy::objstore::from_config(&config.storage, &lookup, &Arc::new(Metrics::new()))
}

/// Writes revisions 1..=records into the bucket: a snapshot of all but the
/// last `chunked`, then those in chunks of `chunk_records`.
async fn build_bucket(o: &NodeBenchOptions<'_>, bucket: &Bucket) -> Result<(), String> {
    let scratch = netsy::launch::TempDir::new("restore-build")?;
    let log = ObjectLog::new(open_store(bucket)?, WRITER, scratch.path())?;
    let records = o.records.max(2) as i64;
    let in_snapshot = (records - o.chunked as i64).max(1);
    let at = Timestamp::now();
    let record = |revision: i64| {
        if revision == 1 {
            return Record::internal(WRITER);
        }
        let i = revision as u64 - 2;
        let value = workload::value(i, o.load.val_size);
        put_record(revision, record_key(&o.load, i), value, at)
    };
    let path = scratch.path().join("snapshot.netsy");
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut writer = datafile::Writer::new(
        std::io::BufWriter::new(file),
        Kind::Snapshot,
        Compression::Zstd,
        in_snapshot,
        WRITER,
        at,
    )
    .map_err(|e| e.to_string())?;
    for revision in 1..=in_snapshot {
        writer.write(&record(revision)).map_err(|e| e.to_string())?;
    }
    writer
        .finish()
        .map_err(|e| e.to_string())?
        .into_inner()
        .map_err(|e| format!("writing the snapshot: {e}"))?;
    log.store
        .put_file(&keys::snapshot_key(in_snapshot), &path)
        .await
        .map_err(|e| e.to_string())?;
    let step = o.chunk_records.max(1) as i64;
    let mut first = in_snapshot + 1;
    while first <= records {
        let last = (first + step - 1).min(records);
        let chunk: Vec<Record> = (first..=last).map(record).collect();
        log.write_chunk(&chunk).await.map_err(|e| e.to_string())?;
        first = last + 1;
    }
    Ok(())
}

/// A serializable count of the keys under the prefix and the revision it
/// was read at.
async fn count_keys(ch: &Channel, load: &Load) -> Result<(i64, i64), String> {
    let request = RangeRequest {
        key: Bytes::from(load.prefix.clone()),
        range_end: Bytes::from(prefix_end(load.prefix.as_bytes())),
        count_only: true,
        serializable: true,
        ..Default::default()
    };
    let r: RangeResponse = ch
        .unary("/etcdserverpb.KV/Range", &request)
        .await
        .map_err(|e| e.to_string())?;
    Ok((r.count, r.header.map_or(0, |h| h.revision)))
}

/// Waits until the node at `addr` answers a count of `keys` keys.
async fn wait_loaded(
    addr: &str,
    tls: &Arc<rustls::ClientConfig>,
    load: &Load,
    keys: i64,
) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::from("no answer");
    loop {
        if let Ok(ch) = Channel::connect_tls(addr, tls.clone(), "127.0.0.1").await {
            match count_keys(&ch, load).await {
                Ok((count, _)) if count == keys => return Ok(()),
                Ok((count, revision)) => {
                    last = format!("{count} keys at revision {revision}");
                }
                Err(e) => last = e,
            }
        }
        if Instant::now() > deadline {
            return Err(format!("expected {keys} keys, last answer: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The newest record reads back as it was written, at its revision.
async fn check_last(
    addr: &str,
    tls: &Arc<rustls::ClientConfig>,
    o: &NodeBenchOptions<'_>,
) -> Result<(), String> {
    let revision = o.records.max(2) as i64;
    let i = revision as u64 - 2;
    let ch = Channel::connect_tls(addr, tls.clone(), "127.0.0.1")
        .await
        .map_err(|e| e.to_string())?;
    let request = RangeRequest {
        key: record_key(&o.load, i),
        ..Default::default()
    };
    let r: RangeResponse = ch
        .unary("/etcdserverpb.KV/Range", &request)
        .await
        .map_err(|e| e.to_string())?;
    let want = workload::value(i, o.load.val_size);
    match r.kvs.first() {
        Some(kv) if kv.value == want && kv.mod_revision == revision => Ok(()),
        Some(kv) => Err(format!(
            "revision {revision}'s key read back at revision {} with value {}",
            kv.mod_revision,
            crate::check::show(&kv.value)
        )),
        None => Err(format!("revision {revision}'s key is missing")),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn provider(o: &NodeBenchOptions<'_>) -> &'static str {
    if o.launch.moto {
        "moto"
    } else {
        "fs"
    }
}

/// Builds the bucket, then times a fresh node's load of it.
pub async fn restore(o: &NodeBenchOptions<'_>) -> Result<bool, String> {
    let bucket = cluster::bucket(o.launch.moto_bin, o.launch.moto, "restore")?;
    let started = Instant::now();
    build_bucket(o, &bucket).await?;
    let built = started.elapsed();
    let keys = o.records.max(2) as i64 - 1;
    let started = Instant::now();
    let netsy = cluster::start_netsy(o.launch.netsy_bin, bucket, 1, 0).await?;
    let addr = netsy.cluster.nodes[0].client_addr();
    wait_loaded(&addr, &netsy.tls, &o.load, keys).await?;
    let loaded = started.elapsed();
    let (peak, now) = rss(netsy.pid(0)?)?;
    check_last(&addr, &netsy.tls, o).await?;
    if o.launch.json {
        let out = json!({
            "mode": "restore", "provider": provider(o), "records": o.records,
            "chunked": o.chunked, "chunk_records": o.chunk_records,
            "build_s": built.as_secs_f64(), "load_s": loaded.as_secs_f64(),
            "peak_rss_mib": mib(peak), "rss_mib": mib(now),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "restore ({}): {} records ({} in chunks of {}), bucket built in {:.1} s; \
             a fresh node served them all {:.2} s after it was started \
             (RSS {:.0} MiB, peak {:.0} MiB)",
            provider(o),
            o.records,
            o.chunked,
            o.chunk_records,
            built.as_secs_f64(),
            loaded.as_secs_f64(),
            mib(now),
            mib(peak)
        );
    }
    Ok(true)
}

/// Resident memory after a settling pause: (peak, steady).
async fn settled_rss(netsy: &NetsyCluster) -> Result<(u64, u64), String> {
    // Measurement, not synchronisation: what the node holds once the
    // burst is over (freed buffers returned, background work done).
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss(netsy.pid(0)?)
}

/// Writes keys, restarts the node on its data directory, and reports its
/// memory at both points.
pub async fn memory(o: &NodeBenchOptions<'_>) -> Result<bool, String> {
    let bucket = cluster::bucket(o.launch.moto_bin, o.launch.moto, "memory")?;
    let mut netsy = cluster::start_netsy(o.launch.netsy_bin, bucket, 1, 0).await?;
    let mut load = o.load.clone();
    load.mode = Mode::Put;
    load.total = o.records;
    load.key_space = 0;
    load.warmup = Duration::ZERO;
    load.tls = Some(netsy.tls.clone());
    let addr = netsy.cluster.nodes[0].client_addr();
    let report = workload::run(&load, &addr, "netsy").await?;
    let keys = report.ops as i64;
    let (written_peak, written) = settled_rss(&netsy).await?;

    netsy.cluster.terminate(0, PATIENCE)?;
    netsy.cluster.start(0)?;
    let addr = netsy.primary_serving(0).await?;
    wait_loaded(&addr, &netsy.tls, &load, keys).await?;
    let (restarted_peak, restarted) = settled_rss(&netsy).await?;
    let ok = report.errors == 0 && keys as u64 == o.records;
    if o.launch.json {
        let out = json!({
            "mode": "memory", "provider": provider(o), "keys": keys,
            "val_size": load.val_size, "errors": report.errors,
            "after_writes": {"peak_rss_mib": mib(written_peak), "rss_mib": mib(written)},
            "after_restart": {"peak_rss_mib": mib(restarted_peak), "rss_mib": mib(restarted)},
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "memory ({}): {keys} keys of {} bytes ({} errors)\n  \
             after the writes:  peak {:.0} MiB, steady {:.0} MiB\n  \
             after a restart:   peak {:.0} MiB, steady {:.0} MiB",
            provider(o),
            load.val_size,
            report.errors,
            mib(written_peak),
            mib(written),
            mib(restarted_peak),
            mib(restarted)
        );
    }
    Ok(ok)
}
