//! A simulated etcd with concurrent clients, for tests: it records
//! histories that are correct by construction (each operation takes effect
//! at a random instant within its call, or, for an unknown outcome, maybe
//! later or never), large enough to show the checkers scale, and easy to
//! corrupt to show they bite.

use std::collections::BTreeMap;

use super::operation::{ClientId, Kv, Operation, Outcome, Request, Response, Revision};
use super::watch::{EventKind, WatchCancel, WatchEvent, WatchStream, Watched};
use super::write_log::{Change, StoredValue, Write};
use super::Recording;

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub seed: u64,
    pub clients: u32,
    pub keys: u64,
    pub operations: usize,
    /// Out of 100: outcomes unknown (half of those take effect) and failed.
    pub unknown_percent: u64,
    pub failed_percent: u64,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Put,
    Create,
    Update,
    DeleteIf,
    Delete,
    Get,
    GetPinned,
    GetSerializable,
    List,
}

enum Fate {
    Answered,
    Unknown { happens: bool },
    Failed,
}

struct Planned {
    client: ClientId,
    invoked: u64,
    returned: u64,
    takes_effect_at: u64,
    kind: Kind,
    key: String,
    fate: Fate,
}

/// The store the clients talk to.
#[derive(Default)]
struct Store {
    revision: Revision,
    live: BTreeMap<String, Kv>,
    /// Every version of every key, for reads at a past revision.
    versions: BTreeMap<String, Vec<(Revision, Option<Kv>)>>,
    log: Vec<Write>,
    events: Vec<WatchEvent>,
    serializable_seen: BTreeMap<ClientId, Revision>,
}

impl Store {
    fn write(&mut self, key: &str, value: Option<&str>) -> Revision {
        self.revision += 1;
        let revision = self.revision;
        let previous = self.live.get(key).cloned();
        let kv = value.map(|value| Kv {
            key: key.to_string(),
            value: value.to_string(),
            mod_revision: revision,
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            version: previous.as_ref().map_or(1, |p| p.version + 1),
        });
        match &kv {
            Some(kv) => self.live.insert(key.to_string(), kv.clone()),
            None => self.live.remove(key),
        };
        self.versions
            .entry(key.to_string())
            .or_default()
            .push((revision, kv.clone()));
        self.log.push(Write {
            revision,
            key: key.to_string(),
            change: match value {
                Some(value) => Change::Put {
                    value: value.to_string(),
                },
                None => Change::Delete,
            },
        });
        self.events.push(WatchEvent {
            kind: if kv.is_some() {
                EventKind::Put
            } else {
                EventKind::Delete
            },
            kv: kv.unwrap_or(Kv {
                key: key.to_string(),
                value: String::new(),
                mod_revision: revision,
                create_revision: 0,
                version: 0,
            }),
            prev_kv: previous,
        });
        revision
    }

    fn at(&self, key: &str, revision: Revision) -> Option<Kv> {
        let versions = self.versions.get(key)?;
        let n = versions.partition_point(|(r, _)| *r <= revision);
        versions.get(n.checked_sub(1)?)?.1.clone()
    }

    /// An expected mod revision: usually the current one.
    fn expected(&self, key: &str, rng: &mut Rng) -> Revision {
        let current = self.live.get(key).map_or(0, |kv| kv.mod_revision);
        if rng.percent(70) {
            current
        } else {
            (current - 1 - rng.below(3) as Revision).max(1)
        }
    }

