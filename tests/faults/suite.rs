//! The fault suite (bounded CI form): Kubernetes-shaped traffic through
//! every node of a real cluster while a fault strikes, then every recorded
//! history is checked — linearizability per key, reads against the final
//! history, every watch stream, and durability of every acknowledged write
//! — and the table row is printed. A failing recording is saved as JSON
//! (path in the message) to be checked again or read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::cluster::{connect, TestCluster};
use crate::support::traffic::{read_history, read_state, Connect, Traffic};
use netsy::launch::history::Recording;

/// Clusters are heavy on two cores: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn connector(t: &TestCluster) -> Connect {
    let tls = t.client_tls();
    let addrs: Vec<String> = t.c.nodes.iter().map(|n| n.client_addr()).collect();
    Arc::new(move |i: usize| {
        let tls = tls.clone();
        let addr = addrs[i % addrs.len()].clone();
        Box::pin(async move { connect(&tls, &addr, Duration::from_secs(5)).await.ok() })
    })
}

/// Checks a recording; on any violation saves it and fails with the first
/// few. Returns (operations, acknowledged writes, unknown outcomes).
fn verdict(name: &str, recording: &Recording) -> (usize, usize, usize) {
    let v = recording.check();
    let ops = recording.operations.len();
    let acked = recording
        .operations
        .iter()
        .filter(|o| {
            o.request.is_write() && matches!(o.outcome, netsy::launch::history::Outcome::Ok(_))
        })
        .count();
    let unknown = recording
        .operations
        .iter()
        .filter(|o| matches!(o.outcome, netsy::launch::history::Outcome::Unknown { .. }))
        .count();
    if !v.passed() {
        let path =
            std::env::temp_dir().join(format!("netsy-fault-{name}-{}.json", std::process::id()));
        let _ = recording.save(&path);
        let first: Vec<String> = v
            .violations
            .iter()
            .take(5)
            .map(|x| format!("{x:?}"))
            .collect();
        panic!(
            "{name}: {} violations (recording saved to {}):\n{}",
            v.violations.len(),
            path.display(),
            first.join("\n")
        );
    }
    println!(
        "| {name} | {ops} ops | {acked} acknowledged writes | {unknown} unknown | 0 lost | 0 violations | skipped: {:?} |",
        v.skipped
    );
    (ops, acked, unknown)
}

/// The keys the traffic writes.
const PREFIX: &str = "/faults/";

/// What is checked after the recording's own checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Every running node holds the final state.
    EveryNode,
    /// That, then every node stopped gracefully and started again on
    /// empty data directories: the bucket alone gives back the final state
    /// and the whole history.
    Restore,
}

/// Traffic on a 3-node cluster; `fault` strikes once writes are under way
/// and returns the node to read the final state through; then traffic goes
/// on until 100 further writes were acknowledged.
fn run(name: &str, quorum: i64, fault: impl FnOnce(&mut TestCluster, usize) -> usize) {
    run_on(
        TestCluster::on_fs(3, |spec| spec.quorum = quorum),
        name,
        After::EveryNode,
        fault,
    )
}

fn run_on(
    mut t: TestCluster,
    name: &str,
    after: After,
    fault: impl FnOnce(&mut TestCluster, usize) -> usize,
) {
    let _one = serial();
    t.start_all();
    let (_, primary) = t.settled();
    let rt = runtime();
    let traffic = rt.block_on(Traffic::start(connector(&t), 3, 6, 20, PREFIX, 1));
    t.until("writes under way", |_| {
        (traffic.acknowledged() >= 100).then_some(())
    });
    let struck = Instant::now();
    let reader = fault(&mut t, primary);
    let before = traffic.acknowledged();
    t.until("writes after the fault", |_| {
        (traffic.acknowledged() >= before + 100).then_some(())
    });
    println!(
        "{name}: writes resumed {:?} after the fault",
        struck.elapsed()
    );
    let recording = rt.block_on(async {
        let mut c = t.client(reader).await;
        traffic.finish(&mut c).await
    });
    verdict(name, &recording);
    every_node_holds(&mut t, &rt, &recording);
    if after == After::Restore {
        restored_from_the_bucket_alone(&mut t, &rt, &recording);
    }
}

