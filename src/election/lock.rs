//! The tier-1 election: one object in the bucket, `leader/elector.json`,
//! names the Elector. Every node runs a cycle (at once, then every 5 s):
//! read the record (or, as a follower, ask the known leader directly),
//! renew it if it is ours and fresh, follow whoever holds a fresh one, and
//! take a stale or missing one over with a conditional write — so at most
//! one node wins. A resigning leader writes the zero time so the others
//! need not wait for the record to go stale. The cycle is told the time;
//! the runner around it keeps the beat and runs the hooks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::objstore::{Condition, ObjError, ObjectStore};
use crate::store::Timestamp;

/// The lock object (relative to `storage.key_prefix`).
pub const LOCK_KEY: &str = "leader/elector.json";

/// How often a cycle runs (the reference's frequent interval).
pub const CYCLE_INTERVAL: Duration = Duration::from_secs(5);

/// A record older than this is stale and may be taken over.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// The time a resigning leader writes: the zero time, stale at once.
pub fn zero_time() -> Timestamp {
    Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    }
}

/// The lock record, exactly as the reference writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    #[serde(rename = "leaderID", default, skip_serializing_if = "String::is_empty")]
    pub leader_id: String,
    #[serde(
        rename = "leaderAddr",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub leader_addr: String,
    #[serde(rename = "lastUpdated", with = "rfc3339")]
    pub last_updated: Timestamp,
}

impl LockRecord {
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn parse(data: &[u8]) -> Result<LockRecord, String> {
        serde_json::from_slice(data).map_err(|e| format!("{LOCK_KEY} is not valid: {e}"))
    }

    /// How old the record is at `now` (negative ages count as fresh).
    pub fn age(&self, now: Timestamp) -> Duration {
        elapsed(self.last_updated, now)
    }
}

/// Time from `then` to `now`; zero when `now` is earlier.
fn elapsed(then: Timestamp, now: Timestamp) -> Duration {
    now.to_system()
        .duration_since(then.to_system())
        .unwrap_or(Duration::ZERO)
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::store::Timestamp;

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid time {text:?}")))
    }
}

/// Asks a node directly whether it holds the lock (peer mode): its record
/// when it does, None when it says it does not.
pub trait LeaderProbe: Send + Sync {
    fn probe<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<LockRecord>, String>>;
}

/// What one cycle found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This node holds the lock; `newly` when it was not the leader before.
    Leader { newly: bool },
    /// Another node holds a fresh record.
    Follower {
        leader_id: String,
        leader_addr: String,
        /// This node was the leader until now.
        lost: bool,
    },
    /// Nothing could be decided this cycle (the bucket failed, or another
    /// node took the stale lock first); `lost` as above.
    Undecided { error: String, lost: bool },
}

/// One node's side of the election.
pub struct ElectorLock {
    store: Arc<dyn ObjectStore>,
    me: String,
    my_addr: String,
    timeout: Duration,
    probe: Option<Arc<dyn LeaderProbe>>,
    leader: bool,
    /// The last leader seen: (id, election address).
    known: Option<(String, String)>,
    consecutive_fails: u32,
    /// When this node last wrote the record as leader.
    renewed_at: Option<Timestamp>,
}

