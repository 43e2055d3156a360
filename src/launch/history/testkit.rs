//! Short constructors for hand-written histories in tests.

use super::operation::{ClientId, Kv, Operation, Outcome, Request, Response, Revision};
use super::write_log::{Change, Write};

pub fn op(
    client: ClientId,
    invoked_at_ns: u64,
    returned_at_ns: u64,
    request: Request,
    outcome: Outcome,
) -> Operation {
    Operation {
        client,
        invoked_at_ns,
        returned_at_ns,
        request,
        outcome,
    }
}

pub fn put(key: &str, value: &str) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
    }
}

pub fn create(key: &str, value: &str) -> Request {
    Request::Create {
        key: key.into(),
        value: value.into(),
    }
}

pub fn update(key: &str, value: &str, expected_mod_revision: Revision) -> Request {
    Request::Update {
        key: key.into(),
        value: value.into(),
        expected_mod_revision,
    }
}

pub fn delete(key: &str, expected_mod_revision: Option<Revision>) -> Request {
    Request::Delete {
        key: key.into(),
        expected_mod_revision,
    }
}

pub fn get(key: &str) -> Request {
    Request::Get {
        key: key.into(),
        revision: None,
        serializable: false,
    }
}

pub fn get_at(key: &str, revision: Revision) -> Request {
    Request::Get {
        key: key.into(),
        revision: Some(revision),
        serializable: false,
    }
}

pub fn get_serializable(key: &str) -> Request {
    Request::Get {
        key: key.into(),
        revision: None,
        serializable: true,
    }
}

pub fn list(prefix: &str) -> Request {
    Request::List {
        prefix: prefix.into(),
        revision: None,
        limit: 2,
        serializable: false,
    }
}

pub fn ok(response: Response) -> Outcome {
    Outcome::Ok(response)
}

pub fn unknown() -> Outcome {
    Outcome::Unknown {
        error: "deadline exceeded".into(),
    }
}

pub fn failed() -> Outcome {
    Outcome::Failed {
        error: "Unavailable: not accepting writes".into(),
    }
}

pub fn written(revision: Revision) -> Outcome {
    ok(Response::Put { revision })
}

pub fn created(succeeded: bool, revision: Revision) -> Outcome {
    ok(Response::Create {
        succeeded,
        revision,
    })
}

pub fn kv(
    key: &str,
    value: &str,
    mod_revision: Revision,
    create_revision: Revision,
    version: i64,
) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        mod_revision,
        create_revision,
        version,
    }
}

pub fn got(kv: Option<Kv>, revision: Revision) -> Response {
    Response::Get { kv, revision }
}

/// A Get answer: `value` with these revisions, or absent.
pub fn read(kv: Option<Kv>, revision: Revision) -> Outcome {
    ok(got(kv, revision))
}

pub fn log_put(revision: Revision, key: &str, value: &str) -> Write {
    Write {
        revision,
        key: key.into(),
        change: Change::Put {
            value: value.into(),
        },
    }
}

pub fn log_delete(revision: Revision, key: &str) -> Write {
    Write {
        revision,
        key: key.into(),
        change: Change::Delete,
    }
}
