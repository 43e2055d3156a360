//! When leases expire, as plain state: the Primary's deadlines for every
//! lease it holds, renewed by keep-alives and handed out once due. Time is
//! an input (`now`); nothing here sleeps or does I/O. Deadlines live only
//! in memory: a node taking the Primary role gives every lease its full
//! TTL again, as etcd does on a leader change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Held {
    ttl: i64,
    expires: Instant,
    /// Handed out as due; its revoke is under way.
    revoking: bool,
}

/// A lease's time to live as etcd reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    pub granted: i64,
    /// Whole seconds left (0 once due).
    pub remaining: i64,
}

#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, Held>,
}

fn deadline(now: Instant, ttl: i64) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Lessor {
    /// Holds exactly `leases` ((id, TTL) pairs), each with its full TTL
    /// from `now`.
    pub fn take_over(&mut self, leases: impl IntoIterator<Item = (i64, i64)>, now: Instant) {
        self.leases = leases
            .into_iter()
            .map(|(id, ttl)| {
                let expires = deadline(now, ttl);
                let held = Held {
                    ttl,
                    expires,
                    revoking: false,
                };
                (id, held)
            })
            .collect();
    }

    /// Forgets every lease (this node no longer leads).
    pub fn clear(&mut self) {
        self.leases.clear();
    }

    pub fn granted(&mut self, id: i64, ttl: i64, now: Instant) {
        let held = Held {
            ttl,
            expires: deadline(now, ttl),
            revoking: false,
        };
        self.leases.insert(id, held);
    }

    pub fn revoked(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// A keep-alive: the lease's full TTL again from `now`. None when it is
    /// unknown or already due (etcd answers TTL 0 then).
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let held = self.leases.get_mut(&id)?;
        if held.revoking || held.expires <= now {
            return None;
        }
        held.expires = deadline(now, held.ttl);
        Some(held.ttl)
    }

    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<TimeToLive> {
        let held = self.leases.get(&id)?;
        let left = held.expires.saturating_duration_since(now);
        Some(TimeToLive {
            granted: held.ttl,
            remaining: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// Leases that ran out by `now` and are not being revoked yet; they are
    /// marked as being revoked.
    pub fn due(&mut self, now: Instant) -> Vec<i64> {
        let mut due: Vec<(Instant, i64)> = self
            .leases
            .iter_mut()
            .filter(|(_, h)| !h.revoking && h.expires <= now)
            .map(|(id, h)| {
                h.revoking = true;
                (h.expires, *id)
            })
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// A revoke that failed: the lease is handed out again at the next
    /// `due`.
    pub fn retry(&mut self, id: i64) {
        if let Some(h) = self.leases.get_mut(&id) {
            h.revoking = false;
        }
    }

    /// The earliest deadline not yet handed out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases
            .values()
            .filter(|h| !h.revoking)
            .map(|h| h.expires)
            .min()
    }

    /// Every lease id, soonest deadline first (etcd's LeaseLeases order).
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<(Instant, i64)> =
            self.leases.iter().map(|(id, h)| (h.expires, *id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }
}

/// Fresh lease ids: positive, unique, not guessable from the TTL.
#[derive(Debug)]
pub struct LeaseIds {
    state: u64,
}

impl LeaseIds {
    /// `seed` makes the ids unpredictable (and repeatable in tests).
    pub fn new(seed: u64) -> LeaseIds {
        LeaseIds { state: seed | 1 }
    }

    pub fn fresh(&mut self, taken: impl Fn(i64) -> bool) -> i64 {
        loop {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let id = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 1) as i64;
            if id > 0 && !taken(id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn leases_expire_after_their_ttl_unless_kept_alive() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.granted(1, 3, t0);
        l.granted(2, 10, t0);
        assert_eq!(l.next_deadline(), Some(t0 + secs(3)));
        assert!(l.due(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(
            l.time_to_live(1, t0 + Duration::from_millis(1500)),
            Some(TimeToLive {
                granted: 3,
                remaining: 1
            })
        );
        assert_eq!(l.renew(1, t0 + secs(2)), Some(3), "kept alive at 2 s");
        assert!(l.due(t0 + secs(4)).is_empty(), "now due at 5 s");
        assert_eq!(l.due(t0 + secs(5)), [1]);
        assert!(l.due(t0 + secs(6)).is_empty(), "handed out once");
        assert_eq!(l.renew(1, t0 + secs(6)), None, "a due lease is not renewed");
        assert_eq!(l.next_deadline(), Some(t0 + secs(10)));
        l.retry(1);
        assert_eq!(l.due(t0 + secs(6)), [1], "a failed revoke comes back");
        l.revoked(1);
        assert_eq!(l.time_to_live(1, t0 + secs(6)), None);
        assert_eq!(l.due(t0 + secs(11)), [2]);
    }

    #[test]
    fn taking_over_gives_every_lease_its_full_ttl_and_lists_by_deadline() {
        let t0 = Instant::now();
        let mut l = Lessor::default();
        l.granted(9, 5, t0);
        let later = t0 + secs(100);
        l.take_over([(1, 30), (2, 5), (3, 9_000_000_000)], later);
        assert_eq!(l.time_to_live(9, later), None, "only what was taken over");
        assert_eq!(l.ids(), [2, 1, 3]);
        assert_eq!(l.time_to_live(1, later).map(|t| t.remaining), Some(30));
        assert!(l.due(later + secs(4)).is_empty());
        assert_eq!(l.due(later + secs(30)), [2, 1]);
        l.clear();
        assert!(l.ids().is_empty());
    }

    #[test]
    fn fresh_ids_are_positive_unique_and_follow_the_seed() {
        let ids = |seed| {
            let mut g = LeaseIds::new(seed);
            let mut taken = std::collections::HashSet::new();
            (0..50)
                .map(|_| {
                    let id = g.fresh(|c| taken.contains(&c));
                    taken.insert(id);
                    id
                })
                .collect::<Vec<i64>>()
        };
        let a = ids(7);
        assert!(a.iter().all(|id| *id > 0));
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), a.len());
        assert_eq!(a, ids(7));
        assert_ne!(a, ids(8));
    }
}
