//! Cluster compaction, both sides. The Primary's scheduler runs a
//! [`CompactionCycle`] every `compaction_interval` while this node is the
//! active Primary: it lists the registrations in the bucket, asks every
//! node (itself directly) for its minimum watch revision, sends the
//! compaction notices one node at a time, and then compacts through the
//! write path, which records the compaction and sends it to the replicas —
//! or rolls the notified nodes back. Every node answers the same questions
//! from its watch registry ([`min_watch_revision`], [`receive_notice`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::watch;

use crate::election::discovery;
use crate::http::metrics::{labels, Metrics};
use crate::objstore::ObjectStore;
use crate::pb::netsy::{CompactionNotice, CompactionNoticeResponse, MinWatchRevisionResponse};
use crate::primary::compaction::{CompactionCycle, CycleNode, NoticeAnswer, Step};
use crate::primary::Writer;
use crate::store::Store;
use crate::watch::{WatchBelow, WatchHub};

use super::cluster::Cluster;
use super::role::PrimaryState;
use super::status::RoleCell;

/// Time allowed for GetMinWatchRevision and for each notice attempt.
pub const COMPACTION_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// This node's answer to GetMinWatchRevision.
pub fn min_watch_revision(hub: &WatchHub) -> MinWatchRevisionResponse {
    MinWatchRevisionResponse {
        min_revision: hub.min_watch_revision(),
    }
}

/// This node's side of a compaction notice: the admission floor moves to
/// `revision` unless an active watch still needs a revision below it.
pub fn receive_notice(hub: &WatchHub, revision: i64) -> Result<(), WatchBelow> {
    let result = hub.watches().set_floor(revision);
    match &result {
        Ok(()) => log::debug!("watch admission floor set to {revision}"),
        Err(e) => log::info!("compaction notice refused: {e}"),
    }
    result
}

/// What the scheduler needs.
pub struct CompactionScheduler {
    pub interval: Duration,
    pub role: Arc<RoleCell>,
    /// Where the node registrations are listed.
    pub bucket: Arc<dyn ObjectStore>,
    pub cluster: Arc<Cluster>,
    pub hub: Arc<WatchHub>,
    pub store: Arc<Store>,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
}

