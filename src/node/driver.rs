//! Drives the role machine: what happens to the node (its write path
//! failing or recovering, preflight finishing, the cluster state naming a
//! Primary, shutdown) becomes a role change, and each change starts or
//! stops the services of that role: the write gate, preflight, the chunk
//! buffer's drain, and a replica's follower of the Primary's stream. A lone
//! node is its own Elector and appoints itself Primary.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::log::buffer::Trigger;
use crate::log::ObjectLog;
use crate::primary::buffer::Buffer;
use crate::primary::{self, Leases, Replicas, WriteGate, WritePathEvent};
use crate::replication::FollowerParts;
use crate::store::Store;
use crate::watch::WatchHub;

use super::cluster::Cluster;
use super::role::{Change, ElectorState, Health, PrimaryState};
use super::status::RoleCell;

/// How long a failed preflight waits before the next try (the reference's
/// value).
pub const PREFLIGHT_RETRY: Duration = Duration::from_secs(1);

/// What the Primary role needs to take and leave writes.
pub struct PrimaryParts {
    pub gate: Arc<WriteGate>,
    pub store: Arc<Store>,
    pub log: Arc<ObjectLog>,
    /// Lease deadlines are held while this node leads.
    pub leases: Option<Arc<Leases>>,
    pub hub: Arc<WatchHub>,
    /// The replicas a cluster's Primary sends to.
    pub replicas: Option<Arc<dyn Replicas>>,
    /// Quorum-committed records on their way to the bucket.
    pub buffer: Option<Arc<Buffer>>,
    /// What a cluster member's follower needs.
    pub follower: Option<Arc<FollowerParts>>,
}

/// How long a stepping-down or stopping Primary may take to flush its
/// chunk buffer (the reference's drain timeout).
pub const DRAIN_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Who appoints the Primary.
pub enum Appointer {
    /// A lone node (--dev) is its own Elector and always its Primary.
    Lone,
    /// The cluster's Elector, through the cluster state.
    Cluster(Arc<Cluster>),
}

/// What else the driver hears about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverInput {
    /// Heartbeats to the Elector failed: a Primary steps down.
    SelfDegraded,
}

pub struct RoleDriver {
    cell: Arc<RoleCell>,
    primary: Arc<PrimaryParts>,
    appointer: Appointer,
    write_events: mpsc::UnboundedReceiver<WritePathEvent>,
    inputs: mpsc::UnboundedReceiver<DriverInput>,
    preflight: Option<JoinHandle<Result<(), String>>>,
    /// When the next preflight may start after a failed one.
    preflight_retry: Option<tokio::time::Instant>,
    /// The write path is settling a failed batch (draining until then).
    recovering: bool,
    /// A replica's follower, and the Primary it follows.
    follower: Option<(String, JoinHandle<()>)>,
}

/// Asks a running driver to stop; resolves once the node has stopped
/// taking writes and reports itself degraded.
pub struct DriverHandle {
    stop: oneshot::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl DriverHandle {
    pub async fn stop(self) {
        let (done, wait) = oneshot::channel();
        if self.stop.send(done).is_ok() {
            let _ = wait.await;
        }
        let _ = self.task.await;
    }
}

impl RoleDriver {
    pub fn new(
        cell: Arc<RoleCell>,
        primary: PrimaryParts,
        appointer: Appointer,
        write_events: mpsc::UnboundedReceiver<WritePathEvent>,
        inputs: mpsc::UnboundedReceiver<DriverInput>,
    ) -> RoleDriver {
        RoleDriver {
            cell,
            primary: Arc::new(primary),
            appointer,
            write_events,
            inputs,
            preflight: None,
            preflight_retry: None,
            recovering: false,
            follower: None,
        }
    }

    /// At startup: a lone node becomes its own Elector and Primary. The
    /// first preflight must succeed, or the node does not start.
    pub async fn take_primary(&mut self) -> Result<(), String> {
        self.cell
            .change(|r| r.set_elector(ElectorState::Leader))
            .map_err(|e| e.to_string())?;
        self.cell
            .change(|r| r.set_primary(PrimaryState::Starting))
            .map_err(|e| e.to_string())?;
        preflight(&self.primary)
            .await
            .map_err(|e| format!("preflight: {e}"))?;
        self.apply(PrimaryState::Active);
        Ok(())
    }

