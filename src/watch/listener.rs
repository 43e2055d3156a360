//! Which watch streams a commit wakes. A stream registers the key range of
//! each of its watches with that watch's next undelivered revision (the
//! registry's); a commit wakes the stream only when one of its events falls
//! in one of those ranges, or a watch of it is still behind. A watch that
//! was caught up and has nothing in the commit is moved past it here,
//! without a wake: a kube-apiserver keeps a watch per resource, and every
//! write used to wake them all to find nothing.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{futures::Notified, Notify};

use crate::store::KeyRange;

use super::{locked, Event};

/// One watch as the hub sees it.
struct Listened {
    id: i64,
    range: KeyRange,
    /// The watch's next undelivered revision, shared with the registry.
    next: Arc<AtomicI64>,
}

/// One watch stream's standing with the hub.
#[derive(Default)]
pub struct Listener {
    watches: Mutex<Vec<Listened>>,
    wake: Notify,
}

impl Listener {
    /// Follows a watch. Add it before reading the committed revision the
    /// stream catches up to: a commit that does not see it yet was
    /// announced before, so the stream's own catch-up covers it.
    pub fn add(&self, id: i64, range: KeyRange, next: Arc<AtomicI64>) {
        locked(&self.watches).push(Listened { id, range, next });
    }

    pub fn remove(&self, id: i64) {
        locked(&self.watches).retain(|w| w.id != id);
    }

