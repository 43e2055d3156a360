//! Runs scenario steps against one server (etcd or netsy) through netsy's
//! own gRPC client, producing normalised JSON per step.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use netsy::grpc::client::{CallSender, ClientCall};
use netsy::grpc::{Channel, Status};
use netsy::pb::etcdserverpb::{
    AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    MemberListRequest, MemberListResponse, PutResponse, RangeResponse, StatusRequest,
    StatusResponse, TxnResponse, WatchResponse,
};

use crate::json::{obj, only, string};
use crate::normalize::{self, LeaseNames};
use crate::requests::{self, Leases};
use crate::scenario::Step;

/// A message whose content does not matter: encodes as nothing, decodes
/// anything (for calls where only the status is compared).
#[derive(Clone, Debug, Default, PartialEq)]
struct Ignored;

impl prost::Message for Ignored {
    fn encode_raw(&self, _buf: &mut impl bytes::BufMut) {}

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {}
}

/// How long a watch expectation waits for its items.
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// How long a keep-alive step waits for its answer.
const KEEP_ALIVE_WAIT: Duration = Duration::from_secs(5);

struct WatchStream {
    sender: CallSender,
    responses: mpsc::UnboundedReceiver<Result<Option<WatchResponse>, Status>>,
    pending: VecDeque<Value>,
    ended: bool,
    /// Progress requests sent on the stream, and answers to them received
    /// (the end-of-scenario check waits for the answer to every request,
    /// not just the first one it sees).
    progress_sent: usize,
    progress_answers: usize,
}

/// One server under test.
pub struct Target {
    channel: Channel,
    leases: Leases,
    lease_names: LeaseNames,
    streams: HashMap<String, WatchStream>,
    /// Open LeaseKeepAlive streams by name.
    keep_alives: HashMap<String, ClientCall>,
}

impl Target {
    pub async fn connect(addr: &str) -> Result<Target, String> {
        let channel = Channel::connect(addr).await.map_err(|e| e.to_string())?;
        Ok(Target {
            channel,
            leases: Leases::new(),
            lease_names: LeaseNames::new(),
            streams: HashMap::new(),
            keep_alives: HashMap::new(),
        })
    }