    /// Runs the driver until stopped. A cluster member starts from the
    /// cluster state as it stands.
    pub fn spawn(mut self) -> DriverHandle {
        let (stop, mut stopped) = oneshot::channel::<oneshot::Sender<()>>();
        let mut cluster_states = match &self.appointer {
            Appointer::Cluster(c) => Some(c.subscribe()),
            Appointer::Lone => None,
        };
        let task = tokio::spawn(async move {
            if cluster_states.is_some() {
                self.on_cluster_state();
            }
            loop {
                let retry_at = self.preflight_retry;
                tokio::select! {
                    Some(event) = self.write_events.recv() => self.on_write_path(event),
                    Some(input) = self.inputs.recv() => self.on_input(input),
                    Ok(()) = changed(&mut cluster_states) => self.on_cluster_state(),
                    result = wait_preflight(&mut self.preflight) => self.on_preflight(result),
                    _ = sleep_until(retry_at) => {
                        self.preflight_retry = None;
                        self.start_preflight();
                    }
                    done = &mut stopped => {
                        self.shut_down().await;
                        if let Ok(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                }
            }
        });
        DriverHandle { stop, task }
    }

    fn on_write_path(&mut self, event: WritePathEvent) {
        match event {
            WritePathEvent::Draining { .. } => {
                self.recovering = true;
                // A batch in flight when this node stepped down may fail
                // after it: the write path settles it, the role stays.
                if self.cell.get().primary != PrimaryState::Replica {
                    self.apply(PrimaryState::Draining)
                }
            }
            WritePathEvent::Settled => {
                self.recovering = false;
                self.apply(PrimaryState::Replica)
            }
        }
    }

    fn on_input(&mut self, input: DriverInput) {
        match input {
            DriverInput::SelfDegraded => {
                if matches!(
                    self.cell.get().primary,
                    PrimaryState::Active | PrimaryState::Starting
                ) {
                    log::warn!("stepping down as Primary: this node is degraded");
                    self.step_down();
                }
            }
        }
    }

    /// The Elector said something: take the Primary role when named (and
    /// not degraded), give it up when another node is named (no Primary
    /// named changes nothing: a new Elector does not know it yet).
    fn on_cluster_state(&mut self) {
        match respond(self.named(), self.cell.get().primary, self.may_lead()) {
            Response::Start => self.apply(PrimaryState::Starting),
            Response::StepDown(id) => {
                log::warn!("{id} is the Primary now: stepping down");
                self.step_down();
            }
            Response::Follow => {
                self.close_as_replica();
                self.start_follower();
            }
            Response::Nothing => {}
        }
    }

    /// Leaves the Primary role at once (draining, then replica unless the
    /// write path still settles a failed batch).
    fn step_down(&mut self) {
        self.apply(PrimaryState::Draining);
        if !self.recovering {
            self.apply(PrimaryState::Replica);
        }
    }

    /// A degraded node does not take the Primary role: it stepped down
    /// because it lost the Elector, and the state naming it may be stale.
    /// Once its heartbeats succeed it fetches the state afresh.
    fn may_lead(&self) -> bool {
        self.cell.get().health != Health::Degraded
    }

    fn named(&self) -> Named {
        match &self.appointer {
            Appointer::Lone => Named::Me,
            Appointer::Cluster(c) => match c.state().and_then(|s| s.primary) {
                None => Named::Nobody,
                Some(p) if p.node_id == c.me().node_id => Named::Me,
                Some(p) => Named::Other(p.node_id),
            },
        }
    }

    /// What a replica tells writers.
    fn close_as_replica(&self) {
        let gate = &self.primary.gate;
        match self.named() {
            Named::Other(id) => {
                gate.close_for("replica", format!("writes go to the Primary, {id}"), false)
            }
            Named::Nobody => gate.close_for("replica", "no Primary is elected yet".into(), true),
            Named::Me if !self.may_lead() => gate.close_for(
                "replica",
                "this node lost contact with the Elector".into(),
                true,
            ),
            // About to be appointed (again).
            Named::Me => gate.close_for("replica", String::new(), true),
        }
    }

    fn on_preflight(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) if self.cell.get().primary == PrimaryState::Starting => {
                self.apply(PrimaryState::Active)
            }
            Ok(()) => {}
            Err(e) => {
                log::warn!("preflight failed: {e}; next try in {PREFLIGHT_RETRY:?}");
                self.preflight_retry = Some(tokio::time::Instant::now() + PREFLIGHT_RETRY);
            }
        }
    }

