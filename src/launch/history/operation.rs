//! What a client did and what it learnt: one [`Operation`] per request, in
//! the shapes Kubernetes sends (a create, a compare-and-swap update or
//! delete, a get, a paged list) plus a plain put.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An etcd revision.
pub type Revision = i64;

/// Which client (one request at a time) issued an operation.
pub type ClientId = u32;

/// One request of one client, from invocation to answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: ClientId,
    /// Nanoseconds since the start of the run when the request was sent.
    pub invoked_at_ns: u64,
    /// Nanoseconds since the start of the run when the answer arrived (or,
    /// for an unknown outcome, when the client gave up; the operation may
    /// still take effect after it).
    pub returned_at_ns: u64,
    pub request: Request,
    pub outcome: Outcome,
}

/// A request, as the client meant it (the Txn it sends is in each doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Txn: if mod_revision(key) == 0 then put.
    Create { key: String, value: String },
    /// Txn: if mod_revision(key) == expected then put else get.
    Update {
        key: String,
        value: String,
        expected_mod_revision: Revision,
    },
    /// With an expected revision, Txn: if mod_revision(key) == expected then
    /// delete else get; without, a plain DeleteRange of the key.
    Delete {
        key: String,
        expected_mod_revision: Option<Revision>,
    },
    /// A plain Put.
    Put { key: String, value: String },
    /// Range of one key; `revision` pins the read to a past revision.
    Get {
        key: String,
        revision: Option<Revision>,
        #[serde(default)]
        serializable: bool,
    },
    /// Every key under a prefix, read in pages of `limit` keys, each later
    /// page pinned to the revision the first page answered (as Kubernetes
    /// pages), so together they are one snapshot.
    List {
        prefix: String,
        revision: Option<Revision>,
        limit: i64,
        #[serde(default)]
        serializable: bool,
    },
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered; a compare that did not hold is still Ok (with
    /// `succeeded` false).
    Ok(Response),
    /// Known not to have happened: the server refused the request before
    /// doing anything (InvalidArgument, FailedPrecondition, Unavailable
    /// from a node not accepting writes).
    Failed { error: String },
    /// Timeout, lost connection: the request may or may not have taken
    /// effect, at any time after its invocation.
    Unknown { error: String },
}

/// The server's answer. `revision` is always the response header's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The write's revision.
    Put {
        revision: Revision,
    },
    /// The put's revision when it succeeded, else the revision the server
    /// had reached when it evaluated the compare.
    Create {
        succeeded: bool,
        revision: Revision,
    },
    /// As Create; `current` is the else branch's get (None: the key was
    /// absent).
    Update {
        succeeded: bool,
        revision: Revision,
        current: Option<Kv>,
    },
    /// `succeeded` is the compare (true for an unconditional delete);
    /// `deleted` whether a key was deleted, and then `revision` is the
    /// delete's; `current` is the else branch's get.
    Delete {
        succeeded: bool,
        deleted: bool,
        revision: Revision,
        current: Option<Kv>,
    },
    Get {
        kv: Option<Kv>,
        revision: Revision,
    },
    /// Every page's keys in key order; `revision` is the first page's
    /// header revision (later pages report the revision current when they
    /// ran, not the one they read).
    List {
        kvs: Vec<Kv>,
        revision: Revision,
    },
}

/// A key as a read returned it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: Revision,
    pub create_revision: Revision,
    pub version: i64,
}

impl Request {
    /// The one key a request names (None for a List).
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Create { key, .. }
            | Request::Update { key, .. }
            | Request::Delete { key, .. }
            | Request::Put { key, .. }
            | Request::Get { key, .. } => Some(key),
            Request::List { .. } => None,
        }
    }

    /// Whether the request may change the store.
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. } | Request::List { .. })
    }

    /// A read answered from one node's data without asking the Primary.
    pub fn is_serializable(&self) -> bool {
        match self {
            Request::Get { serializable, .. } | Request::List { serializable, .. } => *serializable,
            _ => false,
        }
    }

    /// The revision a read was pinned to.
    pub fn pinned_revision(&self) -> Option<Revision> {
        match self {
            Request::Get { revision, .. } | Request::List { revision, .. } => *revision,
            _ => None,
        }
    }

    /// The value a write would store (None for a Delete or a read).
    pub fn written_value(&self) -> Option<&str> {
        match self {
            Request::Create { value, .. }
            | Request::Update { value, .. }
            | Request::Put { value, .. } => Some(value),
            _ => None,
        }
    }
}

