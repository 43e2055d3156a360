//! Watch hub: the committed revision as a signal, plus a bounded ring of
//! recent events. Watch streams pull from it at their own pace (falling back
//! to the store for older history), so a slow consumer never blocks a write
//! or another watcher, and no event is ever skipped; a commit wakes only the
//! streams it concerns (`listener.rs`). The hub also keeps the
//! node's [`WatchRegistry`]: what its active watches still need, and the
//! admission floor the compaction protocol raises.

pub mod listener;
pub mod registry;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use bytes::Bytes;

use crate::store::{KvEntry, Record, Store, StoreError};

pub use listener::Listener;
pub use registry::{BelowFloor, RegisteredWatch, WatchBelow, WatchRegistry};

/// A lock of the watch folder's shared state, taken even after a panic
/// while it was held: each change made under these locks is a single
/// insertion, removal or assignment, never left half done.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One committed change: the key as the change left it (a tombstone for a
/// delete) and, when the key existed before, as it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kv: KvEntry,
    pub prev: Option<KvEntry>,
    encoded: Encodings,
}

/// The client API's encodings of one event (without and with the previous
/// key-value), made by the first stream that sends it and shared by every
/// other: a thousand watchers of one prefix cost one encoding per event.
/// Their bytes count against the ring's budget while the event is in it
/// ([`WatchHub::encoded`]).
struct Encodings {
    made: [OnceLock<Bytes>; 2],
    /// Bytes made and counted in the hub's total while the event is in the
    /// ring; OUTSIDE before it enters (an event read from the store never
    /// does) and once the ring let it go: encodings then are not counted.
    counted: AtomicUsize,
}

const OUTSIDE: usize = 1 << (usize::BITS - 1);

impl Default for Encodings {
    fn default() -> Encodings {
        Encodings {
            made: Default::default(),
            counted: AtomicUsize::new(OUTSIDE),
        }
    }
}

impl Clone for Encodings {
    /// A copy is not in any ring: it starts without encodings.
    fn clone(&self) -> Encodings {
        Encodings::default()
    }
}

impl PartialEq for Encodings {
    /// A cache: two events are equal whatever they have encoded so far.
    fn eq(&self, _: &Encodings) -> bool {
        true
    }
}

impl std::fmt::Debug for Encodings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encodings")
    }
}

impl Event {
    pub fn new(kv: KvEntry, prev: Option<KvEntry>) -> Event {
        Event {
            kv,
            prev,
            encoded: Encodings::default(),
        }
    }

    pub fn from_record(record: &Record, prev: Option<KvEntry>) -> Event {
        Event::new(KvEntry::from_record(record), prev)
    }

    pub fn revision(&self) -> i64 {
        self.kv.rev.revision
    }

    pub fn is_delete(&self) -> bool {
        self.kv.rev.deleted
    }

    /// What the event holds in the ring, its encodings aside.
    fn size(&self) -> usize {
        let len = |e: &KvEntry| e.key.len() + e.value.as_ref().map_or(0, |v| v.len());
        // The Arc's counts and the struct itself, then the shared bytes.
        16 + std::mem::size_of::<Event>() + len(&self.kv) + self.prev.as_ref().map_or(0, len)
    }
}

