//! One watch on a prefix, read by its own task. The task hands each
//! response's events to a callback (latency bookkeeping) and counts them;
//! with `keep` it also keeps every event for the checks, and ends at the
//! progress response that `finish` asks for: the server sends that only
//! once the watch has caught up, so any event after the expected ones
//! (a duplicate, a stray write) arrives before it and is kept too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use netsy::grpc::client::CallSender;
use netsy::grpc::Channel;
use netsy::pb::etcdserverpb::watch_request::RequestUnion;
use netsy::pb::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use netsy::pb::mvccpb::Event;
use netsy::store::keyrange::prefix_end;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Watcher {
    sender: CallSender,
    counted: watch::Receiver<u64>,
    kept: Arc<Mutex<Vec<Event>>>,
    progress_asked: Arc<AtomicBool>,
    task: JoinHandle<Result<(), String>>,
}

impl Watcher {
    /// Opens the watch and returns once the server confirmed it.
    /// `on_events(arrival_nanos, events)` returns how many of the events
    /// count towards `wait_for`.
    pub async fn start<F>(
        ch: &Channel,
        prefix: &str,
        start_revision: i64,
        prev_kv: bool,
        keep: bool,
        mut on_events: F,
    ) -> Result<Watcher, String>
    where
        F: FnMut(u64, &[Event]) -> u64 + Send + 'static,
    {
        let mut call = ch
            .start("/etcdserverpb.Watch/Watch", None)
            .await
            .map_err(|e| e.to_string())?;
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: Bytes::from(prefix.to_string()),
                range_end: Bytes::from(prefix_end(prefix.as_bytes())),
                start_revision,
                prev_kv,
                ..Default::default()
            })),
        };
        call.sender.send(&create).await.map_err(|e| e.to_string())?;
        let mut rx = call.receiver;
        match rx
            .next::<WatchResponse>()
            .await
            .map_err(|e| e.to_string())?
        {
            Some(r) if r.created && !r.canceled => {}
            other => return Err(format!("watch was not created: {other:?}")),
        }
        let (count_tx, counted) = watch::channel(0u64);
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keep_to = kept.clone();
        let progress_asked = Arc::new(AtomicBool::new(false));
        let asked = progress_asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let resp = match rx.next::<WatchResponse>().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("the watch stream ended".to_string()),
                    Err(e) => return Err(format!("the watch stream failed: {e}")),
                };
                if resp.canceled {
                    return Err(format!("the watch was canceled: {}", resp.cancel_reason));
                }
                if resp.events.is_empty() {
                    // The answer to `finish`'s progress request (watch id -1;
                    // a watch's own progress notification carries its id).
                    if keep && asked.load(Ordering::SeqCst) && resp.watch_id == -1 {
                        return Ok(());
                    }
                    continue;
                }
                let now = crate::workload::now_nanos();
                let n = on_events(now, &resp.events);
                if keep {
                    if let Ok(mut k) = keep_to.lock() {
                        k.extend(resp.events);
                    }
                }
                count_tx.send_modify(|c| *c += n);
            }
        });
        Ok(Watcher {
            sender: call.sender,
            counted,
            kept,
            progress_asked,
            task,
        })
    }

    /// Waits until `n` events were counted; false on timeout or if the
    /// stream ended first.
    pub async fn wait_for(&mut self, n: u64, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.counted.wait_for(|c| *c >= n)).await,
            Ok(Ok(_))
        )
    }

    pub fn counted(&self) -> u64 {
        *self.counted.borrow()
    }

    /// With `keep`: asks for a progress response, waits for it, and returns
    /// every event received.
    pub async fn finish(&mut self, timeout: Duration) -> Result<Vec<Event>, String> {
        let progress = WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        };
        self.progress_asked.store(true, Ordering::SeqCst);
        if !self.task.is_finished() {
            self.sender
                .send(&progress)
                .await
                .map_err(|e| format!("progress request: {e}"))?;
        }
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(format!("watch task: {e}")),
            Err(_) => {
                return Err(format!(
                    "no progress response within {}s",
                    timeout.as_secs()
                ))
            }
        }
        Ok(self
            .kept
            .lock()
            .map(|mut k| std::mem::take(&mut *k))
            .unwrap_or_default())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
        self.sender.cancel();
    }
}
