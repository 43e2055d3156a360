//! bootstrap.netsy seeds a brand-new bucket, exactly once, and is refused
//! when it is invalid or the bucket already has history.

use std::path::Path;

use bytes::Bytes;
use netsy::datafile::{self, Compression, Kind};
use netsy::election::discovery::keys as coordination;
use netsy::log::keys;
use netsy::objstore::Condition;
use netsy::store::{Record, Timestamp};

use crate::support::{start_fails, Bucket, Netsy};
use crate::{dir, fingerprint, on_both_providers};

fn record(revision: i64, key: &str, value: &str) -> Record {
    Record {
        revision,
        key: Bytes::copy_from_slice(key.as_bytes()),
        created: true,
        deleted: false,
        create_revision: revision,
        prev_revision: 0,
        version: 1,
        lease: 0,
        dek: 0,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        created_at: Timestamp::now(),
        compacted_at: None,
        leader_id: "seeder".into(),
        replicated_at: None,
    }
}

fn seed_file(records: &[Record]) -> Bytes {
    Bytes::from(datafile::encode(Kind::Snapshot, Compression::Zstd, "seeder", records).unwrap())
}

fn good_seed() -> Vec<Record> {
    let mut internal = record(1, "_netsy", "");
    internal.leader_id = "seeder".into();
    vec![
        internal,
        record(2, "/seed/a", "1"),
        record(3, "/seed/b", "2"),
    ]
}

async fn bootstrap_seeds_a_new_bucket_once(bucket: Bucket, base: &Path) {
    let store = bucket.store();
    store
        .put(keys::BOOTSTRAP, seed_file(&good_seed()), Condition::None)
        .await
        .unwrap();
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let mut c = node.client().await;
    let state = fingerprint(&mut c).await;
    assert_eq!(state[0], "revision 3");
    assert_eq!(state[1], "/seed/a = 1 (create 2, mod 2, version 1)");
    assert!(
        store.get(&keys::snapshot_key(3)).await.is_ok(),
        "promoted to snapshots/"
    );
    assert!(store.get(coordination::MEMBERS).await.is_ok());
    let next = c.put("/after", "x", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), 4);
    drop(node);

    // Once members.json exists, bootstrap.netsy is ignored forever.
    store
        .put(
            keys::BOOTSTRAP,
            Bytes::from_static(b"not even a data file"),
            Condition::None,
        )
        .await
        .unwrap();
    let node = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    let mut c = node.client().await;
    assert_eq!(fingerprint(&mut c).await[0], "revision 4");
}
on_both_providers!(bootstrap_promotion, bootstrap_seeds_a_new_bucket_once);

/// Starts a node on the bucket as it is and expects it to refuse
/// bootstrap.netsy with an error containing every one of `expected`, having
/// written neither members.json nor any snapshot but `allowed`.
async fn refused(bucket: &Bucket, base: &Path, case: &str, expected: &[&str], allowed: &[String]) {
    let err = start_fails(&dir(base, case), bucket, base);
    for text in expected {
        assert!(err.contains(text), "{case}: expected {text:?} in: {err}");
    }
    let store = bucket.store();
    assert!(
        store.get(coordination::MEMBERS).await.is_err(),
        "{case}: members.json was written despite the refusal"
    );
    let snapshots: Vec<String> = store
        .list(keys::SNAPSHOTS)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(snapshots, allowed, "{case}: a snapshot was written");
}

