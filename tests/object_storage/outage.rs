//! When object storage fails under the write path (after one retry), the
//! client gets an error (never a false success), the node stops accepting
//! writes, and a
//! background recovery resumes them once storage is back; the bucket then
//! holds exactly what the node serves.

use std::time::Duration;

use crate::support::{assert_metric_line, poll_async, Bucket, Netsy};
use crate::{dir, fingerprint};

#[tokio::test(flavor = "multi_thread")]
async fn writes_fail_cleanly_during_an_outage_and_resume_after() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let objects = base.join("bucket");
    let bucket = Bucket::fs(&objects);
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let mut c = node.client().await;
    c.put("before", "1", None).await.unwrap();

    // The bucket disappears (a file where the directory was).
    let away = base.join("bucket.away");
    std::fs::rename(&objects, &away).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let err = c.put("during", "x", None).await.unwrap_err();
    assert!(err.to_string().contains("object storage"), "{err}");
    // The failed chunk write was retried once before the node gave up.
    assert_metric_line(
        &node.health_addr,
        "netsy_retries_total{operation=\"object_storage_write\"} 1",
    );
    let err = c.put("during2", "x", None).await.unwrap_err();
    assert!(err.to_string().contains("not accepting writes"), "{err}");
    // Reads keep working.
    assert_eq!(c.get("before", None).await.unwrap().kvs()[0].value(), b"1");

    // Storage comes back: recovery resumes writes.
    std::fs::remove_file(&objects).unwrap();
    std::fs::rename(&away, &objects).unwrap();
    let rev = poll_async("writes to resume", || {
        let mut c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.put("after", "2", None)
                .await
                .ok()
                .map(|r| r.header().unwrap().revision())
        }
    })
    .await;
    let live = fingerprint(&mut c).await;
    assert!(live.iter().any(|l| l.starts_with("after = 2")), "{live:?}");
    assert!(rev >= 3);

    // The bucket agrees with what the node serves.
    drop(node);
    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    let mut c2 = fresh.client().await;
    assert_eq!(fingerprint(&mut c2).await, live);
}
