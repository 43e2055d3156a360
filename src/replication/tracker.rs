//! The Primary's view of its replicas, as plain state: who follows on which
//! stream, what each last reported, which revisions each has receipted, and
//! from that who may count towards a quorum. Every method takes `now`; the
//! caller owns the clock and the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// A replica's health as it reports it (or as the Primary marked it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaHealth {
    Loading,
    Healthy,
    Degraded,
}

/// One heartbeat or receipt: what the replica says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    pub health: ReplicaHealth,
    pub latest: i64,
}

#[derive(Clone, Debug)]
struct Replica {
    /// The Follow stream this entry belongs to; a reconnect replaces it.
    stream: u64,
    health: ReplicaHealth,
    latest: i64,
    /// Receipts on this stream (eligibility needs at least one).
    receipts: u64,
    /// Highest revision receipted on this stream.
    receipted: i64,
    last_heard: Instant,
    /// A quorum wait for this revision timed out without this replica:
    /// it counts again once it receipts that far.
    missed: Option<i64>,
}

impl Replica {
    fn eligible(&self) -> bool {
        self.health == ReplicaHealth::Healthy && self.receipts >= 1 && self.missed.is_none()
    }
}

/// Receipts a write needs besides the Primary's own commit: quorum 0 →
/// none; k > 0 → k; −1 → a majority of the registered nodes with the
/// Primary counted, floor(N / 2).
pub fn required_receipts(quorum: i64, node_count: i64) -> usize {
    match quorum {
        0 => 0,
        k if k > 0 => k as usize,
        _ if node_count <= 1 => 0,
        _ => (node_count / 2) as usize,
    }
}

#[derive(Debug)]
pub struct Tracker {
    replicas: BTreeMap<String, Replica>,
    /// Silence after which a replica counts as degraded
    /// (degradation_count × heartbeat interval).
    degrade_after: Duration,
    next_stream: u64,
}

impl Tracker {
    pub fn new(degrade_after: Duration) -> Tracker {
        Tracker {
            replicas: BTreeMap::new(),
            degrade_after,
            next_stream: 1,
        }
    }

    /// A replica opened a Follow stream: a fresh entry (no receipts yet),
    /// replacing any older stream of the same node. Returns the stream's id.
    pub fn attach(&mut self, node: &str, now: Instant) -> u64 {
        let stream = self.next_stream;
        self.next_stream += 1;
        self.replicas.insert(
            node.to_string(),
            Replica {
                stream,
                health: ReplicaHealth::Healthy,
                latest: 0,
                receipts: 0,
                receipted: 0,
                last_heard: now,
                missed: None,
            },
        );
        stream
    }

    /// The stream ended; false when a newer stream had replaced it already.
    pub fn detach(&mut self, node: &str, stream: u64) -> bool {
        match self.replicas.get(node) {
            Some(r) if r.stream == stream => {
                self.replicas.remove(node);
                true
            }
            _ => false,
        }
    }

    /// A heartbeat (`receipt` None) or a receipt on `stream`. False when
    /// the stream is not (or no longer) the node's current one.
    pub fn heard(
        &mut self,
        node: &str,
        stream: Option<u64>,
        report: Report,
        receipt: Option<i64>,
        now: Instant,
    ) -> bool {
        let Some(r) = self.replicas.get_mut(node) else {
            return false;
        };
        if stream.is_some_and(|s| s != r.stream) {
            return false;
        }
        r.health = report.health;
        r.latest = report.latest;
        r.last_heard = now;
        if let Some(revision) = receipt {
            r.receipts += 1;
            r.receipted = r.receipted.max(revision);
            if r.missed.is_some_and(|m| revision >= m) {
                r.missed = None;
            }
        }
        true
    }

    pub fn is_following(&self, node: &str) -> bool {
        self.replicas.contains_key(node)
    }

    pub fn following(&self) -> usize {
        self.replicas.len()
    }

    /// Replicas that may count towards a quorum: healthy, at least one
    /// receipt on their current stream, and no missed quorum since.
    pub fn eligible(&self) -> usize {
        self.replicas.values().filter(|r| r.eligible()).count()
    }

    /// Replicas whose current stream has receipted `revision` (receipts
    /// are sent in revision order, so a later one covers it).
    pub fn receipted(&self, revision: i64) -> usize {
        self.replicas
            .values()
            .filter(|r| r.receipts > 0 && r.receipted >= revision)
            .count()
    }

    /// A quorum wait for `revision` timed out: every eligible replica that
    /// did not receipt it is marked, and stops counting until it does.
    /// Returns the nodes marked.
    pub fn missed(&mut self, revision: i64) -> Vec<String> {
        let mut marked = Vec::new();
        for (node, r) in self.replicas.iter_mut() {
            if r.eligible() && r.receipted < revision {
                r.missed = Some(revision);
                r.health = ReplicaHealth::Degraded;
                marked.push(node.clone());
            }
        }
        marked
    }