    /// Moves the primary state, then makes the changes that follow from
    /// it, in order.
    fn apply(&mut self, first: PrimaryState) {
        let mut wants = VecDeque::from([first]);
        while let Some(to) = wants.pop_front() {
            if let Ok(Some(change)) = self.cell.change(|r| r.set_primary(to)) {
                wants.extend(self.on_change(change));
            }
        }
    }

    /// Starts and stops the services of a role change; returns the changes
    /// that follow from it.
    fn on_change(&mut self, change: Change) -> Option<PrimaryState> {
        let Change::Primary { to, .. } = change else {
            return None;
        };
        let gate = &self.primary.gate;
        match to {
            PrimaryState::Active => {
                // Deadlines first: a lease call waits for the gate.
                self.primary.leases.iter().for_each(|l| l.take_over());
                gate.open();
                log::info!("accepting writes");
                None
            }
            PrimaryState::Starting => {
                gate.close_for(to.as_str(), String::new(), true);
                self.primary.leases.iter().for_each(|l| l.step_down());
                self.stop_follower();
                // Preflight uploads whatever the bucket lacks.
                self.clear_buffer();
                self.start_preflight();
                None
            }
            PrimaryState::Draining => {
                gate.close(to.as_str());
                self.primary.leases.iter().for_each(|l| l.step_down());
                self.stop_preflight();
                if let Some(buffer) = self.primary.buffer.clone() {
                    // Whoever leads next uploads what this flush could not.
                    let generation = buffer.generation();
                    tokio::spawn(async move {
                        flush_buffer(&buffer).await;
                        buffer.forget_unless_cleared(generation);
                    });
                }
                None
            }
            PrimaryState::Replica => {
                // The buffer is left to the drain's flush; preflight clears
                // it if this node leads again.
                self.stop_preflight();
                self.primary.leases.iter().for_each(|l| l.step_down());
                self.close_as_replica();
                if self.named() == Named::Me && self.may_lead() {
                    // Appointed still (a lone node always is): preflight
                    // catches up with the bucket and writes resume.
                    return Some(PrimaryState::Starting);
                }
                self.start_follower();
                None
            }
        }
    }

    fn start_preflight(&mut self) {
        self.stop_preflight();
        let primary = self.primary.clone();
        self.preflight = Some(tokio::spawn(async move { preflight(&primary).await }));
    }

    fn stop_preflight(&mut self) {
        self.preflight_retry = None;
        if let Some(task) = self.preflight.take() {
            task.abort();
        }
    }

    /// A replica follows the Primary the cluster state names (a change of
    /// Primary restarts it; with none named it keeps following the last).
    fn start_follower(&mut self) {
        let (Appointer::Cluster(cluster), Some(parts)) = (&self.appointer, &self.primary.follower)
        else {
            return;
        };
        let (cluster, parts) = (cluster.clone(), parts.clone());
        let Some(primary) = cluster.state().and_then(|s| s.primary) else {
            return;
        };
        if primary.node_id == cluster.me().node_id {
            return;
        }
        if self
            .follower
            .as_ref()
            .is_some_and(|(id, _)| *id == primary.node_id)
        {
            return;
        }
        self.stop_follower();
        let connector = cluster.peer(&primary.peer_addr);
        let task = tokio::spawn(crate::replication::follow(
            connector,
            primary.node_id.clone(),
            parts.clone(),
        ));
        self.follower = Some((primary.node_id, task));
    }

    fn stop_follower(&mut self) {
        if let Some((_, task)) = self.follower.take() {
            task.abort();
        }
    }

    fn clear_buffer(&self) {
        if let Some(buffer) = &self.primary.buffer {
            buffer.clear();
        }
    }

