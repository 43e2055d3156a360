//! Heartbeats: every `heartbeat_interval` this node tells the Elector how it
//! is (in-process when it is the Elector). A send that fails twice in a row
//! degrades the node (and a Primary steps down), and so does a lapsed
//! [`HeartbeatLease`] while a send still hangs; one that succeeds again
//! heals it — back to healthy, or to loading while it still loads — and
//! fetches the cluster state afresh. A node the Elector no longer knows
//! (removed while silent) registers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::election::discovery;
use crate::http::metrics::Metrics;
use crate::objstore::ObjectStore;

use super::cluster::{Cluster, HeartbeatError};
use super::driver::DriverInput;
use super::role::Health;
use super::status::NodeView;
use super::status::RoleCell;

/// How long after the last heartbeat the Elector answered this node may
/// still act as the Primary (**ours**; the reference steps down only after
/// two failed sends of up to 5 s each, later than the Elector may appoint
/// another). The Elector appoints another Primary no sooner than
/// `elector.degradation_count × heartbeat_interval` after the last
/// heartbeat reached it plus `elector.primary_prior_timeout` spent asking
/// the old one; the lease is the prior timeout plus half that silence,
/// counted from when the heartbeat was sent (never later than it reached
/// the Elector), so it lapses first. A plain clock-driven record.
#[derive(Debug)]
pub struct HeartbeatLease {
    length: Duration,
    /// When the last heartbeat the Elector answered was sent.
    renewed: Mutex<Instant>,
}

impl HeartbeatLease {
    /// A lease of `length`, held from `now` (the node just reached the
    /// Elector to register).
    pub fn new(length: Duration, now: Instant) -> HeartbeatLease {
        HeartbeatLease {
            length,
            renewed: Mutex::new(now),
        }
    }

    /// The length for these settings (see the type).
    pub fn length_for(silence: Duration, prior_timeout: Duration) -> Duration {
        let prior = match prior_timeout.is_zero() {
            true => crate::election::choose::DEFAULT_PRIOR_TIMEOUT,
            false => prior_timeout,
        };
        prior + silence / 2
    }

    /// A heartbeat sent at `sent_at` was answered.
    pub fn renewed(&self, sent_at: Instant) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        *renewed = (*renewed).max(sent_at);
    }

    pub fn expires_at(&self) -> Instant {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) + self.length
    }

    pub fn held_at(&self, now: Instant) -> bool {
        now < self.expires_at()
    }

    fn lapsed(&self) -> String {
        format!(
            "no heartbeat has reached the Elector for {:?}: another node may be Primary by now",
            self.length
        )
    }
}

impl crate::primary::Tenure for HeartbeatLease {
    fn check(&self) -> Result<(), String> {
        match self.held_at(Instant::now()) {
            true => Ok(()),
            false => Err(self.lapsed()),
        }
    }
}

pub struct HeartbeatSender {
    pub cluster: Arc<Cluster>,
    pub view: Arc<NodeView>,
    pub role: Arc<RoleCell>,
    /// Set once loading is done: healing then means healthy.
    pub loaded: Arc<AtomicBool>,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
    pub bucket: Arc<dyn ObjectStore>,
    pub driver: mpsc::UnboundedSender<DriverInput>,
    pub lease: Arc<HeartbeatLease>,
}

impl HeartbeatSender {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let sent_at = Instant::now();
            let expires_at = self.lease.expires_at();
            if expires_at <= sent_at {
                self.degrade(&self.lease.lapsed());
            }
            // A send that hangs (a blackholed link) degrades the node when
            // the lease lapses, not when the send times out.
            let result = tokio::select! {
                r = self.send() => r,
                _ = tokio::time::sleep_until(expires_at), if expires_at > sent_at => {
                    Err(self.lease.lapsed())
                }
            };
            match result {
                Ok(()) => {
                    self.lease.renewed(sent_at);
                    self.heal().await
                }
                Err(e) => self.degrade(&e),
            }
        }
    }

    /// One heartbeat with one immediate retry.
    async fn send(&self) -> Result<(), String> {
        let state = self.view.state();
        let first = self.cluster.heartbeat(&state, false).await;
        let Err(e) = first else { return Ok(()) };
        if matches!(e, HeartbeatError::NotRegistered) {
            log::warn!("the Elector does not know this node any more: registering again");
            self.register_again().await?;
        }
        self.metrics.count_retry("heartbeat_send");
        self.cluster
            .heartbeat(&state, true)
            .await
            .map_err(|e| e.to_string())
    }

    async fn register_again(&self) -> Result<(), String> {
        discovery::ensure_registration(&*self.bucket, self.cluster.me()).await?;
        self.cluster.register().await.map(|_| ())
    }

    fn degrade(&self, error: &str) {
        if self.role.get().health == Health::Degraded {
            return;
        }
        log::warn!("self-degraded: heartbeat to the elector failed: {error}");
        let _ = self.role.change(|r| r.set_health(Health::Degraded));
        let _ = self.driver.send(DriverInput::SelfDegraded);
    }

    /// Back to healthy (or loading), then the cluster state afresh from
    /// the Elector: a Primary that stepped down takes the role again only
    /// if the Elector still names it.
    async fn heal(&self) {
        if self.role.get().health != Health::Degraded {
            return;
        }
        let to = if self.loaded.load(Ordering::Acquire) {
            Health::Healthy
        } else {
            Health::Loading
        };
        log::info!("heartbeats reach the elector again");
        let _ = self.role.change(|r| r.set_health(to));
        if let Err(e) = self.cluster.refresh_state().await {
            log::info!("the cluster state is not available yet ({e}): waiting for a push");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_lapses_before_the_elector_may_appoint_another_primary() {
        for (silence, prior) in [
            (Duration::from_secs(2), Duration::from_secs(5)),
            (Duration::from_millis(400), Duration::from_secs(1)),
            (Duration::from_secs(2), Duration::ZERO),
            (Duration::from_secs(10), Duration::from_secs(10)),
        ] {
            let length = HeartbeatLease::length_for(silence, prior);
            let prior = if prior.is_zero() {
                crate::election::choose::DEFAULT_PRIOR_TIMEOUT
            } else {
                prior
            };
            assert!(length < silence + prior, "{length:?}");
            assert!(
                length >= prior,
                "{length:?}: no shorter than the prior timeout"
            );
        }
    }

    #[test]
    fn the_lease_counts_from_the_send_of_the_last_answered_heartbeat() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let lease = HeartbeatLease::new(3 * second, t0);
        assert!(lease.held_at(t0 + 2 * second));
        assert!(!lease.held_at(t0 + 3 * second));
        lease.renewed(t0 + 2 * second);
        assert!(lease.held_at(t0 + 4 * second));
        // An answer to an older heartbeat arriving late does not move it back.
        lease.renewed(t0 + second);
        assert_eq!(lease.expires_at(), t0 + 5 * second);
        assert!(!lease.held_at(t0 + 5 * second));
    }
}