    async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        self.channel
            .unary_with_timeout(
                &format!("/etcdserverpb.{method}"),
                req,
                Some(Duration::from_secs(10)),
            )
            .await
    }

    /// Runs one step and returns its normalised outcome.
    pub async fn run(&mut self, step: &Step) -> Result<Value, String> {
        let body = &step.body;
        let names = &self.lease_names;
        let out = match step.op.as_str() {
            "range" => {
                let r = requests::range(body)?;
                self.unary::<_, RangeResponse>("KV/Range", &r)
                    .await
                    .map(|x| normalize::range(&x, names))
            }
            "put" => {
                let r = requests::put(body, &self.leases)?;
                self.unary::<_, PutResponse>("KV/Put", &r)
                    .await
                    .map(|x| normalize::put(&x, names))
            }
            "delete" => {
                let r = requests::delete(body)?;
                self.unary::<_, DeleteRangeResponse>("KV/DeleteRange", &r)
                    .await
                    .map(|x| normalize::delete(&x, names))
            }
            "txn" => {
                let r = requests::txn(body, &self.leases)?;
                self.unary::<_, TxnResponse>("KV/Txn", &r)
                    .await
                    .map(|x| normalize::txn(&x, names))
            }
            "compact" => {
                let r = requests::compact(body)?;
                self.unary::<_, CompactionResponse>("KV/Compact", &r)
                    .await
                    .map(|x| normalize::compact(&x))
            }
            "lease_grant" => {
                let (r, name) = requests::lease_grant(body)?;
                let resp = self
                    .unary::<_, LeaseGrantResponse>("Lease/LeaseGrant", &r)
                    .await;
                if let (Ok(g), Some(n)) = (&resp, name) {
                    self.leases.insert(n.clone(), g.id);
                    self.lease_names.insert(g.id, n);
                }
                let names = &self.lease_names;
                resp.map(|x| normalize::lease_grant(&x, names))
            }
            "lease_revoke" => {
                let r = requests::lease_revoke(body, &self.leases)?;
                self.unary::<_, LeaseRevokeResponse>("Lease/LeaseRevoke", &r)
                    .await
                    .map(|x| normalize::lease_revoke(&x))
            }
            "lease_time_to_live" => {
                let r = requests::lease_time_to_live(body, &self.leases)?;
                self.unary::<_, LeaseTimeToLiveResponse>("Lease/LeaseTimeToLive", &r)
                    .await
                    .map(|x| normalize::lease_time_to_live(&x, names))
            }
            "lease_leases" => {
                let r = requests::lease_leases(body)?;
                self.unary::<_, LeaseLeasesResponse>("Lease/LeaseLeases", &r)
                    .await
                    .map(|x| normalize::lease_leases(&x, names))
            }
            "lease_keep_alive" => return self.lease_keep_alive(body).await,
            "status" => self
                .unary::<_, StatusResponse>("Maintenance/Status", &StatusRequest {})
                .await
                .map(|x| normalize::status(&x)),
            "alarm" => {
                let r = requests::alarm(body)?;
                self.unary::<_, AlarmResponse>("Maintenance/Alarm", &r)
                    .await
                    .map(|x| normalize::alarm(&x))
            }
            "member_list" => self
                .unary::<_, MemberListResponse>("Cluster/MemberList", &MemberListRequest::default())
                .await
                .map(|x| normalize::member_list(&x)),
            "call" => {
                // Any method, with an empty request message: for the
                // Unimplemented set and unknown methods.
                let o = obj(body, "call")?;
                only(o, &["method"], "call")?;
                let method = string(o, "method")?.ok_or("call needs a method")?;
                self.channel
                    .unary_with_timeout::<_, Ignored>(
                        &method,
                        &Ignored,
                        Some(Duration::from_secs(10)),
                    )
                    .await
                    .map(|_| json!({"ok": true}))
            }
            "watch" => return self.watch(body).await,
            "watch_expect" => return self.watch_expect(body).await,
            other => return Err(format!("unknown step {other:?}")),
        };
        Ok(out.unwrap_or_else(|s| normalize::error(&s)))
    }

    /// One keep-alive on a named LeaseKeepAlive stream (opened on first
    /// use): sends the request and reads one answer. A stream that ended
    /// (error, close, or no answer in time) is dropped, so the next step
    /// naming it opens a new one.
    async fn lease_keep_alive(&mut self, body: &Value) -> Result<Value, String> {
        let request = requests::lease_keep_alive(body, &self.leases)?;
        let name =
            string(obj(body, "lease_keep_alive")?, "stream")?.unwrap_or_else(|| "default".into());
        if !self.keep_alives.contains_key(&name) {
            match self
                .channel
                .start("/etcdserverpb.Lease/LeaseKeepAlive", None)
                .await
            {
                Ok(call) => self.keep_alives.insert(name.clone(), call),
                Err(e) => return Ok(normalize::error(&e)),
            };
        }
        let call = self
            .keep_alives
            .get_mut(&name)
            .ok_or("keep-alive stream vanished")?;
        let answer = match call.sender.send(&request).await {
            // The server may have ended the stream with a status (e.g.
            // Unimplemented) before reading the request: prefer it.
            Err(send_error) => match next_keep_alive(call).await {
                Ok(Err(status)) => normalize::error(&status),
                _ => normalize::error(&send_error),
            },
            Ok(()) => match next_keep_alive(call).await {
                Ok(Ok(Some(r))) => return Ok(normalize::lease_keep_alive(&r, &self.lease_names)),
                Ok(Ok(None)) => json!({"stream_closed": true}),
                Ok(Err(status)) => normalize::error(&status),
                Err(_) => json!({"timeout": true}),
            },
        };
        self.keep_alives.remove(&name);
        Ok(answer)
    }

    async fn watch(&mut self, body: &Value) -> Result<Value, String> {
        let o = obj(body, "watch")?;
        only(o, &["stream", "create", "cancel", "progress"], "watch")?;
        let name = string(o, "stream")?.unwrap_or_else(|| "default".into());
        let request = requests::watch(o)?;
        if !self.streams.contains_key(&name) {
            let call = self
                .channel
                .start("/etcdserverpb.Watch/Watch", None)
                .await
                .map_err(|e| format!("open watch stream: {e}"))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let mut receiver = call.receiver;
            tokio::spawn(async move {
                loop {
                    let next = receiver.next::<WatchResponse>().await;
                    let end = !matches!(next, Ok(Some(_)));
                    if tx.send(next).is_err() || end {
                        return;
                    }
                }
            });
            self.streams.insert(
                name.clone(),
                WatchStream {
                    sender: call.sender,
                    responses: rx,
                    pending: VecDeque::new(),
                    ended: false,
                    progress_sent: 0,
                    progress_answers: 0,
                },
            );
        }
        let stream = self.streams.get_mut(&name).ok_or("stream vanished")?;
        match stream.sender.send(&request).await {
            Ok(()) => {
                if o.contains_key("progress") {
                    stream.progress_sent += 1;
                }
                Ok(json!({"sent": true}))
            }
            Err(e) => Ok(normalize::error(&e)),
        }
    }

    async fn watch_expect(&mut self, body: &Value) -> Result<Value, String> {
        let o = obj(body, "watch_expect")?;
        only(o, &["stream", "items"], "watch_expect")?;
        let name = string(o, "stream")?.unwrap_or_else(|| "default".into());
        let want = o
            .get("items")
            .and_then(Value::as_u64)
            .ok_or("watch_expect needs items")? as usize;
        let names = self.lease_names.clone();
        let stream = self
            .streams
            .get_mut(&name)
            .ok_or_else(|| format!("no watch stream {name:?}"))?;
        let deadline = tokio::time::Instant::now() + WATCH_WAIT;
        stream
            .receive_until(deadline, &names, |s| s.pending.len() >= want)
            .await;
        let n = want.min(stream.pending.len());
        let mut items: Vec<Value> = stream.pending.drain(..n).collect();
        // Servers order the events of different watches on one stream as
        // they like; within one watch the order is what is compared.
        items.sort_by_key(|item| item["watch_id"].as_i64().unwrap_or(i64::MIN));
        if items.len() < want {
            items.push(json!({"timeout": true}));
        }
        Ok(Value::Array(items))
    }

    /// The end-of-scenario check on every watch stream the scenario opened:
    /// a stream still open must carry nothing the scenario did not expect.
    /// Each gets a progress request; the stream's entry is the items
    /// received but never taken by a `watch_expect`, then everything that
    /// arrives until every progress request sent on the stream (this one
    /// included) has its answer (watch id -1). A clean entry is exactly one
    /// progress item. netsy answers a progress request only after sending
    /// every event already committed for the stream's watches (etcd 3.5.1
    /// does not promise that order; at the end of a correct scenario
    /// nothing is outstanding there, and `--record` checks that). A
    /// stream that already ended (closed or failed) is not probed, and one
    /// that refuses the request is read until it ends: its entry is its
    /// leftover items and `{"ended": true}`.
    pub async fn finish_watches(&mut self) -> Value {
        let names = self.lease_names.clone();
        let mut names_sorted: Vec<String> = self.streams.keys().cloned().collect();
        names_sorted.sort();
        let mut out = serde_json::Map::new();
        for name in names_sorted {
            let Some(stream) = self.streams.get_mut(&name) else {
                continue;
            };
            let mut items: Vec<Value> = stream.pending.drain(..).collect();
            let deadline = tokio::time::Instant::now() + WATCH_WAIT;
            let sent = match stream.ended {
                true => Ok(()),
                false => stream.sender.send(&requests::progress_request()).await,
            };
            if stream.ended || sent.is_err() {
                // Ended, or ending: a refused send means the stream is
                // closed; what it still delivers until it ends is leftover.
                stream.receive_until(deadline, &names, |_| false).await;
                items.extend(stream.pending.drain(..));
                items.push(match (stream.ended, sent) {
                    (false, Err(e)) => json!({"progress_request": normalize::error(&e)}),
                    _ => json!({"ended": true}),
                });
                out.insert(name, Value::Array(items));
                continue;
            }
            stream.progress_sent += 1;
            stream
                .receive_until(deadline, &names, |s| s.progress_answers >= s.progress_sent)
                .await;
            items.extend(stream.pending.drain(..));
            if stream.progress_answers < stream.progress_sent && !stream.ended {
                items.push(json!({"timeout": true}));
            }
            out.insert(name, Value::Array(items));
        }
        Value::Object(out)
    }
}

