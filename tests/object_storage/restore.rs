//! A running node writes chunks and snapshots; a fresh node with an empty
//! data dir restores everything from the bucket alone, and refuses damage.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use netsy::log::keys;
use netsy::objstore::Condition;

use crate::support::{count_prefix, poll_async, start_fails, AckedWrites, Bucket, Netsy};
use crate::{dir, fingerprint, history, on_both_providers, write_history};

async fn restore_rebuilds_every_key_and_revision(bucket: Bucket, base: &Path) {
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let mut c = node.client().await;
    write_history(&mut c, 20).await;
    let before = fingerprint(&mut c).await;
    let events = history(&mut c).await;
    assert_eq!(events.len(), 22, "revisions 2..=23");
    let old = c
        .get(
            "/k/000",
            Some(etcd_client::GetOptions::new().with_revision(2)),
        )
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v0");
    node.kill9();

    let chunks = bucket.store().list(keys::CHUNKS).await.unwrap();
    assert!(!chunks.is_empty(), "the node wrote chunks");

    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    let mut c = fresh.client().await;
    assert_eq!(fingerprint(&mut c).await, before);
    assert_eq!(history(&mut c).await, events, "every revision is restored");
    let old = c
        .get(
            "/k/000",
            Some(etcd_client::GetOptions::new().with_revision(2)),
        )
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v0", "history is restored too");
    let next = c.put("/after", "restore", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), 24, "revisions continue");
}
on_both_providers!(restore_from_bucket, restore_rebuilds_every_key_and_revision);

async fn snapshots_are_taken_and_covered_chunks_cleaned(bucket: Bucket, base: &Path) {
    let extra = r#""snapshot": {"threshold_records": 10, "cleanup_batch_interval": "10ms"}"#;
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, extra);
    let mut c = node.client().await;
    write_history(&mut c, 25).await; // revisions 2..=28
    let before = fingerprint(&mut c).await;
    let store = bucket.store();
    let revisions_under = |prefix: &'static str| {
        let store = store.clone();
        async move {
            store
                .list(prefix)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|l| keys::revision_of(&l.key))
                .collect::<Vec<i64>>()
        }
    };
    let snapshots = poll_async("snapshots at revisions 10 and 20", || async {
        let s = revisions_under(keys::SNAPSHOTS).await;
        (s.len() >= 2).then_some(s)
    })
    .await;
    let latest_snapshot = *snapshots.iter().max().unwrap();
    assert!(latest_snapshot >= 20, "{snapshots:?}");
    poll_async("chunks covered by the snapshot to be deleted", || async {
        let chunks = revisions_under(keys::CHUNKS).await;
        chunks.iter().all(|r| *r > latest_snapshot).then_some(())
    })
    .await;
    node.kill9();

    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, extra);
    assert!(
        fresh
            .log
            .snapshot()
            .iter()
            .any(|l| l.contains("restoring from snapshot")),
        "the fresh node restores from the snapshot"
    );
    let mut c = fresh.client().await;
    assert_eq!(fingerprint(&mut c).await, before);

    // A damaged snapshot is refused before anything is imported.
    drop(fresh);
    let key = keys::snapshot_key(latest_snapshot);
    // Snapshots are zstd-compressed, where a flip may land on framing that
    // changes nothing read (the content CRCs still hold); a flip in the
    // uncompressed header always matters.
    flip_a_byte(&bucket, &key, Some(8)).await;
    let (ok, text) = inspect(&bucket, base, &key);
    assert!(!ok && text.contains("CRC mismatch in header"), "{text}");
    let empty = dir(base, "c");
    let err = start_fails(&empty, &bucket, base);
    assert!(err.contains(&key), "the error names the object: {err}");
    assert!(err.contains("CRC mismatch in header"), "{err}");
    let store = netsy::store::Store::open(&empty).unwrap();
    assert_eq!(store.latest_revision(), 0, "nothing was imported");
}
on_both_providers!(
    snapshots_and_cleanup,
    snapshots_are_taken_and_covered_chunks_cleaned
);

/// `netsy inspect --config CFG KEY`: (success, stdout).
fn inspect(bucket: &Bucket, base: &Path, key: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["inspect", "--config"])
        .arg(bucket.config(base, ""))
        .arg(key)
        .envs(bucket.env())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Flips one byte of an object: at byte `at`, or in the middle.
async fn flip_a_byte(bucket: &Bucket, key: &str, at: Option<usize>) {
    let store = bucket.store();
    let mut data = store.get(key).await.unwrap().data.to_vec();
    let i = at.unwrap_or(data.len() / 2);
    data[i] ^= 0x40;
    store
        .put(key, Bytes::from(data), Condition::None)
        .await
        .unwrap();
}

