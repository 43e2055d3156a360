//! The Watch service: one task per stream. Each watch remembers the next
//! revision it owes the client; whenever the committed revision moves the
//! stream pulls the events it owes (recent ones from the hub, older ones
//! from the store) and sends them in revision order. History is replayed
//! from start_revision; nothing is skipped; a watch that falls behind the
//! compaction revision is cancelled with compact_revision, as etcd does.
//! Every watch is registered in the hub's [`crate::watch::WatchRegistry`]
//! with the next revision it owes, which is what the compaction protocol
//! asks about; a watch starting below the registry's admission floor is
//! refused at creation.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use prost::encoding::{self, WireType};
use prost::Message;

use crate::grpc::{codec, Call, Finished, Inbound, Outbound, Status};
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::store::record::detached;
use crate::store::KeyRange;
use crate::watch::{
    events_from_store, BelowFloor, Event, Listener, RegisteredWatch, WatchHub, WatchRegistry,
};

use super::convert;
use super::errors::from_store;
use super::EtcdApi;

/// Most revisions fetched per step (etcd's watchBatchMaxRevs).
const MAX_REVISIONS_PER_FETCH: usize = 1000;

/// A response is cut once its events reach this many bytes.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// etcd's error for a reused client-chosen watch id.
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub async fn serve(api: Arc<EtcdApi>, call: Call) -> Finished {
    let Call {
        mut inbound,
        mut outbound,
        ..
    } = call;
    let m = api.metrics.clone();
    m.watchers.inc();
    let listener = api.hub.listen();
    let mut stream = WatchStream {
        api,
        listener,
        watches: BTreeMap::new(),
        next_id: 0,
        progress_requested: false,
    };
    let result = stream.run(&mut inbound, &mut outbound).await;
    m.watchers.dec();
    m.watches.dec_by(stream.watches.len() as i64);
    outbound.finish(result)
}

struct Watching {
    range: KeyRange,
    /// First revision not yet delivered.
    next_rev: i64,
    /// The same, as the node's registry knows it (removed on drop).
    registered: RegisteredWatch,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
}

impl Watching {
    fn wants(&self, e: &Event) -> bool {
        e.revision() >= self.next_rev
            && !(e.is_delete() && self.no_delete)
            && (e.is_delete() || !self.no_put)
            && self.range.contains(&e.kv.key)
    }
}

struct WatchStream {
    api: Arc<EtcdApi>,
    /// Woken by the commits this stream's watches must see.
    listener: Arc<Listener>,
    watches: BTreeMap<i64, Watching>,
    next_id: i64,
    /// A progress request waits until every watch has caught up.
    progress_requested: bool,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.api.hub.unlisten(&self.listener);
    }
}

impl WatchStream {
    async fn run(&mut self, inbound: &mut Inbound, out: &mut Outbound) -> Result<(), Status> {
        let listener = self.listener.clone();
        let every = self.api.settings.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The waits outlive each turn of the loop: a commit wakes every
        // stream it concerns, and making each wait anew every turn took the
        // locks of the shared shutdown signal and of the listener each time.
        let mut shutdown = pin!(shutdown_asked(self.api.shutdown.clone()));
        let mut woken = pin!(listener.woken());
        let mut requests = pin!(futures_util::stream::unfold(inbound, |inbound| async {
            let request = inbound.next::<WatchRequest>().await;
            Some((request, inbound))
        }));
        loop {
            let committed = self.api.hub.committed();
            self.sync(committed, out).await?;
            if self.progress_requested {
                self.progress_requested = false;
                let resp = WatchResponse {
                    header: Some(self.api.header(committed)),
                    watch_id: -1,
                    ..Default::default()
                };
                out.send(&resp).await?;
            }
            tokio::select! {
                Some(request) = requests.next() => match request? {
                    Some(r) => self.handle(r, out).await?,
                    // The client closed its side: etcd ends the stream too.
                    None => return Ok(()),
                },
                () = woken.as_mut() => woken.set(listener.woken()),
                // The revision now: a quiet stream is not woken by
                // commits to other keys, so `committed` may be a tick old.
                _ = ticker.tick() => {
                    let now = self.api.hub.committed();
                    self.notify_progress(now, out).await?
                }
                () = shutdown.as_mut() => {
                    return Err(Status::unavailable("netsy: the server is shutting down"));
                }
            }
        }
    }

