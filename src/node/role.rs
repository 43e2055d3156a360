//! The node's role: Health × Elector state × Primary state, with the
//! reference's allowed transitions (plus degraded → healthy: a node whose
//! heartbeats and receipts succeed again heals). A plain value with no I/O:
//! asked for a change, it refuses one the table does not allow, or makes it
//! and says what changed, and the node starts and stops services on that.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Loading,
    Healthy,
    Degraded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectorState {
    Follower,
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrimaryState {
    Replica,
    /// Elected, running preflight; takes no writes yet.
    Starting,
    /// Takes writes.
    Active,
    /// Takes no new writes; finishing or recovering.
    Draining,
}

impl Health {
    pub const ALL: [Health; 3] = [Health::Loading, Health::Healthy, Health::Degraded];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Loading => "loading",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
        }
    }
}

impl ElectorState {
    pub const ALL: [ElectorState; 2] = [ElectorState::Follower, ElectorState::Leader];

    pub fn as_str(self) -> &'static str {
        match self {
            ElectorState::Follower => "follower",
            ElectorState::Leader => "leader",
        }
    }
}

impl PrimaryState {
    pub const ALL: [PrimaryState; 4] = [
        PrimaryState::Replica,
        PrimaryState::Starting,
        PrimaryState::Active,
        PrimaryState::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PrimaryState::Replica => "replica",
            PrimaryState::Starting => "starting",
            PrimaryState::Active => "active",
            PrimaryState::Draining => "draining",
        }
    }
}

/// One change of one of the three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Health {
        from: Health,
        to: Health,
    },
    Elector {
        from: ElectorState,
        to: ElectorState,
    },
    Primary {
        from: PrimaryState,
        to: PrimaryState,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Health { from, to } => write!(f, "health {} -> {}", from.as_str(), to.as_str()),
            Change::Elector { from, to } => {
                write!(f, "elector {} -> {}", from.as_str(), to.as_str())
            }
            Change::Primary { from, to } => {
                write!(f, "primary {} -> {}", from.as_str(), to.as_str())
            }
        }
    }
}

/// A change the transition table does not allow; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused(pub Change);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid state transition: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// What a change request gives: the change made, none (already there), or
/// a refusal.
pub type Outcome = Result<Option<Change>, Refused>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub health: Health,
    pub elector: ElectorState,
    pub primary: PrimaryState,
}

impl Default for Role {
    /// Every process starts as (loading, follower, replica).
    fn default() -> Self {
        Role {
            health: Health::Loading,
            elector: ElectorState::Follower,
            primary: PrimaryState::Replica,
        }
    }
}

impl Role {
    pub fn set_health(&mut self, to: Health) -> Outcome {
        step(&mut self.health, to)
    }

    pub fn set_elector(&mut self, to: ElectorState) -> Outcome {
        step(&mut self.elector, to)
    }

    pub fn set_primary(&mut self, to: PrimaryState) -> Outcome {
        step(&mut self.primary, to)
    }

    /// A short name for log lines: loading until loaded, then what the
    /// node does for writes.
    pub fn log_name(&self) -> &'static str {
        if self.health == Health::Loading {
            return "loading";
        }
        match self.primary {
            PrimaryState::Active => "primary",
            other => other.as_str(),
        }
    }
}

/// One of the three states: its transition table and how its changes read.
trait State: Copy + PartialEq {
    fn may_become(self, to: Self) -> bool;
    fn change(from: Self, to: Self) -> Change;
}

impl State for Health {
    fn may_become(self, to: Self) -> bool {
        use Health::*;
        matches!(
            (self, to),
            (Loading, Healthy)
                | (Loading, Degraded)
                | (Healthy, Degraded)
                | (Degraded, Healthy)
                | (Degraded, Loading)
        )
    }

    fn change(from: Self, to: Self) -> Change {
        Change::Health { from, to }
    }
}

impl State for ElectorState {
    fn may_become(self, to: Self) -> bool {
        self != to
    }

    fn change(from: Self, to: Self) -> Change {
        Change::Elector { from, to }
    }
}

impl State for PrimaryState {
    fn may_become(self, to: Self) -> bool {
        use PrimaryState::*;
        matches!(
            (self, to),
            (Replica, Starting)
                | (Starting, Active)
                | (Starting, Replica)
                | (Starting, Draining)
                | (Active, Draining)
                | (Draining, Replica)
        )
    }