    /// The degradation check (every 100 ms): replicas silent for too long
    /// become degraded. Returns the nodes that just did.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let mut degraded = Vec::new();
        for (node, r) in self.replicas.iter_mut() {
            if r.health != ReplicaHealth::Degraded
                && now.saturating_duration_since(r.last_heard) >= self.degrade_after
            {
                r.health = ReplicaHealth::Degraded;
                degraded.push(node.clone());
            }
        }
        degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: Report = Report {
        health: ReplicaHealth::Healthy,
        latest: 0,
    };

    #[test]
    fn required_receipts_follow_the_reference_arithmetic() {
        let majority: Vec<usize> = (1..=7).map(|n| required_receipts(-1, n)).collect();
        assert_eq!(majority, [0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(required_receipts(0, 5), 0);
        assert_eq!(required_receipts(2, 3), 2);
        assert_eq!(required_receipts(2, 1), 2, "static counts ignore the size");
    }

    #[test]
    fn a_replica_is_eligible_once_healthy_with_a_receipt_on_its_stream() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(2));
        let s = t.attach("a", t0);
        assert_eq!(t.eligible(), 0, "no receipt yet");
        assert!(t.heard("a", Some(s), HEALTHY, None, t0));
        assert_eq!(t.eligible(), 0, "a heartbeat is not a receipt");
        assert!(t.heard("a", Some(s), HEALTHY, Some(5), t0));
        assert_eq!(t.eligible(), 1);
        let degraded = Report {
            health: ReplicaHealth::Degraded,
            latest: 5,
        };
        t.heard("a", Some(s), degraded, None, t0);
        assert_eq!(
            t.eligible(),
            0,
            "a replica reporting degraded does not count"
        );
        t.heard("a", Some(s), HEALTHY, None, t0);
        assert_eq!(t.eligible(), 1);

        // A reconnect starts over: receipts on the old stream do not count.
        let s2 = t.attach("a", t0);
        assert_eq!(t.eligible(), 0);
        assert!(!t.heard("a", Some(s), HEALTHY, Some(6), t0), "old stream");
        assert_eq!((t.eligible(), t.receipted(6)), (0, 0));
        assert!(!t.detach("a", s), "the old stream does not remove the new");
        assert!(t.is_following("a"));
        assert!(t.detach("a", s2));
        assert!(!t.is_following("a"));
    }

    #[test]
    fn receipts_of_later_revisions_cover_earlier_ones_per_distinct_replica() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(2));
        let a = t.attach("a", t0);
        let b = t.attach("b", t0);
        t.heard("a", Some(a), HEALTHY, Some(10), t0);
        t.heard("a", Some(a), HEALTHY, Some(11), t0);
        assert_eq!(t.receipted(10), 1, "two receipts of one replica count once");
        t.heard("b", Some(b), HEALTHY, Some(12), t0);
        assert_eq!(t.receipted(10), 2);
        assert_eq!(t.receipted(12), 1);
        assert_eq!(t.receipted(13), 0);
    }

    #[test]
    fn a_missed_quorum_marks_the_silent_eligible_replicas_until_they_catch_up() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(2));
        let a = t.attach("a", t0);
        let b = t.attach("b", t0);
        let c = t.attach("c", t0);
        t.heard("a", Some(a), HEALTHY, Some(1), t0);
        t.heard("b", Some(b), HEALTHY, Some(1), t0);
        t.heard("a", Some(a), HEALTHY, Some(2), t0);
        // c never receipted: not eligible, so not marked.
        assert_eq!(t.missed(2), vec!["b".to_string()]);
        assert_eq!(t.eligible(), 1);
        // b's own report of health does not make it count again...
        t.heard("b", Some(b), HEALTHY, None, t0);
        assert_eq!(t.eligible(), 1);
        t.heard("b", Some(b), HEALTHY, Some(1), t0);
        assert_eq!(t.eligible(), 1, "a receipt below the missed revision");
        // ...catching up to it does.
        t.heard("b", Some(b), HEALTHY, Some(2), t0);
        assert_eq!(t.eligible(), 2);
        let _ = c;
    }

    #[test]
    fn silence_degrades_and_a_report_restores() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_millis(400));
        let a = t.attach("a", t0);
        t.heard("a", Some(a), HEALTHY, Some(3), t0);
        assert!(t.tick(t0 + Duration::from_millis(399)).is_empty());
        assert_eq!(
            t.tick(t0 + Duration::from_millis(400)),
            vec!["a".to_string()]
        );
        assert!(
            t.tick(t0 + Duration::from_millis(500)).is_empty(),
            "reported once"
        );
        assert_eq!(t.eligible(), 0);
        let later = t0 + Duration::from_millis(600);
        t.heard("a", None, HEALTHY, None, later);
        assert_eq!(t.eligible(), 1, "receipts on the stream still count");
        assert!(t.tick(later + Duration::from_millis(399)).is_empty());
    }
}