    async fn handle(&mut self, request: WatchRequest, out: &mut Outbound) -> Result<(), Status> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create, out).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_some() {
                    self.listener.remove(cancel.watch_id);
                    self.api.metrics.watches.dec();
                    let resp = WatchResponse {
                        header: Some(self.api.header(self.api.hub.committed())),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    out.send(&resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(
        &mut self,
        create: WatchCreateRequest,
        out: &mut Outbound,
    ) -> Result<(), Status> {
        let committed = self.api.hub.committed();
        let id = if create.watch_id != 0 {
            if self.watches.contains_key(&create.watch_id) {
                let resp = WatchResponse {
                    header: Some(self.api.header(committed)),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: DUPLICATE_WATCH_ID.to_string(),
                    ..Default::default()
                };
                return out.send(&resp).await;
            }
            create.watch_id
        } else {
            while self.watches.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let (range, next_rev) = watched(&create, committed);
        let start = create.start_revision;
        let compacted = self.api.store.compacted_revision();
        let registered = match admit(self.api.hub.watches(), start, next_rev, compacted) {
            Admission::Admitted(r) => r,
            Admission::Compacted(at) => {
                // As etcd: created, then cancelled with the compaction revision.
                out.send(&self.created(id, committed)).await?;
                return out.send(&self.compacted(id, at, String::new())).await;
            }
            Admission::BelowFloor(refused) => {
                // A compaction up to the floor is under way (or done).
                out.send(&self.created(id, committed)).await?;
                let resp = self.compacted(id, refused.floor, refused.to_string());
                return out.send(&resp).await;
            }
        };
        self.listener.add(id, range.clone(), registered.next_cell());
        let filters = &create.filters;
        let watch = Watching {
            range,
            next_rev,
            registered,
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
        };
        self.watches.insert(id, watch);
        self.api.metrics.watches.inc();
        out.send(&self.created(id, committed)).await
    }

    fn created(&self, id: i64, committed: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.api.header(committed)),
            watch_id: id,
            created: true,
            ..Default::default()
        }
    }

    /// A watch cancelled because history it needs is (being) compacted.
    fn compacted(&self, id: i64, compact_revision: i64, reason: String) -> WatchResponse {
        // etcd answers a compacted watch with header revision 0.
        WatchResponse {
            header: Some(self.api.header(0)),
            watch_id: id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        }
    }

    /// Takes up where the hub moved caught-up watches past commits that
    /// had nothing for them (they were not woken for those).
    fn adopt_hub_progress(&mut self) {
        for w in self.watches.values_mut() {
            w.next_rev = w.next_rev.max(w.registered.next());
        }
    }

    /// Delivers every event up to `committed` that a watch still owes.
    async fn sync(&mut self, committed: i64, out: &mut Outbound) -> Result<(), Status> {
        self.adopt_hub_progress();
        self.cancel_compacted(committed, out).await?;
        let Some(from) = self
            .watches
            .values()
            .map(|w| w.next_rev)
            .filter(|r| *r <= committed)
            .min()
        else {
            return Ok(());
        };
        let mut after = from - 1;
        while after < committed {
            let (events, upto) = self.fetch(after, committed)?;
            // A compaction applied meanwhile may have discarded values the
            // fetch read: the watches that needed them are cancelled instead.
            self.cancel_compacted(committed, out).await?;
            // Each watch's events, as shared encodings.
            let hub = &self.api.hub;
            let mut picked: Vec<&Bytes> = Vec::new();
            for (id, w) in self.watches.iter_mut() {
                if w.next_rev > upto {
                    continue;
                }
                picked.clear();
                picked.extend(
                    events
                        .iter()
                        .filter(|e| w.wants(e))
                        .map(|e| encoded(hub, e, w.prev_kv)),
                );
                let mut rest = &picked[..];
                while !rest.is_empty() {
                    let (now, later) = rest.split_at(events_in_response(rest));
                    let head = self.api.header(committed);
                    out.send_frame(events_frame(head, *id, now)).await?;
                    rest = later;
                }
                w.next_rev = upto + 1;
                w.registered.advance(w.next_rev);
            }
            after = upto;
        }
        Ok(())
    }

    /// Cancels, with compact_revision, every watch that still owes a
    /// revision below the compaction revision (as etcd does).
    async fn cancel_compacted(&mut self, committed: i64, out: &mut Outbound) -> Result<(), Status> {
        let compacted = self.api.store.compacted_revision();
        let behind: Vec<i64> = self
            .watches
            .iter()
            .filter(|(_, w)| w.next_rev <= committed && w.next_rev < compacted)
            .map(|(id, _)| *id)
            .collect();
        for id in behind {
            self.watches.remove(&id);
            self.listener.remove(id);
            self.api.metrics.watches.dec();
            out.send(&self.compacted(id, compacted, String::new()))
                .await?;
        }
        Ok(())
    }

    /// Events after `after`, from the hub's ring when it still has them,
    /// else from the store; at most one fetch's worth. Also returns the
    /// revision the fetch covers up to (`upto` unless it was cut short).
    fn fetch(&self, after: i64, upto: i64) -> Result<(Vec<Arc<Event>>, i64), Status> {
        if let Some(events) = self
            .api
            .hub
            .events_between(after, upto, MAX_REVISIONS_PER_FETCH)
        {
            let end = if events.len() < MAX_REVISIONS_PER_FETCH {
                upto
            } else {
                events.last().map_or(upto, |e| e.revision())
            };
            return Ok((events, end));
        }
        let (events, end) =
            events_from_store(&self.api.store, after + 1, upto, MAX_REVISIONS_PER_FETCH)
                .map_err(from_store)?;
        Ok((events.into_iter().map(Arc::new).collect(), end))
    }

    /// Periodic progress: each caught-up watch that asked for it learns the
    /// current revision.
    async fn notify_progress(&mut self, committed: i64, out: &mut Outbound) -> Result<(), Status> {
        self.adopt_hub_progress();
        let due: Vec<i64> = self
            .watches
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next_rev > committed)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let resp = WatchResponse {
                header: Some(self.api.header(committed)),
                watch_id: id,
                ..Default::default()
            };
            out.send(&resp).await?;
        }
        Ok(())
    }
}

