//! The tier-2 election, the Elector's choice of the Primary, as pure
//! decisions: whether enough nodes answered for the quorum mode, whether a
//! previous Primary has stepped down, and which node to appoint.

use std::time::Duration;

use tokio::time::Instant;

use crate::pb::netsy::{HealthState, NodeState, PrimaryState};

/// How often the previous Primary is polled while it steps down.
pub const PRIOR_POLL: Duration = Duration::from_millis(500);

/// `elector.primary_prior_timeout` when it is 0 or unset.
pub const DEFAULT_PRIOR_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of a successful round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Exactly one node already is the active Primary: it stays.
    Keep(String),
    /// Appoint this node.
    Elect(String),
}

impl Choice {
    pub fn node_id(&self) -> &str {
        match self {
            Choice::Keep(id) | Choice::Elect(id) => id,
        }
    }
}

fn health(s: &NodeState) -> HealthState {
    HealthState::try_from(s.health_state).unwrap_or(HealthState::HealthUnknown)
}

/// A node's reported primary state; anything unknown counts as replica.
pub(super) fn primary(s: &NodeState) -> PrimaryState {
    match PrimaryState::try_from(s.primary_state) {
        Ok(
            p @ (PrimaryState::PrimaryStarting
            | PrimaryState::PrimaryActive
            | PrimaryState::PrimaryDraining),
        ) => p,
        _ => PrimaryState::PrimaryReplica,
    }
}

fn state_name(p: PrimaryState) -> &'static str {
    match p {
        PrimaryState::PrimaryStarting => "starting",
        PrimaryState::PrimaryActive => "active",
        PrimaryState::PrimaryDraining => "draining",
        _ => "replica",
    }
}

/// Whether the nodes that answered suffice: quorum 0 reads the node map
/// (no contact needed), a static quorum needs every registered node, and
/// majority needs floor(N/2) + 1.
pub fn enough_answers(quorum: i64, registered: usize, answered: usize) -> Result<(), String> {
    if registered == 0 {
        return Err("no registered nodes".into());
    }
    let needed = match quorum {
        0 => 0,
        q if q > 0 => registered,
        _ => registered / 2 + 1,
    };
    if answered < needed {
        return Err(format!(
            "only {answered} of {registered} registered nodes answered; {needed} needed"
        ));
    }
    Ok(())
}

/// Chooses the Primary from the states of the nodes reached (the Elector's
/// own among them): an existing single active Primary stays; any other
/// non-degraded node not a replica blocks the round; otherwise the healthy
/// node with the highest revision wins, then the most recently started
/// (the longest expected tenure), then the lowest node id.
pub fn choose(states: &[NodeState]) -> Result<Choice, String> {
    let active: Vec<&NodeState> = states
        .iter()
        .filter(|s| primary(s) == PrimaryState::PrimaryActive)
        .collect();
    if let [only] = active[..] {
        return Ok(Choice::Keep(only.node_id.clone()));
    }
    if active.len() > 1 {
        let ids: Vec<&str> = active.iter().map(|s| s.node_id.as_str()).collect();
        log::error!("more than one active Primary: {}", ids.join(", "));
    }
    if let Some(busy) = states.iter().find(|s| {
        health(s) != HealthState::HealthDegraded && primary(s) != PrimaryState::PrimaryReplica
    }) {
        return Err(format!(
            "non-degraded node {} has primary state {}",
            busy.node_id,
            state_name(primary(busy))
        ));
    }
    states
        .iter()
        .filter(|s| health(s) == HealthState::HealthHealthy)
        .max_by(|a, b| {
            (a.latest_revision, a.start_time)
                .cmp(&(b.latest_revision, b.start_time))
                .then_with(|| b.node_id.cmp(&a.node_id))
        })
        .map(|s| Choice::Elect(s.node_id.clone()))
        .ok_or_else(|| "no healthy candidates for primary election".to_string())
}

/// What to do about the previous Primary before electing a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prior {
    /// It has stepped down, cannot be reached in time, or is unknown:
    /// elect, and forget it.
    Proceed,
    /// It is still active and says it is healthy (it was only slow to
    /// report): it stays the Primary if it is still registered.
    Keep,
    /// It is still active and not healthy: this round fails.
    Fail(String),
    /// It is starting or draining, or unreachable: ask again at this time.
    AskAgainAt(Instant),
}

/// Waits for the previous Primary to step down, up to a deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorCheck {
    pub node_id: String,
    deadline: Instant,
}

impl PriorCheck {
    /// `timeout` is `elector.primary_prior_timeout` (0 means the default).
    pub fn new(node_id: &str, now: Instant, timeout: Duration) -> PriorCheck {
        let timeout = if timeout.is_zero() {
            DEFAULT_PRIOR_TIMEOUT
        } else {
            timeout
        };
        PriorCheck {
            node_id: node_id.to_string(),
            deadline: now + timeout,
        }
    }