    fn apply(&mut self, kind: Kind, key: &str, value: &str, rng: &mut Rng) -> (Request, Response) {
        let current = self.live.get(key).cloned();
        let key_s = key.to_string();
        match kind {
            Kind::Put => {
                let revision = self.write(key, Some(value));
                (
                    Request::Put {
                        key: key_s,
                        value: value.into(),
                    },
                    Response::Put { revision },
                )
            }
            Kind::Create => {
                let request = Request::Create {
                    key: key_s,
                    value: value.into(),
                };
                if current.is_none() {
                    let revision = self.write(key, Some(value));
                    (
                        request,
                        Response::Create {
                            succeeded: true,
                            revision,
                        },
                    )
                } else {
                    (
                        request,
                        Response::Create {
                            succeeded: false,
                            revision: self.revision,
                        },
                    )
                }
            }
            Kind::Update => {
                let expected = self.expected(key, rng);
                let request = Request::Update {
                    key: key_s,
                    value: value.into(),
                    expected_mod_revision: expected,
                };
                if current.as_ref().map_or(0, |kv| kv.mod_revision) == expected {
                    let revision = self.write(key, Some(value));
                    let response = Response::Update {
                        succeeded: true,
                        revision,
                        current: None,
                    };
                    (request, response)
                } else {
                    let response = Response::Update {
                        succeeded: false,
                        revision: self.revision,
                        current,
                    };
                    (request, response)
                }
            }
            Kind::DeleteIf => {
                let expected = self.expected(key, rng).max(1);
                let request = Request::Delete {
                    key: key_s,
                    expected_mod_revision: Some(expected),
                };
                if current.as_ref().map(|kv| kv.mod_revision) == Some(expected) {
                    let revision = self.write(key, None);
                    let response = Response::Delete {
                        succeeded: true,
                        deleted: true,
                        revision,
                        current: None,
                    };
                    (request, response)
                } else {
                    let response = Response::Delete {
                        succeeded: false,
                        deleted: false,
                        revision: self.revision,
                        current,
                    };
                    (request, response)
                }
            }
            Kind::Delete => {
                let request = Request::Delete {
                    key: key_s,
                    expected_mod_revision: None,
                };
                let deleted = current.is_some();
                let revision = if deleted {
                    self.write(key, None)
                } else {
                    self.revision
                };
                let response = Response::Delete {
                    succeeded: true,
                    deleted,
                    revision,
                    current: None,
                };
                (request, response)
            }
            Kind::Get => (
                Request::Get {
                    key: key_s,
                    revision: None,
                    serializable: false,
                },
                Response::Get {
                    kv: current,
                    revision: self.revision,
                },
            ),
            Kind::GetPinned => {
                let pinned = 1 + rng.below(self.revision as u64) as Revision;
                let request = Request::Get {
                    key: key_s,
                    revision: Some(pinned),
                    serializable: false,
                };
                let response = Response::Get {
                    kv: self.at(key, pinned),
                    revision: self.revision,
                };
                (request, response)
            }
            Kind::GetSerializable => {
                // A replica a little behind, never going back for a client.
                (
                    Request::Get {
                        key: key_s,
                        revision: None,
                        serializable: true,
                    },
                    Response::Get {
                        kv: None,
                        revision: self.revision,
                    },
                )
            }
            Kind::List => {
                let kvs = self
                    .live
                    .range(key_s.clone()..)
                    .take_while(|(k, _)| k.starts_with(key))
                    .map(|(_, kv)| kv.clone())
                    .collect();
                (
                    Request::List {
                        prefix: key_s,
                        revision: None,
                        limit: 3,
                        serializable: false,
                    },
                    Response::List {
                        kvs,
                        revision: self.revision,
                    },
                )
            }
        }
    }

    /// A serializable read from a replica up to two revisions behind.
    fn serializable_read(&mut self, client: ClientId, key: &str, rng: &mut Rng) -> Response {
        let floor = self.serializable_seen.get(&client).copied().unwrap_or(1);
        let revision = (self.revision - rng.below(3) as Revision).max(floor);
        self.serializable_seen.insert(client, revision);
        Response::Get {
            kv: self.at(key, revision),
            revision,
        }
    }
}

const KINDS: [(Kind, u64); 9] = [
    (Kind::Put, 15),
    (Kind::Create, 10),
    (Kind::Update, 20),
    (Kind::DeleteIf, 5),
    (Kind::Delete, 3),
    (Kind::Get, 25),
    (Kind::GetPinned, 7),
    (Kind::GetSerializable, 7),
    (Kind::List, 8),
];

fn pick_kind(rng: &mut Rng) -> Kind {
    let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.below(total);
    for (kind, weight) in KINDS {
        if roll < weight {
            return kind;
        }
        roll -= weight;
    }
    Kind::Get
}

