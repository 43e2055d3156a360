//! Fault points driven through `NETSY_FAILPOINT_*` on a real node.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{run_refusing, Bucket, Netsy, NetsyOptions, DEADLINE};

/// A crash after the chunk reached the bucket and before SQLite took the
/// batch: the client gets no answer, and since the bucket is the permanent
/// store (object-storage.md: the chunk is the write), the write is there
/// after the restart, at the revision it was given, on the node's own data
/// directory and on a fresh node restored from the bucket alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_chunk_upload_and_sqlite_commit_keeps_the_write() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let bucket = Bucket::fs(&base.join("bucket"));
    let config = bucket.config(base, "");
    let data = base.join("a");
    let options = |extra: Vec<(String, String)>| NetsyOptions {
        config: Some(config.clone()),
        env: bucket.env().into_iter().chain(extra).collect(),
        production: false,
    };
    let mut node = Netsy::start(
        &data,
        options(vec![(
            "NETSY_FAILPOINT_CHUNK_UPLOADED".into(),
            "crash".into(),
        )]),
    );
    let mut c = node.client().await;
    let err = c.put("/crash", "v", None).await.unwrap_err();
    eprintln!("the write during the crash: {err}");

    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node did not crash");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The line may still be in the pipe when the process is gone.
    node.log.wait_for("the fault point's crash", |l| {
        l.contains("fault point chunk_uploaded: crashing")
    });
    drop(node);

    // The bucket holds revision 2's chunk: the upload completed.
    let store = bucket.store();
    let chunks: Vec<String> = store
        .list("chunks/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        chunks,
        [
            "chunks/0001/0000000000000000001.netsy",
            "chunks/0002/0000000000000000002.netsy"
        ]
    );

    // Restarted on its data directory (which never committed revision 2).
    let node = Netsy::start(&data, options(vec![]));
    let mut c = node.client().await;
    let got = c.get("/crash", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!((kv.value(), kv.mod_revision()), (&b"v"[..], 2));
    assert_eq!(got.header().unwrap().revision(), 2);
    // The next write follows it.
    let next = c.put("/after", "w", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), 3);
    drop(node);

    // A fresh node has it from the bucket alone.
    let fresh = Netsy::start(&base.join("b"), options(vec![]));
    let mut c = fresh.client().await;
    let got = c.get("/crash", None).await.unwrap();
    assert_eq!(got.kvs()[0].mod_revision(), 2);
}

/// `crash-after:<n>` passes n−1 times: the first write through the sync
/// path is answered, the second crashes the node.
#[tokio::test(flavor = "multi_thread")]
async fn crash_after_counts_the_visits() {
    let base = tempfile::tempdir().unwrap();
    let mut node = Netsy::start(
        &base.path().join("data"),
        NetsyOptions {
            env: vec![(
                "NETSY_FAILPOINT_CHUNK_UPLOADED".into(),
                "crash-after:2".into(),
            )],
            ..Default::default()
        },
    );
    let mut c = node.client().await;
    c.put("/one", "1", None).await.unwrap();
    assert!(c.put("/two", "2", None).await.is_err());
    let deadline = Instant::now() + DEADLINE;
    while node.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not crash");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `stall:<ms>` delays the write by that much and answers it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stall_delays_the_write() {
    let base = tempfile::tempdir().unwrap();
    let node = Netsy::start(
        &base.path().join("data"),
        NetsyOptions {
            env: vec![("NETSY_FAILPOINT_CHUNK_UPLOADED".into(), "stall:700".into())],
            ..Default::default()
        },
    );
    let mut c = node.client().await;
    let started = Instant::now();
    c.put("/slow", "1", None).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700));
}

/// A fault action that does not parse refuses the start: a test with a
/// misspelt action would otherwise test nothing.
#[test]
fn an_unknown_fault_action_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netsy"));
    cmd.arg("--dev")
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "")
        .env("NETSY_DATA_DIR", dir.path())
        .env("NETSY_FAILPOINT_CHUNK_UPLOADED", "crahs");
    let (status, stderr) = run_refusing(cmd).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("NETSY_FAILPOINT_CHUNK_UPLOADED: unknown fault action \"crahs\""),
        "{stderr}"
    );
}
