//! Leases on a cluster: granted and kept alive through any node, expired by
//! the Primary with deletes every node and watcher sees, and kept across a
//! Primary's death and a restore from the bucket alone.

use std::time::Duration;

use etcd_client::{EventType, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

use super::support::cluster::TestCluster;
use super::{block_on, quorum_ready, serial};

fn with_lease(id: i64) -> Option<PutOptions> {
    Some(PutOptions::new().with_lease(id))
}

/// Whether `key` exists on node `i`, read locally (serializable).
async fn present_on(t: &TestCluster, i: usize, key: &str) -> bool {
    let mut c = t.client(i).await;
    let options = etcd_client::GetOptions::new().with_serializable();
    c.get(key, Some(options))
        .await
        .map(|r| r.count() == 1)
        .unwrap_or(true)
}

fn present(t: &TestCluster, i: usize, key: &str) -> bool {
    block_on(present_on(t, i, key))
}

/// (remaining TTL, granted TTL, keys) of a lease, asked through node `i`.
fn time_to_live(t: &TestCluster, i: usize, id: i64) -> Result<(i64, i64, Vec<String>), String> {
    block_on(async {
        let mut c = t.client(i).await;
        let r = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .map_err(|e| e.to_string())?;
        let keys = r
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        Ok((r.ttl(), r.granted_ttl(), keys))
    })
}

#[test]
fn leases_expire_on_every_node_and_keep_alive_works_through_a_replica() {
    let _one = serial();
    let mut t = TestCluster::on_fs(3, |_| {});
    t.start_all();
    let primary = quorum_ready(&mut t);
    let replicas: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    let (r1, r2) = (replicas[0], replicas[1]);

    block_on(async {
        let mut watcher = t.client(r1).await;
        let (_w, mut events) = watcher
            .watch(
                "/lease/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .unwrap();
        // Granted through one replica, used through the other and the
        // Primary.
        let short = t.client(r1).await.lease_grant(3, None).await.unwrap().id();
        t.client(r2)
            .await
            .put("/lease/a", "1", with_lease(short))
            .await
            .unwrap();
        t.client(primary)
            .await
            .put("/lease/b", "2", with_lease(short))
            .await
            .unwrap();
        let kept = t.client(r2).await.lease_grant(3, None).await.unwrap().id();
        t.client(r1)
            .await
            .put("/lease/kept", "3", with_lease(kept))
            .await
            .unwrap();

        // Keep-alives through a replica for 15 s (five TTLs).
        let mut keeper_client = t.client(r2).await;
        let (mut keeper, mut answers) = keeper_client.lease_keep_alive(kept).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        while started.elapsed() < Duration::from_secs(15) {
            pace.tick().await;
            keeper.keep_alive().await.unwrap();
            let answer = answers.message().await.unwrap().unwrap();
            assert_eq!((answer.id(), answer.ttl()), (kept, 3));
        }
        for i in 0..3 {
            assert!(
                present_on(&t, i, "/lease/kept").await,
                "kept alive, on node {i}"
            );
            assert!(!present_on(&t, i, "/lease/a").await, "expired, on node {i}");
            assert!(!present_on(&t, i, "/lease/b").await, "expired, on node {i}");
        }

        // The replica's watcher saw both deletes, with prev_kv.
        let mut deletes = Vec::new();
        while deletes.len() < 2 {
            let resp = tokio::time::timeout(Duration::from_secs(30), events.message())
                .await
                .expect("deletes on the replica's watch")
                .unwrap()
                .unwrap();
            for e in resp.events() {
                if e.event_type() == EventType::Delete {
                    let key = e.kv().unwrap().key_str().unwrap().to_string();
                    let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
                    deletes.push((key, prev));
                }
            }
        }
        assert_eq!(
            deletes,
            [
                ("/lease/a".to_string(), Some("1".to_string())),
                ("/lease/b".to_string(), Some("2".to_string()))
            ]
        );
        drop(keeper);
    });
    t.until("the lease without keep-alives to expire everywhere", |t| {
        (0..3).all(|i| !present(t, i, "/lease/kept")).then_some(())
    });
}

#[test]
fn leases_survive_the_primary_dying_and_a_restore_from_the_bucket_alone() {
    let _one = serial();
    let mut t = TestCluster::on_moto(3, |_| {});
    t.start_all();
    let primary = quorum_ready(&mut t);
    let replica = (primary + 1) % 3;
    let (long, short) = block_on(async {
        let mut c = t.client(replica).await;
        let long = c.lease_grant(600, None).await.unwrap().id();
        let short = c.lease_grant(5, None).await.unwrap().id();
        c.put("/keep", "x", with_lease(long)).await.unwrap();
        c.put("/expire", "y", with_lease(short)).await.unwrap();
        (long, short)
    });
    t.c.kill(primary);
    let (_, new_primary) = t.settled();
    assert_ne!(new_primary, primary);
    // The new Primary knows both leases, each with its full TTL again.
    let (ttl, granted, keys) = t.until("the new Primary to answer for the lease", |t| {
        time_to_live(t, replica, long).ok()
    });
    assert_eq!((granted, keys), (600, vec!["/keep".to_string()]));
    assert!(ttl > 590, "full TTL again: {ttl}");
    let (ttl, granted, keys) = time_to_live(&t, replica, short).unwrap();
    assert_eq!((granted, keys), (5, vec!["/expire".to_string()]));
    assert!(ttl > 0, "not expired at the failover");
    t.until("the short lease to expire on the new Primary", |t| {
        let gone = time_to_live(t, new_primary, short).ok()?.0 == -1;
        (gone && !present(t, new_primary, "/expire")).then_some(())
    });

    // Every node stopped; from the bucket alone, on empty data directories.
    for i in (0..3).filter(|i| *i != primary) {
        t.c.terminate(i, Duration::from_secs(60)).unwrap();
    }
    for node in &t.c.nodes {
        std::fs::remove_dir_all(&node.data_dir).ok();
    }
    t.start_all();
    t.settled();
    let (_, granted, keys) = t.until("the lease after the restore", |t| {
        time_to_live(t, 0, long).ok()
    });
    assert_eq!((granted, keys), (600, vec!["/keep".to_string()]));
    t.until("the attached key on every node", |t| {
        (0..3).all(|i| present(t, i, "/keep")).then_some(())
    });
    assert_eq!(
        time_to_live(&t, 1, short).unwrap().0,
        -1,
        "expired stays gone"
    );
}