/// A correct recording of this shape; keys are /k0 … and Lists read /kNN.
pub fn simulate(shape: Shape) -> Recording {
    let mut rng = Rng::new(shape.seed);
    let mut planned = Vec::with_capacity(shape.operations);
    let mut clock = vec![0u64; shape.clients as usize];
    for i in 0..shape.operations {
        let client = (i % shape.clients as usize) as ClientId;
        let invoked = clock[client as usize] + 1_000 * (1 + rng.below(50));
        let duration = 1_000 * (20 + rng.below(480));
        let returned = invoked + duration;
        let kind = pick_kind(&mut rng);
        let fate = if rng.percent(shape.unknown_percent) {
            Fate::Unknown {
                happens: rng.percent(50),
            }
        } else if rng.percent(shape.failed_percent) {
            Fate::Failed
        } else {
            Fate::Answered
        };
        // An unknown outcome may take effect after the client gave up.
        let window = match fate {
            Fate::Unknown { .. } => duration * 4,
            _ => duration,
        };
        let key = match kind {
            Kind::List => format!("/k{}", 10 + rng.below(90)),
            _ => format!("/k{}", rng.below(shape.keys)),
        };
        planned.push(Planned {
            client,
            invoked,
            returned,
            takes_effect_at: invoked + rng.below(window + 1),
            kind,
            key,
            fate,
        });
        clock[client as usize] = returned;
    }

    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| planned[i].takes_effect_at);
    let mut store = Store {
        revision: 1,
        ..Store::default()
    };
    let mut operations: Vec<Option<Operation>> = vec![None; planned.len()];
    for i in order {
        let plan = &planned[i];
        let value = format!("v{i}");
        let happens = matches!(plan.fate, Fate::Answered | Fate::Unknown { happens: true });
        let (request, response) = if happens {
            let (request, response) = store.apply(plan.kind, &plan.key, &value, &mut rng);
            match plan.kind {
                Kind::GetSerializable => {
                    let response = store.serializable_read(plan.client, &plan.key, &mut rng);
                    (request, response)
                }
                _ => (request, response),
            }
        } else {
            // Nothing happens: a throwaway store builds the request.
            let mut scratch = Store {
                revision: store.revision,
                live: store.live.clone(),
                ..Store::default()
            };
            scratch.apply(plan.kind, &plan.key, &value, &mut rng)
        };
        let outcome = match plan.fate {
            Fate::Answered => Outcome::Ok(response),
            Fate::Unknown { .. } => Outcome::Unknown {
                error: "deadline exceeded".into(),
            },
            Fate::Failed => Outcome::Failed {
                error: "Unavailable: not accepting writes".into(),
            },
        };
        operations[i] = Some(Operation {
            client: plan.client,
            invoked_at_ns: plan.invoked,
            returned_at_ns: plan.returned,
            request,
            outcome,
        });
    }

    let watch = |watched: Watched, start: Revision, upto: Option<Revision>| {
        let events = store
            .events
            .iter()
            .filter(|e| e.kv.mod_revision >= start && watched.contains(&e.kv.key))
            .filter(|e| upto.is_none_or(|upto| e.kv.mod_revision <= upto))
            .cloned()
            .collect();
        WatchStream {
            client: 1000,
            watched,
            start_revision: start,
            prev_kv: true,
            events,
            cancelled: upto.map(|upto| WatchCancel {
                compact_revision: upto + 2,
                reason: "required revision has been compacted".into(),
            }),
            caught_up_to: None,
        }
    };
    let middle = store.revision / 2;
    let watches = vec![
        watch(
            Watched::Prefix {
                prefix: "/k".into(),
            },
            2,
            None,
        ),
        watch(Watched::Key { key: "/k1".into() }, middle, None),
        watch(
            Watched::Prefix {
                prefix: "/k2".into(),
            },
            2,
            Some(middle),
        ),
    ];
    let final_state = store
        .live
        .iter()
        .map(|(key, kv)| {
            (
                key.clone(),
                StoredValue {
                    value: kv.value.clone(),
                    mod_revision: kv.mod_revision,
                },
            )
        })
        .collect();
    Recording {
        operations: operations.into_iter().flatten().collect(),
        watches,
        final_state: Some(final_state),
        history: Some(store.log),
    }
}
