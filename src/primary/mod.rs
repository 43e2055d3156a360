//! The write path: txn evaluation, group commit into object storage and the
//! local database, and publication to readers and watchers. (Quorum
//! replication plugs in here in a later stage.)

pub mod committer;
pub mod txn;
pub mod view;

pub use committer::{start, Durability, WriteState, Writer};

use crate::store::{Store, StoreError};
use crate::watch::{Event, WatchHub};

/// Publishes records imported into the store after `after` (recovery,
/// replication) to watchers, with their previous key-values.
pub fn publish_imported(store: &Store, hub: &WatchHub, after: i64) -> Result<(), StoreError> {
    let latest = store.latest_revision();
    if latest <= after {
        return Ok(());
    }
    let mut events = Vec::new();
    for r in store.records_between(after + 1, latest, usize::MAX)? {
        if r.is_internal() {
            continue;
        }
        let prev = if r.prev_revision > 0 {
            store.record_at(r.prev_revision)?.map(|p| p.to_key_value())
        } else {
            None
        };
        events.push(Event::from_record(&r, prev));
    }
    hub.publish(events, store.committed_revision());
    Ok(())
}