async fn a_corrupt_chunk_is_refused_and_not_imported(bucket: Bucket, base: &Path) {
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let mut c = node.client().await;
    for i in 0..8 {
        c.put(format!("k{i}"), "v", None).await.unwrap(); // one chunk each: revisions 2..=9
    }
    node.kill9();
    let key = keys::chunk_key(6);
    let (ok, text) = inspect(&bucket, base, &key);
    assert!(ok, "{text}");
    assert!(
        text.contains("\"revision\":6") && text.ends_with("{\"verdict\":\"ok\"}\n"),
        "{text}"
    );
    // Flip a byte of the record's key: the protobuf still parses, only the
    // record's CRC can tell.
    let data = bucket.store().get(&key).await.unwrap().data;
    let at = data.windows(2).position(|w| w == b"k4").unwrap();
    flip_a_byte(&bucket, &key, Some(at)).await;
    let (ok, text) = inspect(&bucket, base, &key);
    assert!(!ok && text.contains("\"verdict\":\"invalid\""), "{text}");
    let empty = dir(base, "b");
    let err = start_fails(&empty, &bucket, base);
    assert!(err.contains(&key), "the error names the object: {err}");
    assert!(err.contains("CRC mismatch in record"), "{err}");
    let store = netsy::store::Store::open(&empty).unwrap();
    assert_eq!(
        store.latest_revision(),
        0,
        "nothing is imported, not even the chunks before the damaged one"
    );
}
on_both_providers!(corrupt_chunk, a_corrupt_chunk_is_refused_and_not_imported);

async fn acknowledged_writes_survive_kill9_and_restore_from_the_bucket_alone(
    bucket: Bucket,
    base: &Path,
) {
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let writes = AckedWrites::start(&node, 8, "/w/").await;
    writes.wait_for(300).await;
    node.kill9();
    let acked = writes.finish().await;

    // A new node on an empty data dir: the bucket is all it has.
    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    assert_acked_and_contiguous(&fresh, &acked).await;
}

/// Every acknowledged write under `/w/` is there at its revision, and the
/// revisions under it are contiguous from 2.
async fn assert_acked_and_contiguous(node: &Netsy, acked: &[(String, i64)]) {
    let mut c = node.client().await;
    let all = c
        .get("/w/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let present: std::collections::HashMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    for (key, rev) in acked {
        assert_eq!(
            present.get(key),
            Some(rev),
            "acknowledged write {key} at {rev} is missing"
        );
    }
    let revisions: BTreeSet<i64> = present.values().copied().collect();
    let expected: BTreeSet<i64> = (2..2 + revisions.len() as i64).collect();
    assert_eq!(revisions, expected, "revisions are contiguous");
}
on_both_providers!(
    kill9_during_writes,
    acknowledged_writes_survive_kill9_and_restore_from_the_bucket_alone
);

async fn concurrent_writers_share_chunks(bucket: Bucket, base: &Path) {
    let node = Netsy::on_bucket(&dir(base, "a"), &bucket, base, "");
    let mut tasks = Vec::new();
    for w in 0..64 {
        let mut c = node.client().await;
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..10 {
                let r = c.put(format!("/g/{w}/{i}"), "v", None).await.unwrap();
                revs.push(r.header().unwrap().revision());
            }
            revs
        }));
    }
    let mut revisions = BTreeSet::new();
    for t in tasks {
        revisions.extend(t.await.unwrap());
    }
    assert_eq!(revisions.len(), 640, "every write got its own revision");
    assert_eq!(
        revisions,
        (2..=641).collect::<BTreeSet<i64>>(),
        "contiguous revisions"
    );
    let chunks = bucket.store().list(keys::CHUNKS).await.unwrap();
    // Chunk 1 is the internal record; the 640 writes share the rest.
    let write_chunks = chunks.len() - 1;
    assert!(
        write_chunks < 640,
        "group commit: {write_chunks} chunks for 640 writes"
    );
    eprintln!("group commit: 640 writes in {write_chunks} chunks");
    let mut c = node.client().await;
    assert_eq!(count_prefix(&mut c, "/g/").await, 640);
    drop(node);
    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    let mut c = fresh.client().await;
    assert_eq!(
        count_prefix(&mut c, "/g/").await,
        640,
        "every write is in the bucket"
    );
}
on_both_providers!(group_commit, concurrent_writers_share_chunks);