impl Response {
    /// The response header's revision.
    pub fn revision(&self) -> Revision {
        match self {
            Response::Put { revision }
            | Response::Create { revision, .. }
            | Response::Update { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Get { revision, .. }
            | Response::List { revision, .. } => *revision,
        }
    }

    /// Whether the answer says a write happened (at `revision`).
    pub fn wrote(&self) -> bool {
        match self {
            Response::Put { .. } => true,
            Response::Create { succeeded, .. } | Response::Update { succeeded, .. } => *succeeded,
            Response::Delete {
                succeeded, deleted, ..
            } => *succeeded && *deleted,
            Response::Get { .. } | Response::List { .. } => false,
        }
    }
}

impl Operation {
    /// The response, when the server answered.
    pub fn response(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok(response) => Some(response),
            _ => None,
        }
    }

    /// The revision this operation is acknowledged to have written.
    pub fn acknowledged_write(&self) -> Option<Revision> {
        self.response()
            .filter(|r| self.request.is_write() && r.wrote())
            .map(Response::revision)
    }

    /// Whether the operation may have changed the store.
    pub fn may_have_written(&self) -> bool {
        match &self.outcome {
            Outcome::Ok(response) => self.request.is_write() && response.wrote(),
            Outcome::Failed { .. } => false,
            Outcome::Unknown { .. } => self.request.is_write(),
        }
    }
}

/// `#index client C at T ms: request → outcome`, for messages.
pub fn describe(index: usize, op: &Operation) -> String {
    format!(
        "#{index} (client {} at {}–{} ms: {} → {})",
        op.client,
        millis(op.invoked_at_ns),
        millis(op.returned_at_ns),
        op.request,
        op.outcome
    )
}

fn millis(ns: u64) -> String {
    format!("{}.{:03}", ns / 1_000_000, (ns / 1_000) % 1_000)
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Create { key, value } => write!(f, "create {key} = {value:?}"),
            Request::Update {
                key,
                value,
                expected_mod_revision,
            } => write!(f, "update {key} = {value:?} if mod {expected_mod_revision}"),
            Request::Delete {
                key,
                expected_mod_revision: Some(expected),
            } => write!(f, "delete {key} if mod {expected}"),
            Request::Delete { key, .. } => write!(f, "delete {key}"),
            Request::Put { key, value } => write!(f, "put {key} = {value:?}"),
            Request::Get {
                key,
                revision,
                serializable,
            } => {
                write!(f, "get {key}")?;
                read_options(f, *revision, *serializable)
            }
            Request::List {
                prefix,
                revision,
                serializable,
                ..
            } => {
                write!(f, "list {prefix}*")?;
                read_options(f, *revision, *serializable)
            }
        }
    }
}

fn read_options(
    f: &mut fmt::Formatter<'_>,
    revision: Option<Revision>,
    serializable: bool,
) -> fmt::Result {
    if let Some(revision) = revision {
        write!(f, " at revision {revision}")?;
    }
    if serializable {
        write!(f, " (serializable)")?;
    }
    Ok(())
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(response) => write!(f, "{response}"),
            Outcome::Failed { error } => write!(f, "failed ({error})"),
            Outcome::Unknown { error } => write!(f, "unknown ({error})"),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Put { revision } => write!(f, "ok, revision {revision}"),
            Response::Create {
                succeeded,
                revision,
            } => write!(f, "{}, revision {revision}", verdict(*succeeded)),
            Response::Update {
                succeeded,
                revision,
                current,
            } => {
                write!(f, "{}, revision {revision}", verdict(*succeeded))?;
                current_kv(f, *succeeded, current.as_ref())
            }
            Response::Delete {
                succeeded,
                deleted,
                revision,
                current,
            } => {
                let what = if *deleted {
                    ", deleted"
                } else {
                    ", nothing deleted"
                };
                write!(f, "{}{what}, revision {revision}", verdict(*succeeded))?;
                current_kv(f, *succeeded, current.as_ref())
            }
            Response::Get { kv, revision } => match kv {
                Some(kv) => write!(f, "{kv}, revision {revision}"),
                None => write!(f, "absent, revision {revision}"),
            },
            Response::List { kvs, revision } => {
                write!(f, "[")?;
                for (i, kv) in kvs.iter().take(KVS_SHOWN).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{kv}")?;
                }
                if kvs.len() > KVS_SHOWN {
                    write!(f, ", … {} more", kvs.len() - KVS_SHOWN)?;
                }
                write!(f, "], revision {revision}")
            }
        }
    }
}

/// How many keys of a List answer a message shows.
const KVS_SHOWN: usize = 8;

fn verdict(succeeded: bool) -> &'static str {
    if succeeded {
        "succeeded"
    } else {
        "compare failed"
    }
}

fn current_kv(f: &mut fmt::Formatter<'_>, succeeded: bool, current: Option<&Kv>) -> fmt::Result {
    match (succeeded, current) {
        (_, Some(kv)) => write!(f, ", current {kv}"),
        (false, None) => write!(f, ", current absent"),
        (true, None) => Ok(()),
    }
}

impl fmt::Display for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {:?} (mod {}, create {}, version {})",
            self.key, self.value, self.mod_revision, self.create_revision, self.version
        )
    }
}