/// Ends once the server is asked to shut down (never, if nobody can ask).
async fn shutdown_asked(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The keys a new watch follows and the first revision it owes, on a node
/// that has committed `committed`. The keys are copied: the request's are
/// slices of the bytes the connection received, which a watch would keep
/// alive for as long as it lives.
pub fn watched(create: &WatchCreateRequest, committed: i64) -> (KeyRange, i64) {
    // etcd reads an empty key as "\0", the smallest key.
    let key = if create.key.is_empty() {
        Bytes::from_static(b"\0")
    } else {
        detached(&create.key)
    };
    let start = create.start_revision;
    let next_rev = if start > 0 { start } else { committed + 1 };
    (KeyRange::new(&key, &detached(&create.range_end)), next_rev)
}

/// How a new watch is answered.
enum Admission {
    Admitted(RegisteredWatch),
    /// It starts below the compaction revision (etcd's answer).
    Compacted(i64),
    /// It starts below the admission floor a compaction notice raised.
    BelowFloor(BelowFloor),
}

/// Admits a watch asked to start at `start` (0: from now on), whose first
/// undelivered revision is `next`, on a node compacted at `compacted`.
fn admit(registry: &Arc<WatchRegistry>, start: i64, next: i64, compacted: i64) -> Admission {
    if start > 0 && start < compacted {
        return Admission::Compacted(compacted);
    }
    match registry.admit(start, next) {
        Ok(registered) => Admission::Admitted(registered),
        Err(refused) => Admission::BelowFloor(refused),
    }
}

/// An event as clients receive it, encoded once for every stream.
fn encoded<'e>(hub: &WatchHub, e: &'e Event, with_prev: bool) -> &'e Bytes {
    hub.encoded(e, with_prev, || {
        Bytes::from(convert::event(e, with_prev).encode_to_vec())
    })
}

/// The WatchResponse field that carries events (`repeated Event events = 11`).
const EVENTS_FIELD: u32 = 11;

/// How many of `events` (at least one) go in the next response: a response
/// is cut once its events reach MAX_RESPONSE_BYTES.
fn events_in_response(events: &[&Bytes]) -> usize {
    let mut bytes = 0;
    for (i, e) in events.iter().enumerate() {
        bytes += e.len();
        if bytes >= MAX_RESPONSE_BYTES {
            return i + 1;
        }
    }
    events.len()
}