/// Every running node comes to hold the recording's final state in its
/// own store (serializable reads).
fn every_node_holds(t: &mut TestCluster, rt: &tokio::runtime::Runtime, recording: &Recording) {
    let want = recording.final_state.clone().unwrap_or_default();
    for i in 0..t.len() {
        if !t.c.nodes[i].is_running() {
            continue;
        }
        t.until(&format!("node {i} holding the final state"), |t| {
            let got = rt.block_on(async {
                let mut c = t.client(i).await;
                read_state(&mut c, PREFIX, true).await
            });
            (got == want).then_some(())
        });
    }
}

/// Stops every node gracefully (so what the replicas alone held reaches
/// the bucket), empties every data directory and starts the cluster again:
/// the bucket alone must give back the final state and the whole history,
/// on every node.
fn restored_from_the_bucket_alone(
    t: &mut TestCluster,
    rt: &tokio::runtime::Runtime,
    recording: &Recording,
) {
    for i in 0..t.len() {
        if t.c.nodes[i].is_running() {
            let status = t.c.terminate(i, Duration::from_secs(60)).unwrap();
            assert!(status.success(), "node {i} stopped cleanly: {status}");
        }
    }
    for n in &t.c.nodes {
        std::fs::remove_dir_all(&n.data_dir).unwrap();
    }
    t.start_all();
    let (_, primary) = t.settled();
    let history = rt.block_on(async {
        let mut c = t.client(primary).await;
        read_history(&mut c, PREFIX).await
    });
    assert_eq!(
        Some(&history),
        recording.history.as_ref(),
        "the history restored from the bucket"
    );
    every_node_holds(t, rt, recording);
    println!(
        "restored from the bucket alone: {} writes of history, {} live keys, on every node",
        history.len(),
        recording.final_state.as_ref().map_or(0, |s| s.len())
    );
}

#[test]
fn sigkill_of_the_primary_loses_nothing_and_histories_check() {
    run("sigkill-primary (quorum -1)", -1, |t, primary| {
        t.c.kill(primary);
        let (_, new_primary) = t.settled();
        new_primary
    });
}

#[test]
fn sigkill_of_a_replica_loses_nothing_and_histories_check() {
    run("sigkill-replica (quorum -1)", -1, |t, primary| {
        let replica = (primary + 1) % 3;
        t.c.kill(replica);
        primary
    });
}

#[test]
fn sigkill_of_the_primary_with_quorum_0() {
    run("sigkill-primary (quorum 0)", 0, |t, primary| {
        t.c.kill(primary);
        let (_, new_primary) = t.settled();
        new_primary
    });
}

#[test]
fn sigkill_of_the_elector_loses_nothing_and_histories_check() {
    run("sigkill-elector (quorum -1)", -1, |t, primary| {
        let (elector, _) = t.settled();
        println!("the Elector is node {elector}, the Primary node {primary}");
        t.c.kill(elector);
        let (_, now_primary) = t.settled();
        now_primary
    });
}

#[test]
fn sigterm_of_the_primary_loses_nothing_and_histories_check() {
    run("sigterm-primary (quorum -1)", -1, |t, primary| {
        let status = t.c.terminate(primary, Duration::from_secs(60)).unwrap();
        assert!(status.success(), "a graceful stop exits 0: {status}");
        let (_, new_primary) = t.settled();
        new_primary
    });
}

/// A watcher that stops reading while 20 MiB of events pile up behind it
/// (far past every HTTP/2 window) is held back, not skipped: once it reads
/// again it gets every event, in order, with prev_kv.
#[test]
fn a_slow_watcher_is_held_back_never_skipped() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let n = crate::support::Netsy::start_dev(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let mut watcher = n.client().await;
        let opts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_prev_key();
        let (_w, mut stream) = watcher.watch("/slow/", Some(opts)).await.unwrap();
        let mut writer = n.client().await;
        let big = "x".repeat(100 * 1024);
        let mut revisions = Vec::new();
        for i in 0..200 {
            let key = format!("/slow/{}", i % 10);
            let r = writer.put(key, format!("{i}{big}"), None).await.unwrap();
            revisions.push(r.header().unwrap().revision());
        }
        // Only now does the watcher read.
        let mut seen = Vec::new();
        while seen.len() < revisions.len() {
            let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("events after the pause")
                .unwrap()
                .expect("the stream was not ended");
            assert!(!resp.canceled(), "cancelled: {}", resp.cancel_reason());
            for e in resp.events() {
                let kv = e.kv().unwrap();
                let i = seen.len();
                assert!(kv.value_str().unwrap().starts_with(&format!("{i}x")));
                if i >= 10 {
                    let prev = e.prev_kv().expect("prev_kv");
                    assert!(prev
                        .value_str()
                        .unwrap()
                        .starts_with(&format!("{}x", i - 10)));
                }
                seen.push(kv.mod_revision());
            }
        }
        assert_eq!(seen, revisions, "every event, in order, none skipped");
    });
}

