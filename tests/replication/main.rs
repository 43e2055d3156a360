//! Replicated writes on clusters of real netsy processes: writes through
//! any node reach every node, reads keep etcd's consistency contract,
//! watches on replicas see every event once, replicas that die catch up
//! without a gap, a Primary that dies loses no acknowledged write, and the
//! write path moves between the quorum and the bucket as replicas come
//! and go.

#[path = "../support/mod.rs"]
mod support;

mod leases;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use support::cluster::{connect, TestCluster};

/// Clusters are heavy on two cores: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| tokio::runtime::Runtime::new().unwrap())
        .block_on(f)
}

async fn put(t: &TestCluster, i: usize, key: &str, value: &str) -> Result<i64, String> {
    let mut c = t.client(i).await;
    c.put(key, value, None)
        .await
        .map(|r| r.header().map_or(0, |h| h.revision()))
        .map_err(|e| e.to_string())
}

/// (value, mod revision) of `key` on node `i`.
async fn get(
    t: &TestCluster,
    i: usize,
    key: &str,
    serializable: bool,
) -> Result<Option<(String, i64)>, String> {
    let mut c = t.client(i).await;
    let options = serializable.then(|| GetOptions::new().with_serializable());
    let r = c.get(key, options).await.map_err(|e| e.to_string())?;
    Ok(r.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap_or("").to_string(), kv.mod_revision())))
}