impl ElectorLock {
    /// `my_addr` is this node's election (health) address, as others dial
    /// it. With a probe, a follower asks the known leader before reading
    /// the bucket.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        me: &str,
        my_addr: &str,
        timeout: Duration,
        probe: Option<Arc<dyn LeaderProbe>>,
    ) -> ElectorLock {
        ElectorLock {
            store,
            me: me.to_string(),
            my_addr: my_addr.to_string(),
            timeout,
            probe,
            leader: false,
            known: None,
            consecutive_fails: 0,
            renewed_at: None,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Cycles in a row that could not read or write the lock.
    pub fn consecutive_fails(&self) -> u32 {
        self.consecutive_fails
    }

    /// The record this node writes as leader at `now`.
    pub fn own_record(&self, now: Timestamp) -> LockRecord {
        LockRecord {
            leader_id: self.me.clone(),
            leader_addr: self.my_addr.clone(),
            last_updated: now,
        }
    }

    /// One election cycle; `clock` gives the wall-clock time, read once
    /// the record has been obtained: asking a leader that does not answer
    /// takes seconds, and the record is that much older by then, while
    /// what this node writes next is only as fresh as that time (never
    /// later than the write itself).
    pub async fn cycle(&mut self, clock: impl Fn() -> Timestamp) -> Outcome {
        let was_leader = self.leader;
        let obtained = self.obtain().await;
        let now = clock();
        let (record, etag) = match obtained {
            Ok(found) => found,
            Err(error) => {
                self.consecutive_fails += 1;
                let lost = self.unrenewed_too_long(now);
                return self.undecided(error, lost);
            }
        };
        if let Some(r) = &record {
            if !r.leader_id.is_empty() {
                self.known = Some((r.leader_id.clone(), r.leader_addr.clone()));
            }
            let fresh = r.age(now) < self.timeout;
            if fresh && r.leader_id == self.me {
                let Some(etag) = etag else {
                    // Our own record came back from a probe: read it to renew.
                    return self.undecided("own record without an etag".into(), false);
                };
                return match self.write(now, Condition::IfMatch(etag)).await {
                    Ok(()) => self.won(now, was_leader),
                    // Renewal failed: leadership unchanged this cycle,
                    // unless the record may soon be taken over.
                    Err(e) => {
                        self.consecutive_fails += 1;
                        if was_leader && !self.unrenewed_too_long(now) {
                            Outcome::Leader { newly: false }
                        } else {
                            self.undecided(e, was_leader)
                        }
                    }
                };
            }
            if fresh && !r.leader_id.is_empty() {
                self.leader = false;
                self.consecutive_fails = 0;
                return Outcome::Follower {
                    leader_id: r.leader_id.clone(),
                    leader_addr: r.leader_addr.clone(),
                    lost: was_leader,
                };
            }
        }
        // Missing or stale: take it over, conditionally.
        let condition = match (&record, etag) {
            (None, _) => Condition::IfAbsent,
            (Some(_), Some(etag)) => Condition::IfMatch(etag),
            // A stale record from a probe: read the bucket next time.
            (Some(_), None) => {
                self.known = None;
                return self.undecided("the probed leader's record is stale".into(), false);
            }
        };
        match self.write(now, condition).await {
            Ok(()) => {
                self.known = Some((self.me.clone(), self.my_addr.clone()));
                self.won(now, was_leader)
            }
            Err(e) => {
                self.consecutive_fails += 1;
                self.undecided(e, was_leader)
            }
        }
    }

    fn won(&mut self, now: Timestamp, was_leader: bool) -> Outcome {
        self.leader = true;
        self.consecutive_fails = 0;
        self.renewed_at = Some(now);
        Outcome::Leader { newly: !was_leader }
    }

    fn undecided(&mut self, error: String, lost: bool) -> Outcome {
        if lost {
            self.leader = false;
        }
        Outcome::Undecided { error, lost }
    }

    /// Gives the role up if it has gone unrenewed too long by `now` (the
    /// runner asks after every cycle, whose own `now` was taken before its
    /// reads and writes). True when it did.
    pub fn give_up_if_unrenewed(&mut self, now: Timestamp) -> bool {
        if self.unrenewed_too_long(now) {
            self.leader = false;
            return true;
        }
        false
    }

    /// A leader that could not renew for two thirds of the timeout gives
    /// the role up: others may take the record once it is stale, and the
    /// remaining third (one cycle at the reference's timings) keeps the
    /// old leader's end before the new one's start. (The reference stays
    /// leader until another node's write is seen.)
    fn unrenewed_too_long(&self, now: Timestamp) -> bool {
        self.leader
            && self
                .renewed_at
                .is_none_or(|at| elapsed(at, now) >= self.timeout * 2 / 3)
    }

    /// The current record and its etag: from the known leader when this
    /// node follows one and has a probe (no etag then), else the bucket.
    async fn obtain(&mut self) -> Result<(Option<LockRecord>, Option<String>), String> {
        if let (false, Some(probe), Some((_, addr))) = (self.leader, &self.probe, &self.known) {
            if !addr.is_empty() {
                if let Ok(Some(record)) = probe.probe(addr).await {
                    return Ok((Some(record), None));
                }
            }
        }
        match self.store.get(LOCK_KEY).await {
            Ok(obj) => {
                // A record that does not parse is stale: it can be taken over.
                let record = LockRecord::parse(&obj.data).unwrap_or(LockRecord {
                    leader_id: String::new(),
                    leader_addr: String::new(),
                    last_updated: zero_time(),
                });
                Ok((Some(record), Some(obj.etag)))
            }
            Err(ObjError::NotFound(_)) => Ok((None, None)),
            Err(e) => Err(format!("reading {LOCK_KEY}: {e}")),
        }
    }

    async fn write(&self, now: Timestamp, condition: Condition) -> Result<(), String> {
        self.store
            .put(LOCK_KEY, self.own_record(now).to_json(), condition)
            .await
            .map(|_| ())
            .map_err(|e| format!("writing {LOCK_KEY}: {e}"))
    }

    /// Gives the lock up: if the record is still ours, its time becomes the
    /// zero time so another node takes over at its next cycle.
    pub async fn resign(&mut self) -> Result<(), String> {
        let was_leader = std::mem::replace(&mut self.leader, false);
        if !was_leader {
            return Ok(());
        }
        let obj = match self.store.get(LOCK_KEY).await {
            Ok(obj) => obj,
            Err(ObjError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(format!("reading {LOCK_KEY}: {e}")),
        };
        match LockRecord::parse(&obj.data) {
            Ok(r) if r.leader_id == self.me => {
                let record = LockRecord {
                    last_updated: zero_time(),
                    ..r
                };
                self.store
                    .put(LOCK_KEY, record.to_json(), Condition::IfMatch(obj.etag))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("resigning {LOCK_KEY}: {e}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objstore::memory::MemoryStore;

    fn at(seconds: i64) -> Timestamp {
        Timestamp {
            seconds: 1_800_000_000 + seconds,
            nanos: 0,
        }
    }

    fn lock(store: &Arc<MemoryStore>, me: &str) -> ElectorLock {
        ElectorLock::new(
            store.clone(),
            me,
            &format!("{me}:8443"),
            LEADER_TIMEOUT,
            None,
        )
    }

    async fn record(store: &MemoryStore) -> LockRecord {
        LockRecord::parse(&store.get(LOCK_KEY).await.unwrap().data).unwrap()
    }

    #[test]
    fn the_record_is_the_reference_json() {
        let r = LockRecord {
            leader_id: "node-1".into(),
            leader_addr: "10.0.0.1:8443".into(),
            last_updated: Timestamp {
                seconds: 1_735_787_045,
                nanos: 120_000_000,
            },
        };
        assert_eq!(
            &r.to_json()[..],
            br#"{"leaderID":"node-1","leaderAddr":"10.0.0.1:8443","lastUpdated":"2025-01-02T03:04:05.12Z"}"#
        );
        assert_eq!(LockRecord::parse(&r.to_json()).unwrap(), r);
        let empty = LockRecord {
            leader_id: String::new(),
            leader_addr: String::new(),
            last_updated: zero_time(),
        };
        assert_eq!(
            &empty.to_json()[..],
            br#"{"lastUpdated":"0001-01-01T00:00:00Z"}"#
        );
    }

    #[tokio::test]
    async fn the_first_node_takes_the_lock_and_renews_it() {
        let store = Arc::new(MemoryStore::new());
        let mut a = lock(&store, "a");
        assert_eq!(a.cycle(|| at(0)).await, Outcome::Leader { newly: true });
        assert_eq!(record(&store).await.last_updated, at(0));
        assert_eq!(a.cycle(|| at(5)).await, Outcome::Leader { newly: false });
        assert_eq!(record(&store).await, a.own_record(at(5)));
    }

    #[tokio::test]
    async fn others_follow_a_fresh_lock_and_take_over_a_stale_one() {
        let store = Arc::new(MemoryStore::new());
        let (mut a, mut b) = (lock(&store, "a"), lock(&store, "b"));
        a.cycle(|| at(0)).await;
        let follow = Outcome::Follower {
            leader_id: "a".into(),
            leader_addr: "a:8443".into(),
            lost: false,
        };
        assert_eq!(b.cycle(|| at(1)).await, follow);
        assert_eq!(b.cycle(|| at(14)).await, follow, "14 s old: still fresh");
        // a stops renewing: after the timeout b takes over.
        assert_eq!(b.cycle(|| at(15)).await, Outcome::Leader { newly: true });
        assert_eq!(record(&store).await.leader_id, "b");
        // a comes back: it follows b and learns it lost.
        assert_eq!(
            a.cycle(|| at(16)).await,
            Outcome::Follower {
                leader_id: "b".into(),
                leader_addr: "b:8443".into(),
                lost: true
            }
        );
        assert!(!a.is_leader());
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_gives_up_before_others_may_take_over() {
        use crate::objstore::tests::{transient, Flaky};
        use std::sync::atomic::Ordering::SeqCst;
        let store = Flaky::new(0, transient);
        let mut a = ElectorLock::new(store.clone(), "a", "a:8443", LEADER_TIMEOUT, None);
        assert_eq!(a.cycle(|| at(0)).await, Outcome::Leader { newly: true });
        // Every write fails from now on.
        store.failures.store(u32::MAX, SeqCst);
        assert_eq!(
            a.cycle(|| at(5)).await,
            Outcome::Leader { newly: false },
            "5 s unrenewed: still the leader"
        );
        assert!(matches!(
            a.cycle(|| at(10)).await,
            Outcome::Undecided { lost: true, .. }
        ));
        assert!(
            !a.is_leader(),
            "10 s unrenewed: no longer, 5 s before b may take over"
        );
        store.failures.store(0, SeqCst);
        // A cycle that began in time but ended late gives up as well.
        let mut c = ElectorLock::new(store.clone(), "c", "c:8443", LEADER_TIMEOUT, None);
        assert_eq!(c.cycle(|| at(20)).await, Outcome::Leader { newly: true });
        assert!(!c.give_up_if_unrenewed(at(29)));
        assert!(c.give_up_if_unrenewed(at(30)));
        assert!(!c.is_leader());
        let mut b = ElectorLock::new(store.clone(), "b", "b:8443", LEADER_TIMEOUT, None);
        assert!(matches!(b.cycle(|| at(34)).await, Outcome::Follower { .. }));
        assert_eq!(b.cycle(|| at(35)).await, Outcome::Leader { newly: true });
    }

    #[tokio::test]
    async fn of_two_contenders_exactly_one_wins() {
        for stale in [false, true] {
            let store = Arc::new(MemoryStore::new());
            if stale {
                let mut old = lock(&store, "old");
                old.cycle(|| at(-100)).await;
            }
            let (mut a, mut b) = (lock(&store, "a"), lock(&store, "b"));
            let (ra, rb) = tokio::join!(a.cycle(|| at(0)), b.cycle(|| at(0)));
            let winners = [&ra, &rb]
                .iter()
                .filter(|o| matches!(o, Outcome::Leader { .. }))
                .count();
            assert_eq!(winners, 1, "{ra:?} {rb:?}");
            assert_ne!(a.is_leader(), b.is_leader());
            let holder = record(&store).await.leader_id;
            assert_eq!(holder, if a.is_leader() { "a" } else { "b" });
            // The loser follows the winner at its next cycle.
            let loser = if a.is_leader() { &mut b } else { &mut a };
            assert!(matches!(
                loser.cycle(|| at(5)).await,
                Outcome::Follower { leader_id, .. } if leader_id == holder
            ));
        }
    }

    #[tokio::test]
    async fn a_resigned_lock_is_taken_over_at_once() {
        let store = Arc::new(MemoryStore::new());
        let (mut a, mut b) = (lock(&store, "a"), lock(&store, "b"));
        a.cycle(|| at(0)).await;
        a.resign().await.unwrap();
        assert!(!a.is_leader());
        let r = record(&store).await;
        assert_eq!((r.leader_id.as_str(), r.last_updated), ("a", zero_time()));
        assert_eq!(b.cycle(|| at(1)).await, Outcome::Leader { newly: true });
        // Resigning a lock another node holds changes nothing.
        a.resign().await.unwrap();
        assert_eq!(record(&store).await.leader_id, "b");
    }

    #[tokio::test]
    async fn a_restarted_leader_renews_its_own_fresh_record() {
        let store = Arc::new(MemoryStore::new());
        lock(&store, "a").cycle(|| at(0)).await;
        let mut restarted = lock(&store, "a");
        assert_eq!(
            restarted.cycle(|| at(3)).await,
            Outcome::Leader { newly: true },
            "newly leader for this process: its hooks must run"
        );
    }

    #[tokio::test]
    async fn a_damaged_record_is_taken_over() {
        let store = Arc::new(MemoryStore::new());
        store
            .put(LOCK_KEY, Bytes::from_static(b"{not json"), Condition::None)
            .await
            .unwrap();
        let mut a = lock(&store, "a");
        assert_eq!(a.cycle(|| at(0)).await, Outcome::Leader { newly: true });
    }

    /// A probe answering for the known leader, counting its calls.
    struct Probe(std::sync::Mutex<Vec<String>>, Option<LockRecord>);

    impl LeaderProbe for Probe {
        fn probe<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<LockRecord>, String>> {
            self.0.lock().unwrap().push(addr.to_string());
            let answer = self.1.clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    #[tokio::test]
    async fn a_follower_asks_the_leader_instead_of_the_bucket() {
        let store = Arc::new(MemoryStore::new());
        let mut a = lock(&store, "a");
        a.cycle(|| at(0)).await;
        let probe = Arc::new(Probe(Default::default(), Some(a.own_record(at(20)))));
        let mut b = ElectorLock::new(
            store.clone(),
            "b",
            "b:8443",
            LEADER_TIMEOUT,
            Some(probe.clone()),
        );
        // First cycle: nothing known yet, the bucket is read.
        assert!(matches!(b.cycle(|| at(1)).await, Outcome::Follower { .. }));
        assert!(probe.0.lock().unwrap().is_empty());
        // Later the leader answers for itself, even though the bucket's
        // record went stale (a stopped renewing in this test).
        assert!(matches!(b.cycle(|| at(20)).await, Outcome::Follower { .. }));
        assert_eq!(*probe.0.lock().unwrap(), ["a:8443"]);
        // A leader that says it is not the leader sends b to the bucket.
        let denies = Arc::new(Probe(Default::default(), None));
        let mut c = ElectorLock::new(
            store.clone(),
            "c",
            "c:8443",
            LEADER_TIMEOUT,
            Some(denies.clone()),
        );
        c.cycle(|| at(1)).await;
        assert_eq!(c.cycle(|| at(20)).await, Outcome::Leader { newly: true });
        assert_eq!(denies.0.lock().unwrap().len(), 1);
    }

    /// A leader that does not answer: each probe fails after `1` seconds
    /// of the test's clock.
    struct DeadLeader(Arc<std::sync::atomic::AtomicI64>, i64);

    impl LeaderProbe for DeadLeader {
        fn probe<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<LockRecord>, String>> {
            self.0
                .fetch_add(self.1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Err("no answer".to_string()) })
        }
    }

    /// The record's age counts from when it was read: a follower that
    /// spent the cycle waiting for a dead leader's answer finds the record
    /// stale in that same cycle (it once waited a whole further cycle).
    #[tokio::test]
    async fn a_record_read_after_a_dead_leaders_silence_is_aged_at_the_read() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let store = Arc::new(MemoryStore::new());
        let mut a = lock(&store, "a");
        assert_eq!(a.cycle(|| at(0)).await, Outcome::Leader { newly: true });
        let clock = Arc::new(AtomicI64::new(1));
        let silent = Arc::new(DeadLeader(clock.clone(), 16));
        let mut b = ElectorLock::new(store.clone(), "b", "b:8443", LEADER_TIMEOUT, Some(silent));
        let now = || at(clock.load(Ordering::SeqCst));
        assert!(matches!(b.cycle(now).await, Outcome::Follower { .. }));
        // Started at 2, read the record at 18: 18 s old, past the timeout.
        clock.store(2, Ordering::SeqCst);
        assert_eq!(b.cycle(now).await, Outcome::Leader { newly: true });
        // What b wrote is as fresh as its read, so b keeps the role (it
        // once gave it up at once, its record being 16 s old already).
        assert!(!b.give_up_if_unrenewed(at(18)));
        let written = LockRecord::parse(&store.get(LOCK_KEY).await.unwrap().data).unwrap();
        assert_eq!(written.last_updated, at(18));
    }
}
