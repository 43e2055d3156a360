//! Durability: every write acknowledged before a SIGKILL is there after a
//! restart, with its value and revision, and the revisions have no holes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use etcd_client::GetOptions;

use crate::support::{
    assert_metric_line, assert_present, count_prefix, http_get, poll_async, AckedWrites, Netsy,
    NetsyOptions, DEADLINE,
};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut acked = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = n.client().await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25 {
                let key = format!("/k/{w}/{i}");
                let r = tokio::time::timeout(DEADLINE, c.put(key.clone(), format!("v{i}"), None))
                    .await
                    .expect("put answered in time")
                    .unwrap();
                mine.push((key, format!("v{i}"), r.header().unwrap().revision()));
            }
            mine
        }));
    }
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    n.kill9();

    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let all = c
        .get("/k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.count(), acked.len() as i64);
    assert_eq!(
        all.header().unwrap().revision(),
        1 + acked.len() as i64,
        "revisions are contiguous"
    );
    for (key, value, rev) in &acked {
        let got = c.get(key.as_str(), None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!(
            (kv.value_str().unwrap(), kv.mod_revision()),
            (value.as_str(), *rev),
            "{key}"
        );
    }
    let next = c.put("after", "restart", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), 2 + acked.len() as i64);
}

/// One acknowledged put: writer, sequence number within the writer, revision.
type Ack = (usize, usize, i64);

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_with_writes_in_flight_keeps_every_acknowledged_write() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
    // Puts sent and not yet answered, over all writers.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = n.client().await;
        let (acked, in_flight) = (acked.clone(), in_flight.clone());
        // Each writer puts /k/{w}/{i} = v{w}-{i} one after the other until
        // its node goes away: a write is sent only after the previous one
        // was acknowledged.
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            loop {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let put = c.put(format!("/k/{w}/{i}"), format!("v{w}-{i}"), None);
                let answer = tokio::time::timeout(DEADLINE, put).await;
                match answer {
                    Ok(Ok(r)) => {
                        let rev = r.header().unwrap().revision();
                        acked.lock().unwrap().push((w, i, rev));
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        i += 1;
                    }
                    // Refused or cut off by the kill, or no answer at all:
                    // not acknowledged, and this writer is done.
                    Ok(Err(_)) | Err(_) => return i,
                }
            }
        }));
    }

    // Kill in the middle of the stream of writes, just after seeing writes
    // in flight (they may complete before the kill lands; either way every
    // acknowledged one must survive).
    poll_async("writes in flight after 200 acknowledged", || async {
        (acked.lock().unwrap().len() >= 200 && in_flight.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    n.kill9();
    let mut stopped_at = Vec::new();
    for t in tasks {
        stopped_at.push(t.await.unwrap());
    }
    let acked = acked.lock().unwrap().clone();

    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let all = c
        .get("/k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let head = all.header().unwrap().revision();
    let present: BTreeMap<String, (String, i64)> = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();

    // Every acknowledged write is there: key, value and revision.
    for &(w, i, rev) in &acked {
        let key = format!("/k/{w}/{i}");
        assert_eq!(
            present.get(&key),
            Some(&(format!("v{w}-{i}"), rev)),
            "acknowledged write {key} at revision {rev}"
        );
    }
    // Nothing else, except possibly each writer's last, unanswered put
    // (committed but cut off before its answer): no write appears that was
    // never sent, and no writer's history has a hole.
    for (w, &stop) in stopped_at.iter().enumerate() {
        let acked_here = acked.iter().filter(|a| a.0 == w).count();
        assert_eq!(acked_here, stop, "writer {w} stopped after its acks");
        let kept = present
            .keys()
            .filter(|k| k.starts_with(&format!("/k/{w}/")))
            .count();
        assert!(
            kept == stop || kept == stop + 1,
            "writer {w}: {stop} acknowledged, {kept} present"
        );
        if kept == stop + 1 {
            assert_eq!(present[&format!("/k/{w}/{stop}")].0, format!("v{w}-{stop}"));
        }
    }
    // Contiguous revisions: only these puts were written, one revision each,
    // so the keys' revisions are exactly 2..=head (1 is netsy's own record).
    let mut revisions: Vec<i64> = present.values().map(|v| v.1).collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (2..=head).collect::<Vec<_>>());
    assert_eq!(all.count(), present.len() as i64);

    let next = c.put("after", "restart", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), head + 1);
}

/// Every file under `dir` with its length, sorted.
fn tree(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                let name = e.path().strip_prefix(dir).unwrap().display().to_string();
                // The running node's bucket keeps spare temp files ready
                // and refills them in the background.
                if !name.contains(".netsy-tmp/spare-") {
                    out.push((name, meta.len()));
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_a_data_directory_in_use_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = Netsy::start_dev(dir.path());
    let mut c = first.client().await;
    let rev = c.put("/kept", "v", None).await.unwrap();
    let before = tree(dir.path());

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"));
    cmd.arg("--dev")
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "")
        .env("NETSY_DATA_DIR", dir.path());
    let (status, stderr) = crate::support::run_refusing(cmd).unwrap();
    assert!(!status.success());
    let expected = format!(
        "NETSY_DATA_DIR {} is in use by another netsy process (pid {})",
        dir.path().display(),
        first.child.id()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(
        tree(dir.path()),
        before,
        "the refused process wrote nothing"
    );
    let got = c.get("/kept", None).await.unwrap();
    assert_eq!(
        got.kvs()[0].mod_revision(),
        rev.header().unwrap().revision(),
        "the first process still serves"
    );
}

/// A node that wrote its database without flushes (every batch was in the
/// bucket first) and comes back on another machine boot may have lost or
/// torn pages: it sets the database aside and rebuilds it from the bucket,
/// with every acknowledged write. Back on the same boot (only the process
/// died) the database is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_back_on_another_boot_rebuilds_its_store_from_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let on_boot = |id: &str| NetsyOptions {
        env: vec![("NETSY_TEST_BOOT_ID".into(), id.into())],
        ..NetsyOptions::default()
    };
    let rebuilt = r#"netsy_local_db_rebuilds_total{reason="machine_restarted"} 1"#;
    let set_aside = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.split_once(".diverged-")
                    .map(|(kept, _)| kept.to_string())
            })
            .collect::<std::collections::BTreeSet<String>>()
    };

    let n = Netsy::start(dir.path(), on_boot("boot-1"));
    let writes = AckedWrites::start(&n, 4, "/b/").await;
    writes.wait_for(200).await;
    assert!(
        dir.path().join("db.sqlite3-unsynced").exists(),
        "the database is written without flushes, under its mark"
    );
    n.kill9();
    let mut acked = writes.finish().await;

    let n = Netsy::start(dir.path(), on_boot("boot-1"));
    let (_, metrics) = http_get(&n.health_addr, "/metrics");
    assert!(!metrics.contains("machine_restarted"), "{metrics}");
    assert!(set_aside(dir.path()).is_empty(), "kept on the same boot");
    // Writes until the writer has folded the WAL into the database, so
    // the database has pages of its own to lose.
    let db = dir.path().join("db.sqlite3");
    let writes = AckedWrites::start(&n, 8, "/c/").await;
    writes.wait_for(200).await;
    poll_async("the WAL folded into the database", || async {
        (std::fs::metadata(&db).map_or(0, |m| m.len()) > 8192).then_some(())
    })
    .await;
    n.kill9();
    acked.extend(writes.finish().await);

    // What a machine that went down may leave: pages of the database
    // never written (zeros) and the WAL gone.
    let mut torn = std::fs::read(&db).unwrap();
    torn[4096..].fill(0);
    std::fs::write(&db, torn).unwrap();
    let _ = std::fs::remove_file(dir.path().join("db.sqlite3-wal"));

    let n = Netsy::start(dir.path(), on_boot("boot-2"));
    assert_metric_line(&n.health_addr, rebuilt);
    let aside = set_aside(dir.path());
    assert!(
        aside.contains("db.sqlite3") && aside.contains("db.sqlite3-unsynced"),
        "the database and its mark are set aside: {aside:?}"
    );
    let mut c = n.client().await;
    assert_present(&mut c, &acked).await;
    // Writes in flight at a kill may be there too, unacknowledged.
    let keys = count_prefix(&mut c, "/b/").await + count_prefix(&mut c, "/c/").await;
    assert!(
        keys >= acked.len() as i64,
        "{keys} keys, {} acknowledged",
        acked.len()
    );
}

