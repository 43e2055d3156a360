//! Leases as etcd clients use them: keys attached to a lease go when it
//! expires or is revoked (watchers see the deletes), keep-alives hold a
//! lease past its TTL, and leases outlive the process and the data
//! directory because the bucket holds them.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

use crate::support::{next_watch_response, poll_async, Bucket, Netsy};

async fn exists(c: &mut etcd_client::Client, key: &str) -> bool {
    c.get(key, None).await.unwrap().count() == 1
}

async fn ttl_of(c: &mut etcd_client::Client, id: i64) -> (i64, i64, Vec<String>) {
    let r = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let keys = r
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    (r.ttl(), r.granted_ttl(), keys)
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_revoke_and_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let (mut watcher, mut events) = c
        .watch(
            "/l/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();

    let short = c.lease_grant(2, None).await.unwrap().id();
    let long = c.lease_grant(60, None).await.unwrap().id();
    let kept = c.lease_grant(2, None).await.unwrap().id();
    let with = |id| Some(PutOptions::new().with_lease(id));
    c.put("/l/a1", "1", with(short)).await.unwrap();
    c.put("/l/a2", "2", with(short)).await.unwrap();
    c.put("/l/b", "3", with(long)).await.unwrap();
    c.put("/l/k", "4", with(kept)).await.unwrap();
    let (ttl, granted, keys) = ttl_of(&mut c, short).await;
    assert_eq!((granted, keys), (2, vec!["/l/a1".into(), "/l/a2".into()]));
    assert!((0..=2).contains(&ttl), "remaining {ttl}");
    let listed: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    for id in [short, long, kept] {
        assert!(listed.contains(&id), "{id:x} listed in {listed:x?}");
    }

    // Keep `kept` alive on one stream while `short` runs out.
    let (mut keeper, mut answers) = c.lease_keep_alive(kept).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    while started.elapsed() < Duration::from_secs(5) {
        pace.tick().await;
        keeper.keep_alive().await.unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!((answer.id(), answer.ttl()), (kept, 2));
    }
    assert!(!exists(&mut c, "/l/a1").await && !exists(&mut c, "/l/a2").await);
    assert!(
        exists(&mut c, "/l/k").await,
        "kept alive past twice its TTL"
    );
    let (ttl, _, _) = ttl_of(&mut c, short).await;
    assert_eq!(ttl, -1, "an expired lease is gone");

    // Each attached key was deleted by its own write, with prev_kv.
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        let resp = next_watch_response("delete events", &mut events).await;
        for e in resp.events() {
            if e.event_type() == EventType::Delete {
                let kv = e.kv().unwrap();
                let prev = e.prev_kv().expect("prev_kv").value_str().unwrap();
                deletes.push((
                    kv.key_str().unwrap().to_string(),
                    kv.mod_revision(),
                    prev.to_string(),
                ));
            }
        }
    }
    assert_eq!(deletes[0].0, "/l/a1");
    assert_eq!(deletes[1].0, "/l/a2");
    assert_eq!(deletes[1].1, deletes[0].1 + 1, "one revision per key");
    assert_eq!((deletes[0].2.as_str(), deletes[1].2.as_str()), ("1", "2"));

    // Without keep-alives it runs out too.
    drop(keeper);
    poll_async("the unattended lease to expire", || {
        let mut c = c.clone();
        async move { (!exists(&mut c, "/l/k").await).then_some(()) }
    })
    .await;

    // Revoke: at once, then not found.
    let before = c
        .get("/l/b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let revoked = c.lease_revoke(long).await.unwrap();
    assert_eq!(revoked.header().unwrap().revision(), before + 1);
    assert!(!exists(&mut c, "/l/b").await);
    let again = c.lease_revoke(long).await.unwrap_err().to_string();
    assert!(again.contains("requested lease not found"), "{again}");
    // TTL 0 on the wire; the client turns it into an error.
    let unknown = c.lease_keep_alive(long).await.err().unwrap().to_string();
    assert!(unknown.contains("lease not found"), "{unknown}");
    watcher.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_survive_restart_and_restore_from_the_bucket_alone() {
    let bucket_dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::fs(bucket_dir.path());
    let config_dir = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let n = Netsy::on_bucket(first.path(), &bucket, config_dir.path(), "");
    let mut c = n.client().await;
    let long = c.lease_grant(600, None).await.unwrap().id();
    let short = c.lease_grant(3, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(long)))
        .await
        .unwrap();
    let objects = bucket.store().list("leases/").await.unwrap();
    assert_eq!(objects.len(), 2, "one object per lease: {objects:?}");
    n.kill9();

    // A fresh data directory: the bucket alone.
    let second = tempfile::tempdir().unwrap();
    let n = Netsy::on_bucket(second.path(), &bucket, config_dir.path(), "");
    let mut c = n.client().await;
    let (ttl, granted, keys) = ttl_of(&mut c, long).await;
    assert_eq!((granted, keys), (600, vec!["k".to_string()]));
    assert!(ttl > 590, "a new Primary gives the full TTL again: {ttl}");
    let (_, granted, _) = ttl_of(&mut c, short).await;
    assert_eq!(granted, 3);
    poll_async("the short lease to expire after the restore", || {
        let mut c = c.clone();
        async move {
            let r = c.lease_time_to_live(short, None).await.unwrap();
            (r.ttl() == -1).then_some(())
        }
    })
    .await;
    c.put("k2", "v", Some(PutOptions::new().with_lease(long)))
        .await
        .unwrap();
    c.lease_revoke(long).await.unwrap();
    let left = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(left.count(), 0, "both attached keys deleted");
    let objects = bucket.store().list("leases/").await.unwrap();
    assert!(
        objects.is_empty(),
        "revoked and expired leases leave the bucket: {objects:?}"
    );
    n.terminate();

    // Restarted on its own data directory: still no leases.
    let n = Netsy::on_bucket(second.path(), &bucket, config_dir.path(), "");
    let mut c = n.client().await;
    assert!(c.leases().await.unwrap().leases().is_empty());
}
