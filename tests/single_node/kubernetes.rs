//! The request shapes kube-apiserver sends (reference/kubernetes-usage.md).

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};

use crate::support::{next_watch_response, Netsy, DEADLINE};

const PREFIX: &str = "/registry/pods/default/";
const PREFIX_END: &str = "/registry/pods/default0";

#[tokio::test(flavor = "multi_thread")]
async fn paged_list_pinned_to_a_revision_counts_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    for i in 0..10 {
        c.put(format!("{PREFIX}pod-{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.put("/registry/pods/kube-system/x", "other", None)
        .await
        .unwrap();

    let first = c
        .get(
            PREFIX,
            Some(GetOptions::new().with_range(PREFIX_END).with_limit(4)),
        )
        .await
        .unwrap();
    let pinned = first.header().unwrap().revision();
    assert_eq!(first.count(), 10);
    assert!(first.more());
    assert_eq!(first.kvs().len(), 4);

    // Writes after the first page must not leak into later pages.
    c.put(format!("{PREFIX}pod-05"), "changed", None)
        .await
        .unwrap();
    c.put(format!("{PREFIX}pod-99"), "new", None).await.unwrap();
    c.delete(format!("{PREFIX}pod-07"), None).await.unwrap();

    let mut listed: Vec<(String, String)> = first
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut remaining = 10 - 4;
    // 6 keys left at 4 a page: 2 more pages. A server that kept answering
    // more=true without progress fails here instead of hanging the test.
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(
            pages <= 2,
            "still more=true after {} pages: {listed:?}",
            pages - 1
        );
        let mut next_key = listed.last().unwrap().0.clone().into_bytes();
        next_key.push(0);
        let page = c
            .get(
                next_key,
                Some(
                    GetOptions::new()
                        .with_range(PREFIX_END)
                        .with_limit(4)
                        .with_revision(pinned),
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            page.count(),
            remaining,
            "count is every key left in the range at the pinned revision"
        );
        assert_eq!(page.more(), page.count() > page.kvs().len() as i64);
        assert_eq!(
            page.kvs().len() as i64,
            remaining.min(4),
            "a page holds min(limit, keys left)"
        );
        listed.extend(page.kvs().iter().map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        }));
        remaining -= page.kvs().len() as i64;
        if !page.more() {
            break;
        }
    }
    let expected: Vec<(String, String)> = (0..10)
        .map(|i| (format!("{PREFIX}pod-{i:02}"), format!("v{i}")))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(pages, 2);

    // Get one object: limit 1 at the latest revision, and pinned.
    let one = c
        .get(
            format!("{PREFIX}pod-05"),
            Some(GetOptions::new().with_limit(1)),
        )
        .await
        .unwrap();
    assert_eq!(one.kvs()[0].value(), b"changed");
    let pinned_one = c
        .get(
            format!("{PREFIX}pod-05"),
            Some(GetOptions::new().with_limit(1).with_revision(pinned)),
        )
        .await
        .unwrap();
    assert_eq!(pinned_one.kvs()[0].value(), b"v5");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_only_and_count_only() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    for i in 0..5 {
        c.put(format!("{PREFIX}p{i}"), "x".repeat(100), None)
            .await
            .unwrap();
    }
    let keys = c
        .get(
            PREFIX,
            Some(GetOptions::new().with_range(PREFIX_END).with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 5);
    assert!(keys
        .kvs()
        .iter()
        .all(|kv| kv.value().is_empty() && kv.mod_revision() > 0));
    let count = c
        .get(
            PREFIX,
            Some(GetOptions::new().with_range(PREFIX_END).with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(count.count(), 5);
    assert!(count.kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_update_delete_txns_with_failure_reads() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let key = format!("{PREFIX}web");
    let create = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.as_str(), "v1", None)]);
    let r = c.txn(create).await.unwrap();
    assert!(r.succeeded());
    let rev = r.header().unwrap().revision();

    let update = |at: i64, value: &str| {
        Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, at)])
            .and_then([TxnOp::put(key.as_str(), value, None)])
            .or_else([TxnOp::get(key.as_str(), None)])
    };
    let r = c.txn(update(rev, "v2")).await.unwrap();
    assert!(r.succeeded());
    let rev2 = r.header().unwrap().revision();
    assert_eq!(rev2, rev + 1);
    // GuaranteedUpdate conflict: the stale revision gets the current object back.
    let r = c.txn(update(rev, "v3")).await.unwrap();
    assert!(!r.succeeded());
    let TxnOpResponse::Get(current) = &r.op_responses()[0] else {
        panic!("expected a range")
    };
    assert_eq!(current.kvs()[0].value(), b"v2");
    assert_eq!(current.kvs()[0].mod_revision(), rev2);

    let delete = |at: i64| {
        Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, at)])
            .and_then([TxnOp::delete(key.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), None)])
    };
    assert!(!c.txn(delete(rev)).await.unwrap().succeeded());
    let r = c.txn(delete(rev2)).await.unwrap();
    assert!(r.succeeded());
    let TxnOpResponse::Delete(d) = &r.op_responses()[0] else {
        panic!("expected a delete")
    };
    assert_eq!(d.deleted(), 1);
    assert!(c.get(key.as_str(), None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_bookkeeping_txn_then_compact() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    for i in 0..5 {
        c.put("/registry/x", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    let bookkeeping = |version: i64, rev: i64| {
        Txn::new()
            .when([Compare::version(
                "compact_rev_key",
                CompareOp::Equal,
                version,
            )])
            .and_then([TxnOp::put("compact_rev_key", rev.to_string(), None)])
            .or_else([TxnOp::get("compact_rev_key", None)])
    };
    let r = c.txn(bookkeeping(0, 4)).await.unwrap();
    assert!(
        r.succeeded(),
        "first compaction: the key does not exist, version 0"
    );
    let r = c.txn(bookkeeping(0, 5)).await.unwrap();
    assert!(!r.succeeded(), "another apiserver won: version is 1 now");
    let TxnOpResponse::Get(g) = &r.op_responses()[0] else {
        panic!("expected a range")
    };
    assert_eq!(g.kvs()[0].version(), 1);
    assert_eq!(g.kvs()[0].value(), b"4");
    c.compact(4, None).await.unwrap();
    let err = c
        .get("/registry/x", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap_err();
    assert_grpc_error(
        err,
        "OutOfRange",
        "etcdserver: mvcc: required revision has been compacted",
    );
    // Compacting again at (or below) the compaction revision fails the same way.
    let err = c.compact(4, None).await.unwrap_err();
    assert_grpc_error(
        err,
        "OutOfRange",
        "etcdserver: mvcc: required revision has been compacted",
    );
    let err = c
        .get("/registry/x", Some(GetOptions::new().with_revision(99)))
        .await
        .unwrap_err();
    assert_grpc_error(
        err,
        "OutOfRange",
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_eq!(
        c.get("/registry/x", Some(GetOptions::new().with_revision(4)))
            .await
            .unwrap()
            .kvs()[0]
            .value(),
        b"2"
    );
    let r = c.txn(bookkeeping(1, 7)).await.unwrap();
    assert!(r.succeeded());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_from_list_revision_plus_one_sees_writes_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    c.put(format!("{PREFIX}a"), "1", None).await.unwrap();
    let list = c
        .get(PREFIX, Some(GetOptions::new().with_range(PREFIX_END)))
        .await
        .unwrap();
    let list_rev = list.header().unwrap().revision();
    // Written after the list, before the watch starts.
    c.put(format!("{PREFIX}a"), "2", None).await.unwrap();
    c.put(format!("{PREFIX}b"), "1", None).await.unwrap();

    let opts = WatchOptions::new()
        .with_range(PREFIX_END)
        .with_start_revision(list_rev + 1)
        .with_prev_key()
        .with_progress_notify();
    let (_watcher, mut stream) = c.watch(PREFIX, Some(opts)).await.unwrap();
    c.put(format!("{PREFIX}c"), "1", None).await.unwrap();
    let mut seen = Vec::new();
    // One deadline for all of them: progress notifications (empty
    // responses) cannot keep this going.
    let until = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < 3 {
        let Ok(message) = tokio::time::timeout_at(until, stream.message()).await else {
            panic!("watch events in time; so far {seen:?}")
        };
        let resp = message.unwrap().expect("stream open");
        for e in resp.events() {
            let kv = e.kv().unwrap();
            let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
            seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision(), prev));
        }
    }
    assert_eq!(
        seen,
        vec![
            (format!("{PREFIX}a"), list_rev + 1, Some("1".to_string())),
            (format!("{PREFIX}b"), list_rev + 2, None),
            (format!("{PREFIX}c"), list_rev + 3, None),
        ]
    );
}

/// Asserts that `err` is a gRPC status with this code (tonic's name for it)
/// and exactly this message, as etcd sends them.
fn assert_grpc_error(err: etcd_client::Error, code: &str, message: &str) {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(format!("{:?}", status.code()), code, "{status:?}");
            assert_eq!(status.message(), message, "{status:?}");
        }
        other => panic!("expected a gRPC status {code} {message:?}, got {other:?}"),
    }
}

/// The periodic progress notification of a watch whose keys do not change
/// carries the latest revision, though commits to other keys never woke
/// its stream (a kube-apiserver's watch cache takes it as "current up to
/// here").
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_watch_is_told_the_latest_revision_in_its_progress_notification() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let opts = WatchOptions::new()
        .with_range(PREFIX_END)
        .with_progress_notify();
    // (The client takes the watch's created response itself.)
    let (_watcher, mut stream) = c.watch(PREFIX, Some(opts)).await.unwrap();
    let mut latest = 0;
    for i in 0..20 {
        let put = c.put(format!("/elsewhere/{i}"), "x", None).await.unwrap();
        latest = put.header().unwrap().revision();
    }
    // The first notification comes one interval (5 s) after the watch.
    let progress = next_watch_response("a progress notification", &mut stream).await;
    assert!(progress.events().is_empty(), "{progress:?}");
    assert_eq!(progress.header().unwrap().revision(), latest);
}
