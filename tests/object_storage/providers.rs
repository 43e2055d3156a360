//! The provider behaviour checks on a real S3 API server, and create-only
//! and If-Match races between processes on the fs provider.

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use netsy::objstore::{behaviour, fs::FsStore, Condition, ObjError, ObjectStore};

use crate::moto_bucket;

#[tokio::test(flavor = "multi_thread")]
async fn s3_provider_behaves_like_the_others() {
    let (_moto, bucket) = moto_bucket("behaviour");
    behaviour::check_all(bucket.store(), "t").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_key_prefix_scopes_everything() {
    let (moto, bucket) = moto_bucket("prefixed");
    let text = r#"{"cluster_id": "x", "storage": {"provider": "s3", "bucket_name": "prefixed", "key_prefix": "team-a"}}"#;
    let cfg = netsy::config::ClusterConfig::parse(text).unwrap();
    let env: std::collections::HashMap<String, String> = moto.env().into_iter().collect();
    let scoped = netsy::objstore::from_config(
        &cfg.storage,
        &move |k: &str| env.get(k).cloned(),
        &Default::default(),
    )
    .unwrap();
    behaviour::check_all(scoped.clone(), "t").await;
    scoped
        .put("members.json", Bytes::from_static(b"{}"), Condition::None)
        .await
        .unwrap();
    assert!(bucket.store().get("team-a/members.json").await.is_ok());
}

/// S3 lists at most 1000 keys a page; a listing must follow every page.
#[tokio::test(flavor = "multi_thread")]
async fn s3_listing_follows_every_page() {
    let (_moto, bucket) = moto_bucket("paged");
    let store = bucket.store();
    let mut puts = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let store = store.clone();
        puts.spawn(async move {
            for i in (worker..1010).step_by(16) {
                store
                    .put(&format!("many/{i:05}"), Bytes::new(), Condition::None)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = puts.join_next().await {
        done.unwrap();
    }
    store
        .put("other/x", Bytes::new(), Condition::None)
        .await
        .unwrap();
    let keys: Vec<String> = store
        .list("many/")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    let expected: Vec<String> = (0..1010).map(|i| format!("many/{i:05}")).collect();
    assert_eq!(keys, expected);
}

/// Racer entry point: does nothing unless run by the race tests below as a
/// separate process.
#[tokio::test]
async fn race_helper() {
    let (Ok(root), Ok(mode), Ok(id)) = (
        std::env::var("NETSY_RACE_ROOT"),
        std::env::var("NETSY_RACE_MODE"),
        std::env::var("NETSY_RACE_ID"),
    ) else {
        return;
    };
    let store = FsStore::open(std::path::Path::new(&root)).unwrap();
    let condition = match mode.as_str() {
        "create" => Condition::IfAbsent,
        _ => Condition::IfMatch(std::env::var("NETSY_RACE_ETAG").unwrap()),
    };
    let outcome = match store
        .put("race", Bytes::from(format!("process-{id}")), condition)
        .await
    {
        Ok(_) => "WON".to_string(),
        Err(ObjError::PreconditionFailed(_)) => "LOST".to_string(),
        Err(e) => format!("ERROR {e}"),
    };
    std::fs::write(
        std::path::Path::new(&root).join(format!("outcome-{id}")),
        outcome,
    )
    .unwrap();
}

fn race_processes(root: &std::path::Path, mode: &str, etag: &str, n: usize) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "providers::race_helper", "--test-threads=1"])
                .env("NETSY_RACE_ROOT", root)
                .env("NETSY_RACE_MODE", mode)
                .env("NETSY_RACE_ETAG", etag)
                .env("NETSY_RACE_ID", i.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    (0..n)
        .map(|i| std::fs::read_to_string(root.join(format!("outcome-{i}"))).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_create_only_race_across_processes_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let outcomes = race_processes(dir.path(), "create", "", 8);
    assert_eq!(
        outcomes.iter().filter(|o| *o == "WON").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| *o == "LOST").count(),
        7,
        "{outcomes:?}"
    );
    let store = FsStore::open(dir.path()).unwrap();
    let winner = outcomes.iter().position(|o| o == "WON").unwrap();
    assert_eq!(
        store.get("race").await.unwrap().data,
        Bytes::from(format!("process-{winner}"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_if_match_race_across_processes_has_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path()).unwrap());
    let etag = store
        .put("race", Bytes::from_static(b"start"), Condition::None)
        .await
        .unwrap();
    let outcomes = race_processes(dir.path(), "match", &etag, 8);
    assert_eq!(
        outcomes.iter().filter(|o| *o == "WON").count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| o == "WON" || o == "LOST"),
        "{outcomes:?}"
    );
}
