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
        F: FnMut(u64, &[SlimEvent]) -> u64 + Send + 'static,
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
                // Without `keep` only the events' values are decoded: the
                // watchers' client shares the server's two CPUs, and full
                // decodes of a million events a second made it the
                // bottleneck of the latency it measures.
                let resp = if keep {
                    rx.next::<WatchResponse>().await.map(|r| r.map(slim))
                } else {
                    rx.next::<Slim>().await.map(|r| r.map(|r| (r, Vec::new())))
                };
                let (resp, mut events) = match resp {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("the watch stream ended".to_string()),
                    Err(e) => return Err(format!("the watch stream failed: {e}")),
                };
                if resp.canceled {
                    return Err(format!("the watch was canceled: {}", resp.cancel_reason));
                }
                if resp.values.is_empty() {
                    // The answer to `finish`'s progress request (watch id -1;
                    // a watch's own progress notification carries its id).
                    if keep && asked.load(Ordering::SeqCst) && resp.watch_id == -1 {
                        return Ok(());
                    }
                    continue;
                }
                let now = crate::workload::now_nanos();
                let n = on_events(now, &resp.values);
                if keep {
                    if let Ok(mut k) = keep_to.lock() {
                        k.append(&mut events);
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

/// A WatchResponse as the watch's task reads it: the events' values (a
/// deletion's is empty), and the full events only when they are kept.
#[derive(Clone, PartialEq, prost::Message)]
struct Slim {
    #[prost(int64, tag = "2")]
    watch_id: i64,
    #[prost(bool, tag = "4")]
    canceled: bool,
    #[prost(string, tag = "6")]
    cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    values: Vec<SlimEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SlimEvent {
    #[prost(message, optional, tag = "2")]
    kv: Option<SlimKv>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SlimKv {
    #[prost(bytes = "bytes", tag = "5")]
    value: Bytes,
}

impl SlimEvent {
    /// The event's value (empty for a deletion).
    pub fn value(&self) -> &[u8] {
        self.kv.as_ref().map_or(&[], |kv| &kv.value[..])
    }
}

/// A full response as the slim one, with its events.
fn slim(r: WatchResponse) -> (Slim, Vec<Event>) {
    let values = r
        .events
        .iter()
        .map(|e| SlimEvent {
            kv: e.kv.as_ref().map(|kv| SlimKv {
                value: kv.value.clone(),
            }),
        })
        .collect();
    let slim = Slim {
        watch_id: r.watch_id,
        canceled: r.canceled,
        cancel_reason: r.cancel_reason,
        values,
    };
    (slim, r.events)
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
        self.sender.cancel();
    }
}
