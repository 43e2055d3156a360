//! The Elector's node map: every registered node with what it last said
//! about itself (health, primary state, latest revision, start time) and
//! when. A periodic check marks nodes whose heartbeats stopped as
//! degraded and, after the deregistration timeout, removes them. Plain
//! data told the time; the Elector does the I/O around it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::pb::netsy::{HealthState, MemberEntry, NodeState, PrimaryState};

use super::discovery::Registration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub registration: Registration,
    pub member_id: u64,
    pub last_heartbeat: Instant,
    /// When this node was last found or reported degraded.
    pub degraded_at: Option<Instant>,
    pub health: HealthState,
    pub primary_state: PrimaryState,
    pub latest_revision: i64,
    pub start_time: i64,
    /// The node has sent a heartbeat since it entered the map (until then
    /// its health and primary state are only assumed).
    pub reported: bool,
}

impl NodeEntry {
    pub fn is_degraded(&self) -> bool {
        self.health == HealthState::HealthDegraded
    }

    /// The node as it last reported itself.
    pub fn state(&self) -> NodeState {
        NodeState {
            node_id: self.registration.node_id.clone(),
            health_state: self.health as i32,
            elector_state: 0,
            primary_state: self.primary_state as i32,
            latest_revision: self.latest_revision,
            start_time: self.start_time,
        }
    }
}

/// What one check changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Nodes marked degraded by this check.
    pub degraded: Vec<String>,
    /// Nodes removed by this check (their registrations are to be deleted).
    pub deregistered: Vec<String>,
}

#[derive(Debug, Default)]
pub struct NodeMap {
    entries: BTreeMap<String, NodeEntry>,
}

