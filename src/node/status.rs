//! What the rest of the node and the cluster read about this node: its
//! role, and the state it reports to peers (GetNodeState, heartbeats).

use std::sync::{Arc, Mutex, OnceLock};

use crate::http::HealthSource;
use crate::pb::netsy::{
    ElectorState as WireElector, HealthState, NodeState, PrimaryState as WirePrimary,
};
use crate::store::Store;

use super::role::{ElectorState, Health, Outcome, PrimaryState, Role};

/// The role as every part of the node reads it. The driver changes the
/// primary state, the lock runner the elector state, heartbeats and the
/// loading sequence the health.
pub struct RoleCell {
    role: Mutex<Role>,
    /// Tells waiters about every change.
    changed: tokio::sync::watch::Sender<Role>,
    /// Changes the transition table refused (each a bug in the caller).
    refused: std::sync::atomic::AtomicU64,
}

impl Default for RoleCell {
    fn default() -> Self {
        RoleCell {
            role: Mutex::new(Role::default()),
            changed: tokio::sync::watch::Sender::new(Role::default()),
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl RoleCell {
    pub fn get(&self) -> Role {
        match self.role.lock() {
            Ok(r) => *r,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// A receiver that sees every role change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Role> {
        self.changed.subscribe()
    }

    /// Applies one change request and logs what happened. (The lock is not
    /// held while logging: log lines read the role.)
    pub fn change(&self, f: impl FnOnce(&mut Role) -> Outcome) -> Outcome {
        let outcome = {
            let mut role = match self.role.lock() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            let outcome = f(&mut role);
            if let Ok(Some(_)) = outcome {
                self.changed.send_replace(*role);
            }
            outcome
        };
        match &outcome {
            Ok(Some(change)) => log::info!("state_transition: {change}"),
            Ok(None) => {}
            Err(refused) => {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::error!("{refused}")
            }
        }
        outcome
    }

    /// How many changes the transition table refused so far.
    pub fn refused_changes(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn log_name(&self) -> &'static str {
        self.get().log_name()
    }
}

impl HealthSource for RoleCell {
    fn health(&self) -> &'static str {
        self.get().health.as_str()
    }
}

/// What GetNodeState reports.
pub struct NodeView {
    pub node_id: String,
    pub role: Arc<RoleCell>,
    /// The local store once it is open (latest revision 0 before).
    pub store: OnceLock<Arc<Store>>,
    pub start_time: i64,
}

impl NodeView {
    pub fn state(&self) -> NodeState {
        let role = self.role.get();
        NodeState {
            node_id: self.node_id.clone(),
            health_state: match role.health {
                Health::Loading => HealthState::HealthLoading,
                Health::Healthy => HealthState::HealthHealthy,
                Health::Degraded => HealthState::HealthDegraded,
            } as i32,
            elector_state: match role.elector {
                ElectorState::Follower => WireElector::ElectorFollower,
                ElectorState::Leader => WireElector::ElectorLeader,
            } as i32,
            primary_state: match role.primary {
                PrimaryState::Replica => WirePrimary::PrimaryReplica,
                PrimaryState::Starting => WirePrimary::PrimaryStarting,
                PrimaryState::Active => WirePrimary::PrimaryActive,
                PrimaryState::Draining => WirePrimary::PrimaryDraining,
            } as i32,
            latest_revision: self.store.get().map_or(0, |s| s.latest_revision()),
            start_time: self.start_time,
        }
    }
}