    /// Waits for a commit this stream must look at (or one that came
    /// since the last wait: a wake is kept until then). The stream may keep
    /// one such wait across its turns and make the next once it ends.
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Looks at a commit of `events`, the revisions `after + 1..=committed`
    /// (`contiguous`: every one of them that has an event is in `events`);
    /// wakes the stream when it must deliver or catch up. Returns whether
    /// it was woken.
    pub(super) fn consider(
        &self,
        events: &[Arc<Event>],
        after: i64,
        committed: i64,
        contiguous: bool,
    ) -> bool {
        if committed <= after {
            return false; // nothing new
        }
        let must_wake = !contiguous || {
            let watches = locked(&self.watches);
            watches.iter().any(|w| {
                if events.iter().any(|e| w.range.contains(&e.kv.key)) {
                    return true;
                }
                // Caught up to this commit: past it, nothing to deliver.
                let moved = w.next.compare_exchange(
                    after + 1,
                    committed + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                // Behind it (still delivering, or replaying history):
                // the stream catches up itself once woken.
                matches!(moved, Err(next) if next <= committed)
            })
        };
        if must_wake {
            self.wake.notify_one();
        }
        must_wake
    }
}

/// Whether `events` hold every event of the revisions `after + 1..=upto`
/// in order (revision 1, the store's internal record, has none).
pub(super) fn contiguous(events: &[Arc<Event>], after: i64, upto: i64) -> bool {
    let first = (after + 1).max(2);
    events.len() as i64 == (upto - first + 1).max(0)
        && events
            .iter()
            .zip(first..)
            .all(|(e, revision)| e.revision() == revision)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;
    use crate::store::{KvEntry, Rev};
    use crate::watch::{RingLimits, WatchHub};

    fn ev(revision: i64, key: &str) -> Event {
        Event::new(
            KvEntry {
                key: Bytes::copy_from_slice(key.as_bytes()),
                rev: Rev {
                    revision,
                    create_revision: revision,
                    version: 1,
                    lease: 0,
                    deleted: false,
                },
                value: Some(Bytes::from_static(b"v")),
            },
            None,
        )
    }

    fn commit(events: &[(i64, &str)]) -> Vec<Arc<Event>> {
        events.iter().map(|(r, k)| Arc::new(ev(*r, k))).collect()
    }

    fn prefix(p: &str) -> KeyRange {
        let start = Bytes::copy_from_slice(p.as_bytes());
        let end = Bytes::from(crate::store::keyrange::prefix_end(p.as_bytes()));
        KeyRange::new(&start, &end)
    }

    /// A stream with one watch on `p` whose next undelivered revision is
    /// `next`.
    fn watching(p: &str, next: i64) -> (Listener, Arc<AtomicI64>) {
        let listener = Listener::default();
        let cell = Arc::new(AtomicI64::new(next));
        listener.add(1, prefix(p), cell.clone());
        (listener, cell)
    }

    #[test]
    fn a_caught_up_watch_is_moved_past_a_commit_with_nothing_for_it() {
        let (l, next) = watching("/a/", 6);
        assert!(!l.consider(&commit(&[(6, "/b/x")]), 5, 6, true));
        assert_eq!(
            next.load(Ordering::Acquire),
            7,
            "nothing to deliver up to 6"
        );
        assert!(!l.consider(&commit(&[(7, "/b/y"), (8, "/c")]), 6, 8, true));
        assert_eq!(next.load(Ordering::Acquire), 9);

        assert!(l.consider(&commit(&[(9, "/b/z"), (10, "/a/1")]), 8, 10, true));
        assert_eq!(next.load(Ordering::Acquire), 9, "the stream delivers 10");
    }

    #[test]
    fn a_watch_behind_the_commit_is_woken_with_nothing_in_it() {
        // Still delivering revision 3 onwards (or replaying history).
        let (l, next) = watching("/a/", 3);
        assert!(l.consider(&commit(&[(6, "/b/x")]), 5, 6, true));
        assert_eq!(next.load(Ordering::Acquire), 3, "left for the stream");
    }

    #[test]
    fn a_watch_already_past_the_commit_is_left_alone() {
        // Created after revision 7 was announced.
        let (l, next) = watching("/a/", 8);
        assert!(!l.consider(&commit(&[(6, "/b/x")]), 5, 6, true));
        assert_eq!(next.load(Ordering::Acquire), 8);
    }

    #[test]
    fn a_commit_whose_events_are_not_all_there_wakes_every_stream() {
        let (l, next) = watching("/a/", 6);
        assert!(l.consider(&commit(&[(6, "/b/x")]), 5, 7, false));
        assert_eq!(next.load(Ordering::Acquire), 6);
        assert!(!l.consider(&[], 7, 7, false), "nothing new: no wake");
    }

    #[test]
    fn a_commit_is_contiguous_when_every_revision_has_its_event() {
        assert!(contiguous(&commit(&[(6, "a"), (7, "b")]), 5, 7));
        assert!(
            contiguous(&commit(&[(2, "a")]), 0, 2),
            "revision 1 has none"
        );
        assert!(!contiguous(&commit(&[(6, "a"), (8, "b")]), 5, 8));
        assert!(!contiguous(&commit(&[(7, "b")]), 5, 7));
        assert!(!contiguous(&commit(&[(6, "a")]), 5, 7));
        assert!(contiguous(&[], 7, 7));
    }

    #[test]
    fn the_hub_wakes_only_the_streams_a_commit_concerns() {
        let hub = WatchHub::new(5, RingLimits::default());
        let (a, b) = (hub.listen(), hub.listen());
        let (a_next, b_next) = (Arc::new(AtomicI64::new(6)), Arc::new(AtomicI64::new(6)));
        a.add(1, prefix("/a/"), a_next.clone());
        b.add(1, prefix("/b/"), b_next.clone());

        hub.publish(vec![ev(6, "/a/1")], 6);
        assert!(a.woken().now_or_never().is_some(), "a has an event");
        assert!(b.woken().now_or_never().is_none(), "b has none");
        assert_eq!(b_next.load(Ordering::Acquire), 7);
        assert_eq!(hub.listeners(), 1, "the last commit woke one stream");

        hub.unlisten(&a);
        a_next.store(7, Ordering::Release);
        hub.publish(vec![ev(7, "/a/2")], 7);
        assert!(a.woken().now_or_never().is_none(), "a no longer listens");
        assert_eq!(hub.listeners(), 0);
        assert_eq!(b_next.load(Ordering::Acquire), 8);
    }
}
