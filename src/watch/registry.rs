//! The node's active watches as the compaction protocol sees them: for each
//! watch, the next revision it has not delivered yet (history it still
//! needs), plus the node's watch-admission floor. A watch is acceptable
//! while its next revision is at or above the floor; raising the floor and
//! checking every watch against it happen under one lock, so no watch can
//! slip in between (the reference's SendCompactionNotice).
//!
//! Compaction at C keeps revision C readable (etcd's semantics), so a watch
//! whose next revision is exactly the floor still gets all it needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Watches {
    floor: i64,
    next_key: u64,
    /// The next undelivered revision of each registered watch. A watch
    /// advances its own without the lock (once per delivery, on every
    /// stream); it only ever grows, so a floor checked against a value
    /// being raised is at worst refused when it could have been accepted.
    next: HashMap<u64, Arc<AtomicI64>>,
}

/// Every active watch on this node and the admission floor.
#[derive(Default)]
pub struct WatchRegistry {
    inner: Mutex<Watches>,
}

/// A watch refused because it starts below the admission floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BelowFloor {
    pub start: i64,
    pub floor: i64,
}

impl std::fmt::Display for BelowFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "required revision {} has been compacted; compaction revision is {}",
            self.start, self.floor
        )
    }
}

/// A floor refused because an active watch still needs older revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchBelow {
    pub proposed: i64,
}

impl std::fmt::Display for WatchBelow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "active watch exists below proposed compaction revision {}",
            self.proposed
        )
    }
}

/// A watch's place in the registry; dropping it removes the watch.
pub struct RegisteredWatch {
    registry: Arc<WatchRegistry>,
    key: u64,
    next: Arc<AtomicI64>,
}

impl RegisteredWatch {
    /// The watch has delivered everything before `next`.
    pub fn advance(&self, next: i64) {
        self.next.fetch_max(next, Ordering::AcqRel);
    }

    /// The next undelivered revision, as the stream or the hub (which moves
    /// a caught-up watch past a commit with nothing for it) last set it.
    pub fn next(&self) -> i64 {
        self.next.load(Ordering::Acquire)
    }

    /// The cell [`WatchRegistry::min_next`] reads, for the hub's listener.
    pub fn next_cell(&self) -> Arc<AtomicI64> {
        self.next.clone()
    }
}

impl Drop for RegisteredWatch {
    fn drop(&mut self) {
        self.registry.lock().next.remove(&self.key);
    }
}

impl WatchRegistry {
    fn lock(&self) -> MutexGuard<'_, Watches> {
        super::locked(&self.inner)
    }

    /// Registers a watch asked to start at `start` (0: from now on) whose
    /// first undelivered revision is `next`, unless it starts below the
    /// floor.
    pub fn admit(self: &Arc<Self>, start: i64, next: i64) -> Result<RegisteredWatch, BelowFloor> {
        let mut w = self.lock();
        if start > 0 && start < w.floor {
            return Err(BelowFloor {
                start,
                floor: w.floor,
            });
        }
        let key = w.next_key;
        w.next_key += 1;
        let next = Arc::new(AtomicI64::new(next));
        w.next.insert(key, next.clone());
        Ok(RegisteredWatch {
            registry: self.clone(),
            key,
            next,
        })
    }

    /// The lowest revision an active watch still needs; None without
    /// watches.
    pub fn min_next(&self) -> Option<i64> {
        let w = self.lock();
        w.next.values().map(|n| n.load(Ordering::Relaxed)).min()
    }

    /// What this node answers GetMinWatchRevision: the lowest revision an
    /// active watch still needs, or `committed` when there is none.
    pub fn min_needed(&self, committed: i64) -> i64 {
        self.min_next().unwrap_or(committed)
    }

    pub fn floor(&self) -> i64 {
        self.lock().floor
    }

    /// Sets the admission floor (a compaction notice; a lower one rolls a
    /// refused compaction back). Refused, with the floor left as it was,
    /// when an active watch still needs a revision below it.
    pub fn set_floor(&self, proposed: i64) -> Result<(), WatchBelow> {
        let mut w = self.lock();
        let below = |n: i64| n > 0 && n < proposed;
        if w.next.values().any(|n| below(n.load(Ordering::Relaxed))) {
            return Err(WatchBelow { proposed });
        }
        w.floor = proposed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_the_lowest_undelivered_revision_of_the_active_watches() {
        let r = Arc::new(WatchRegistry::default());
        assert_eq!(r.min_next(), None);
        assert_eq!(r.min_needed(40), 40, "no watches: the committed revision");
        let a = r.admit(10, 10).unwrap();
        let b = r.admit(0, 41).unwrap();
        assert_eq!(r.min_needed(40), 10);
        a.advance(30);
        assert_eq!(r.min_needed(40), 30, "a watch needs less as it delivers");
        a.advance(20);
        assert_eq!(r.min_needed(40), 30, "and never more again");
        drop(a);
        assert_eq!(r.min_needed(40), 41, "a removed watch needs nothing");
        drop(b);
        assert_eq!(r.min_needed(40), 40);
    }

    #[test]
    fn a_floor_is_refused_while_a_watch_needs_history_below_it() {
        let r = Arc::new(WatchRegistry::default());
        let w = r.admit(10, 10).unwrap();
        assert_eq!(r.set_floor(11), Err(WatchBelow { proposed: 11 }));
        assert_eq!(r.floor(), 0, "a refused floor leaves the old one");
        assert_eq!(
            r.set_floor(11).unwrap_err().to_string(),
            "active watch exists below proposed compaction revision 11"
        );
        r.set_floor(10).unwrap();
        assert_eq!(
            r.floor(),
            10,
            "the watch's own next revision stays readable"
        );
        w.advance(15);
        r.set_floor(15).unwrap();
        r.set_floor(3).unwrap();
        assert_eq!(r.floor(), 3, "a rollback lowers the floor again");
    }

    #[test]
    fn watches_below_the_floor_are_refused_from_the_moment_it_is_set() {
        let r = Arc::new(WatchRegistry::default());
        r.set_floor(20).unwrap();
        let refused = r.admit(19, 19).err().unwrap();
        assert_eq!(
            refused.to_string(),
            "required revision 19 has been compacted; compaction revision is 20"
        );
        assert_eq!(r.min_next(), None, "a refused watch is not registered");
        let _at = r.admit(20, 20).unwrap();
        let _now = r.admit(0, 50).unwrap();
        assert_eq!(r.min_next(), Some(20));
        r.set_floor(0).unwrap();
        assert!(r.admit(19, 19).is_ok(), "a lowered floor admits again");
    }
}
