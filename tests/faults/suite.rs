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
use netsy::launch::faults::s3::S3Mode;
use netsy::launch::history::{Counts, Recording};

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
/// few.
fn verdict(name: &str, recording: &Recording) -> Counts {
    let v = recording.check();
    if !v.passed() {
        let path = std::env::temp_dir().join(format!(
            "netsy-fault-{}-{}.json",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
            std::process::id()
        ));
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
    if !v.skipped.is_empty() {
        println!("{name}: checks skipped: {:?}", v.skipped);
    }
    recording.counts()
}

/// How many times each fault runs (`NETSY_FAULT_ROUNDS`, 1 in CI).
fn rounds() -> usize {
    let var = netsy::config::env_vars::FAULT_ROUNDS.name;
    match std::env::var(var) {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .unwrap_or_else(|| panic!("{var}={v:?}: a number of rounds, at least 1")),
        Err(_) => 1,
    }
}

/// Prints the table row of a fault over its rounds (tests/FAULTS.md;
/// scripts/faults collects the rows).
fn print_row(fault: &str, quorum: &str, all: &[Counts]) {
    let sum = |f: fn(&Counts) -> usize| all.iter().map(f).sum::<usize>();
    let pause = all
        .iter()
        .map(|c| c.longest_write_pause)
        .max()
        .unwrap_or_default();
    // On a line of its own: the test harness's "test … " has no newline.
    println!(
        "\n| {fault} | {quorum} | {} | {} | {} | {} | 0 | 0 | {:.2} s |",
        all.len(),
        sum(|c| c.operations),
        sum(|c| c.answered_writes),
        sum(|c| c.unknown),
        pause.as_secs_f64()
    );
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

/// Traffic on a 3-node fs cluster with `quorum`; `fault` strikes once
/// writes are under way and returns the node to read the final state
/// through; then traffic goes on until 100 further writes were answered.
fn run(fault_name: &str, quorum: i64, fault: impl Fn(&mut TestCluster, usize) -> usize) {
    run_on(
        || TestCluster::on_fs(3, |spec| spec.quorum = quorum),
        fault_name,
        quorum,
        After::EveryNode,
        fault,
    )
}

/// [`run`] on clusters `build` makes, started together, once per round.
fn run_on(
    build: impl Fn() -> TestCluster,
    fault_name: &str,
    quorum: i64,
    after: After,
    fault: impl Fn(&mut TestCluster, usize) -> usize,
) {
    let start = || {
        let mut t = build();
        t.start_all();
        let (_, primary) = t.settled();
        (t, primary)
    };
    run_started(start, fault_name, quorum, after, fault)
}

/// [`run`] on clusters `start` makes and starts (returning the Primary),
/// once per round.
fn run_started(
    start: impl Fn() -> (TestCluster, usize),
    fault_name: &str,
    quorum: i64,
    after: After,
    fault: impl Fn(&mut TestCluster, usize) -> usize,
) {
    let _one = serial();
    let name = format!("{fault_name} (quorum {quorum})");
    let mut all = Vec::new();
    for round in 0..rounds() {
        let (mut t, primary) = start();
        all.push(round_of(&mut t, &name, primary, after, &fault));
        println!("{name}: round {} of {} passed", round + 1, rounds());
    }
    print_row(fault_name, &quorum.to_string(), &all);
}

fn round_of(
    t: &mut TestCluster,
    name: &str,
    primary: usize,
    after: After,
    fault: &impl Fn(&mut TestCluster, usize) -> usize,
) -> Counts {
    let rt = runtime();
    let traffic = rt.block_on(Traffic::start(connector(t), 3, 6, 20, PREFIX, 1));
    t.until("writes under way", |_| {
        (traffic.acknowledged() >= 100).then_some(())
    });
    let reader = fault(t, primary);
    let before = traffic.acknowledged();
    t.until("writes after the fault", |_| {
        (traffic.acknowledged() >= before + 100).then_some(())
    });
    let recording = rt.block_on(async {
        let mut c = t.client(reader).await;
        traffic.finish(&mut c).await
    });
    let counts = verdict(name, &recording);
    every_node_holds(t, &rt, &recording);
    if after == After::Restore {
        restored_from_the_bucket_alone(t, &rt, &recording);
    }
    counts
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

// ---- process kills ----

/// Waits for a new active Primary other than `old` (the old one may still
/// be counted until its process is gone).
fn new_primary(t: &mut TestCluster, old: usize) -> usize {
    t.until("a new Primary", |t| {
        t.c.primaries().into_iter().find(|p| *p != old)
    })
}

#[test]
fn sigkill_of_the_primary() {
    for quorum in [-1, 0] {
        run("SIGKILL of the Primary", quorum, |t, primary| {
            t.c.kill(primary);
            new_primary(t, primary)
        });
    }
}

/// Under a static quorum of 2 a new Primary is elected once the dead one
/// is deregistered (the reference's rule: an election needs every
/// registered node's answer), here after 4 s.
#[test]
fn sigkill_of_the_primary_with_quorum_2() {
    run_on(
        || {
            TestCluster::on_fs(3, |spec| {
                spec.quorum = 2;
                spec.deregistration_timeout = "4s".into();
            })
        },
        "SIGKILL of the Primary (deregistered after 4 s)",
        2,
        After::EveryNode,
        |t, primary| {
            t.c.kill(primary);
            new_primary(t, primary)
        },
    );
}

#[test]
fn sigkill_of_a_replica() {
    // Under a static quorum, a replica that is not the Elector: a new
    // Elector would need every registered node's answer (see above).
    for quorum in [-1, 2] {
        run(
            "SIGKILL of a replica (not the Elector)",
            quorum,
            |t, primary| {
                let (elector, _) = t.settled();
                let victim = (0..3).find(|i| *i != primary && *i != elector).unwrap();
                t.c.kill(victim);
                primary
            },
        );
    }
}

/// The Elector dies while another node is the Primary (clusters are
/// started again until the two roles land on different nodes).
#[test]
fn sigkill_of_the_elector() {
    run_started(
        || roles_apart(|| TestCluster::on_fs(3, |spec| spec.quorum = -1)),
        "SIGKILL of the Elector (not the Primary)",
        -1,
        After::EveryNode,
        |t, primary| {
            let (elector, _) = t.settled();
            assert_ne!(elector, primary);
            t.c.kill(elector);
            let (_, now) = t.settled();
            now
        },
    );
}

/// A cluster `build` makes, started, with the Elector and the Primary on
/// different nodes. Started together, the node that wins the lock often
/// elects itself (on a busy machine its first round sees no one else), so
/// the node holding both roles is stopped gracefully and started again
/// until the roles part: the others then pick the Elector among themselves
/// by the lock, and the Primary by start time.
fn roles_apart(build: impl Fn() -> TestCluster) -> (TestCluster, usize) {
    const RESTARTS: usize = 12;
    let mut t = build();
    t.start_all();
    for restarts in 0..=RESTARTS {
        let (elector, primary) = t.settled();
        if elector != primary {
            return (t, primary);
        }
        if restarts == RESTARTS {
            break;
        }
        println!("node {elector} is the Elector and the Primary: restarting it");
        let status = t.c.terminate(elector, Duration::from_secs(60)).unwrap();
        assert!(status.success(), "a graceful stop exits 0: {status}");
        t.settled();
        t.start(elector);
        let n = t.len();
        t.until("every node registered again", |t| {
            t.members(elector).is_ok_and(|m| m.len() == n).then_some(())
        });
    }
    panic!("the Elector and the Primary stayed on one node through {RESTARTS} restarts");
}

/// Starts node 0 alone, so that it leads both tiers, then the others.
fn first_alone(mut t: TestCluster) -> (TestCluster, usize) {
    t.start(0);
    assert_eq!(t.settled(), (0, 0), "a lone node leads both tiers");
    for i in 1..t.len() {
        t.start(i);
    }
    let n = t.len();
    t.until("every node registered, node 0 leading both", |t| {
        let leads = t.c.electors() == [0] && t.c.primaries() == [0];
        (leads && t.members(0).is_ok_and(|m| m.len() == n)).then_some(())
    });
    (t, 0)
}

/// One node is both Elector and Primary (it started alone), then dies.
#[test]
fn sigkill_of_the_node_that_is_elector_and_primary() {
    run_started(
        || first_alone(TestCluster::on_fs(3, |spec| spec.quorum = -1)),
        "SIGKILL of the node that is Elector and Primary",
        -1,
        After::EveryNode,
        |t, primary| {
            t.c.kill(primary);
            let (_, now) = t.settled();
            now
        },
    );
}

#[test]
fn sigterm_of_the_primary() {
    run("SIGTERM of the Primary", -1, |t, primary| {
        let status = t.c.terminate(primary, Duration::from_secs(60)).unwrap();
        assert!(status.success(), "a graceful stop exits 0: {status}");
        new_primary(t, primary)
    });
}

// ---- crashes at fault points ----

/// Every node crashes the `n`-th time it reaches fault point `point`, a
/// point only the Primary reaches; the fault is its crash.
fn primary_crash_at(point: &str, n: u64, quorum: i64) {
    let var = format!("NETSY_FAILPOINT_{}", point.to_ascii_uppercase());
    run_on(
        || {
            let mut t = TestCluster::on_fs(3, |spec| spec.quorum = quorum);
            for node in &mut t.c.nodes {
                node.env.push((var.clone(), format!("crash-after:{n}")));
            }
            t
        },
        &format!("crash at `{point}` (the Primary, visit {n})"),
        quorum,
        After::EveryNode,
        |t, primary| {
            let crashed = t.until("a node crashed at the fault point", |t| {
                (0..3).find(|i| !t.c.nodes[*i].is_running())
            });
            assert_eq!(crashed, primary, "the Primary crashed");
            new_primary(t, primary)
        },
    );
}

/// Between the quorum's receipts and the commit's broadcast.
#[test]
fn crash_of_the_primary_after_the_quorum_answered() {
    primary_crash_at("quorum_committed", 150, -1);
}

/// Between the chunk's upload and the SQLite commit.
#[test]
fn crash_of_the_primary_after_the_chunk_upload() {
    primary_crash_at("chunk_uploaded", 150, 0);
}

/// Between a replica's commit and its receipt: node 2 (a replica, not the
/// Elector: node 0 leads both) crashes at its 150th receipt.
#[test]
fn crash_of_a_replica_before_its_receipt() {
    run_started(
        || {
            let mut t = TestCluster::on_fs(3, |spec| spec.quorum = -1);
            t.c.nodes[2].env.push((
                "NETSY_FAILPOINT_REPLICA_RECEIPT".into(),
                "crash-after:150".into(),
            ));
            first_alone(t)
        },
        "crash at `replica_receipt` (a replica, visit 150)",
        -1,
        After::EveryNode,
        |t, primary| {
            t.until("the replica crashed at the fault point", |t| {
                (!t.c.nodes[2].is_running()).then_some(())
            });
            assert!(t.c.nodes[primary].is_running());
            primary
        },
    );
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
    println!(
        "\n| a watcher that stops reading, 20 MiB of events behind (one node) | — | 1 | 200 writes | 200 | 0 | 0 | 0 (every event, in order) | — |"
    );
}

// ---- the bucket ----

/// The bucket misbehaves for 5 s (`mode`), then recovers: no answered
/// write is lost, histories check, writes resume, and the bucket alone
/// gives everything back.
fn s3_fault(fault_name: &str, quorum: i64, mode: S3Mode) {
    run_on(
        || TestCluster::on_moto_through_proxy(3, |spec| spec.quorum = quorum),
        fault_name,
        quorum,
        After::Restore,
        |t, _| {
            let faults = t.s3_proxy.as_ref().unwrap().faults();
            faults.set(mode.clone());
            hold(t, Duration::from_secs(5));
            faults.set(S3Mode::Pass);
            let (_, now_primary) = t.settled();
            now_primary
        },
    );
}

#[test]
fn s3_outage() {
    for quorum in [0, -1] {
        s3_fault("S3 outage, 5 s", quorum, S3Mode::Outage);
    }
}

/// Every conditional write (chunks, registrations, the elector lock) is
/// answered 412 for 5 s, as if another writer had won each race.
#[test]
fn s3_refuses_conditional_writes() {
    s3_fault(
        "S3 answers 412 to every conditional write, 5 s",
        0,
        S3Mode::PreconditionFailed,
    );
}

#[test]
fn s3_errors_and_latency() {
    s3_fault(
        "S3 answers 503 to a third of requests, 5 s",
        0,
        S3Mode::Error {
            status: 503,
            fraction: 0.33,
        },
    );
    s3_fault(
        "S3 answers every request 300 ms late, 5 s",
        -1,
        S3Mode::Latency(Duration::from_millis(300)),
    );
}

// ---- partitions ----

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
#[test]
fn partitioned_primary() {
    for quorum in [0, -1] {
        run_on(
            || TestCluster::partitionable(3, |spec| spec.quorum = quorum),
            "Primary partitioned from the nodes and the bucket, 5 s after a new one",
            quorum,
            After::Restore,
            |t, primary| {
                let (elector, _) = t.settled();
                println!(
                    "partitioning the Primary, node {primary} (the Elector is node {elector})"
                );
                t.partition(primary);
                let started = Instant::now();
                let new_primary = new_primary(t, primary);
                println!(
                    "node {new_primary} became Primary {:.1} s after node {primary} was partitioned",
                    started.elapsed().as_secs_f64()
                );
                hold(t, Duration::from_secs(5));
                t.heal(primary);
                let (_, now_primary) = t.settled();
                now_primary
            },
        );
    }
}

/// The Primary (not the Elector) is cut off from the other nodes but
/// still reaches the bucket and its clients: for a moment two nodes act as
/// Primary and both write chunks. The one that did not claim a revision
/// first must not acknowledge it, and the bucket must stay restorable.
/// (A Primary that is also the Elector keeps both roles: it still holds
/// the lock through the bucket.)
#[test]
fn primary_cut_off_from_the_nodes() {
    for quorum in [0, -1] {
        run_started(
            || roles_apart(|| TestCluster::partitionable(3, |spec| spec.quorum = quorum)),
            "Primary cut off from the nodes (not the bucket), 5 s after a new one",
            quorum,
            After::Restore,
            |t, primary| {
                t.c.isolate(primary).unwrap();
                let started = Instant::now();
                let new_primary = new_primary(t, primary);
                println!(
                    "node {new_primary} became Primary {:.1} s after node {primary} was cut off",
                    started.elapsed().as_secs_f64()
                );
                hold(t, Duration::from_secs(5));
                t.c.rejoin(primary).unwrap();
                let (_, now_primary) = t.settled();
                now_primary
            },
        );
    }
}

/// A replica (not the Elector) is cut off from the other nodes and the
/// bucket for 5 s: its clients get no stale read and no lost write, the
/// others go on, and it catches up once healed.
#[test]
fn partitioned_replica() {
    run_on(
        || TestCluster::partitionable(3, |spec| spec.quorum = -1),
        "replica partitioned from the nodes and the bucket, 5 s",
        -1,
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
