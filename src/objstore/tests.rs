//! Provider behaviour on memory and fs, plus the wrappers.

use std::sync::Arc;

use bytes::Bytes;

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn memory_store_behaves() {
    behaviour::check_all(Arc::new(memory::MemoryStore::new()), "t").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_store_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs::FsStore::open(dir.path()).unwrap();
    behaviour::check_all(Arc::new(store), "t").await;
}

/// Runs `f` on a thread of its own that allows blocking I/O (as the
/// commit thread does), with a multi-thread runtime's handle; returns the
/// runtime for what the test does after.
fn on_blocking_io_thread(
    f: impl FnOnce(tokio::runtime::Handle) + Send + 'static,
) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    std::thread::spawn(move || {
        allow_blocking_io_on_this_thread();
        f(handle)
    })
    .join()
    .unwrap();
    runtime
}

/// The same, from a thread that allows blocking I/O: small objects are
/// written there, in two halves.
#[test]
fn fs_store_behaves_writing_on_the_calling_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(fs::FsStore::open(dir.path()).unwrap());
    on_blocking_io_thread(move |handle| handle.block_on(behaviour::check_all(store, "t")));
}

/// A small object's temporary file is written after its journal record,
/// while the device writes the record: when it cannot be written, the
/// write fails and its record is taken back, so a repair does not make the
/// object.
#[test]
fn fs_a_temporary_file_that_cannot_be_written_takes_its_record_back() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join(".netsy-tmp");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let store = fs::FsStore::open(dir.path()).unwrap();
        // No spare made yet, and no directory to make a temporary file in.
        std::fs::remove_dir_all(&tmp).unwrap();
        std::fs::write(&tmp, b"not a directory").unwrap();
        let data = Bytes::from_static(b"a");
        let failed = runtime.block_on(store.put("chunks/0001/a", data, Condition::IfAbsent));
        assert!(matches!(failed, Err(ObjError::Fatal { .. })), "{failed:?}");
        assert!(!dir.path().join("chunks/0001/a").exists());
    }
    std::fs::remove_file(&tmp).unwrap();
    let store = fs::FsStore::open(dir.path()).unwrap();
    let after = runtime.block_on(store.get("chunks/0001/a"));
    assert!(matches!(after, Err(ObjError::NotFound(_))), "{after:?}");
}

