//! The JSON objects nodes coordinate through in the bucket: the Elector's
//! lock (`leader/elector.json`, also the body of a leader's HTTPS answer),
//! registrations (`nodes/{id}.json`), member ids (`members.json`) and
//! leases (`leases/{id}`). Any node, or anyone with write access to the
//! bucket, may have written them.

use crate::election::discovery::{self, Members, Registration};
use crate::election::endpoint;
use crate::election::lock::{zero_time, LockRecord};
use crate::log::leases::{lease_key, LeaseObject};
use crate::store::Timestamp;

/// Input: one object, read as each of them.
pub fn election_json(data: &[u8]) {
    lock(data);
    let _ = endpoint::parse_answer(data);
    registration(data);
    members(data);
    lease(data);
}

fn lock(data: &[u8]) {
    let Ok(record) = LockRecord::parse(data) else {
        return;
    };
    // A record is judged by its age, as every node does each cycle.
    for now in [Timestamp::now(), zero_time()] {
        let _ = record.age(now);
    }
    // Times outside what RFC 3339 can write need not read back; anything
    // that does must be the same record.
    if let Ok(back) = LockRecord::parse(&record.to_json()) {
        assert_eq!(back, record);
    }
}

fn registration(data: &[u8]) {
    let Ok(reg) = serde_json::from_slice::<Registration>(data) else {
        return;
    };
    let json = serde_json::to_vec(&reg).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<Registration>(&json).ok(),
        Some(reg)
    );
}

fn members(data: &[u8]) {
    let Ok(mut members) = serde_json::from_slice::<Members>(data) else {
        return;
    };
    let json = serde_json::to_vec(&members).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<Members>(&json).ok().as_ref(),
        Some(&members)
    );
    // The Elector allocates ids to new nodes (and one already listed).
    let mut ids = vec!["node-new".to_string(), "node-new-2".to_string()];
    ids.extend(members.members.keys().next().cloned());
    let before = members.clone();
    if discovery::assign(&mut members, &ids).is_err() {
        return;
    }
    let picked = discovery::pick(&members, &ids);
    assert_eq!(picked.len(), ids.len(), "{ids:?} not all given ids");
    for (id, member) in &members.members {
        if let Some(old) = before.members.get(id) {
            assert_eq!(old, member, "{id} changed its id");
        } else {
            // A new id is never 0 and never one a node already has.
            assert_ne!(*member, 0);
            let holders = members.members.values().filter(|m| *m == member).count();
            assert_eq!(holders, 1, "{id} got id {member}, already taken");
        }
    }
}

fn lease(data: &[u8]) {
    let Ok(lease) = serde_json::from_slice::<LeaseObject>(data) else {
        return;
    };
    let key = lease_key(lease.id);
    assert!(key.len() == "leases/".len() + 16, "{key}");
    let json = serde_json::to_vec(&lease).unwrap_or_default();
    assert_eq!(
        serde_json::from_slice::<LeaseObject>(&json).ok(),
        Some(lease)
    );
}