impl CompactionScheduler {
    /// Runs a cycle every interval until `stop` turns true (a cycle under
    /// way is abandoned then).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let start = tokio::time::Instant::now() + self.interval;
        let mut ticker = tokio::time::interval_at(start, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                changed = stop.changed() => match changed {
                    Ok(()) => continue,
                    // The node is gone.
                    Err(_) => return,
                },
            }
            tokio::select! {
                _ = self.cycle() => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn active(&self) -> bool {
        self.role.get().primary == PrimaryState::Active
    }

    async fn cycle(&self) {
        if !self.active() {
            return;
        }
        let nodes = match discovery::list_registrations(&*self.bucket).await {
            Ok(registrations) => registrations
                .into_iter()
                .map(|r| CycleNode {
                    node_id: r.node_id,
                    peer_addr: r.peer_advertise_address,
                })
                .collect(),
            Err(e) => {
                log::warn!("compaction cycle aborted: {e}");
                return;
            }
        };
        let started = Instant::now();
        let current = self.store.compacted_revision();
        let (mut cycle, mut step) = CompactionCycle::start(self.active(), nodes, current);
        loop {
            step = match step {
                Step::Skip(why) => {
                    log::debug!("compaction skipped: {why}");
                    return;
                }
                Step::Abort(why) => {
                    log::warn!("compaction cycle aborted: {why}");
                    self.finished(started, false);
                    return;
                }
                Step::AskMinRevisions(nodes) => {
                    let asked = nodes.iter().map(|n| async move {
                        (n.node_id.clone(), self.ask_min_revision(n).await)
                    });
                    let answers = join_all(asked).await;
                    let step = cycle.on_min_revisions(answers);
                    if matches!(step, Step::Notify { .. }) {
                        log::info!(
                            "compaction_started: proposing revision {} (compaction revision {current})",
                            cycle.proposed()
                        );
                    }
                    step
                }
                Step::Notify {
                    node,
                    revision,
                    attempt,
                } => {
                    if attempt > 1 {
                        self.metrics.count_retry("compaction_confirmation");
                    }
                    let answer = self.notify(&node, revision).await;
                    if let NoticeAnswer::Failed(e) = &answer {
                        log::warn!(
                            "compaction notice to {} (attempt {attempt}): {e}",
                            node.node_id
                        );
                    }
                    cycle.on_notice(answer)
                }
                Step::Compact(revision) => {
                    let result = self.writer.compact(revision).await;
                    match &result {
                        Ok(()) => log::info!("compaction_completed: revision {revision}"),
                        Err(e) => log::warn!("compacting at {revision}: {e}"),
                    }
                    self.finished(started, result.is_ok());
                    return;
                }
                Step::RollBack {
                    node,
                    why,
                    nodes,
                    revision,
                } => {
                    log::warn!(
                        "compaction_notice_failed: {} did not confirm revision {} ({}); rolling back {} nodes to {revision}",
                        node.node_id,
                        cycle.proposed(),
                        why.reason(),
                        nodes.len()
                    );
                    self.metrics
                        .primary_compaction_confirmation_failures
                        .get_or_create(&labels(&[("reason", why.reason())]))
                        .inc();
                    for n in &nodes {
                        match self.notify(n, revision).await {
                            NoticeAnswer::Confirmed => {}
                            other => log::warn!(
                                "rolling back the compaction notice on {}: {other:?}",
                                n.node_id
                            ),
                        }
                    }
                    self.finished(started, false);
                    return;
                }
            };
        }
    }

    /// Counts a cycle that got past its skip checks.
    fn finished(&self, started: Instant, success: bool) {
        let result = labels(&[("result", if success { "success" } else { "error" })]);
        self.metrics
            .primary_compactions
            .get_or_create(&result)
            .inc();
        self.metrics
            .primary_compaction_coordination_duration
            .get_or_create(&result)
            .observe(started.elapsed().as_secs_f64());
    }

    fn is_me(&self, node: &CycleNode) -> bool {
        node.node_id == self.cluster.me().node_id
    }

    async fn ask_min_revision(&self, node: &CycleNode) -> Result<i64, String> {
        if self.is_me(node) {
            return Ok(min_watch_revision(&self.hub).min_revision);
        }
        let peer = self.cluster.peer(&node.peer_addr);
        let call = peer.unary::<_, MinWatchRevisionResponse>(
            "/netsy.Node/GetMinWatchRevision",
            &(),
            COMPACTION_CALL_TIMEOUT,
        );
        match tokio::time::timeout(COMPACTION_CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r.min_revision),
            Ok(Err(status)) => Err(status.message),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn notify(&self, node: &CycleNode, revision: i64) -> NoticeAnswer {
        if self.is_me(node) {
            return match receive_notice(&self.hub, revision) {
                Ok(()) => NoticeAnswer::Confirmed,
                Err(_) => NoticeAnswer::Rejected,
            };
        }
        let notice = CompactionNotice {
            compaction_revision: revision,
        };
        let peer = self.cluster.peer(&node.peer_addr);
        let call = peer.unary::<_, CompactionNoticeResponse>(
            "/netsy.Node/SendCompactionNotice",
            &notice,
            COMPACTION_CALL_TIMEOUT,
        );
        match tokio::time::timeout(COMPACTION_CALL_TIMEOUT, call).await {
            Ok(Ok(r)) if r.confirmed => NoticeAnswer::Confirmed,
            Ok(Ok(_)) => NoticeAnswer::Rejected,
            Ok(Err(status)) => NoticeAnswer::Failed(status.message),
            Err(_) => NoticeAnswer::Failed("timed out".into()),
        }
    }
}