/// A WatchResponse with events, framed straight from the events' shared
/// encodings: the bytes prost writes for the same response (header and
/// watch id, then each event), without re-encoding or cloning any key or
/// value per stream.
fn events_frame(header: ResponseHeader, watch_id: i64, events: &[&Bytes]) -> Bytes {
    let head = WatchResponse {
        header: Some(header),
        watch_id,
        ..Default::default()
    };
    let field = |e: &&Bytes| {
        encoding::key_len(EVENTS_FIELD) + encoding::encoded_len_varint(e.len() as u64) + e.len()
    };
    let len = head.encoded_len() + events.iter().map(field).sum::<usize>();
    let mut frame = codec::start_frame(len);
    head.encode_raw(&mut frame);
    for e in events {
        encoding::encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut frame);
        encoding::encode_varint(e.len() as u64, &mut frame);
        frame.extend_from_slice(e);
    }
    codec::finish_frame(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KvEntry, Rev};

    #[test]
    fn a_watch_keeps_copies_of_its_keys_not_the_request() {
        let received = Bytes::from(vec![b'k'; 4096]);
        let create = WatchCreateRequest {
            key: received.slice(0..3),
            range_end: received.slice(10..14),
            ..Default::default()
        };
        let (range, next) = watched(&create, 5);
        assert_eq!(next, 6);
        let KeyRange::Span {
            start,
            end: Some(end),
        } = range
        else {
            panic!("a span was asked for: {range:?}");
        };
        assert_eq!((&start[..], &end[..]), (&b"kkk"[..], &b"kkkk"[..]));
        let inside = |b: &Bytes| received.as_ptr_range().contains(&b.as_ptr());
        assert!(!inside(&start) && !inside(&end), "slices of the request");
    }

    fn entry(key: &'static [u8], revision: i64, value: Option<&'static [u8]>) -> KvEntry {
        KvEntry {
            key: Bytes::from_static(key),
            rev: Rev {
                revision,
                create_revision: 2,
                version: revision - 1,
                lease: 7,
                deleted: value.is_none(),
            },
            value: value.map(Bytes::from_static),
        }
    }

    #[test]
    fn a_response_is_cut_once_its_events_reach_the_limit() {
        let big = Bytes::from(vec![0u8; MAX_RESPONSE_BYTES / 2]);
        let small = Bytes::from_static(b"e");
        assert_eq!(events_in_response(&[&small, &small]), 2);
        assert_eq!(events_in_response(&[&big, &small, &big, &small]), 3);
        assert_eq!(events_in_response(&[&big, &big, &small]), 2);
        let huge = Bytes::from(vec![0u8; MAX_RESPONSE_BYTES * 2]);
        assert_eq!(events_in_response(&[&huge, &small]), 1, "never none");
    }

    #[test]
    fn an_events_response_from_shared_encodings_is_what_prost_writes() {
        let put = Event::new(
            entry(b"a", 3, Some(b"v3")),
            Some(entry(b"a", 2, Some(b"v2"))),
        );
        let delete = Event::new(entry(b"b", 4, None), Some(entry(b"b", 3, Some(b"x"))));
        let hub = WatchHub::new(0, crate::watch::RingLimits::default());
        let header = ResponseHeader {
            cluster_id: 11,
            member_id: 12,
            revision: 4,
            raft_term: 0,
        };
        for with_prev in [false, true] {
            let shared = [
                encoded(&hub, &put, with_prev),
                encoded(&hub, &delete, with_prev),
            ];
            let built = events_frame(header, 300, &shared);
            let expected = WatchResponse {
                header: Some(header),
                watch_id: 300,
                events: vec![
                    convert::event(&put, with_prev),
                    convert::event(&delete, with_prev),
                ],
                ..Default::default()
            };
            assert_eq!(built, codec::encode(&expected), "prev_kv {with_prev}");
        }
        assert_ne!(
            encoded(&hub, &put, false),
            encoded(&hub, &put, true),
            "each form is kept apart"
        );
    }

    #[test]
    fn a_new_watch_below_the_compaction_or_the_floor_is_refused() {
        let registry = Arc::new(WatchRegistry::default());
        registry.set_floor(20).unwrap();
        let answer =
            |start: i64| match admit(&registry, start, if start > 0 { start } else { 31 }, 10) {
                Admission::Admitted(registered) => Ok(registered),
                Admission::Compacted(at) => Err(format!("compacted at {at}")),
                Admission::BelowFloor(refused) => Err(refused.to_string()),
            };
        assert_eq!(
            answer(9).err().unwrap(),
            "compacted at 10",
            "etcd's answer first"
        );
        let refused = "required revision 10 has been compacted; compaction revision is 20";
        assert_eq!(answer(10).err().unwrap(), refused);
        assert!(answer(19).is_err());
        let at_floor = answer(20).ok().unwrap();
        let from_now = answer(0).ok().unwrap();
        assert_eq!(
            registry.min_next(),
            Some(20),
            "admitted watches are registered"
        );
        drop((at_floor, from_now));
        assert_eq!(registry.min_next(), None);
    }
}
