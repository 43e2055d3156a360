//! The etcd model of one key, for the linearizability search: the state an
//! order of operations leaves the key in (revisions known only within
//! bounds where an unknown outcome left them open), what each operation
//! does to it, and the key's share of the history.

use std::collections::HashMap;
use std::fmt;

use super::super::operation::{Kv, Revision};

type ValueId = u32;

/// Inclusive bounds on a revision not known exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Bounds {
    low: Revision,
    high: Revision,
}

impl Bounds {
    fn exactly(revision: Revision) -> Bounds {
        Bounds {
            low: revision,
            high: revision,
        }
    }

    fn at_least(revision: Revision) -> Bounds {
        Bounds {
            low: revision,
            high: Revision::MAX,
        }
    }

    fn at_most(revision: Revision) -> Bounds {
        Bounds {
            low: Revision::MIN,
            high: revision,
        }
    }

    fn intersect(self, other: Bounds) -> Option<Bounds> {
        let low = self.low.max(other.low);
        let high = self.high.min(other.high);
        (low <= high).then_some(Bounds { low, high })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Live {
    value: ValueId,
    version: i64,
    /// At version 1 the same write as the state's `last_write`.
    create_revision: Bounds,
}

/// One key as a linearization has left it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct KeyState {
    live: Option<Live>,
    /// The revision of the key's latest write (0: never written).
    last_write: Bounds,
    /// The highest revision an operation in the order so far reported: the
    /// store's revision has reached it.
    floor: Revision,
}

impl KeyState {
    pub(super) fn initial() -> KeyState {
        KeyState {
            live: None,
            last_write: Bounds::exactly(0),
            floor: 0,
        }
    }

    /// A lower bound on the store's revision: it has reached `floor` and
    /// the key's latest write.
    pub(super) fn revision_reached(&self) -> Revision {
        self.floor.max(self.last_write.low)
    }

    fn narrow_last_write(&mut self, bounds: Bounds) -> Option<()> {
        self.last_write = self.last_write.intersect(bounds)?;
        if let Some(live) = self.live.as_mut().filter(|l| l.version == 1) {
            live.create_revision = self.last_write;
        }
        Some(())
    }

    fn narrow_create(&mut self, bounds: Bounds) -> Option<()> {
        let live = self.live.as_mut()?;
        live.create_revision = live.create_revision.intersect(bounds)?;
        if live.version == 1 {
            let created = live.create_revision;
            self.narrow_last_write(created)?;
        }
        Some(())
    }
}

/// What an operation did to, or saw of, one key.
#[derive(Clone, Debug)]
pub(super) enum Action {
    /// The key as of header revision `revision`.
    Read { seen: Seen, revision: Revision },
    Write {
        precondition: Precondition,
        change: KeyChange,
        /// None: the outcome is unknown, and so is the revision.
        revision: Option<Revision>,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Seen {
    Absent,
    /// Present, nothing more known (a failed create).
    Present,
    Kv {
        value: ValueId,
        mod_revision: Revision,
        create_revision: Revision,
        version: i64,
    },
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Precondition {
    None,
    Absent,
    Present,
    ModRevision(Revision),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum KeyChange {
    Put(ValueId),
    Delete,
}

/// The next state, or None when the action cannot happen in this state.
pub(super) fn step(state: &KeyState, action: &Action) -> Option<KeyState> {
    let mut next = state.clone();
    match action {
        Action::Read { seen, revision } => {
            if *revision < state.floor {
                return None;
            }
            // The latest write happened before this read.
            next.narrow_last_write(Bounds::at_most(*revision))?;
            match seen {
                Seen::Absent => {
                    if state.live.is_some() {
                        return None;
                    }
                }
                Seen::Present => {
                    state.live.as_ref()?;
                }
                Seen::Kv {
                    value,
                    mod_revision,
                    create_revision,
                    version,
                } => {
                    let live = state.live.as_ref()?;
                    if live.value != *value || live.version != *version {
                        return None;
                    }
                    next.narrow_last_write(Bounds::exactly(*mod_revision))?;
                    next.narrow_create(Bounds::exactly(*create_revision))?;
                }
            }
            next.floor = *revision;
        }
        Action::Write {
            precondition,
            change,
            revision,
        } => {
            match precondition {
                Precondition::None => {}
                Precondition::Absent => {
                    if state.live.is_some() {
                        return None;
                    }
                }
                Precondition::Present => {
                    state.live.as_ref()?;
                }
                Precondition::ModRevision(expected) => {
                    state.live.as_ref()?;
                    next.narrow_last_write(Bounds::exactly(*expected))?;
                }
            }
            let written = match revision {
                Some(revision) => {
                    if *revision <= state.floor {
                        return None;
                    }
                    // The write it replaces came first.
                    next.narrow_last_write(Bounds::at_most(revision - 1))?;
                    next.floor = *revision;
                    Bounds::exactly(*revision)
                }
                None => Bounds::at_least(state.floor.max(next.last_write.low) + 1),
            };
            next.live = match change {
                KeyChange::Put(value) => Some(match &next.live {
                    Some(live) => Live {
                        value: *value,
                        version: live.version + 1,
                        create_revision: live.create_revision,
                    },
                    None => Live {
                        value: *value,
                        version: 1,
                        create_revision: written,
                    },
                }),
                KeyChange::Delete => None,
            };
            next.last_write = written;
        }
    }
    Some(next)
}

/// One operation's part in one key's history.
#[derive(Clone, Debug)]
pub(super) struct KeyOp {
    /// Index into the recording's operations.
    pub(super) op: usize,
    pub(super) invoked: u64,
    /// None: the outcome is unknown; it may take effect any time after
    /// invocation.
    pub(super) returned: Option<u64>,
    /// Whether it must take effect (false: an unknown outcome the final
    /// history did not settle).
    pub(super) required: bool,
    pub(super) action: Action,
}

/// One key's operations, with the values they name interned (states
/// compare small ids, not strings).
#[derive(Debug, Default)]
pub(super) struct KeyHistory {
    pub(super) ops: Vec<KeyOp>,
    pub(super) values: Vec<String>,
    value_ids: HashMap<String, ValueId>,
}

impl KeyHistory {
    pub(super) fn value_id(&mut self, value: &str) -> ValueId {
        if let Some(id) = self.value_ids.get(value) {
            return *id;
        }
        let id = self.values.len() as ValueId;
        self.values.push(value.to_string());
        self.value_ids.insert(value.to_string(), id);
        id
    }

    pub(super) fn seen(&mut self, kv: Option<&Kv>) -> Seen {
        match kv {
            None => Seen::Absent,
            Some(kv) => Seen::Kv {
                value: self.value_id(&kv.value),
                mod_revision: kv.mod_revision,
                create_revision: kv.create_revision,
                version: kv.version,
            },
        }
    }
}

pub(super) struct StateShown<'a>(pub(super) &'a KeyState, pub(super) &'a [String]);

impl fmt::Display for StateShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StateShown(state, values) = self;
        match &state.live {
            Some(live) => write!(
                f,
                "= {:?} (mod {}, create {}, version {})",
                values.get(live.value as usize).map_or("?", String::as_str),
                state.last_write,
                live.create_revision,
                live.version
            ),
            None if state.last_write == Bounds::exactly(0) => write!(f, "never written"),
            None => write!(f, "absent (deleted at {})", state.last_write),
        }
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.low, self.high) {
            (low, high) if low == high => write!(f, "{low}"),
            (low, Revision::MAX) => write!(f, "≥{low}"),
            (low, high) => write!(f, "{low}..={high}"),
        }
    }
}