    async fn shut_down(&mut self) {
        self.stop_preflight();
        self.stop_follower();
        if matches!(
            self.cell.get().primary,
            PrimaryState::Active | PrimaryState::Starting
        ) {
            // Draining starts the buffer's flush; a graceful stop waits for it.
            self.apply(PrimaryState::Draining);
            if let Some(buffer) = &self.primary.buffer {
                flush_buffer(buffer).await;
            }
        }
        let _ = self.cell.change(|r| r.set_health(Health::Degraded));
    }
}

/// Who the cluster state names as Primary, from this node's side.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Named {
    Me,
    Other(String),
    Nobody,
}

/// What a node does about a cluster state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Response {
    /// Named and able: become the Primary.
    Start,
    /// Another node is named: give the role up.
    StepDown(String),
    /// Stay a replica (and follow).
    Follow,
    Nothing,
}

/// The decision behind `on_cluster_state`, for a node in primary state
/// `role` that may (or, degraded, may not) lead.
fn respond(named: Named, role: PrimaryState, may_lead: bool) -> Response {
    match (named, role) {
        (Named::Me, PrimaryState::Replica) if may_lead => Response::Start,
        (Named::Other(id), PrimaryState::Starting | PrimaryState::Active) => Response::StepDown(id),
        (_, PrimaryState::Replica) => Response::Follow,
        _ => Response::Nothing,
    }
}

/// Uploads what the chunk buffer holds, within [`DRAIN_FLUSH_TIMEOUT`].
async fn flush_buffer(buffer: &Buffer) {
    if buffer.is_empty() {
        return;
    }
    match tokio::time::timeout(DRAIN_FLUSH_TIMEOUT, buffer.flush(Trigger::Draining)).await {
        Ok(Ok(())) => log::info!("chunk buffer flushed"),
        Ok(Err(e)) => log::warn!("draining the chunk buffer failed: {e}"),
        Err(_) => log::warn!("draining the chunk buffer took longer than {DRAIN_FLUSH_TIMEOUT:?}"),
    }
}