/// A node started on another bucket's database, one with as many
/// revisions as its own bucket (the operator pointed the node at a
/// different bucket, or copied a database over): the chunk where the
/// local store ends disagrees, so the node sets the store aside and
/// rebuilds it from its bucket, and serves its bucket's writes only.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_another_buckets_database_rebuilds_it_from_its_own_bucket() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for (dir, value) in [(&ours, "ours"), (&theirs, "theirs")] {
        let n = Netsy::start_dev(dir.path());
        let mut c = n.client().await;
        let mut acked = Vec::new();
        for i in 0..20 {
            let r = c.put(format!("/k/{i}"), value, None).await.unwrap();
            acked.push((format!("/k/{i}"), r.header().unwrap().revision()));
        }
        assert!(n.terminate().success());
        written.push(acked);
    }
    assert_eq!(
        written[0], written[1],
        "the same keys at the same revisions"
    );

    for name in ["db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"] {
        let _ = std::fs::remove_file(ours.path().join(name));
        if let Ok(bytes) = std::fs::read(theirs.path().join(name)) {
            std::fs::write(ours.path().join(name), bytes).unwrap();
        }
    }
    let n = Netsy::start_dev(ours.path());
    assert_metric_line(
        &n.health_addr,
        r#"netsy_local_db_rebuilds_total{reason="integrity_check_failed"} 1"#,
    );
    let mut c = n.client().await;
    let all = c
        .get("/k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let values: Vec<&str> = all.kvs().iter().map(|kv| kv.value_str().unwrap()).collect();
    assert_eq!(values, ["ours"; 20], "only this bucket's writes");
    assert_eq!(all.header().unwrap().revision(), 21);
}