impl NodeMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, node_id: &str) -> Option<&NodeEntry> {
        self.entries.get(node_id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &NodeEntry> {
        self.entries.values()
    }

    /// Adds or replaces a node as freshly registered: loading, replica,
    /// heard from now.
    pub fn register(&mut self, registration: Registration, member_id: u64, now: Instant) {
        let id = registration.node_id.clone();
        self.entries.insert(
            id,
            NodeEntry {
                registration,
                member_id,
                last_heartbeat: now,
                degraded_at: None,
                health: HealthState::HealthLoading,
                primary_state: PrimaryState::PrimaryReplica,
                latest_revision: 0,
                start_time: 0,
                reported: false,
            },
        );
    }

    /// A heartbeat: the node's report overwrites the map's view of it.
    /// False when the node is not registered.
    pub fn heartbeat(&mut self, state: &NodeState, now: Instant) -> bool {
        let Some(e) = self.entries.get_mut(&state.node_id) else {
            return false;
        };
        e.last_heartbeat = now;
        e.health = HealthState::try_from(state.health_state).unwrap_or(HealthState::HealthLoading);
        if e.health == HealthState::HealthUnknown {
            e.health = HealthState::HealthLoading;
        }
        e.degraded_at = match (e.is_degraded(), e.degraded_at) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        e.primary_state = super::choose::primary(state);
        e.latest_revision = state.latest_revision;
        e.start_time = state.start_time;
        e.reported = true;
        true
    }

    /// Every node has either reported itself or been found degraded: the
    /// map's view of who is a Primary can be trusted.
    pub fn all_heard(&self) -> bool {
        self.entries.values().all(|e| e.reported || e.is_degraded())
    }

    /// Removes a node; true when it was registered.
    pub fn remove(&mut self, node_id: &str) -> bool {
        self.entries.remove(node_id).is_some()
    }

    /// Marks nodes not heard from for `degrade_after` as degraded, and
    /// removes nodes degraded for `deregister_after` (None: never).
    pub fn check(
        &mut self,
        now: Instant,
        degrade_after: Duration,
        deregister_after: Option<Duration>,
    ) -> Checked {
        let mut out = Checked::default();
        for e in self.entries.values_mut() {
            if !e.is_degraded() && now.saturating_duration_since(e.last_heartbeat) >= degrade_after
            {
                e.health = HealthState::HealthDegraded;
                e.degraded_at = Some(now);
                out.degraded.push(e.registration.node_id.clone());
            }
        }
        if let Some(after) = deregister_after {
            let gone: Vec<String> = self
                .entries
                .values()
                .filter(|e| {
                    e.is_degraded()
                        && e.degraded_at
                            .is_some_and(|at| now.saturating_duration_since(at) >= after)
                })
                .map(|e| e.registration.node_id.clone())
                .collect();
            for id in &gone {
                self.entries.remove(id);
            }
            out.deregistered = gone;
        }
        out
    }

    /// (registered, healthy, degraded) for the Elector's gauges.
    pub fn counts(&self) -> (usize, usize, usize) {
        let healthy = self
            .entries
            .values()
            .filter(|e| e.health == HealthState::HealthHealthy)
            .count();
        let degraded = self.entries.values().filter(|e| e.is_degraded()).count();
        (self.entries.len(), healthy, degraded)
    }

    /// Every member, ordered by node id.
    pub fn members(&self) -> Vec<MemberEntry> {
        self.entries
            .values()
            .map(|e| MemberEntry {
                node_id: e.registration.node_id.clone(),
                member_id: e.member_id,
                client_advertise_address: e.registration.client_advertise_address.clone(),
                peer_advertise_address: e.registration.peer_advertise_address.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str) -> Registration {
        Registration {
            node_id: id.into(),
            client_advertise_address: format!("{id}:2378"),
            peer_advertise_address: format!("{id}:2381"),
        }
    }

    fn beat(id: &str, health: HealthState) -> NodeState {
        NodeState {
            node_id: id.into(),
            health_state: health as i32,
            primary_state: PrimaryState::PrimaryActive as i32,
            latest_revision: 7,
            start_time: 100,
            ..Default::default()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn silent_nodes_degrade_then_go_and_heartbeats_heal_them() {
        let t0 = Instant::now();
        let mut map = NodeMap::default();
        map.register(reg("a"), 1, t0);
        map.register(reg("b"), 2, t0);
        assert!(map.heartbeat(&beat("a", HealthState::HealthHealthy), t0 + SECOND));
        assert!(
            !map.heartbeat(&beat("x", HealthState::HealthHealthy), t0),
            "not registered"
        );
        let a = map.get("a").unwrap();
        assert_eq!(
            (a.health, a.primary_state, a.latest_revision, a.start_time),
            (
                HealthState::HealthHealthy,
                PrimaryState::PrimaryActive,
                7,
                100
            )
        );

        let two = 2 * SECOND;
        let deregister = Some(Duration::from_secs(180));
        assert_eq!(map.check(t0 + SECOND, two, deregister), Checked::default());
        // b has been silent since t0, a since t0 + 1 s.
        let c = map.check(t0 + two, two, deregister);
        assert_eq!(c.degraded, ["b"]);
        assert!(map.get("b").unwrap().is_degraded());
        assert_eq!(map.counts(), (2, 1, 1));
        assert_eq!(
            map.check(t0 + two, two, deregister),
            Checked::default(),
            "once"
        );

        // b heals by reporting itself healthy.
        assert!(map.heartbeat(&beat("b", HealthState::HealthHealthy), t0 + 3 * SECOND));
        assert!(!map.get("b").unwrap().is_degraded());
        assert_eq!(map.get("b").unwrap().degraded_at, None);

        // a goes silent for good: degraded, then removed after 3 minutes.
        let c = map.check(t0 + 4 * SECOND, two, deregister);
        assert_eq!(c.degraded, ["a"]);
        let c = map.check(t0 + 4 * SECOND + Duration::from_secs(179), two, deregister);
        assert!(c.deregistered.is_empty());
        map.heartbeat(
            &beat("b", HealthState::HealthHealthy),
            t0 + Duration::from_secs(183),
        );
        let c = map.check(t0 + Duration::from_secs(184), two, deregister);
        assert_eq!(c.deregistered, ["a"]);
        assert!(map.get("a").is_none());
        assert_eq!(map.members().len(), 1);
        // Without a deregistration timeout nothing is ever removed.
        let c = map.check(t0 + Duration::from_secs(10_000), two, None);
        assert_eq!(
            (c.degraded, c.deregistered.len()),
            (vec!["b".to_string()], 0)
        );
    }

    #[test]
    fn a_node_reporting_itself_degraded_keeps_its_first_degraded_time() {
        let t0 = Instant::now();
        let mut map = NodeMap::default();
        map.register(reg("a"), 1, t0);
        map.heartbeat(&beat("a", HealthState::HealthDegraded), t0);
        map.heartbeat(&beat("a", HealthState::HealthDegraded), t0 + SECOND);
        assert_eq!(map.get("a").unwrap().degraded_at, Some(t0));
        let c = map.check(
            t0 + Duration::from_secs(5),
            Duration::from_secs(60),
            Some(Duration::from_secs(5)),
        );
        assert_eq!(c.deregistered, ["a"]);
    }

    #[test]
    fn members_list_every_node_with_its_addresses() {
        let mut map = NodeMap::default();
        map.register(reg("b"), 2, Instant::now());
        map.register(reg("a"), 1, Instant::now());
        let m = map.members();
        assert_eq!(
            m.iter()
                .map(|e| (e.node_id.as_str(), e.member_id))
                .collect::<Vec<_>>(),
            [("a", 1), ("b", 2)]
        );
        assert_eq!(m[0].client_advertise_address, "a:2378");
        assert_eq!(m[0].peer_advertise_address, "a:2381");
    }
}