/// The local database of a node whose process died and whose machine then
/// lost what was not flushed: a batch on the synchronous route is committed
/// to SQLite without an fsync (its chunk is the durable copy,
/// local-store.md), so the WAL keeps only a prefix of its frames (frames
/// are checksummed in a chain, so SQLite stops at the first missing one).
/// `frames`: how many WAL frames survive; None: the WAL is lost entirely.
fn crashed_copy(data: &Path, to: &Path, frames: Option<u64>) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(data.join("db.sqlite3"), to.join("db.sqlite3")).unwrap();
    let Some(frames) = frames else { return };
    let wal = std::fs::read(data.join("db.sqlite3-wal")).unwrap();
    let page = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let cut = (32 + frames as usize * (24 + page)).min(wal.len());
    std::fs::write(to.join("db.sqlite3-wal"), &wal[..cut]).unwrap();
}

/// WAL frames in a data directory's database.
fn wal_frames(data: &Path) -> u64 {
    let wal = std::fs::read(data.join("db.sqlite3-wal")).unwrap();
    let page = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as u64;
    (wal.len() as u64 - 32) / (24 + page)
}

/// The newest revision a data directory's database holds (0 if none).
fn local_revision(data: &Path) -> i64 {
    let db = rusqlite::Connection::open(data.join("db.sqlite3")).unwrap();
    db.query_row("SELECT COALESCE(MAX(revision), 0) FROM records", [], |r| {
        r.get(0)
    })
    .unwrap_or(0)
}

/// A node on `data` SIGKILLed while 8 clients write under `/w/` (after
/// 200 acknowledgements); the writes it acknowledged.
async fn killed_during_writes(data: &Path, bucket: &Bucket, base: &Path) -> Vec<(String, i64)> {
    let node = Netsy::on_bucket(data, bucket, base, "");
    let writes = AckedWrites::start(&node, 8, "/w/").await;
    writes.wait_for(200).await;
    node.kill9();
    writes.finish().await
}

/// SIGKILL during writes, then the machine loses the unflushed tail of
/// the local database (the whole WAL, half of it, all but its last
/// frame): restarted on that data directory, the node takes the lost
/// revisions back from the bucket, and every acknowledged write is there
/// at its revision; a fresh node restored from the bucket alone has them
/// too.
async fn acknowledged_writes_survive_losing_the_unflushed_local_commits(
    bucket: Bucket,
    base: &Path,
) {
    let data = dir(base, "a");
    let acked = killed_during_writes(&data, &bucket, base).await;
    let newest = acked.iter().map(|(_, r)| *r).max().unwrap();

    let frames = wal_frames(&data);
    assert!(frames > 2, "the writes are in the WAL ({frames} frames)");
    for (name, keep) in [
        ("no-wal", None),
        ("half", Some(frames / 2)),
        ("all-but-one", Some(frames - 1)),
    ] {
        let copy = base.join(format!("crashed-{name}"));
        crashed_copy(&data, &copy, keep);
        if keep.is_none() {
            assert!(
                local_revision(&copy) < newest,
                "the crashed copy lost acknowledged writes locally"
            );
        }
        let restarted = Netsy::on_bucket(&copy, &bucket, base, "");
        assert_acked_and_contiguous(&restarted, &acked).await;
        restarted.kill9();
    }

    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    assert_acked_and_contiguous(&fresh, &acked).await;
}
on_both_providers!(
    unflushed_local_commits_lost,
    acknowledged_writes_survive_losing_the_unflushed_local_commits
);

/// Every file under `dir` (recursively), apart from the provider's own.
fn object_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".netsy-") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The fs provider's objects are durable by their journal record, not by a
/// flush of their own files (object-storage.md). SIGKILL during writes, then
/// a machine crash that lost what was never flushed: every chunk file
/// written since the journal's last checkpoint is gone or empty, and the
/// local WAL is gone. A node restarted on that data directory, and a fresh
/// node on the bucket alone, have every acknowledged write at its revision.
#[tokio::test(flavor = "multi_thread")]
async fn fs_acknowledged_writes_survive_losing_every_unflushed_object_file() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let bucket_dir = base.join("bucket");
    let bucket = Bucket::fs(&bucket_dir);
    let data = dir(base, "a");
    let acked = killed_during_writes(&data, &bucket, base).await;

    let chunks: Vec<_> = object_files(&bucket_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/chunks/"))
        .collect();
    assert!(
        chunks.len() > 2,
        "the writes made chunks ({})",
        chunks.len()
    );
    for (i, chunk) in chunks.iter().enumerate() {
        if i % 2 == 0 {
            std::fs::remove_file(chunk).unwrap();
        } else {
            std::fs::write(chunk, b"").unwrap();
        }
    }
    let copy = base.join("crashed");
    crashed_copy(&data, &copy, None);
    let restarted = Netsy::on_bucket(&copy, &bucket, base, "");
    assert_acked_and_contiguous(&restarted, &acked).await;
    restarted.kill9();

    let fresh = Netsy::on_bucket(&dir(base, "b"), &bucket, base, "");
    assert_acked_and_contiguous(&fresh, &acked).await;
}
