//! The same flows through the etcd-client crate (a real tonic client),
//! including a bidirectional watch that mixes replayed and live events.

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use crate::support::{next_watch_response, Netsy, DEADLINE};

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

/// One watch event as the test compares it: type, key, mod_revision, value,
/// and the previous key-value's (value, mod_revision) when it came along.
type SeenEvent = (EventType, String, i64, String, Option<(String, i64)>);

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
    c.put("/w/2", "upd2", None).await.unwrap(); // rev 7: an update in the replay
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(3)
        .with_prev_key();
    let (mut watcher, mut stream) = c.watch("/w/", Some(opts)).await.unwrap();

    // Live writes race with the replay; order must still be by revision.
    let mut writer = n.client().await;
    let live = tokio::spawn(async move {
        for i in 0..20 {
            writer.put(format!("/w/live{i}"), "x", None).await.unwrap(); // revs 8..=27
        }
        writer.put("/other", "y", None).await.unwrap(); // rev 28, not watched
        writer.put("/w/1", "new1", None).await.unwrap(); // rev 29, a live update
        writer.delete("/w/0", None).await.unwrap(); // rev 30
    });

    let put = |key: &str, rev: i64, value: &str, prev: Option<(&str, i64)>| -> SeenEvent {
        (
            EventType::Put,
            key.to_string(),
            rev,
            value.to_string(),
            prev.map(|(v, r)| (v.to_string(), r)),
        )
    };
    let mut expected: Vec<SeenEvent> = (1..5)
        .map(|i| put(&format!("/w/{i}"), 2 + i, &format!("old{i}"), None))
        .collect();
    expected.push(put("/w/2", 7, "upd2", Some(("old2", 4))));
    for i in 0..20 {
        expected.push(put(&format!("/w/live{i}"), 8 + i, "x", None));
    }
    expected.push(put("/w/1", 29, "new1", Some(("old1", 3))));
    expected.push((
        EventType::Delete,
        "/w/0".to_string(),
        30,
        String::new(),
        Some(("old0".to_string(), 2)),
    ));

    let mut seen: Vec<SeenEvent> = Vec::new();
    // One deadline for all of them: empty responses cannot keep this going.
    let until = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < expected.len() {
        let Ok(message) = tokio::time::timeout_at(until, stream.message()).await else {
            panic!("watch events in time; so far {seen:#?}")
        };
        let resp = message.unwrap().expect("stream open");
        assert!(!resp.canceled(), "watch cancelled: {resp:?}");
        for e in resp.events() {
            let kv = e.kv().expect("every event carries its key-value");
            if e.event_type() == EventType::Delete {
                assert_eq!(
                    (kv.version(), kv.create_revision()),
                    (0, 0),
                    "a delete's key-value is a tombstone"
                );
            }
            seen.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
                kv.value_str().unwrap().to_string(),
                e.prev_kv()
                    .map(|p| (p.value_str().unwrap().to_string(), p.mod_revision())),
            ));
        }
    }
    live.await.unwrap();
    assert_eq!(
        seen, expected,
        "every event once, in revision order, with its type and prev_kv"
    );

    watcher.request_progress().await.unwrap();
    let progress = next_watch_response("the progress response", &mut stream).await;
    assert_eq!(
        progress.watch_id(),
        -1,
        "progress responses use watch id -1"
    );
    assert!(progress.events().is_empty(), "{progress:?}");
    assert_eq!(progress.header().unwrap().revision(), 30);

    watcher.cancel().await.unwrap();
    let cancelled = next_watch_response("the cancel response", &mut stream).await;
    assert!(cancelled.canceled());
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_cluster_and_lease_services() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    c.put("first", "write", None).await.unwrap(); // rev 2

    let status = c.status().await.unwrap();
    let header = status.header().expect("status carries a header");
    let member_id = header.member_id();
    assert_ne!(member_id, 0, "a real member id");
    assert_eq!(status.leader(), member_id, "a lone node leads itself");
    assert_eq!(
        header.cluster_id(),
        netsy::etcd::fnv1a64("dev-cluster"),
        "cluster_id is FNV-1a 64 of the cluster id"
    );
    assert_eq!(header.revision(), 2, "the committed revision");
    // netsy has no raft: terms are 0, and both indexes are the committed
    // revision (protocol-spec/etcd-api.md).
    assert_eq!(
        (
            header.raft_term(),
            status.raft_term(),
            status.raft_index(),
            status.raft_applied_index()
        ),
        (0, 0, 2, 2)
    );
    assert_eq!(status.version(), "3.5.21");
    assert!(status.db_size() > 0);
    assert!(
        status.raft_used_db_size() > 0 && status.raft_used_db_size() <= status.db_size(),
        "dbSizeInUse {} of dbSize {}",
        status.raft_used_db_size(),
        status.db_size()
    );
    assert!(status.errors().is_empty(), "{:?}", status.errors());
    assert!(!status.is_learner());

    let members = c.member_list().await.unwrap();
    let mheader = members.header().expect("member list carries a header");
    assert_eq!(
        (mheader.cluster_id(), mheader.member_id()),
        (header.cluster_id(), member_id)
    );
    assert_eq!(members.members().len(), 1);
    let me = &members.members()[0];
    assert_eq!(me.id(), member_id, "the member is the node Status names");
    assert_eq!(me.name(), "dev-node-1");
    assert_eq!(me.client_urls(), [format!("http://{}", n.client_addr)]);
    assert!(!me.is_learner());

    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());
    assert_eq!(alarms.header().unwrap().member_id(), member_id);
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

