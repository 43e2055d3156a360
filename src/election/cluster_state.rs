//! The cluster state the Elector hands every node (who is Elector, who is
//! Primary, how many nodes are registered), and the receiving side: the
//! checks a pushed state must pass, including the guard that refuses a
//! deposed Elector for 30 s after another took over (split brain).

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::pb::netsy as wire;

/// How long pushes from a superseded Elector are refused.
pub const SPLIT_BRAIN_WINDOW: Duration = Duration::from_secs(30);

/// A node as the cluster state names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRef {
    pub node_id: String,
    pub member_id: u64,
    pub peer_addr: String,
}

impl NodeRef {
    /// The node a registration describes, with its member id (0 while
    /// unknown).
    pub fn of(registration: &super::discovery::Registration, member_id: u64) -> NodeRef {
        NodeRef {
            node_id: registration.node_id.clone(),
            member_id,
            peer_addr: registration.peer_advertise_address.clone(),
        }
    }

    fn to_proto(&self) -> wire::NodeInfo {
        wire::NodeInfo {
            node_id: self.node_id.clone(),
            member_id: self.member_id,
            peer_advertise_address: self.peer_addr.clone(),
        }
    }

    fn from_proto(p: &wire::NodeInfo) -> NodeRef {
        NodeRef {
            node_id: p.node_id.clone(),
            member_id: p.member_id,
            peer_addr: p.peer_advertise_address.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub elector: NodeRef,
    /// None while no Primary is elected.
    pub primary: Option<NodeRef>,
    /// Registered nodes (majority quorum counts them).
    pub node_count: i32,
}

/// Why a pushed cluster state was refused (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    MissingElector,
    MissingElectorId,
    SplitBrain { from: String, current: String },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::MissingElector => write!(f, "elector info is required"),
            Refused::MissingElectorId => write!(f, "elector node_id is required"),
            Refused::SplitBrain { from, current } => write!(
                f,
                "split-brain detected: cluster state from previous elector {from} within {}s of the hand-off to {current}",
                SPLIT_BRAIN_WINDOW.as_secs()
            ),
        }
    }
}

impl ClusterState {
    pub fn to_proto(&self) -> wire::ClusterState {
        wire::ClusterState {
            elector: Some(self.elector.to_proto()),
            primary: self
                .primary
                .as_ref()
                .filter(|p| !p.node_id.is_empty())
                .map(NodeRef::to_proto),
            node_count: self.node_count,
        }
    }

    /// The state in a push, checked as the reference checks it.
    pub fn from_proto(p: &wire::ClusterState) -> Result<ClusterState, Refused> {
        let elector = p.elector.as_ref().ok_or(Refused::MissingElector)?;
        if elector.node_id.is_empty() {
            return Err(Refused::MissingElectorId);
        }
        Ok(ClusterState {
            elector: NodeRef::from_proto(elector),
            primary: p
                .primary
                .as_ref()
                .filter(|n| !n.node_id.is_empty())
                .map(NodeRef::from_proto),
            node_count: p.node_count,
        })
    }

    pub fn primary_id(&self) -> Option<&str> {
        self.primary.as_ref().map(|p| p.node_id.as_str())
    }
}

/// What applying a state changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub elector: bool,
    pub primary: bool,
}

/// Where a state to apply comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// This node's own Elector, running because this node holds the
    /// elector lock: no earlier hand-off makes it a deposed Elector.
    OwnElector,
    /// Another node's push or answer. `holding` is this node's id while
    /// its own Elector runs: a state naming another Elector is then stale
    /// (it was sent before this node took the lock) or split brain.
    Peer { holding: Option<&'a str> },
}

/// What this node knows of the cluster.
#[derive(Debug, Default)]
pub struct ClusterView {
    state: Option<ClusterState>,
    /// The Elector before the current one, and when it was superseded.
    previous_elector: Option<(String, Instant)>,
}

impl ClusterView {
    pub fn state(&self) -> Option<&ClusterState> {
        self.state.as_ref()
    }

    /// Applies a state from the Elector (a push, or an answer to
    /// registration or GetClusterState).
    pub fn apply(
        &mut self,
        cs: ClusterState,
        source: Source<'_>,
        now: Instant,
    ) -> Result<Changes, Refused> {
        let current = self.state.as_ref().map(|s| s.elector.node_id.clone());
        if let Source::Peer { holding: Some(me) } = source {
            if cs.elector.node_id != me {
                return Err(Refused::SplitBrain {
                    from: cs.elector.node_id.clone(),
                    current: me.to_string(),
                });
            }
        }
        if let (Source::Peer { .. }, Some((previous, since)), Some(current)) =
            (source, &self.previous_elector, &current)
        {
            if cs.elector.node_id == *previous
                && cs.elector.node_id != *current
                && now.saturating_duration_since(*since) < SPLIT_BRAIN_WINDOW
            {
                return Err(Refused::SplitBrain {
                    from: previous.clone(),
                    current: current.clone(),
                });
            }
        }
        let changes = Changes {
            elector: self.state.as_ref().map(|s| &s.elector) != Some(&cs.elector),
            primary: self.state.as_ref().map(|s| &s.primary) != Some(&cs.primary),
        };
        self.note_elector_change(current, &cs.elector.node_id, now);
        self.state = Some(cs);
        Ok(changes)
    }

