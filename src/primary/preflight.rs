//! Preflight: before a new Primary takes writes, its store catches up with
//! what the durable store (the bucket) holds, watchers see what was
//! imported, and records only this node has are made durable. Run at every
//! starting → active step, including after a recovery.

use std::sync::Arc;

use crate::log::restore::{self, CaughtUp};
use crate::log::{LogError, ObjectLog};
use crate::store::{Store, StoreError};
use crate::watch::{events_from_store, WatchHub};

/// How many imported records are turned into watch events at a time.
const PUBLISH_PAGE: usize = 10_000;

pub async fn preflight(
    store: &Arc<Store>,
    log: &ObjectLog,
    hub: &WatchHub,
) -> Result<CaughtUp, LogError> {
    let before = store.committed_revision();
    let report = restore::catch_up(store, log).await?;
    restore::upload_local(store, log, report.durable).await?;
    // Imported records and a brand-new cluster's first record alike.
    publish_imported(store, hub, before)?;
    Ok(report)
}

/// Publishes records committed after `after` (imported from elsewhere) to
/// watchers, with their previous key-values.
fn publish_imported(store: &Store, hub: &WatchHub, after: i64) -> Result<(), StoreError> {
    let committed = store.committed_revision();
    let mut from = after + 1;
    while from <= committed {
        let (events, covered) = events_from_store(store, from, committed, PUBLISH_PAGE)?;
        hub.publish(events, covered);
        from = covered + 1;
    }
    Ok(())
}