/// A metric's value in node `i`'s /metrics (0 when absent).
fn metric(t: &TestCluster, i: usize, series: &str) -> f64 {
    let text = t.c.metrics(i).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The Primary of a settled cluster with its replicas following (it
/// writes on the quorum path).
fn quorum_ready(t: &mut TestCluster) -> usize {
    let (_, primary) = t.settled();
    t.until("the Primary writing on the quorum path", |t| {
        block_on(put(t, primary, "/ready", "x")).ok()?;
        (metric(t, primary, "netsy_primary_write_path{path=\"quorum\"}") == 1.0).then_some(())
    });
    primary
}

/// Events (revision, key, put?, prev value) a watch on node `i` sees from
/// `from` through `upto`.
async fn watched(
    t: &TestCluster,
    i: usize,
    prefix: &str,
    from: i64,
    upto: i64,
) -> Vec<(i64, String, bool, Option<String>)> {
    let mut c = t.client(i).await;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_prev_key();
    let (_w, mut stream) = c.watch(prefix, Some(options)).await.unwrap();
    let mut seen = Vec::new();
    let collect = async {
        while let Some(resp) = stream.message().await.unwrap() {
            for e in resp.events() {
                let kv = e.kv().unwrap();
                seen.push((
                    kv.mod_revision(),
                    kv.key_str().unwrap().to_string(),
                    e.event_type() == EventType::Put,
                    e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
                ));
            }
            if seen.last().is_some_and(|e| e.0 >= upto) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .unwrap_or_else(|_| panic!("watch on node {i} saw only {seen:?}"));
    seen
}

#[test]
fn writes_through_every_node_are_read_and_watched_on_every_node() {
    let _one = serial();
    let hold = tempfile::tempdir().unwrap();
    let hold_file = hold.path().join("hold-apply");
    let mut t = TestCluster::on_fs(3, |spec| {
        spec.env.push((
            "NETSY_FAILPOINT_FOLLOW_APPLY".into(),
            hold_file.display().to_string(),
        ))
    });
    t.start_all();
    let primary = quorum_ready(&mut t);
    let start = block_on(put(&t, primary, "/w/start", "0")).unwrap();

    // Read your write through every other node, with default reads.
    let mut expected = Vec::new();
    for round in 0..3 {
        for writer in 0..3 {
            let key = format!("/w/{writer}");
            let value = format!("{round}");
            let rev = block_on(put(&t, writer, &key, &value)).unwrap();
            let prev = (round > 0).then(|| format!("{}", round - 1));
            expected.push((rev, key.clone(), true, prev));
            for reader in 0..3 {
                assert_eq!(
                    block_on(get(&t, reader, &key, false)).unwrap(),
                    Some((value.clone(), rev)),
                    "written through node {writer}, read through node {reader}"
                );
            }
        }
    }
    let mut c = block_on(t.client((primary + 1) % 3));
    let deleted = block_on(c.delete("/w/0", None)).unwrap();
    let last = deleted.header().unwrap().revision();
    expected.push((last, "/w/0".into(), false, Some("2".into())));

    // Every replica's watch, replaying history, sees each event once, in
    // order, with prev_kv; and the same as the Primary's.
    let on_primary = block_on(watched(&t, primary, "/w/", start + 1, last));
    assert_eq!(on_primary, expected);
    for replica in (0..3).filter(|i| *i != primary) {
        assert_eq!(
            block_on(watched(&t, replica, "/w/", start + 1, last)),
            expected,
            "watch on replica {replica}"
        );
    }
    let rounds = metric(&t, primary, "netsy_primary_replication_rounds_total");
    assert!(rounds >= 10.0, "quorum rounds: {rounds}");
    // Each replica counted the writes it forwarded, by kind and result.
    let forwarded = |i: usize, kind: &str| {
        let series =
            format!("netsy_replica_proxy_requests_total{{kind=\"{kind}\",result=\"success\"}}");
        metric(&t, i, &series)
    };
    for replica in (0..3).filter(|i| *i != primary) {
        let puts = forwarded(replica, "put");
        assert!(puts >= 3.0, "puts forwarded by node {replica}: {puts}");
    }
    assert_eq!(
        forwarded(primary, "put"),
        0.0,
        "puts forwarded by the Primary"
    );
    assert!(
        forwarded((primary + 1) % 3, "delete") >= 1.0,
        "the forwarded delete"
    );

    // Every member holds the same history: HashKV at one revision agrees
    // (and a different revision does not).
    let hash = |i: usize, revision: i64| {
        block_on(async {
            let mut c = t.client(i).await;
            c.hash_kv(revision).await.unwrap().hash()
        })
    };
    let on_primary = hash(primary, last);
    for i in 0..3 {
        assert_eq!(hash(i, last), on_primary, "HashKV of node {i} at {last}");
    }
    assert_ne!(hash(primary, last - 1), on_primary);

    // A replica that has not applied a write yet: a serializable read
    // shows the older value, a default read waits until it has applied.
    let replica = (primary + 1) % 3;
    std::fs::write(&hold_file, b"").unwrap();
    let rev = block_on(put(&t, primary, "/w/1", "held")).unwrap();
    let stale = block_on(get(&t, replica, "/w/1", true)).unwrap();
    assert_eq!(
        stale.map(|v| v.0).as_deref(),
        Some("2"),
        "serializable lags"
    );
    let calls = |t: &TestCluster| metric(t, replica, "netsy_replica_read_index_calls_total");
    let before = calls(&t);
    let reader = {
        let client_tls = t.c.client_tls();
        let addr = t.c.nodes[replica].client_addr();
        std::thread::spawn(move || block_on(default_read(client_tls, addr, "/w/1")))
    };
    // The read asked the Primary how far to apply, and waits: the held
    // replica cannot have applied the write, and must not answer without.
    t.until("the default read asking the Primary", |t| {
        (calls(t) > before).then_some(())
    });
    assert!(
        !reader.is_finished(),
        "a default read answered from a lagging replica"
    );
    std::fs::remove_file(&hold_file).unwrap();
    let fresh = reader.join().unwrap();
    assert_eq!(
        fresh,
        Some(("held".to_string(), rev)),
        "default reads never lag"
    );
}

/// A default read through a fresh client.
async fn default_read(
    tls: (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
    addr: String,
    k: &str,
) -> Option<(String, i64)> {
    let mut c = connect(&tls, &addr, Duration::from_secs(10)).await.unwrap();
    let r = c.get(k, None).await.unwrap();
    r.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap().to_string(), kv.mod_revision()))
}

/// Writers putting keys through node `through` until stopped; every
/// acknowledged (key, revision) is kept.
struct Load {
    acked: Arc<Mutex<Vec<(String, i64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(t: &TestCluster, through: &[usize], prefix: &str) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for (w, node) in through.iter().enumerate() {
            let client_tls = t.c.client_tls();
            let addr = t.c.nodes[*node].client_addr();
            let (acked, stop, prefix) = (acked.clone(), stop.clone(), prefix.to_string());
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut client = None;
                    for i in 0.. {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        if client.is_none() {
                            let timeout = Duration::from_secs(5);
                            client = connect(&client_tls, &addr, timeout).await.ok();
                        }
                        let Some(c) = client.as_mut() else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let key = format!("{prefix}{w}/{i}");
                        match c.put(key.clone(), "v", None).await {
                            Ok(r) => acked
                                .lock()
                                .unwrap()
                                .push((key, r.header().unwrap().revision())),
                            // Unknown outcome: not acknowledged. Pace the
                            // retries while the cluster recovers.
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                });
            }));
        }
        Load {
            acked,
            stop,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(self) -> Vec<(String, i64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Every acknowledged write is on node `i`, at its revision.
fn assert_all_present(t: &TestCluster, i: usize, acked: &[(String, i64)], what: &str) {
    block_on(async {
        let mut c = t.client(i).await;
        for (key, rev) in acked {
            let got = c.get(key.as_str(), None).await.unwrap();
            assert_eq!(
                got.kvs().first().map(|kv| kv.mod_revision()),
                Some(*rev),
                "{what}: acknowledged write {key} at {rev} on node {i}"
            );
        }
    });
}

/// Node `i`'s revision once it has committed at least `at_least`.
fn caught_up(t: &mut TestCluster, i: usize, at_least: i64) {
    t.until(&format!("node {i} at revision {at_least}"), |t| {
        let got = block_on(async {
            let mut c = t.client(i).await;
            let options = GetOptions::new().with_serializable().with_count_only();
            c.get("/", Some(options)).await.ok()
        })?;
        (got.header()?.revision() >= at_least).then_some(())
    });
}

#[test]
fn a_killed_replica_does_not_stop_writes_and_catches_up_without_a_gap() {
    let _one = serial();
    let mut t = TestCluster::on_fs(3, |_| {});
    t.start_all();
    let primary = quorum_ready(&mut t);
    let victim = (primary + 1) % 3;
    let load = Load::start(&t, &[primary, primary, primary, primary], "/k/");
    t.until("writes under way", |_| (load.count() >= 50).then_some(()));
    t.c.kill(victim);
    let at_kill = load.count();
    t.until("writes flowing without the replica", |_| {
        (load.count() >= at_kill + 200).then_some(())
    });
    t.start(victim);
    t.until("more writes with the replica back", |_| {
        (load.count() >= at_kill + 400).then_some(())
    });
    let acked = load.finish();
    let last = acked.iter().map(|(_, r)| *r).max().unwrap();
    caught_up(&mut t, victim, last);
    assert_all_present(&t, victim, &acked, "rejoined replica");
    // The rejoined replica's history has no gap: a watch from the first
    // write sees every acknowledged revision.
    let first = acked.iter().map(|(_, r)| *r).min().unwrap();
    let events = block_on(watched(&t, victim, "/k/", first, last));
    let seen: std::collections::BTreeSet<i64> = events.iter().map(|e| e.0).collect();
    for (key, rev) in &acked {
        assert!(seen.contains(rev), "{key} at {rev} missing from the watch");
    }
}

#[test]
fn a_killed_primary_loses_no_acknowledged_write_on_any_node_or_in_the_bucket() {
    let _one = serial();
    let mut t = TestCluster::on_moto(3, |_| {});
    t.start_all();
    let primary = quorum_ready(&mut t);
    let replicas: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    // Through the replicas too (their writes are forwarded).
    let load = Load::start(&t, &[primary, primary, replicas[0], replicas[1]], "/p/");
    t.until("writes under way", |_| (load.count() >= 100).then_some(()));
    t.c.kill(primary);
    let at_kill = load.count();
    t.until("writes on a new Primary", |_| {
        (load.count() >= at_kill + 100).then_some(())
    });
    let acked = load.finish();
    let last = acked.iter().map(|(_, r)| *r).max().unwrap();
    for i in &replicas {
        caught_up(&mut t, *i, last);
        assert_all_present(&t, *i, &acked, "surviving node");
    }
    // Stop everything; from the bucket alone, on empty data directories.
    for i in &replicas {
        t.c.terminate(*i, Duration::from_secs(60)).unwrap();
    }
    for node in &t.c.nodes {
        std::fs::remove_dir_all(&node.data_dir).ok();
    }
    t.start_all();
    t.settled();
    for i in 0..3 {
        caught_up(&mut t, i, last);
        assert_all_present(&t, i, &acked, "restored from the bucket");
    }
}

#[test]
fn a_static_quorum_falls_back_to_the_bucket_without_its_replicas_and_returns() {
    let _one = serial();
    let mut t = TestCluster::on_fs(3, |spec| spec.quorum = 2);
    t.start_all();
    let primary = quorum_ready(&mut t);
    let path = |t: &TestCluster, p: &str| {
        metric(
            t,
            primary,
            &format!("netsy_primary_write_path{{path=\"{p}\"}}"),
        )
    };
    let replica = (primary + 1) % 3;
    t.c.terminate(replica, Duration::from_secs(60)).unwrap();
    t.until("writes on the synchronous path", |t| {
        let rev = block_on(put(t, primary, "/q/a", "1")).ok()?;
        (path(t, "sync") == 1.0 && path(t, "quorum") == 0.0).then_some(rev)
    });
    let synced = block_on(put(&t, primary, "/q/b", "2")).unwrap();
    // It is in the bucket already, after every quorum write before it: the
    // buffer was flushed first, so the chunks cover every revision.
    let revisions = bucket_revisions(&t);
    assert_eq!(revisions.last(), Some(&synced));
    let first = revisions[0];
    assert_eq!(
        revisions,
        (first..=synced).collect::<Vec<_>>(),
        "the bucket's chunks have no gap"
    );
    t.start(replica);
    t.until("writes on the quorum path again", |t| {
        block_on(put(t, primary, "/q/c", "3")).ok()?;
        (path(t, "quorum") == 1.0).then_some(())
    });
}

#[test]
fn a_compaction_through_a_replica_compacts_every_node() {
    let _one = serial();
    let mut t = TestCluster::on_fs(3, |_| {});
    t.start_all();
    let primary = quorum_ready(&mut t);
    let replica = (primary + 1) % 3;
    let old = block_on(put(&t, primary, "/c/k", "old")).unwrap();
    let new = block_on(put(&t, primary, "/c/k", "new")).unwrap();
    block_on(async {
        let mut c = t.client(replica).await;
        c.compact(new, None).await.unwrap();
    });
    for i in 0..3 {
        t.until(&format!("node {i} compacted at {new}"), |t| {
            block_on(async {
                let mut c = t.client(i).await;
                let options = GetOptions::new().with_revision(old).with_serializable();
                let err = c.get("/c/k", Some(options)).await.err()?;
                err.to_string()
                    .contains("mvcc: required revision has been compacted")
                    .then_some(())
            })
        });
        assert_eq!(
            block_on(get(&t, i, "/c/k", false)).unwrap(),
            Some(("new".to_string(), new)),
            "the newest value stays on node {i}"
        );
    }
}

/// Every revision the bucket's chunks hold, ascending, each once (a
/// chunk's claim holds its first record again).
fn bucket_revisions(t: &TestCluster) -> Vec<i64> {
    block_on(async {
        let store = t.bucket().store();
        let mut revisions = Vec::new();
        for o in store.list("chunks/").await.unwrap() {
            let records = netsy::log::read_chunk(&*store, &o.key).await.unwrap();
            revisions.extend(records.iter().map(|r| r.revision));
        }
        revisions.sort();
        revisions.dedup();
        revisions
    })
}

#[test]
fn concurrent_writers_share_replication_rounds() {
    let _one = serial();
    let mut t = TestCluster::on_fs(3, |_| {});
    t.start_all();
    let primary = quorum_ready(&mut t);
    let rounds = |t: &TestCluster| metric(t, primary, "netsy_primary_replication_rounds_total");
    let before = rounds(&t);
    let writes = block_on(async {
        let mut tasks = Vec::new();
        for w in 0..64 {
            let mut c = t.client(primary).await;
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    c.put(format!("/g/{w}/{i}"), "v", None).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        640.0
    });
    let used = rounds(&t) - before;
    assert!(used >= 1.0, "the writes took the quorum path");
    assert!(
        used * 4.0 <= writes,
        "{writes} writes took {used} replication rounds"
    );
    // A graceful stop drains: the Primary uploads what it buffered before
    // it leaves, so the bucket holds every revision up to its last write.
    let last = block_on(put(&t, primary, "/g/last", "v")).unwrap();
    t.c.terminate(primary, Duration::from_secs(60)).unwrap();
    assert!(t.c.nodes[primary].logged("chunk buffer flushed"));
    let revisions = bucket_revisions(&t);
    let upto: Vec<i64> = revisions.into_iter().take_while(|r| *r <= last).collect();
    assert_eq!(
        upto,
        (1..=last).collect::<Vec<_>>(),
        "every revision up to {last} in the bucket"
    );
}
