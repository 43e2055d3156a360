//! Default reads around a failover, each a case the fault suite once
//! caught by chance, made deterministic with fault points and links.

use std::time::Duration;

use crate::support::cluster::TestCluster;

/// A replica's default read asks the Primary for its committed revision
/// and waits for it. A Primary that is still starting has not caught up
/// with the bucket, so it must not answer: with quorum 0 a write an
/// earlier Primary acknowledged may be in the bucket only. The replica's
/// read then fails or waits; it never misses the write.
#[test]
fn a_starting_primary_answers_no_read_index() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing holds until its file exists.
    let preflight_hold = dir.path().join("preflight");
    let apply_hold = dir.path().join("apply");
    let mut t = TestCluster::on_fs(3, |spec| spec.quorum = 0);
    for n in &mut t.c.nodes {
        n.env.extend([
            (
                "NETSY_FAILPOINT_PREFLIGHT_START".to_string(),
                format!("hold:{}", preflight_hold.display()),
            ),
            (
                "NETSY_FAILPOINT_FOLLOW_APPLY".to_string(),
                format!("hold:{}", apply_hold.display()),
            ),
        ]);
    }
    t.start_all();
    let (_, first) = t.settled();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = t.client(first).await;
        c.put("/stale/before", "1", None).await.unwrap();
    });
    // The replicas stop applying what the Primary streams, which goes on
    // writing to the bucket: the next write is in the bucket only.
    std::fs::write(&apply_hold, b"").unwrap();
    let acknowledged = rt.block_on(async {
        let mut c = t.client(first).await;
        let r = c.put("/stale/only-in-the-bucket", "2", None).await.unwrap();
        r.header().unwrap().revision()
    });
    std::fs::write(&preflight_hold, b"").unwrap();
    t.c.kill(first);

    // Another node is appointed and holds before catching up; a third
    // follows it.
    let starting = t.until("a new Primary holding before its preflight", |t| {
        (0..3).find(|i| *i != first && t.c.nodes[*i].logged("fault point preflight_start: holding"))
    });
    let other = (0..3).find(|i| *i != first && *i != starting).unwrap();
    let following = format!("following the Primary {}", t.c.nodes[starting].id);
    t.until("the third node following the starting one", |t| {
        t.c.nodes[other].logged(&following).then_some(())
    });
    let (local, during) = rt.block_on(async {
        let mut c = t.client(other).await;
        let serializable = etcd_client::GetOptions::new().with_serializable();
        let local = c
            .get("/stale/only-in-the-bucket", Some(serializable))
            .await
            .unwrap();
        let during = c.get("/stale/only-in-the-bucket", None).await;
        (local, during)
    });
    assert!(
        local.kvs().is_empty(),
        "the third node does not have the write yet (else this tests nothing)"
    );
    match during {
        Err(e) => println!("the default read during the preflight failed: {e}"),
        Ok(r) => assert_eq!(
            r.kvs().len(),
            1,
            "a default read at revision {} missed the write acknowledged at {acknowledged}",
            r.header().unwrap().revision()
        ),
    }

    std::fs::remove_file(&preflight_hold).unwrap();
    std::fs::remove_file(&apply_hold).unwrap();
    let after = t.until("the write readable through the third node", |t| {
        rt.block_on(async {
            let mut c = t.client(other).await;
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                c.get("/stale/only-in-the-bucket", None),
            )
            .await;
            match r {
                Ok(Ok(r)) => Some(r),
                _ => None,
            }
        })
    });
    assert_eq!(after.kvs()[0].value(), b"2");
    assert_eq!(after.kvs()[0].mod_revision(), acknowledged);
}
