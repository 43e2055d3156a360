//! The Watch service: one task per stream. Each watch remembers the next
//! revision it owes the client; whenever the committed revision moves the
//! stream pulls the events it owes (recent ones from the hub, older ones
//! from the store) and sends them in revision order. History is replayed
//! from start_revision; nothing is skipped; a watch that falls behind the
//! compaction revision is cancelled with compact_revision, as etcd does.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::grpc::{Call, Finished, Inbound, Outbound, Status};
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::store::KeyRange;
use crate::watch::{events_from_store, Event};

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
    let mut stream = WatchStream {
        api,
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
    watches: BTreeMap<i64, Watching>,
    next_id: i64,
    /// A progress request waits until every watch has caught up.
    progress_requested: bool,
}

impl WatchStream {
    async fn run(&mut self, inbound: &mut Inbound, out: &mut Outbound) -> Result<(), Status> {
        let mut committed_rx = self.api.hub.subscribe();
        let mut shutdown = self.api.shutdown.clone();
        let every = self.api.settings.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                return Err(Status::unavailable("netsy: the server is shutting down"));
            }
            let committed = *committed_rx.borrow_and_update();
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
                request = inbound.next::<WatchRequest>() => match request? {
                    Some(r) => self.handle(r, out).await?,
                    // The client closed its side: etcd ends the stream too.
                    None => return Ok(()),
                },
                changed = committed_rx.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("netsy: server is shutting down"));
                    }
                }
                _ = ticker.tick() => self.notify_progress(committed, out).await?,
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn handle(&mut self, request: WatchRequest, out: &mut Outbound) -> Result<(), Status> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create, out).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_some() {
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
        // etcd reads an empty key as "\0", the smallest key.
        let key = if create.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            create.key.clone()
        };
        let filters = &create.filters;
        let watch = Watching {
            range: KeyRange::new(&key, &create.range_end),
            next_rev: if create.start_revision > 0 {
                create.start_revision
            } else {
                committed + 1
            },
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
        };
        self.watches.insert(id, watch);
        self.api.metrics.watches.inc();
        let resp = WatchResponse {
            header: Some(self.api.header(committed)),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        out.send(&resp).await
    }

    /// Delivers every event up to `committed` that a watch still owes.
    async fn sync(&mut self, committed: i64, out: &mut Outbound) -> Result<(), Status> {
        let compacted = self.api.store.compacted_revision();
        let behind: Vec<i64> = self
            .watches
            .iter()
            .filter(|(_, w)| w.next_rev <= committed && w.next_rev < compacted)
            .map(|(id, _)| *id)
            .collect();
        for id in behind {
            self.watches.remove(&id);
            self.api.metrics.watches.dec();
            // etcd answers a compacted watch with header revision 0.
            let resp = WatchResponse {
                header: Some(self.api.header(0)),
                watch_id: id,
                canceled: true,
                compact_revision: compacted,
                ..Default::default()
            };
            out.send(&resp).await?;
        }
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
            for (id, w) in self.watches.iter_mut() {
                if w.next_rev > upto {
                    continue;
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                for e in events.iter().filter(|e| w.wants(e)) {
                    let ev = convert::event(e, w.prev_kv);
                    bytes += ev.encoded_len();
                    batch.push(ev);
                    if bytes >= MAX_RESPONSE_BYTES {
                        send_events(&self.api, *id, committed, std::mem::take(&mut batch), out)
                            .await?;
                        bytes = 0;
                    }
                }
                if !batch.is_empty() {
                    send_events(&self.api, *id, committed, batch, out).await?;
                }
                w.next_rev = upto + 1;
            }
            after = upto;
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

async fn send_events(
    api: &EtcdApi,
    watch_id: i64,
    revision: i64,
    events: Vec<crate::pb::mvccpb::Event>,
    out: &mut Outbound,
) -> Result<(), Status> {
    let resp = WatchResponse {
        header: Some(api.header(revision)),
        watch_id,
        events,
        ..Default::default()
    };
    out.send(&resp).await
}