/// The next change of an optional watch channel; pending without one.
async fn changed<T>(
    rx: &mut Option<tokio::sync::watch::Receiver<T>>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn preflight(p: &PrimaryParts) -> Result<(), String> {
    let before = p.store.committed_revision();
    let report = primary::preflight(&p.store, &p.log, &p.hub)
        .await
        .map_err(|e| e.to_string())?;
    // What preflight adopted or imported goes to the replicas already
    // following (later ones are replayed it).
    if let Some(replicas) = &p.replicas {
        let records = p
            .store
            .records_between(before + 1, p.store.latest_revision(), usize::MAX)
            .map_err(|e| e.to_string())?;
        replicas.send_records(&records);
        replicas.send_commit(p.store.committed_revision());
    }
    log::info!(
        "preflight done: revision {} ({} chunks imported)",
        p.store.committed_revision(),
        report.chunks_imported
    );
    Ok(())
}

/// The running preflight's result; pending while none runs.
async fn wait_preflight(task: &mut Option<JoinHandle<Result<(), String>>>) -> Result<(), String> {
    let Some(handle) = task.as_mut() else {
        return std::future::pending().await;
    };
    let result = handle
        .await
        .unwrap_or_else(|e| Err(format!("preflight task ended: {e}")));
    *task = None;
    result
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::node::role::Role;
    use crate::objstore::tests::{transient, Flaky};
    use crate::objstore::ObjectStore;
    use crate::store::{Batch, Record};
    use crate::watch::RingLimits;

    const DEADLINE: Duration = Duration::from_secs(20);

    struct Node {
        _dir: tempfile::TempDir,
        cell: Arc<RoleCell>,
        gate: Arc<WriteGate>,
        store: Arc<Store>,
        hub: Arc<WatchHub>,
        bucket: Arc<Flaky>,
        events: mpsc::UnboundedSender<WritePathEvent>,
        driver: RoleDriver,
    }

    fn node() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Flaky::new(0, transient);
        let log = Arc::new(ObjectLog::new(bucket.clone(), "n1", dir.path()).unwrap());
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let (events, write_events) = mpsc::unbounded_channel();
        let cell = Arc::new(RoleCell::default());
        let gate = Arc::new(WriteGate::default());
        let hub = Arc::new(WatchHub::new(0, RingLimits::default()));
        let parts = PrimaryParts {
            gate: gate.clone(),
            store: store.clone(),
            log,
            hub: hub.clone(),
            leases: None,
            replicas: None,
            buffer: None,
            follower: None,
        };
        Node {
            _dir: dir,
            driver: RoleDriver::new(
                cell.clone(),
                parts,
                Appointer::Lone,
                write_events,
                mpsc::unbounded_channel().1,
            ),
            cell,
            gate,
            store,
            hub,
            bucket,
            events,
        }
    }

    async fn wait_for(cell: &RoleCell, what: &str, ready: impl Fn(&Role) -> bool) -> Role {
        let mut rx = cell.subscribe();
        let reached = match tokio::time::timeout(DEADLINE, rx.wait_for(|r| ready(r))).await {
            Ok(Ok(role)) => Some(*role),
            _ => None,
        };
        reached.unwrap_or_else(|| panic!("timed out waiting for {what}; role is {:?}", cell.get()))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lone_node_takes_the_primary_role_and_opens_writes() {
        let mut n = node();
        n.driver.take_primary().await.unwrap();
        let role = n.cell.get();
        assert_eq!(
            (role.elector, role.primary),
            (ElectorState::Leader, PrimaryState::Active)
        );
        assert!(n.gate.is_open());
        assert_eq!(n.store.committed_revision(), 1, "preflight wrote _netsy");
        assert_eq!(n.hub.committed(), 1, "and watchers know it");
        assert!(n
            .bucket
            .inner
            .get("chunks/0001/0000000000000000001.netsy")
            .await
            .is_ok());
    }

    /// A cluster member whose Elector is elsewhere, and its driver.
    fn member() -> (Node, Arc<Cluster>, mpsc::UnboundedSender<DriverInput>) {
        use crate::election::discovery::Registration;
        let mut n = node();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let me = Registration {
            node_id: "n1".into(),
            client_advertise_address: "127.0.0.1:1".into(),
            peer_advertise_address: "127.0.0.1:2".into(),
        };
        let view = Arc::new(super::super::status::NodeView {
            node_id: "n1".into(),
            role: n.cell.clone(),
            store: std::sync::OnceLock::new(),
            start_time: 0,
        });
        let cluster = Arc::new(Cluster::new(
            me,
            super::super::cluster::PeerClients::new(Arc::new(tls)),
            view,
        ));
        let (inputs_tx, inputs) = mpsc::unbounded_channel();
        let (events, write_events) = mpsc::unbounded_channel();
        n.events = events;
        let parts = PrimaryParts {
            gate: n.gate.clone(),
            store: n.store.clone(),
            log: n.driver.primary.log.clone(),
            hub: n.hub.clone(),
            leases: None,
            replicas: None,
            buffer: None,
            follower: None,
        };
        n.driver = RoleDriver::new(
            n.cell.clone(),
            parts,
            Appointer::Cluster(cluster.clone()),
            write_events,
            inputs,
        );
        (n, cluster, inputs_tx)
    }

    fn naming(primary: &str) -> crate::election::cluster_state::ClusterState {
        use crate::election::cluster_state::{ClusterState, NodeRef};
        let node = |id: &str, m| NodeRef {
            node_id: id.into(),
            member_id: m,
            peer_addr: format!("127.0.0.1:{m}"),
        };
        ClusterState {
            elector: node("e", 9),
            primary: Some(node(primary, 1)),
            node_count: 2,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_degraded_primary_steps_down_and_stays_down_until_told_again() {
        let (n, cluster, inputs) = member();
        n.cell.change(|r| r.set_health(Health::Healthy)).unwrap();
        let _driver = n.driver.spawn();
        cluster.apply(naming("n1")).unwrap();
        wait_for(&n.cell, "active", |r| r.primary == PrimaryState::Active).await;
        // (The gate opens right after the role is announced.)
        n.gate.wait(DEADLINE).await.expect("writes open");

        // Heartbeats to the Elector failed: degraded, so it steps down.
        n.cell.change(|r| r.set_health(Health::Degraded)).unwrap();
        inputs.send(DriverInput::SelfDegraded).unwrap();
        wait_for(&n.cell, "replica", |r| r.primary == PrimaryState::Replica).await;
        assert!(!n.gate.is_open());
        // (That the state still naming it does not bring it back while it
        // is degraded is `respond`'s table below.)

        // Heartbeats work again and the Elector (still) names it.
        n.cell.change(|r| r.set_health(Health::Healthy)).unwrap();
        cluster.apply(naming("n1")).unwrap();
        wait_for(&n.cell, "active again", |r| {
            r.primary == PrimaryState::Active
        })
        .await;
        n.gate.wait(DEADLINE).await.expect("writes open again");
    }

    /// A batch in flight when the node stepped down fails after it: the
    /// node stays a replica (it once tried replica -> draining, an invalid
    /// transition), and the write path's settling changes nothing either.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_failing_after_the_step_down_leaves_the_node_a_replica() {
        let mut n = node();
        assert_eq!(n.cell.get().primary, PrimaryState::Replica);
        n.driver.on_write_path(WritePathEvent::Draining {
            reason: "bucket gone".into(),
        });
        assert_eq!(n.cell.get().primary, PrimaryState::Replica);
        n.driver.on_write_path(WritePathEvent::Settled);
        assert_eq!(n.cell.get().primary, PrimaryState::Replica);
        assert_eq!(n.cell.refused_changes(), 0, "no invalid transition tried");
    }

    #[test]
    fn what_a_node_does_about_a_cluster_state() {
        use PrimaryState::*;
        let me = || Named::Me;
        let other = || Named::Other("b".into());
        let cases = [
            (me(), Replica, true, Response::Start),
            (me(), Replica, false, Response::Follow),
            (me(), Starting, true, Response::Nothing),
            (me(), Active, false, Response::Nothing),
            (me(), Draining, true, Response::Nothing),
            (other(), Active, true, Response::StepDown("b".into())),
            (other(), Starting, false, Response::StepDown("b".into())),
            (other(), Draining, true, Response::Nothing),
            (other(), Replica, true, Response::Follow),
            (Named::Nobody, Active, true, Response::Nothing),
            (Named::Nobody, Replica, true, Response::Follow),
        ];
        for (named, role, may_lead, expected) in cases {
            let label = format!("{named:?} {role:?} may_lead={may_lead}");
            assert_eq!(respond(named, role, may_lead), expected, "{label}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn after_a_recovery_preflight_is_retried_until_it_works_then_writes_resume() {
        let mut n = node();
        n.driver.take_primary().await.unwrap();
        let driver = n.driver.spawn();

        n.events
            .send(WritePathEvent::Draining {
                reason: "bucket gone".into(),
            })
            .unwrap();
        wait_for(&n.cell, "draining", |r| r.primary == PrimaryState::Draining).await;
        // The gate closes just after the role changes (on the driver's task).
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let refused = loop {
            match n.gate.check() {
                Err(e) => break e.to_string(),
                Ok(()) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Ok(()) => panic!("the gate stayed open while draining"),
            }
        };
        assert_eq!(
            refused,
            "this node is not accepting writes (state: draining)"
        );

        // A record only this node has (as after a crash between commit and
        // upload), and a bucket that refuses the first upload of it.
        let mut record = Record::internal("n1");
        record.revision = 2;
        record.key = bytes::Bytes::from_static(b"k");
        record.value = Some(bytes::Bytes::from_static(b"v"));
        let batch = Batch {
            records: vec![record],
            ..Batch::default()
        };
        n.store.append(batch).unwrap();
        n.store.commit(2);
        n.bucket
            .failures
            .store(1, std::sync::atomic::Ordering::SeqCst);
        n.bucket.take_attempts();

        let settled = tokio::time::Instant::now();
        n.events.send(WritePathEvent::Settled).unwrap();
        wait_for(&n.cell, "active again", |r| {
            r.primary == PrimaryState::Active
        })
        .await;
        assert!(
            settled.elapsed() >= PREFLIGHT_RETRY,
            "the failed preflight waited before its retry"
        );
        assert_eq!(n.bucket.take_attempts(), 2, "one failed upload, one retry");
        assert!(n
            .bucket
            .inner
            .get("chunks/0002/0000000000000000002.netsy")
            .await
            .is_ok());
        n.gate.wait(DEADLINE).await.expect("writes open again");

        driver.stop().await;
        let role = n.cell.get();
        assert_eq!(
            (role.health, role.primary),
            (Health::Degraded, PrimaryState::Draining),
            "a stopped node takes no writes and reports itself degraded"
        );
        assert!(!n.gate.is_open());
    }
}