/// The next answer on a keep-alive stream, if one comes in time.
async fn next_keep_alive(
    call: &mut ClientCall,
) -> Result<Result<Option<LeaseKeepAliveResponse>, Status>, tokio::time::error::Elapsed> {
    tokio::time::timeout(KEEP_ALIVE_WAIT, call.receiver.next()).await
}

/// An answer to a progress request, as `normalize::watch_items` writes it.
pub fn is_progress_answer(item: &Value) -> bool {
    item["progress"] == json!(true) && item["watch_id"] == json!(-1)
}

/// Whether a stream's end-of-scenario entry shows nothing unexpected: one
/// progress answer on an open stream, or nothing left on an ended one.
pub fn watch_end_clean(items: &Value) -> bool {
    match items.as_array().map(Vec::as_slice) {
        Some([only]) => is_progress_answer(only) || only == &json!({"ended": true}),
        _ => false,
    }
}

impl WatchStream {
    /// Moves responses into `pending` until `done` says enough, the stream
    /// ends or the deadline passes.
    async fn receive_until(
        &mut self,
        deadline: tokio::time::Instant,
        names: &LeaseNames,
        done: impl Fn(&WatchStream) -> bool,
    ) {
        while !done(self) && !self.ended {
            match tokio::time::timeout_at(deadline, self.responses.recv()).await {
                Err(_) => break,
                Ok(None) => self.ended = true,
                Ok(Some(Ok(Some(resp)))) => {
                    let items = normalize::watch_items(&resp, names);
                    self.progress_answers += items.iter().filter(|i| is_progress_answer(i)).count();
                    self.pending.extend(items)
                }
                Ok(Some(Ok(None))) => {
                    self.pending.push_back(json!({"stream_closed": true}));
                    self.ended = true;
                }
                Ok(Some(Err(status))) => {
                    self.pending
                        .push_back(json!({"stream_error": normalize::error(&status)}));
                    self.ended = true;
                }
            }
        }
    }
}