    /// The tier-1 election named a new Elector before any push did: follow
    /// it (the Primary stays as last told).
    pub fn set_elector(&mut self, elector: NodeRef, now: Instant) -> bool {
        let current = self.state.as_ref().map(|s| s.elector.node_id.clone());
        if current.as_deref() == Some(elector.node_id.as_str()) {
            return false;
        }
        self.note_elector_change(current, &elector.node_id, now);
        let state = self.state.get_or_insert_with(ClusterState::default);
        state.elector = elector;
        true
    }

    fn note_elector_change(&mut self, current: Option<String>, next: &str, now: Instant) {
        if let Some(current) = current.filter(|c| c != next) {
            self.previous_elector = Some((current, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Source<'static> = Source::Peer { holding: None };

    fn node(id: &str) -> NodeRef {
        NodeRef {
            node_id: id.into(),
            member_id: id.len() as u64,
            peer_addr: format!("{id}:2381"),
        }
    }

    fn state(elector: &str, primary: Option<&str>) -> ClusterState {
        ClusterState {
            elector: node(elector),
            primary: primary.map(node),
            node_count: 3,
        }
    }

    #[test]
    fn wire_form_round_trips_and_is_checked() {
        let cs = state("a", Some("b"));
        assert_eq!(ClusterState::from_proto(&cs.to_proto()), Ok(cs));
        let none = state("a", None);
        assert_eq!(none.to_proto().primary, None);
        assert_eq!(
            ClusterState::from_proto(&wire::ClusterState::default()),
            Err(Refused::MissingElector)
        );
        let unnamed = wire::ClusterState {
            elector: Some(wire::NodeInfo::default()),
            ..Default::default()
        };
        assert_eq!(
            ClusterState::from_proto(&unnamed).unwrap_err().to_string(),
            "elector node_id is required"
        );
    }

    #[test]
    fn a_deposed_elector_is_refused_for_30_seconds() {
        let t0 = Instant::now();
        let mut view = ClusterView::default();
        let first = view.apply(state("a", None), PEER, t0).unwrap();
        assert_eq!(
            first,
            Changes {
                elector: true,
                primary: true
            }
        );
        let same = view.apply(state("a", None), PEER, t0).unwrap();
        assert_eq!(same, Changes::default());
        assert_eq!(
            view.apply(state("a", Some("c")), PEER, t0).unwrap(),
            Changes {
                elector: false,
                primary: true
            }
        );
        // b takes over; a late push from a is refused.
        view.apply(state("b", Some("c")), PEER, t0 + Duration::from_secs(1))
            .unwrap();
        let late = view.apply(state("a", Some("a")), PEER, t0 + Duration::from_secs(30));
        assert!(matches!(late, Err(Refused::SplitBrain { .. })), "{late:?}");
        assert_eq!(
            view.state().unwrap().elector.node_id,
            "b",
            "nothing changed"
        );
        // After the window, a -> b -> a is a normal re-election.
        assert!(view
            .apply(state("a", None), PEER, t0 + Duration::from_secs(31))
            .is_ok());
    }

    #[test]
    fn the_tier1_election_can_name_the_elector_first() {
        let t0 = Instant::now();
        let mut view = ClusterView::default();
        view.apply(state("a", Some("c")), PEER, t0).unwrap();
        assert!(view.set_elector(node("b"), t0));
        assert!(!view.set_elector(node("b"), t0), "already known");
        assert_eq!(view.state().unwrap().primary_id(), Some("c"));
        assert!(view
            .apply(state("a", None), PEER, t0 + Duration::from_secs(5))
            .is_err());
        assert!(view
            .apply(state("b", None), PEER, t0 + Duration::from_secs(5))
            .is_ok());
    }

    /// An Elector that lost the lock briefly and took it back gets its own
    /// states applied at once (a stale push from the Elector in between
    /// once made this node refuse its own Elector for 30 s, and so never
    /// follow the Primary it elected), and while it holds the lock it
    /// refuses states naming another Elector.
    #[test]
    fn an_elector_that_took_the_lock_back_applies_its_own_states() {
        let t0 = Instant::now();
        let mut view = ClusterView::default();
        view.set_elector(node("c"), t0);
        view.apply(state("c", None), Source::OwnElector, t0)
            .unwrap();
        // b held the lock for a moment; its push arrives late.
        view.apply(state("b", None), PEER, t0).unwrap();
        let own = view.apply(state("c", Some("b")), Source::OwnElector, t0);
        assert!(own.is_ok(), "{own:?}");
        assert_eq!(view.state().unwrap().primary_id(), Some("b"));
        let holding = Source::Peer { holding: Some("c") };
        assert_eq!(
            view.apply(state("b", None), holding, t0),
            Err(Refused::SplitBrain {
                from: "b".into(),
                current: "c".into()
            })
        );
        assert_eq!(view.state().unwrap().primary_id(), Some("b"));
        // Pushes from another node are still guarded as before.
        assert!(view.apply(state("c", Some("a")), PEER, t0).is_ok());
    }
}