    fn change(from: Self, to: Self) -> Change {
        Change::Primary { from, to }
    }
}

fn step<S: State>(state: &mut S, to: S) -> Outcome {
    let from = *state;
    if from == to {
        return Ok(None);
    }
    let change = S::change(from, to);
    if !from.may_become(to) {
        return Err(Refused(change));
    }
    *state = to;
    Ok(Some(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (from, to) pair of a state, with whether the table allows it.
    fn table<S: Copy + PartialEq>(all: &[S], allowed: &[(S, S)]) -> Vec<(S, S, bool)> {
        let mut out = Vec::new();
        for &from in all {
            for &to in all {
                if from != to {
                    out.push((from, to, allowed.contains(&(from, to))));
                }
            }
        }
        out
    }

    #[test]
    fn starts_loading_follower_replica() {
        let r = Role::default();
        assert_eq!(
            (r.health, r.elector, r.primary),
            (
                Health::Loading,
                ElectorState::Follower,
                PrimaryState::Replica
            )
        );
        assert_eq!(r.log_name(), "loading");
    }

    #[test]
    fn health_transitions_follow_the_table() {
        use Health::*;
        let allowed = [
            (Loading, Healthy),
            (Loading, Degraded),
            (Healthy, Degraded),
            (Degraded, Healthy),
            (Degraded, Loading),
        ];
        for (from, to, ok) in table(&Health::ALL, &allowed) {
            let mut r = Role {
                health: from,
                ..Role::default()
            };
            let got = r.set_health(to);
            if ok {
                assert_eq!(got, Ok(Some(Change::Health { from, to })));
                assert_eq!(r.health, to);
            } else {
                assert_eq!(
                    got,
                    Err(Refused(Change::Health { from, to })),
                    "{from:?} -> {to:?}"
                );
                assert_eq!(r.health, from, "a refused change changes nothing");
            }
        }
    }

    #[test]
    fn elector_transitions_follow_the_table() {
        use ElectorState::*;
        for (from, to, ok) in table(
            &ElectorState::ALL,
            &[(Follower, Leader), (Leader, Follower)],
        ) {
            let mut r = Role {
                elector: from,
                ..Role::default()
            };
            assert_eq!(r.set_elector(to).is_ok(), ok);
            assert_eq!(r.elector, to);
        }
    }

    #[test]
    fn primary_transitions_follow_the_table() {
        use PrimaryState::*;
        let allowed = [
            (Replica, Starting),
            (Starting, Active),
            (Starting, Replica),
            (Starting, Draining),
            (Active, Draining),
            (Draining, Replica),
        ];
        let mut refused = 0;
        for (from, to, ok) in table(&PrimaryState::ALL, &allowed) {
            let mut r = Role {
                primary: from,
                ..Role::default()
            };
            let got = r.set_primary(to);
            if ok {
                assert_eq!(got, Ok(Some(Change::Primary { from, to })));
                assert_eq!(r.primary, to);
            } else {
                refused += 1;
                assert_eq!(
                    got,
                    Err(Refused(Change::Primary { from, to })),
                    "{from:?} -> {to:?}"
                );
                assert_eq!(r.primary, from);
            }
        }
        assert_eq!(refused, 6, "12 pairs, 6 allowed");
        let mut r = Role::default();
        assert_eq!(
            r.set_primary(Active).unwrap_err().to_string(),
            "invalid state transition: primary replica -> active"
        );
    }

    #[test]
    fn asking_for_the_current_state_changes_nothing() {
        let mut r = Role::default();
        assert_eq!(r.set_health(Health::Loading), Ok(None));
        assert_eq!(r.set_primary(PrimaryState::Replica), Ok(None));
        assert_eq!(r.set_elector(ElectorState::Follower), Ok(None));
        assert_eq!(r, Role::default());
    }

    #[test]
    fn a_lone_node_goes_from_loading_to_active_primary_and_back_through_recovery() {
        use PrimaryState::*;
        let mut r = Role::default();
        r.set_health(Health::Healthy).unwrap();
        r.set_elector(ElectorState::Leader).unwrap();
        for to in [Starting, Active, Draining, Replica, Starting, Active] {
            assert!(r.set_primary(to).unwrap().is_some(), "-> {to:?}");
        }
        assert_eq!(r.log_name(), "primary");
        r.set_primary(Draining).unwrap();
        assert_eq!(r.log_name(), "draining");
    }
}
