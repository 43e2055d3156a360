//! The seam between the write path and replication: how the next batch is
//! made durable (the bucket alone, or a quorum of replicas), sending
//! records and commits to the replicas that follow, and waiting for their
//! receipts. A lone node has no replicas; a cluster's Primary plugs in the
//! replica set of `replication/`.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::store::Record;

/// How long a quorum write waits for receipts before it is rolled back
/// (the reference's fixed value).
pub const QUORUM_RECEIPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How one batch is made durable before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The synchronous path: one chunk in the bucket.
    Sync,
    /// The quorum path: `required` replicas have it on disk.
    Quorum { required: usize },
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Sync => "sync",
            Route::Quorum { .. } => "quorum",
        }
    }
}

pub trait Replicas: Send + Sync + 'static {
    /// The path for the next batch: quorum when receipts are required and
    /// enough replicas are eligible to give them.
    fn route(&self) -> Route;

    /// Queues records for every following replica; never blocks.
    fn send_records(&self, records: &[Record]);

    /// Queues a newly committed revision for every following replica.
    fn send_commit(&self, revision: i64);

    /// Queues a newly committed compaction revision for every following
    /// replica.
    fn send_compact(&self, revision: i64);

    /// Resolves true once `required` distinct replicas have receipted
    /// `revision`, false when `timeout` passes first.
    fn wait_receipts(
        &self,
        revision: i64,
        required: usize,
        timeout: Duration,
    ) -> BoxFuture<'static, bool>;

    /// A quorum wait for `revision` timed out: the replicas that did not
    /// answer stop counting until they catch up.
    fn missed(&self, revision: i64);
}
