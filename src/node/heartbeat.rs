//! Heartbeats: every `heartbeat_interval` this node tells the Elector how it
//! is (in-process when it is the Elector). A send that fails twice in a row
//! degrades the node (and a Primary steps down); one that succeeds again
//! heals it — back to healthy, or to loading while it still loads — and
//! fetches the cluster state afresh. A node the Elector no longer knows
//! (removed while silent) registers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::election::discovery;
use crate::http::metrics::Metrics;
use crate::objstore::ObjectStore;

use super::cluster::{Cluster, HeartbeatError};
use super::driver::DriverInput;
use super::role::Health;
use super::status::NodeView;
use super::status::RoleCell;

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
            match self.send().await {
                Ok(()) => self.heal().await,
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
        log::warn!("self-degraded: heartbeat to the elector failed after retry: {error}");
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
