//! The same flows through the etcd-client crate (a real tonic client),
//! including a bidirectional watch that mixes replayed and live events.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use crate::support::Netsy;

#[tokio::test(flavor = "multi_thread")]
async fn kv_roundtrip_with_prev_kv_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let put = c.put("a", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);
    let put = c
        .put("a", "2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(put.prev_key().unwrap().value(), b"1");
    c.put("b", "3", None).await.unwrap();

    let got = c.get("a", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"2"[..], 2, 3, 2)
    );

    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(all.count(), 2);
    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");

    let del = c
        .delete("a", Some(etcd_client::DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), 1);
    assert_eq!(del.prev_kvs()[0].value(), b"2");
    assert_eq!(del.header().unwrap().revision(), 5);

    // Re-created keys start a new life: version 1, a new create_revision.
    c.put("a", "again", None).await.unwrap();
    let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.create_revision(), kv.version()), (6, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_compares_and_failure_reads() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let create = Txn::new()
        .when([Compare::mod_revision("k", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("k", "v1", None)]);
    let r = c.txn(create.clone()).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 2);
    let r = c.txn(create).await.unwrap();
    assert!(!r.succeeded(), "create of an existing key fails");

    let stale = Txn::new()
        .when([Compare::mod_revision("k", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("k", "v2", None)])
        .or_else([TxnOp::get("k", None)]);
    let r = c.txn(stale).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[0] {
        etcd_client::TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v1"),
        other => panic!("expected a get response, got {other:?}"),
    }
    let by_value = Txn::new()
        .when([
            Compare::value("k", CompareOp::Equal, "v1"),
            Compare::create_revision("k", CompareOp::Equal, 2),
        ])
        .and_then([TxnOp::put("k", "v2", None), TxnOp::get("k", None)]);
    let r = c.txn(by_value).await.unwrap();
    assert!(r.succeeded());
    match &r.op_responses()[1] {
        etcd_client::TxnOpResponse::Get(g) => {
            assert_eq!(
                g.kvs()[0].value(),
                b"v2",
                "reads after a write in the same txn see it"
            );
            assert_eq!(g.header().unwrap().revision(), 3);
        }
        other => panic!("expected a get response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bidi_watch_gets_replayed_then_live_events_in_order_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    for i in 0..5 {
        c.put(format!("/w/{i}"), format!("old{i}"), None)
            .await
            .unwrap(); // revs 2..=6
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(3)
        .with_prev_key();
    let (mut watcher, mut stream) = c.watch("/w/", Some(opts)).await.unwrap();

    // Live writes race with the replay; order must still be by revision.
    let mut writer = n.client().await;
    let live = tokio::spawn(async move {
        for i in 0..20 {
            writer.put(format!("/w/live{i}"), "x", None).await.unwrap(); // revs 7..=26
        }
        writer.put("/other", "y", None).await.unwrap(); // rev 27, not watched
        writer.delete("/w/0", None).await.unwrap(); // rev 28
    });
    let mut revisions = Vec::new();
    while revisions.len() < 4 + 20 + 1 {
        let resp = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .expect("stream open");
        for e in resp.events() {
            revisions.push(e.kv().unwrap().mod_revision());
            if e.event_type() == EventType::Delete {
                assert_eq!(
                    e.prev_kv().unwrap().value(),
                    b"old0",
                    "delete carries prev_kv"
                );
            }
        }
    }
    live.await.unwrap();
    let mut expected: Vec<i64> = (3..=26).collect();
    expected.push(28);
    assert_eq!(revisions, expected, "no gaps, no duplicates, in order");

    watcher.request_progress().await.unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        progress.watch_id(),
        -1,
        "progress responses use watch id -1"
    );
    assert!(progress.events().is_empty());
    assert_eq!(progress.header().unwrap().revision(), 28);

    watcher.cancel().await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(cancelled.canceled());
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_cluster_and_lease_services() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let status = c.status().await.unwrap();
    assert_eq!(status.version(), "3.5.21");
    assert!(status.db_size() > 0);
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].name(), "dev-node-1");
    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());
    let lease = c.lease_grant(30, None).await.unwrap();
    assert!(lease.id() > 0 && lease.id() != 30);
    assert_eq!(lease.ttl(), 30);
    c.put(
        "leased",
        "v",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    assert_eq!(
        c.get("leased", None).await.unwrap().kvs()[0].lease(),
        lease.id()
    );
}