/// A write on the calling thread: its first half (temporary file, journal
/// record) runs at the first poll and the object appears only at the
/// second; one dropped between the halves never happens, not even after a
/// repair, and an overwrite dropped so keeps the object it would have
/// replaced; another write started on the thread meanwhile waits its turn
/// on the blocking pool instead of for itself.
#[test]
fn fs_a_write_on_the_calling_thread_appears_only_when_finished() {
    use std::task::{Context, Poll, Waker};
    let large = || Bytes::from(vec![7u8; (1 << 20) + 1]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let runtime = on_blocking_io_thread(move |handle| {
        let _context = handle.enter();
        let store = fs::FsStore::open(&root).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let data = |s: &'static str| Bytes::from_static(s.as_bytes());

        let mut put = store.put("chunks/0001/a", data("aaa"), Condition::IfAbsent);
        assert!(put.as_mut().poll(&mut cx).is_pending());
        assert!(
            !root.join("chunks/0001/a").exists(),
            "in place before its flush"
        );
        let Poll::Ready(etag) = put.as_mut().poll(&mut cx) else {
            panic!("the second half did not finish at once");
        };
        assert_eq!(etag.unwrap(), content_etag(b"aaa"));
        assert_eq!(std::fs::read(root.join("chunks/0001/a")).unwrap(), b"aaa");

        let mut cancelled = store.put("chunks/0002/b", data("bbb"), Condition::IfAbsent);
        assert!(cancelled.as_mut().poll(&mut cx).is_pending());
        drop(cancelled);
        assert!(!root.join("chunks/0002/b").exists());

        // One whose key's path is not a file this store wrote (here a
        // directory) cannot be taken back by a record: a checkpoint
        // empties the journal instead, so no repair trips over it.
        std::fs::create_dir_all(root.join("d/inner")).unwrap();
        let mut abandoned = store.put("d", data("new"), Condition::None);
        assert!(abandoned.as_mut().poll(&mut cx).is_pending());
        drop(abandoned);
        assert!(root.join("d/inner").is_dir());

        // An overwrite dropped between its halves leaves the object it
        // would have replaced (a large one too), even after a repair.
        handle
            .block_on(store.put("lock", data("old"), Condition::None))
            .unwrap();
        let if_old = Condition::IfMatch(content_etag(b"old"));
        let mut abandoned = store.put("lock", data("new"), if_old);
        assert!(abandoned.as_mut().poll(&mut cx).is_pending());
        drop(abandoned);
        handle
            .block_on(store.put("big", large(), Condition::None))
            .unwrap();
        let mut abandoned = store.put("big", data("small"), Condition::None);
        assert!(abandoned.as_mut().poll(&mut cx).is_pending());
        drop(abandoned);
        assert_eq!(std::fs::read(root.join("lock")).unwrap(), b"old");

        let mut first = store.put("c1", data("1"), Condition::None);
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let mut second = store.put("c2", data("2"), Condition::None);
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert!(matches!(first.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        handle.block_on(second).unwrap();
        assert_eq!(std::fs::read(root.join("c2")).unwrap(), b"2");

        // Its directory removed behind the store's back: the write fails
        // at the rename, and the next one makes the directory again.
        std::fs::remove_dir_all(root.join("chunks")).unwrap();
        let lost = handle.block_on(store.put("chunks/0001/z", data("z"), Condition::IfAbsent));
        assert!(matches!(lost, Err(ObjError::Fatal { .. })), "{lost:?}");
        handle
            .block_on(store.put("chunks/0001/y", data("y"), Condition::IfAbsent))
            .unwrap();
    });
    // The dropped writes' records were taken back: a repair does not make
    // them, and brings back what they would have replaced (a machine
    // crash lost the small object's file, which was never flushed).
    std::fs::remove_file(dir.path().join("lock")).unwrap();
    let store = fs::FsStore::open(dir.path()).unwrap();
    assert_eq!(
        &runtime.block_on(store.get("lock")).unwrap().data[..],
        b"old"
    );
    assert_eq!(runtime.block_on(store.get("big")).unwrap().data, large());
    let again = runtime.block_on(store.get("chunks/0002/b"));
    assert_eq!(
        again.unwrap_err(),
        ObjError::NotFound("chunks/0002/b".into())
    );
    assert_eq!(&runtime.block_on(store.get("c1")).unwrap().data[..], b"1");
    assert!(runtime.block_on(store.get("chunks/0001/z")).is_err());
    assert_eq!(
        &runtime.block_on(store.get("chunks/0001/y")).unwrap().data[..],
        b"y"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prefixed_store_scopes_keys() {
    let inner: Arc<dyn ObjectStore> = Arc::new(memory::MemoryStore::new());
    let scoped = Arc::new(Prefixed::new(inner.clone(), "cluster-a"));
    behaviour::check_all(scoped.clone(), "t").await;
    scoped
        .put("chunks/x", Bytes::from_static(b"1"), Condition::None)
        .await
        .unwrap();
    assert!(inner.get("cluster-a/chunks/x").await.is_ok());
    assert_eq!(scoped.list("chunks/").await.unwrap()[0].key, "chunks/x");
    let err = scoped.get("missing").await.unwrap_err();
    assert_eq!(
        err,
        ObjError::NotFound("missing".into()),
        "errors name the unprefixed key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_refuses_keys_that_escape_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs::FsStore::open(dir.path()).unwrap();
    for bad in ["../x", "/abs", "a//b", ".netsy-tmp/x", ""] {
        let err = store
            .put(bad, Bytes::from_static(b"x"), Condition::None)
            .await
            .unwrap_err();
        assert!(matches!(err, ObjError::Fatal { .. }), "{bad}: {err}");
    }
}

/// The preparing thread is woken only when the first key's directory is
/// missing or spares run low, and then makes every directory asked for.
#[tokio::test(flavor = "multi_thread")]
async fn fs_prepare_wakes_its_thread_only_when_a_write_would_soon_lack_something() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs::FsStore::open(dir.path()).unwrap();
    let made = |d: &str| dir.path().join(d).is_dir();
    store.prepare(vec!["a/1".into(), "b/2".into()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(made("a") && made("b") && store.spares_available() >= fs::SPARES_READY) {
        assert!(std::time::Instant::now() < deadline, "nothing prepared");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(store.preparer_wakes(), 1);
    // The next write's directory exists and spares are plenty: no wake.
    store.prepare(vec!["a/3".into(), "c/4".into()]);
    assert_eq!(store.preparer_wakes(), 1);
    store.prepare(vec!["d/5".into()]);
    assert_eq!(store.preparer_wakes(), 2);
    while !made("d") {
        assert!(std::time::Instant::now() < deadline, "d not prepared");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_prepare_creates_directories_and_survives_their_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(fs::FsStore::open(dir.path()).unwrap());
    let prefixed = Prefixed::new(store.clone(), "c");
    prefixed.prepare(vec!["chunks/0007/7.netsy".into()]);
    let expected = dir.path().join("c/chunks/0007");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !expected.is_dir() {
        assert!(
            std::time::Instant::now() < deadline,
            "prepare made no directory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        nice_of_thread("netsy-fs-prepar"),
        Some(crate::background::NICE_IDLE),
        "the preparing thread works at idle priority"
    );
    let put = |key: &'static str| {
        let s = store.clone();
        async move {
            s.put(key, Bytes::from_static(b"x"), Condition::IfAbsent)
                .await
        }
    };
    put("c/chunks/0007/7.netsy").await.unwrap();
    // Someone removes the directory behind the store's back: the write
    // that finds it missing fails, and the next one creates it again.
    std::fs::remove_dir_all(dir.path().join("c/chunks")).unwrap();
    let _ = put("c/chunks/0007/8.netsy").await;
    put("c/chunks/0007/9.netsy").await.unwrap();
    assert_eq!(
        store.get("c/chunks/0007/9.netsy").await.unwrap().data,
        &b"x"[..]
    );
}

/// A store whose puts fail a given number of times with a given error, and
/// which counts put attempts and keeps the bytes of each.
pub(crate) struct Flaky {
    pub(crate) inner: memory::MemoryStore,
    pub(crate) failures: std::sync::atomic::AtomicU32,
    fail_with: fn(&str) -> ObjError,
    attempts: std::sync::atomic::AtomicU32,
    /// (key, bytes) of every put attempt, in order.
    pub(crate) puts: std::sync::Mutex<Vec<(String, Bytes)>>,
}

impl Flaky {
    pub(crate) fn new(failures: u32, fail_with: fn(&str) -> ObjError) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: memory::MemoryStore::new(),
            failures: failures.into(),
            fail_with,
            attempts: 0.into(),
            puts: Default::default(),
        })
    }

    /// Put attempts since the last call.
    pub(crate) fn take_attempts(&self) -> u32 {
        self.attempts.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

pub(crate) fn transient(key: &str) -> ObjError {
    ObjError::Transient {
        key: key.into(),
        message: "HTTP 503".into(),
    }
}

pub(crate) fn fatal(key: &str) -> ObjError {
    ObjError::Fatal {
        key: key.into(),
        message: "HTTP 403: AccessDenied".into(),
    }
}

impl ObjectStore for Flaky {
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Object, ObjError>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        condition: Condition,
    ) -> BoxFut<'a, Result<String, ObjError>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.attempts.fetch_add(1, SeqCst);
        if let Ok(mut puts) = self.puts.lock() {
            puts.push((key.to_string(), data.clone()));
        }
        let fail = self
            .failures
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            let error = (self.fail_with)(key);
            return Box::pin(async move { Err(error) });
        }
        self.inner.put(key, data, condition)
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), ObjError>> {
        self.inner.delete(key)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<Listed>, ObjError>> {
        self.inner.list(prefix)
    }

    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_preconditions_are_not() {
    let v = || Bytes::from_static(b"v");
    let flaky = Flaky::new(2, transient);
    let store = Retrying::new(flaky.clone(), 3, std::time::Duration::from_millis(1));
    store.put("k", v(), Condition::None).await.unwrap();
    assert_eq!(flaky.take_attempts(), 3, "two failures, then success");

    flaky.failures.store(5, std::sync::atomic::Ordering::SeqCst);
    let err = store.put("k", v(), Condition::None).await.unwrap_err();
    assert!(err.is_transient(), "gives up after its attempts: {err}");
    assert_eq!(flaky.take_attempts(), 3);

    flaky.failures.store(0, std::sync::atomic::Ordering::SeqCst);
    let err = store
        .put("k", Bytes::from_static(b"w"), Condition::IfAbsent)
        .await
        .unwrap_err();
    assert_eq!(err, ObjError::PreconditionFailed("k".into()));
    assert_eq!(
        flaky.take_attempts(),
        1,
        "a lost condition is never retried"
    );

    let flaky = Flaky::new(1, fatal);
    let store = Retrying::new(flaky.clone(), 3, std::time::Duration::from_millis(1));
    let err = store.put("k", v(), Condition::None).await.unwrap_err();
    assert!(matches!(err, ObjError::Fatal { .. }), "{err}");
    assert_eq!(flaky.take_attempts(), 1, "a fatal error is not retried");
}

/// What a machine crash can do to files moved into place since the last
/// checkpoint (they were never flushed): lose them, leave them empty, or
/// bring back a removed one. Opening the store again repairs all of it.
#[tokio::test(flavor = "multi_thread")]
async fn fs_files_a_machine_crash_lost_are_repaired_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let large = Bytes::from(vec![9u8; (1 << 20) + 1]);
    {
        let store = fs::FsStore::open(dir.path()).unwrap();
        let put = |key: &'static str, data: Bytes, condition| {
            let store = &store;
            async move { store.put(key, data, condition).await.unwrap() }
        };
        put(
            "chunks/0001/a",
            Bytes::from_static(b"aaa"),
            Condition::IfAbsent,
        )
        .await;
        put("chunks/0002/b", Bytes::from_static(b"bbb"), Condition::None).await;
        put("c", Bytes::from_static(b"ccc"), Condition::None).await;
        store.delete("c").await.unwrap();
        put("big", Bytes::from_static(b"small first"), Condition::None).await;
        put("big", large.clone(), Condition::None).await;
    }
    std::fs::remove_file(dir.path().join("chunks/0001/a")).unwrap();
    std::fs::remove_dir(dir.path().join("chunks/0001")).unwrap();
    std::fs::write(dir.path().join("chunks/0002/b"), b"").unwrap();
    std::fs::write(dir.path().join("c"), b"ccc").unwrap();

    let store = fs::FsStore::open(dir.path()).unwrap();
    assert_eq!(&store.get("chunks/0001/a").await.unwrap().data[..], b"aaa");
    assert_eq!(&store.get("chunks/0002/b").await.unwrap().data[..], b"bbb");
    assert_eq!(
        store.get("c").await.unwrap_err(),
        ObjError::NotFound("c".into()),
        "a removal the crash undid is done again"
    );
    assert_eq!(
        store.get("big").await.unwrap().data,
        large,
        "a large object (flushed in its own file) is not replaced by an older record"
    );
    // The repair emptied the journal: what it restored is flushed, and a
    // later loss is not the journal's to repair.
    drop(store);
    std::fs::remove_file(dir.path().join("chunks/0002/b")).unwrap();
    let store = fs::FsStore::open(dir.path()).unwrap();
    assert!(store.get("chunks/0002/b").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_conditions_hold_between_two_openings_of_one_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = fs::FsStore::open(dir.path()).unwrap();
    let second = fs::FsStore::open(dir.path()).unwrap();
    let etag = first
        .put("k", Bytes::from_static(b"1"), Condition::IfAbsent)
        .await
        .unwrap();
    let again = second
        .put("k", Bytes::from_static(b"2"), Condition::IfAbsent)
        .await
        .unwrap_err();
    assert_eq!(again, ObjError::PreconditionFailed("k".into()));
    second
        .put(
            "k",
            Bytes::from_static(b"2"),
            Condition::IfMatch(etag.clone()),
        )
        .await
        .unwrap();
    let stale = first
        .put("k", Bytes::from_static(b"3"), Condition::IfMatch(etag))
        .await
        .unwrap_err();
    assert_eq!(stale, ObjError::PreconditionFailed("k".into()));
    assert_eq!(&first.get("k").await.unwrap().data[..], b"2");
}

/// The nice value of this process's thread called `name` (as the kernel
/// keeps it: at most 15 bytes).
fn nice_of_thread(name: &str) -> Option<i32> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the command's closing parenthesis: state is the
        // 3rd field of the line, nice the 19th.
        let after = &stat[stat.rfind(')')? + 2..];
        return after.split(' ').nth(16)?.parse().ok();
    }
    None
}
