//! Object storage as the permanent store, against a real S3 API server
//! (moto on loopback) and the fs provider: provider behaviour and races,
//! chunks and snapshots written by a running node, restore of a fresh node
//! from the bucket alone, refusal of corrupt objects, bootstrap.netsy,
//! crash safety, group commit and object-storage outages.

#[path = "../support/mod.rs"]
mod support;

mod bootstrap;
mod outage;
mod providers;
mod restore;

use std::path::Path;
use std::sync::Arc;

use support::{start_moto, Bucket, Moto};

/// Runs `body` once on the fs provider and once on a moto bucket.
macro_rules! on_both_providers {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn fs() {
                let dir = tempfile::tempdir().unwrap();
                let bucket = crate::support::Bucket::fs(&dir.path().join("bucket"));
                super::$body(bucket, dir.path()).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn s3() {
                let dir = tempfile::tempdir().unwrap();
                let moto = std::sync::Arc::new(crate::support::start_moto());
                let bucket = crate::support::Bucket::s3(&moto, "netsy-test");
                super::$body(bucket, dir.path()).await;
            }
        }
    };
}
pub(crate) use on_both_providers;

/// A fresh moto server with one bucket.
pub fn moto_bucket(name: &str) -> (Arc<Moto>, Bucket) {
    let moto = Arc::new(start_moto());
    let bucket = Bucket::s3(&moto, name);
    (moto, bucket)
}

pub use support::fingerprint;

/// Every event from revision 2 to the latest (a watch replaying the whole
/// history, with previous values), as comparable text.
pub async fn history(c: &mut etcd_client::Client) -> Vec<String> {
    let latest = c
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let options = etcd_client::WatchOptions::new()
        .with_all_keys()
        .with_start_revision(2)
        .with_prev_key();
    let (_watcher, mut stream) = c.watch("", Some(options)).await.unwrap();
    let mut out = Vec::new();
    let mut seen = 1;
    while seen < latest {
        let message = support::next_watch_response("history replay", &mut stream).await;
        for e in message.events() {
            let kv = e.kv().unwrap();
            seen = kv.mod_revision();
            let prev = e.prev_kv().map(|p| p.value_str().unwrap().to_string());
            out.push(format!(
                "{} {:?} {} = {} (create {}, version {}, prev {prev:?})",
                kv.mod_revision(),
                e.event_type(),
                kv.key_str().unwrap(),
                kv.value_str().unwrap(),
                kv.create_revision(),
                kv.version()
            ));
        }
    }
    assert_eq!(seen, latest, "the replay ends at the latest revision");
    out
}

/// Keys and history written by most tests: puts, overwrites, a delete.
pub async fn write_history(c: &mut etcd_client::Client, n: usize) {
    for i in 0..n {
        c.put(format!("/k/{i:03}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.put("/k/000", "overwritten", None).await.unwrap();
    c.delete("/k/001", None).await.unwrap();
}

pub fn dir(base: &Path, name: &str) -> std::path::PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}