/// The bucket goes away for 5 s under quorum 0 (every write needs it) and
/// under quorum -1 (the replicas carry writes; the buffer waits): no
/// acknowledged write is lost, histories check, writes resume after.
fn s3_outage(name: &str, quorum: i64) {
    let t = TestCluster::on_moto_through_proxy(3, |spec| spec.quorum = quorum);
    run_on(t, name, After::Restore, |t, primary| {
        let faults = t.s3_proxy.as_ref().unwrap().faults();
        faults.set(netsy::launch::faults::s3::S3Mode::Outage);
        let started = Instant::now();
        t.until("5 s of outage", |_| {
            (started.elapsed() >= Duration::from_secs(5)).then_some(())
        });
        faults.set(netsy::launch::faults::s3::S3Mode::Pass);
        let (_, now_primary) = t.settled();
        let _ = primary;
        now_primary
    });
}

#[test]
fn s3_outage_with_quorum_0() {
    s3_outage("s3-outage 5 s (quorum 0)", 0);
}

#[test]
fn s3_outage_with_quorum_majority() {
    s3_outage("s3-outage 5 s (quorum -1)", -1);
}

#[test]
fn sigkill_of_a_replica_with_quorum_2() {
    // A replica that is not the Elector: under a static quorum a new
    // Elector's election needs every registered node to answer (the
    // reference's rule), which a dead one never does until deregistered.
    run("sigkill-replica (quorum 2)", 2, |t, primary| {
        let (elector, _) = t.settled();
        let victim = (0..3).find(|i| *i != primary && *i != elector).unwrap();
        t.c.kill(victim);
        primary
    });
}

/// Keeps a fault in place for `held` while traffic goes on.
fn hold(t: &mut TestCluster, held: Duration) {
    let started = Instant::now();
    t.until("the fault held long enough", |_| {
        (started.elapsed() >= held).then_some(())
    });
}

/// The Primary is cut off from the other nodes and from the bucket while
/// its clients still reach it: it must acknowledge nothing it cannot make
/// durable, the others elect a new Primary that loses nothing acknowledged,
/// and once healed the old one follows the new one.
fn partitioned_primary(name: &str, quorum: i64) {
    let t = TestCluster::partitionable(3, |spec| spec.quorum = quorum);
    run_on(t, name, After::Restore, |t, primary| {
        let (elector, _) = t.settled();
        println!("partitioning the Primary, node {primary} (the Elector is node {elector})");
        t.partition(primary);
        let started = Instant::now();
        let new_primary = t.until("a Primary on the majority side", |t| {
            t.c.primaries().into_iter().find(|p| *p != primary)
        });
        println!(
            "node {new_primary} became Primary {:?} after node {primary} was partitioned",
            started.elapsed()
        );
        hold(t, Duration::from_secs(5));
        t.heal(primary);
        let (_, now_primary) = t.settled();
        now_primary
    });
}

#[test]
fn partitioned_primary_with_quorum_majority() {
    partitioned_primary("partitioned Primary (quorum -1)", -1);
}

#[test]
fn partitioned_primary_with_quorum_0() {
    partitioned_primary("partitioned Primary (quorum 0)", 0);
}

/// A replica (not the Elector) is cut off from the other nodes and the
/// bucket for 5 s: its clients get no stale read and no lost write, the
/// others go on, and it catches up once healed.
#[test]
fn partitioned_replica() {
    let t = TestCluster::partitionable(3, |spec| spec.quorum = -1);
    run_on(
        t,
        "partitioned replica (quorum -1)",
        After::EveryNode,
        |t, primary| {
            let (elector, _) = t.settled();
            let victim = (0..3).find(|i| *i != primary && *i != elector).unwrap();
            t.partition(victim);
            hold(t, Duration::from_secs(5));
            t.heal(victim);
            primary
        },
    );
}
