//! bootstrap.netsy seeds a brand-new bucket, exactly once, and is refused
//! when it is invalid or the bucket already has history.

use std::path::Path;

use bytes::Bytes;
use netsy::datafile::{self, Compression, Kind};
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
    assert!(store.get(keys::MEMBERS).await.is_ok());
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

async fn bootstrap_refusals(bucket: Bucket, base: &Path) {
    let store = bucket.store();
    // Not starting with the internal record.
    let mut seed = good_seed();
    seed.remove(0);
    for (i, r) in seed.iter_mut().enumerate() {
        r.revision = i as i64 + 1;
    }
    store
        .put(keys::BOOTSTRAP, seed_file(&seed), Condition::None)
        .await
        .unwrap();
    let err = start_fails(&dir(base, "a"), &bucket, base);
    assert!(
        err.contains("bootstrap.netsy") && err.contains("_netsy"),
        "{err}"
    );

    // Damaged.
    let mut bytes = seed_file(&good_seed()).to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    store
        .put(keys::BOOTSTRAP, Bytes::from(bytes), Condition::None)
        .await
        .unwrap();
    let err = start_fails(&dir(base, "b"), &bucket, base);
    assert!(err.contains("bootstrap.netsy"), "{err}");

    // A bucket that already has chunks.
    store
        .put(keys::BOOTSTRAP, seed_file(&good_seed()), Condition::None)
        .await
        .unwrap();
    store
        .put(
            &keys::chunk_key(1),
            Bytes::from_static(b"x"),
            Condition::None,
        )
        .await
        .unwrap();
    let err = start_fails(&dir(base, "c"), &bucket, base);
    assert!(err.contains("already has chunks"), "{err}");
    assert!(
        store.get(keys::MEMBERS).await.is_err(),
        "nothing was written on refusal"
    );
    assert!(store.list(keys::SNAPSHOTS).await.unwrap().is_empty());
}
on_both_providers!(bootstrap_refused, bootstrap_refusals);
