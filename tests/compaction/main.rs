//! The cluster compaction protocol on real netsy processes: the Primary's
//! scheduler compacts every node up to just below what the cluster's
//! watches still need, a watch that has not delivered its history holds
//! compaction back on every node without being cancelled, and once it is
//! gone compaction catches up everywhere.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions, WatchResponse};
use support::cluster::TestCluster;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| tokio::runtime::Runtime::new().unwrap())
        .block_on(f)
}

/// A metric's value in node `i`'s /metrics (None when absent).
fn metric(t: &TestCluster, i: usize, series: &str) -> Option<f64> {
    let text = t.c.metrics(i).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn compaction_revision(t: &TestCluster, i: usize) -> i64 {
    metric(t, i, "netsy_compaction_revision").unwrap_or(0.0) as i64
}

/// What node `i`'s watches still need (its GetMinWatchRevision answer).
fn watch_min_revision(t: &TestCluster, i: usize) -> i64 {
    metric(t, i, "netsy_watch_min_revision").unwrap_or(0.0) as i64
}

async fn put(t: &TestCluster, i: usize, key: &str, value: Vec<u8>) -> i64 {
    let mut c = t.client(i).await;
    let r = c.put(key, value, None).await.unwrap();
    r.header().unwrap().revision()
}

/// A serializable range over `/c/` at `revision` on node `i`: Ok(count) or
/// the error text.
async fn range_at(t: &TestCluster, i: usize, revision: i64) -> Result<i64, String> {
    let mut c = t.client(i).await;
    let options = GetOptions::new()
        .with_prefix()
        .with_revision(revision)
        .with_count_only()
        .with_serializable();
    c.get("/c/", Some(options))
        .await
        .map(|r| r.count())
        .map_err(|e| match e {
            etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
            other => other.to_string(),
        })
}

const COMPACTED: &str = "OutOfRange: etcdserver: mvcc: required revision has been compacted";

/// How many cycles node `i` skipped for want of anything new to compact.
fn idle_cycles(t: &TestCluster, i: usize) -> usize {
    t.c.nodes[i]
        .log_text()
        .matches("compaction skipped: nothing to compact")
        .count()
}

#[test]
fn a_watch_behind_holds_compaction_back_on_every_node_until_it_is_gone() {
    let mut t = TestCluster::on_fs(3, |spec| {
        spec.compaction_interval = Some("500ms".into());
        // The scheduler's idle cycles are logged at debug.
        spec.env.push((
            "RUST_LOG".into(),
            "info,netsy::node::compaction=debug".into(),
        ));
    });
    t.start_all();
    let (_, primary) = t.settled();
    let replica = (primary + 1) % 3;

    // With no watches, compaction follows the writes on every node.
    let first = block_on(put(&t, primary, "/c/first", b"1".to_vec()));
    t.until("compaction up to the first write everywhere", |t| {
        (0..3)
            .all(|i| compaction_revision(t, i) >= first - 1)
            .then_some(())
    });

    // A watch on a replica from the next revision, whose client reads
    // nothing: once its HTTP/2 window is full (a few MiB) it cannot
    // deliver further and still needs every revision after that.
    let (mut watcher, mut stream) = block_on(async {
        let mut c = t.client(replica).await;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(first + 1);
        c.watch("/c/", Some(options)).await.unwrap()
    });
    let value = vec![b'v'; 100 * 1024];
    let written: Vec<i64> = (0..60)
        .map(|n| block_on(put(&t, primary, &format!("/c/big/{n:02}"), value.clone())))
        .collect();
    let last = *written.last().unwrap();
    let (needed, held) = t.until("compaction held just below the stuck watch", |t| {
        let needed = watch_min_revision(t, replica);
        let c = compaction_revision(t, primary);
        // It delivered what fitted (it needs less than its start), no more.
        (needed > first + 1 && needed < last && c == needed - 1).then_some((needed, c))
    });
    // More cycles change nothing while the watch is stuck.
    let idle = idle_cycles(&t, primary);
    t.until("three idle cycles", |t| {
        (idle_cycles(t, primary) >= idle + 3).then_some(())
    });
    assert_eq!(
        watch_min_revision(&t, replica),
        needed,
        "the watch is stuck"
    );
    assert_eq!(
        compaction_revision(&t, primary),
        held,
        "and holds compaction"
    );
    // Every node compacted as far as the Primary, and no further.
    for i in 0..3 {
        t.until(&format!("node {i} compacted at {held}"), |t| {
            let below = block_on(range_at(t, i, held - 1));
            (below.as_ref().err().map(String::as_str) == Some(COMPACTED)).then_some(())
        });
        assert!(
            block_on(range_at(&t, i, held)).is_ok(),
            "the compaction revision itself stays readable on node {i}"
        );
    }

    // The watch was never cancelled: it delivers every revision from its
    // start, in order.
    let delivered = block_on(async {
        let mut revisions = Vec::new();
        let collect = async {
            while let Some(resp) = stream.message().await.unwrap() {
                assert_not_cancelled(&resp);
                for e in resp.events() {
                    let kv = e.kv().unwrap();
                    assert_eq!(kv.value().len(), value.len(), "{}", kv.mod_revision());
                    revisions.push(kv.mod_revision());
                }
                if revisions.last() == Some(&last) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), collect)
            .await
            .unwrap_or_else(|_| panic!("the watch delivered only {revisions:?}"));
        revisions
    });
    assert_eq!(delivered, written);

    // Once the watch is gone, compaction catches up with the writes on
    // every node, and the old revisions are gone everywhere.
    block_on(async {
        watcher.cancel().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a cancel answer")
            .unwrap()
            .expect("the stream still open");
        assert!(resp.canceled(), "{resp:?}");
        assert_eq!(resp.compact_revision(), 0, "cancelled by the client");
    });
    let end = block_on(put(&t, primary, "/c/end", b"1".to_vec()));
    for i in 0..3 {
        t.until(&format!("node {i} compacted up to the last write"), |t| {
            (compaction_revision(t, i) >= end - 1).then_some(())
        });
        let old = block_on(range_at(&t, i, first + 1));
        assert_eq!(old.err().as_deref(), Some(COMPACTED), "node {i}");
    }
    let successes = metric(
        &t,
        primary,
        "netsy_primary_compactions_total{result=\"success\"}",
    );
    assert!(successes.unwrap_or(0.0) >= 3.0, "{successes:?}");
}

fn assert_not_cancelled(resp: &WatchResponse) {
    assert!(
        !resp.canceled() && resp.compact_revision() == 0,
        "the held watch was cancelled: {resp:?}"
    );
}