async fn bootstrap_refusals(bucket: Bucket, base: &Path) {
    let store = bucket.store();
    let put = |key: String, bytes: Bytes| {
        let store = store.clone();
        async move { store.put(&key, bytes, Condition::None).await.unwrap() }
    };
    let seed_at = |records: &[Record]| put(keys::BOOTSTRAP.to_string(), seed_file(records));

    // Not starting with the internal record.
    let mut seed = good_seed();
    seed.remove(0);
    for (i, r) in seed.iter_mut().enumerate() {
        r.revision = i as i64 + 1;
    }
    seed_at(&seed).await;
    refused(
        &bucket,
        base,
        "no-internal",
        &["bootstrap.netsy", "_netsy"],
        &[],
    )
    .await;

    // Revisions with a gap (so the last revision is not the record count).
    let mut seed = good_seed();
    seed[2].revision = 4;
    seed_at(&seed).await;
    refused(
        &bucket,
        base,
        "gap",
        &["bootstrap.netsy", "has revision 4"],
        &[],
    )
    .await;

    // Empty.
    seed_at(&[]).await;
    refused(&bucket, base, "empty", &["bootstrap.netsy", "empty"], &[]).await;

    // A chunk, not a snapshot.
    let chunk = datafile::encode(Kind::Chunk, Compression::None, "seeder", &good_seed()).unwrap();
    put(keys::BOOTSTRAP.to_string(), Bytes::from(chunk)).await;
    refused(
        &bucket,
        base,
        "chunk-kind",
        &["bootstrap.netsy", "wrong file kind"],
        &[],
    )
    .await;

    // Damaged: a flipped byte in the uncompressed header.
    let mut bytes = seed_file(&good_seed()).to_vec();
    bytes[8] ^= 0x40;
    put(keys::BOOTSTRAP.to_string(), Bytes::from(bytes)).await;
    refused(
        &bucket,
        base,
        "damaged",
        &["bootstrap.netsy", "CRC mismatch"],
        &[],
    )
    .await;

    // The bucket already has another snapshot.
    seed_at(&good_seed()).await;
    let other = keys::snapshot_key(7);
    put(other.clone(), Bytes::from_static(b"x")).await;
    refused(
        &bucket,
        base,
        "other-snapshot",
        &["already has snapshot", &other],
        std::slice::from_ref(&other),
    )
    .await;
    store.delete(&other).await.unwrap();

    // The target snapshot exists with different contents.
    let target = keys::snapshot_key(3);
    put(target.clone(), Bytes::from_static(b"something else")).await;
    refused(
        &bucket,
        base,
        "different-target",
        &[&target, "different contents"],
        std::slice::from_ref(&target),
    )
    .await;
    store.delete(&target).await.unwrap();

    // A bucket that already has chunks.
    put(keys::chunk_key(1), Bytes::from_static(b"x")).await;
    refused(&bucket, base, "chunks", &["already has chunks"], &[]).await;
}

/// A crash after promotion but before members.json: the retry finds the
/// identical snapshot already there and carries on.
async fn bootstrap_promotion_is_retried_after_a_crash(bucket: Bucket, base: &Path) {
    let store = bucket.store();
    let seed = seed_file(&good_seed());
    store
        .put(keys::BOOTSTRAP, seed.clone(), Condition::None)
        .await
        .unwrap();
    store
        .put(&keys::snapshot_key(3), seed, Condition::None)
        .await
        .unwrap();
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let mut c = node.client().await;
    assert_eq!(fingerprint(&mut c).await[0], "revision 3");
    assert!(store.get(coordination::MEMBERS).await.is_ok());
}
on_both_providers!(
    bootstrap_retried,
    bootstrap_promotion_is_retried_after_a_crash
);

on_both_providers!(bootstrap_refused, bootstrap_refusals);

/// `netsy inspect FILE` on a local data file: every record and an `ok`
/// verdict; after one flipped byte, `invalid` and exit code 1.
#[test]
fn inspect_a_local_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.netsy");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
            .arg("inspect")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    std::fs::write(&path, seed_file(&good_seed())).unwrap();
    let (code, text) = run();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("\"key\":\"/seed/b\""), "{text}");
    assert!(text.ends_with("{\"verdict\":\"ok\"}\n"), "{text}");

    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let (code, text) = run();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("\"verdict\":\"invalid\"") && text.contains("CRC mismatch in header"),
        "{text}"
    );
}