    /// Given what the previous Primary answered at `now` (None when it
    /// could not be reached).
    pub fn observe(&self, now: Instant, answer: Option<&NodeState>) -> Prior {
        match answer.map(|a| (primary(a), health(a))) {
            Some((PrimaryState::PrimaryActive, HealthState::HealthHealthy)) => Prior::Keep,
            Some((PrimaryState::PrimaryActive, _)) => {
                Prior::Fail(format!("previous primary {} is still active", self.node_id))
            }
            Some((PrimaryState::PrimaryReplica, _)) => Prior::Proceed,
            _ if now >= self.deadline => Prior::Proceed,
            _ => Prior::AskAgainAt((now + PRIOR_POLL).min(self.deadline)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        id: &str,
        health: HealthState,
        primary: PrimaryState,
        rev: i64,
        start: i64,
    ) -> NodeState {
        NodeState {
            node_id: id.into(),
            health_state: health as i32,
            primary_state: primary as i32,
            latest_revision: rev,
            start_time: start,
            ..Default::default()
        }
    }

    use HealthState::{
        HealthDegraded as Degraded, HealthHealthy as Healthy, HealthLoading as Loading,
    };
    use PrimaryState::{
        PrimaryActive as Active, PrimaryDraining as Draining, PrimaryReplica as Replica,
        PrimaryStarting as Starting,
    };

    #[test]
    fn the_highest_revision_wins_then_the_newest_process() {
        let states = [
            node("a", Healthy, Replica, 10, 100),
            node("b", Healthy, Replica, 12, 50),
            node("c", Healthy, Replica, 12, 60),
            node("d", Degraded, Replica, 99, 999),
            node("e", Loading, Replica, 50, 500),
        ];
        assert_eq!(choose(&states), Ok(Choice::Elect("c".into())));
        let tie = [
            node("x", Healthy, Replica, 1, 1),
            node("w", Healthy, Replica, 1, 1),
        ];
        assert_eq!(
            choose(&tie),
            Ok(Choice::Elect("w".into())),
            "then the lowest id"
        );
    }

    #[test]
    fn a_single_active_primary_stays() {
        let states = [
            node("a", Healthy, Replica, 20, 100),
            node("b", Degraded, Active, 10, 50),
        ];
        assert_eq!(choose(&states), Ok(Choice::Keep("b".into())));
    }

    #[test]
    fn a_busy_node_or_no_candidate_fails_the_round() {
        for busy in [Starting, Draining] {
            let states = [
                node("a", Healthy, Replica, 1, 1),
                node("b", Healthy, busy, 1, 1),
            ];
            let err = choose(&states).unwrap_err();
            assert!(
                err.starts_with("non-degraded node b has primary state "),
                "{err}"
            );
        }
        // A degraded node that is still draining does not block.
        let states = [
            node("a", Healthy, Replica, 1, 1),
            node("b", Degraded, Draining, 9, 1),
        ];
        assert_eq!(choose(&states), Ok(Choice::Elect("a".into())));
        let two_active = [
            node("a", Healthy, Active, 1, 1),
            node("b", Healthy, Active, 1, 1),
        ];
        assert!(choose(&two_active)
            .unwrap_err()
            .contains("has primary state active"));
        let none = [
            node("a", Loading, Replica, 1, 1),
            node("b", Degraded, Replica, 1, 1),
        ];
        assert_eq!(
            choose(&none),
            Err("no healthy candidates for primary election".into())
        );
        assert!(choose(&[]).is_err());
    }

    #[test]
    fn answers_needed_per_quorum_mode() {
        // quorum 0 decides from heartbeats: no answers needed.
        assert!(enough_answers(0, 3, 0).is_ok());
        // Majority: floor(N/2) + 1.
        for (n, need) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)] {
            assert!(enough_answers(-1, n, need).is_ok(), "{n}");
            assert!(enough_answers(-1, n, need - 1).is_err(), "{n}");
        }
        // Static: every registered node.
        assert!(enough_answers(2, 3, 3).is_ok());
        assert!(enough_answers(2, 3, 2).is_err());
        assert_eq!(enough_answers(0, 0, 0), Err("no registered nodes".into()));
    }

    #[test]
    fn the_previous_primary_is_waited_for_until_it_steps_down_or_the_deadline() {
        let t0 = Instant::now();
        let check = PriorCheck::new("p", t0, Duration::ZERO);
        let at = |s| t0 + Duration::from_millis(s);
        assert_eq!(
            check.observe(t0, Some(&node("p", Degraded, Active, 1, 1))),
            Prior::Fail("previous primary p is still active".into())
        );
        assert_eq!(
            check.observe(t0, Some(&node("p", Healthy, Active, 1, 1))),
            Prior::Keep,
            "reachable, healthy and active: it was only slow"
        );
        assert_eq!(
            check.observe(t0, Some(&node("p", Degraded, Draining, 1, 1))),
            Prior::AskAgainAt(at(500))
        );
        assert_eq!(check.observe(at(4800), None), Prior::AskAgainAt(at(5000)));
        assert_eq!(check.observe(at(5000), None), Prior::Proceed, "default 5 s");
        assert_eq!(
            check.observe(t0, Some(&node("p", Healthy, Replica, 1, 1))),
            Prior::Proceed
        );
        let longer = PriorCheck::new("p", t0, Duration::from_secs(8));
        assert_eq!(longer.observe(at(6000), None), Prior::AskAgainAt(at(6500)));
    }
}
