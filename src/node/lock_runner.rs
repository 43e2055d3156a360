//! Runs the tier-1 election: a lock cycle at once and then every cycle
//! interval, the Elector role taken when the lock is won (its bootstrap is
//! the acquire hook: a failure gives the lock back) and left when it is
//! lost, the election endpoint kept truthful, and the cluster told who the
//! Elector is. Stopping resigns the lock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::election::cluster_state::NodeRef;
use crate::election::discovery;
use crate::election::elector::Elector;
use crate::election::endpoint::Leadership;
use crate::election::lock::{ElectorLock, Outcome};
use crate::objstore::ObjectStore;
use crate::store::Timestamp;

use super::cluster::Cluster;
use super::role::ElectorState;
use super::status::RoleCell;

/// The lock runner's parts.
pub struct LockRunner {
    pub lock: ElectorLock,
    pub interval: Duration,
    pub leadership: Arc<Leadership>,
    pub elector: Arc<Elector>,
    pub cluster: Arc<Cluster>,
    pub role: Arc<RoleCell>,
    pub bucket: Arc<dyn ObjectStore>,
}

impl LockRunner {
    /// Runs until `stop`; `first` learns when a cycle first decided who the
    /// Elector is.
    pub async fn run(mut self, first: oneshot::Sender<()>, mut stop: watch::Receiver<bool>) {
        let mut first = Some(first);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if self.cycle().await {
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        }
        if self.lock.is_leader() {
            self.lose();
            match self.lock.resign().await {
                Ok(()) => log::info!("resigned the elector lock"),
                Err(e) => log::warn!("resigning the elector lock: {e}"),
            }
        }
    }

    /// One cycle and what follows from it; true when the Elector is known.
    /// A leader's cycle is cut off after one interval, so a hanging bucket
    /// cannot keep a stale leader (a follower's may take longer: asking a
    /// dead leader's endpoint alone takes a second or more).
    async fn cycle(&mut self) -> bool {
        let outcome = if self.lock.is_leader() {
            tokio::time::timeout(self.interval, self.lock.cycle(Timestamp::now))
                .await
                .unwrap_or_else(|_| Outcome::Undecided {
                    error: format!("the lock cycle took longer than {:?}", self.interval),
                    lost: false,
                })
        } else {
            self.lock.cycle(Timestamp::now).await
        };
        let known = self.follow_outcome(outcome).await;
        if self.lock.give_up_if_unrenewed(Timestamp::now()) {
            log::warn!("could not renew the elector lock in time: giving up the elector role");
            self.lose();
            return false;
        }
        known
    }

    async fn follow_outcome(&mut self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Leader { newly } => {
                if newly {
                    log::info!("won the elector lock");
                    if !self.acquire().await {
                        return false;
                    }
                }
                true
            }
            Outcome::Follower {
                leader_id,
                leader_addr,
                lost,
            } => {
                if lost {
                    log::warn!("lost the elector lock to {leader_id}");
                    self.lose();
                }
                self.follow(&leader_id, &leader_addr).await
            }
            Outcome::Undecided { error, lost } => {
                if lost {
                    log::warn!("lost the elector lock: {error}");
                    self.lose();
                } else {
                    log::warn!(
                        "elector lock cycle undecided ({} in a row): {error}",
                        self.lock.consecutive_fails()
                    );
                }
                false
            }
        }
    }

    /// The acquire hook: the Elector role (its bootstrap must succeed, or
    /// the lock is given back).
    async fn acquire(&mut self) -> bool {
        let _ = self.role.change(|r| r.set_elector(ElectorState::Leader));
        self.leadership.set(true);
        self.cluster
            .set_elector(NodeRef::of(self.cluster.me(), self.cluster.member_id()));
        match self.elector.start().await {
            Ok(()) => true,
            Err(e) => {
                log::error!("elector bootstrap failed: {e}; giving the lock back");
                self.lose();
                if let Err(e) = self.lock.resign().await {
                    log::warn!("resigning the elector lock: {e}");
                }
                false
            }
        }
    }

    /// The lose hook (idempotent).
    fn lose(&mut self) {
        self.leadership.set(false);
        self.elector.stop();
        let _ = self.role.change(|r| r.set_elector(ElectorState::Follower));
    }

    /// Another node holds the lock: find its peer address (its registration)
    /// and follow it.
    async fn follow(&mut self, leader_id: &str, leader_addr: &str) -> bool {
        if let Some(known) = self.cluster.state() {
            if known.elector.node_id == leader_id {
                return true;
            }
        }
        match discovery::read_registration(&*self.bucket, leader_id).await {
            Ok(Some(reg)) => {
                self.cluster.set_elector(NodeRef::of(&reg, 0));
                true
            }
            Ok(None) => {
                log::warn!("the elector {leader_id} ({leader_addr}) has no registration yet");
                false
            }
            Err(e) => {
                log::warn!("reading the elector's registration: {e}");
                false
            }
        }
    }
}
