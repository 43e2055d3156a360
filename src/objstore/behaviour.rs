//! The behaviour every provider must show, as one reusable check: unit
//! tests run it on memory and fs, integration tests on a real S3 server
//! (moto) and on fs shared by several processes. Panics on any deviation.

use std::sync::Arc;

use bytes::Bytes;

use super::{put_if_absent_idempotent, Condition, ObjError, ObjectStore};

/// Runs every check with keys under `scope/` (so runs do not collide).
pub async fn check_all(store: Arc<dyn ObjectStore>, scope: &str) {
    let k = |name: &str| format!("{scope}/{name}");

    // Reads of missing objects.
    assert!(matches!(
        store.get(&k("missing")).await,
        Err(ObjError::NotFound(_))
    ));

    // Unconditional put and get.
    let etag1 = store
        .put(&k("a"), Bytes::from_static(b"one"), Condition::None)
        .await
        .unwrap();
    let got = store.get(&k("a")).await.unwrap();
    assert_eq!(&got.data[..], b"one");
    assert!(!got.etag.is_empty());
    assert_eq!(got.etag, etag1, "put returns the stored ETag");

    // Create-only.
    assert!(matches!(
        store
            .put(&k("a"), Bytes::from_static(b"two"), Condition::IfAbsent)
            .await,
        Err(ObjError::PreconditionFailed(_))
    ));
    assert_eq!(
        &store.get(&k("a")).await.unwrap().data[..],
        b"one",
        "a lost create changes nothing"
    );
    store
        .put(&k("b"), Bytes::from_static(b"bee"), Condition::IfAbsent)
        .await
        .unwrap();

    // If-Match.
    let etag2 = store
        .put(
            &k("a"),
            Bytes::from_static(b"two"),
            Condition::IfMatch(etag1.clone()),
        )
        .await
        .unwrap();
    assert_ne!(etag1, etag2);
    assert!(matches!(
        store
            .put(
                &k("a"),
                Bytes::from_static(b"three"),
                Condition::IfMatch(etag1.clone())
            )
            .await,
        Err(ObjError::PreconditionFailed(_))
    ));
    assert!(matches!(
        store
            .put(
                &k("nope"),
                Bytes::from_static(b"x"),
                Condition::IfMatch(etag1)
            )
            .await,
        Err(ObjError::PreconditionFailed(_))
    ));
    assert_eq!(&store.get(&k("a")).await.unwrap().data[..], b"two");

    // Idempotent create: the same bytes again succeed, others fail naming the key.
    put_if_absent_idempotent(&*store, &k("b"), Bytes::from_static(b"bee"))
        .await
        .unwrap();
    let err = put_if_absent_idempotent(&*store, &k("b"), Bytes::from_static(b"wasp"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&k("b")), "{err}");

    // Listing: sorted, by prefix, nested keys included.
    for name in ["l/2", "l/10/x", "l/1", "lx"] {
        store
            .put(&k(name), Bytes::from_static(b"."), Condition::None)
            .await
            .unwrap();
    }
    let listed: Vec<String> = store
        .list(&k("l/"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(listed, vec![k("l/1"), k("l/10/x"), k("l/2")]);
    let listed: Vec<String> = store
        .list(&k("l"))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(listed.len(), 4);
    assert!(store.list(&k("zzz/")).await.unwrap().is_empty());
    assert_eq!(store.list(&k("l/1")).await.unwrap()[0].size, 1);

    // Deletes.
    store.delete(&k("l/1")).await.unwrap();
    store.delete(&k("l/1")).await.unwrap();
    let failed = store
        .delete_batch(&[k("l/2"), k("l/10/x"), k("never")])
        .await
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(store.list(&k("l/")).await.unwrap().is_empty());

    // Files in and out.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, vec![7u8; 300_000]).unwrap();
    store.put_file(&k("file"), &src).await.unwrap();
    let dest = dir.path().join("dest");
    assert_eq!(store.get_to_file(&k("file"), &dest).await.unwrap(), 300_000);
    assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 300_000]);
    assert!(matches!(
        store.get_to_file(&k("nofile"), &dest).await,
        Err(ObjError::NotFound(_))
    ));

    create_only_race(store.clone(), &k("race"), 16).await;
    if_match_race(store, &k("cas"), 16).await;
}

/// Many concurrent create-only writes of one key: exactly one wins.
pub async fn create_only_race(store: Arc<dyn ObjectStore>, key: &str, writers: usize) {
    let mut tasks = Vec::new();
    for i in 0..writers {
        let (s, key) = (store.clone(), key.to_string());
        tasks.push(tokio::spawn(async move {
            s.put(
                &key,
                Bytes::from(format!("writer-{i}")),
                Condition::IfAbsent,
            )
            .await
            .map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(ObjError::PreconditionFailed(_)) => {}
            Err(e) => panic!("unexpected error in the create race: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one create-only write wins: {winners:?}"
    );
    let data = store.get(key).await.unwrap().data;
    assert_eq!(data, Bytes::from(format!("writer-{}", winners[0])));
}

/// Many concurrent If-Match writes from the same ETag: exactly one wins.
pub async fn if_match_race(store: Arc<dyn ObjectStore>, key: &str, writers: usize) {
    let etag = store
        .put(key, Bytes::from_static(b"start"), Condition::None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..writers {
        let (s, key, etag) = (store.clone(), key.to_string(), etag.clone());
        tasks.push(tokio::spawn(async move {
            s.put(
                &key,
                Bytes::from(format!("cas-{i}")),
                Condition::IfMatch(etag),
            )
            .await
            .map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(ObjError::PreconditionFailed(_)) => {}
            Err(e) => panic!("unexpected error in the If-Match race: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one If-Match write wins: {winners:?}"
    );
    assert_eq!(
        store.get(key).await.unwrap().data,
        Bytes::from(format!("cas-{}", winners[0]))
    );
}