/// What `etcdctl endpoint health` does (etcdctl 3.5 ctlv3/command/ep_command.go):
/// a linearizable Get of key "health" must succeed (a missing key is fine),
/// then an alarm list must come back empty.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_health_the_way_etcdctl_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let got = c
        .get("health", None)
        .await
        .expect("the health read succeeds");
    assert!(got.kvs().is_empty(), "no such key: {:?}", got.kvs());
    assert_eq!(got.count(), 0);
    assert_eq!(got.header().unwrap().revision(), 1);
    let alarms = c
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .expect("the alarm list succeeds");
    let raised: Vec<(u64, i32)> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm() as i32))
        .collect();
    assert!(raised.is_empty(), "alarms raised: {raised:?}");
    // The same again after a write: still healthy, the read sees the revision.
    c.put("health", "x", None).await.unwrap();
    let got = c.get("health", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"x");
    assert_eq!(got.header().unwrap().revision(), 2);
}

/// A watch whose keys do not change while others do: it is not woken by
/// those writes, yet it stays current. A compaction up to the latest
/// revision is not held back by the quiet watch nor cancels it, the next
/// write to its keys arrives once, and a progress request reports the
/// latest revision.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_watch_stays_current_while_other_keys_change() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let (mut quiet, mut quiet_events) = c
        .watch("/quiet/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let (_busy, mut busy_events) = c
        .watch("/busy/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    for i in 0..300 {
        c.put(format!("/busy/{i}"), "x", None).await.unwrap(); // revs 2..=301
    }
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut busy = 0;
    while busy < 300 {
        let message = tokio::time::timeout_at(until, busy_events.message()).await;
        busy += message
            .expect("the busy watch's events in time")
            .unwrap()
            .expect("stream open")
            .events()
            .len();
    }

    c.compact(301, None)
        .await
        .expect("a quiet watch holds back no compaction");
    c.put("/quiet/1", "at last", None).await.unwrap(); // rev 302
    let resp = next_watch_response("the quiet watch's event", &mut quiet_events).await;
    assert!(!resp.canceled(), "cancelled: {resp:?}");
    let got: Vec<(String, i64, String)> = resp
        .events()
        .iter()
        .filter_map(|e| e.kv())
        .map(|kv| {
            let key = kv.key_str().unwrap().to_string();
            (key, kv.mod_revision(), kv.value_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(got, [("/quiet/1".to_string(), 302, "at last".to_string())]);

    quiet.request_progress().await.unwrap();
    let progress = next_watch_response("the progress response", &mut quiet_events).await;
    assert!(progress.events().is_empty(), "{progress:?}");
    assert_eq!(progress.header().unwrap().revision(), 302);
}