/// The events of the committed records with from <= revision <= to, at
/// most `limit` records read, each with the key's previous state. Also
/// returns the last revision read (`to` when fewer than `limit` came back).
pub fn events_from_store(
    store: &Store,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<(Vec<Event>, i64), StoreError> {
    let records = store.records_between(from, to, limit)?;
    let covered = if records.len() < limit {
        to
    } else {
        records.last().map_or(to, |r| r.revision)
    };
    let mut events = Vec::with_capacity(records.len());
    for r in records.iter().filter(|r| !r.is_internal()) {
        let prev = if r.prev_revision > 0 {
            store
                .record_at(r.prev_revision)?
                .map(|p| KvEntry::from_record(&p))
        } else {
            None
        };
        events.push(Event::from_record(r, prev));
    }
    Ok((events, covered))
}

/// Limits of the in-memory event ring.
#[derive(Clone, Copy, Debug)]
pub struct RingLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for RingLimits {
    /// About 50 s of history at 1,000 writes/s of small values; a watch
    /// starting further back reads from the store. The bytes count each
    /// event's struct, its keys and values and its encodings for clients.
    /// (100,000 events / 64 MiB kept a node with 100,000 keys of 1 KiB
    /// above 200 MiB after a write run.)
    fn default() -> Self {
        RingLimits {
            max_events: 50_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// The events' sizes; their encodings are in `WatchHub::encoded_bytes`.
    bytes: usize,
    /// Every event with a revision above this is in the ring.
    complete_after: i64,
    limits: RingLimits,
}

/// Where watchers learn about committed revisions and fetch recent events.
pub struct WatchHub {
    ring: RwLock<Ring>,
    /// Bytes of the encodings of events in the ring (briefly below zero
    /// while an encoding and an eviction of one event cross).
    encoded_bytes: AtomicIsize,
    committed: tokio::sync::watch::Sender<i64>,
    watches: Arc<WatchRegistry>,
    /// The watch streams, each woken only by the commits it must see.
    streams: Mutex<Vec<Arc<Listener>>>,
    /// How many streams the last commit woke.
    woken_last: AtomicUsize,
}

impl WatchHub {
    /// A hub whose history starts after `committed`.
    pub fn new(committed: i64, limits: RingLimits) -> WatchHub {
        let (tx, _) = tokio::sync::watch::channel(committed);
        WatchHub {
            encoded_bytes: AtomicIsize::new(0),
            ring: RwLock::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                complete_after: committed,
                limits,
            }),
            committed: tx,
            watches: Arc::default(),
            streams: Mutex::default(),
            woken_last: AtomicUsize::new(0),
        }
    }

    /// The node's active watches and admission floor.
    pub fn watches(&self) -> &Arc<WatchRegistry> {
        &self.watches
    }

    /// What this node answers GetMinWatchRevision.
    pub fn min_watch_revision(&self) -> i64 {
        self.watches.min_needed(self.committed())
    }

    /// Adds committed events (ascending) and announces the new committed
    /// revision.
    pub fn publish(&self, events: Vec<Event>, committed: i64) {
        let after = *self.committed.borrow();
        let mut published = Vec::with_capacity(events.len());
        if let Ok(mut ring) = self.ring.write() {
            for mut e in events {
                ring.bytes += e.size();
                // In the ring from here: its encodings count.
                *e.encoded.counted.get_mut() = 0;
                let e = Arc::new(e);
                published.push(e.clone());
                ring.events.push_back(e);
            }
            let encoded =
                |hub: &WatchHub| hub.encoded_bytes.load(Ordering::Acquire).max(0) as usize;
            while ring.events.len() > ring.limits.max_events
                || ring.bytes + encoded(self) > ring.limits.max_bytes
            {
                match ring.events.pop_front() {
                    Some(old) => {
                        ring.bytes -= old.size();
                        ring.complete_after = old.revision();
                        let counted = old.encoded.counted.fetch_or(OUTSIDE, Ordering::AcqRel);
                        let counted = (counted & !OUTSIDE) as isize;
                        self.encoded_bytes.fetch_sub(counted, Ordering::AcqRel);
                    }
                    None => break,
                }
            }
        }
        // Announced before the streams are looked at: a watch added
        // meanwhile that this misses then reads the new revision itself.
        self.committed.send_replace(committed);
        let contiguous = listener::contiguous(&published, after, committed);
        let woken = locked(&self.streams)
            .iter()
            .filter(|s| s.consider(&published, after, committed, contiguous))
            .count();
        self.woken_last.store(woken, Ordering::Relaxed);
    }

    /// Registers a watch stream; it is woken by the commits it must see
    /// until [`WatchHub::unlisten`].
    pub fn listen(&self) -> Arc<Listener> {
        let listener = Arc::new(Listener::default());
        locked(&self.streams).push(listener.clone());
        listener
    }

    pub fn unlisten(&self, listener: &Arc<Listener>) {
        locked(&self.streams).retain(|s| !Arc::ptr_eq(s, listener));
    }

    /// Publishes what the store committed after `after` (imported from
    /// elsewhere) with each change's previous value, in pages.
    pub fn publish_from_store(&self, store: &Store, after: i64) -> Result<(), StoreError> {
        /// How many records are turned into events at a time.
        const PAGE: usize = 10_000;
        let committed = store.committed_revision();
        let mut from = after + 1;
        while from <= committed {
            let (events, covered) = events_from_store(store, from, committed, PAGE)?;
            self.publish(events, covered);
            from = covered + 1;
        }
        Ok(())
    }

    /// `e` as the client API encodes it (`with_prev`: carrying the previous
    /// key-value), made by `encode` for the first caller only and kept with
    /// the event; counted against the ring's byte budget while the event is
    /// in the ring.
    pub fn encoded<'e>(
        &self,
        e: &'e Event,
        with_prev: bool,
        encode: impl FnOnce() -> Bytes,
    ) -> &'e Bytes {
        let mut made = 0;
        let bytes = e.encoded.made[usize::from(with_prev)].get_or_init(|| {
            let b = encode();
            made = b.len();
            b
        });
        if made > 0 {
            let before = e.encoded.counted.fetch_add(made, Ordering::AcqRel);
            if before & OUTSIDE == 0 {
                self.encoded_bytes
                    .fetch_add(made as isize, Ordering::AcqRel);
            }
        }
        bytes
    }

    /// How many a commit is likely to wake: those waiting for the
    /// committed revision, and the watch streams the last commit woke.
    pub fn listeners(&self) -> usize {
        self.committed.receiver_count() + self.woken_last.load(Ordering::Relaxed)
    }

    /// A receiver that wakes when the committed revision moves.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.committed.subscribe()
    }

    pub fn committed(&self) -> i64 {
        *self.committed.borrow()
    }

    /// Events with after < revision <= upto, at most `limit`; None when the
    /// ring no longer holds all of them (read the store instead).
    pub fn events_between(&self, after: i64, upto: i64, limit: usize) -> Option<Vec<Arc<Event>>> {
        let ring = self.ring.read().ok()?;
        if after < ring.complete_after {
            return None;
        }
        let start = first_after(&ring.events, after);
        Some(
            ring.events
                .range(start..)
                .take_while(|e| e.revision() <= upto)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

/// The index of the first of `events` (in revision order) above `after`.
/// A stream that keeps up asks for the last few: those are looked at from
/// the end (each look reads another event's memory, and a binary search
/// of the whole ring made a thousand streams read a dozen each per commit).
fn first_after(events: &VecDeque<Arc<Event>>, after: i64) -> usize {
    /// How many events are looked at from the end before a binary search.
    const FROM_THE_END: usize = 8;
    let mut start = events.len();
    for e in events.iter().rev().take(FROM_THE_END) {
        if e.revision() <= after {
            return start;
        }
        start -= 1;
    }
    events.partition_point(|e| e.revision() <= after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, value_len: usize) -> Event {
        Event::new(
            KvEntry {
                key: Bytes::from_static(b"k"),
                rev: crate::store::Rev {
                    revision: rev,
                    create_revision: rev,
                    version: 1,
                    lease: 0,
                    deleted: false,
                },
                value: Some(Bytes::from(vec![0u8; value_len])),
            },
            None,
        )
    }

    #[test]
    fn serves_recent_events_and_admits_when_it_lost_older_ones() {
        let hub = WatchHub::new(
            1,
            RingLimits {
                max_events: 3,
                max_bytes: usize::MAX,
            },
        );
        hub.publish(vec![ev(2, 0), ev(3, 0)], 3);
        let got: Vec<i64> = hub
            .events_between(1, 3, 10)
            .unwrap()
            .iter()
            .map(|e| e.revision())
            .collect();
        assert_eq!(got, [2, 3]);
        hub.publish(vec![ev(4, 0), ev(5, 0)], 5);
        assert!(
            hub.events_between(1, 5, 10).is_none(),
            "revision 2 was evicted"
        );
        let got: Vec<i64> = hub
            .events_between(2, 5, 10)
            .unwrap()
            .iter()
            .map(|e| e.revision())
            .collect();
        assert_eq!(got, [3, 4, 5]);
        let got: Vec<i64> = hub
            .events_between(2, 4, 1)
            .unwrap()
            .iter()
            .map(|e| e.revision())
            .collect();
        assert_eq!(got, [3]);
        assert_eq!(hub.committed(), 5);
    }

    #[test]
    fn encodings_count_against_the_budget_while_their_event_is_in_the_ring() {
        let size = ev(2, 10).size();
        let hub = WatchHub::new(
            1,
            RingLimits {
                max_events: 100,
                max_bytes: 2 * size + 10,
            },
        );
        hub.publish(vec![ev(2, 10), ev(3, 10)], 3);
        let events = hub.events_between(1, 3, 10).unwrap();
        let total = || hub.encoded_bytes.load(Ordering::SeqCst);
        let mut calls = 0;
        for _ in 0..2 {
            let made = hub.encoded(&events[0], true, || {
                calls += 1;
                Bytes::from(vec![1u8; 100])
            });
            assert_eq!(made.len(), 100);
        }
        assert_eq!((calls, total()), (1, 100), "made and counted once");
        hub.publish(Vec::new(), 3);
        assert!(
            hub.events_between(1, 3, 10).is_none(),
            "revision 2 and its encoding no longer fit"
        );
        assert_eq!(
            total(),
            0,
            "the evicted event's encoding is no longer counted"
        );
        hub.encoded(&events[0], false, || Bytes::from(vec![2u8; 50]));
        assert_eq!(total(), 0, "an encoding made after eviction is not counted");
        hub.encoded(&events[1], false, || Bytes::from(vec![3u8; 5]));
        assert_eq!(total(), 5);
        hub.publish(vec![ev(4, 10), ev(5, 10)], 5);
        assert_eq!(total(), 0);
        let from_the_store = ev(3, 10);
        hub.encoded(&from_the_store, true, || Bytes::from(vec![4u8; 7]));
        assert_eq!(total(), 0, "an event never in the ring is not counted");
    }

    #[test]
    fn the_first_event_after_a_revision_is_found_from_either_end() {
        // Several events of one revision (a txn's), and gaps.
        let revisions = [2, 3, 3, 3, 5, 8, 8, 9, 10, 11, 12, 13, 14, 15, 15, 16, 20];
        for len in 0..=revisions.len() {
            let events: VecDeque<Arc<Event>> = revisions[..len]
                .iter()
                .map(|r| Arc::new(ev(*r, 0)))
                .collect();
            for after in 0..=22 {
                let expected = revisions[..len].iter().filter(|r| **r <= after).count();
                assert_eq!(
                    first_after(&events, after),
                    expected,
                    "{len} events, after {after}"
                );
            }
        }
    }

    #[test]
    fn byte_budget_evicts() {
        let hub = WatchHub::new(
            1,
            RingLimits {
                max_events: 100,
                max_bytes: 1000,
            },
        );
        hub.publish(vec![ev(2, 600), ev(3, 600)], 3);
        assert!(hub.events_between(1, 3, 10).is_none());
        assert_eq!(hub.events_between(2, 3, 10).unwrap().len(), 1);
    }
}
