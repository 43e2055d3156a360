//! Counts a connection's streams whose tasks have been woken and not yet
//! run: the streams the connection's task should let queue their frames
//! before it writes. Open streams are not the measure: a kube-apiserver's
//! connection carries watch streams that sit parked for minutes beside the
//! writes it answers. Also the plain count of things under way that
//! both sides keep.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The count, shared by a connection's streams.
#[derive(Clone, Default)]
pub struct QueuedStreams(Arc<AtomicUsize>);

impl QueuedStreams {
    /// Streams woken and not yet run.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Runs `stream`, counted while it is woken and waits for its turn.
    pub async fn track<F: Future>(&self, stream: F) -> F::Output {
        let mark = Arc::new(Mark {
            state: AtomicU8::new(RUNNING),
            queued: self.0.clone(),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(mark.clone());
        let _done = Done(mark.clone());
        let mut stream = std::pin::pin!(stream);
        std::future::poll_fn(|cx| {
            mark.task.register(cx.waker());
            mark.run();
            stream.as_mut().poll(&mut Context::from_waker(&waker))
        })
        .await
    }
}

const RUNNING: u8 = 0;
const QUEUED: u8 = 1;
const DONE: u8 = 2;

/// One stream's place in the count, and the waker of its task.
struct Mark {
    state: AtomicU8,
    queued: Arc<AtomicUsize>,
    /// The task's own waker; a wake takes it, and the next poll puts it
    /// back (the task is scheduled meanwhile, so a wake in between is not
    /// lost).
    task: AtomicWaker,
}

impl Mark {
    /// The stream's task runs: it no longer waits. A wake while it runs
    /// counts it again, as its task will run again.
    fn run(&self) {
        if self
            .state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A stream that has ended is never counted again, whoever still
        // holds its waker.
        if self
            .state
            .compare_exchange(RUNNING, QUEUED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.queued.fetch_add(1, Ordering::AcqRel);
        }
        self.task.wake();
    }
}

/// Takes an ended (or dropped) stream out of the count.
struct Done(Arc<Mark>);

impl Drop for Done {
    fn drop(&mut self) {
        if self.0.state.swap(DONE, Ordering::AcqRel) == QUEUED {
            self.0.queued.fetch_sub(1, Ordering::AcqRel);
        }
        self.0.task.take();
    }
}

/// Counts one thing in `count` while it lives: a server's open streams
/// (for its idle timeout), a client's unary calls under way.
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub fn new(count: Arc<AtomicUsize>) -> Counted {
        count.fetch_add(1, Ordering::AcqRel);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::task::Poll;
    use tokio::sync::Notify;

    /// A stream parked on a notification is not counted; once notified it
    /// is, until its task runs.
    #[tokio::test(flavor = "current_thread")]
    async fn a_parked_stream_counts_only_from_its_wake_to_its_run() {
        let queued = QueuedStreams::default();
        let notify = Arc::new(Notify::new());
        let ran = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (queued, notify, ran) = (queued.clone(), notify.clone(), ran.clone());
            async move {
                queued
                    .track(async move {
                        notify.notified().await;
                        ran.store(true, Ordering::SeqCst);
                        // Parked again, for good.
                        std::future::pending::<()>().await;
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(queued.count(), 0, "a parked stream is not waiting to run");
        notify.notify_one();
        assert_eq!(queued.count(), 1, "a woken stream waits for its turn");
        assert!(!ran.load(Ordering::SeqCst));
        tokio::task::yield_now().await;
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(queued.count(), 0, "a stream that ran and parked again");
        task.abort();
        let _ = task.await;
        assert_eq!(queued.count(), 0);
    }

    /// A stream dropped while woken leaves the count, and a wake after
    /// its end does not bring it back.
    #[tokio::test(flavor = "current_thread")]
    async fn an_ended_stream_leaves_the_count_for_good() {
        let queued = QueuedStreams::default();
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (queued, notify) = (queued.clone(), notify.clone());
            async move { queued.track(notify.notified()).await }
        });
        tokio::task::yield_now().await;
        notify.notify_one();
        assert_eq!(queued.count(), 1);
        task.abort();
        let _ = task.await;
        assert_eq!(queued.count(), 0, "dropped while woken");

        // A waker kept past the end (h2 keeps a stream's) wakes nothing.
        let kept = Arc::new(Mutex::new(None::<Waker>));
        let task = tokio::spawn({
            let (queued, kept) = (queued.clone(), kept.clone());
            async move {
                queued
                    .track(std::future::poll_fn(|cx| {
                        *kept.lock().unwrap() = Some(cx.waker().clone());
                        Poll::Ready(())
                    }))
                    .await
            }
        });
        task.await.unwrap();
        kept.lock().unwrap().take().unwrap().wake();
        assert_eq!(queued.count(), 0, "woken after its end");
    }
}
