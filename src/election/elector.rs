//! The Elector role: while this node holds the lock it keeps the node map
//! (bootstrapped from the bucket's registrations and members.json), serves
//! the Elector RPCs, checks heartbeats every 500 ms (degrading and, after
//! the deregistration timeout, removing silent nodes), elects a Primary
//! every 500 ms while there is none, and pushes the cluster state to every
//! node: to itself first, then the Primary, then the rest in parallel.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::http::metrics::{labels, Metrics};
use crate::log::ObjectLog;
use crate::pb::netsy::{
    GetMemberListResponse, NodeState, PrimaryState, RegisterNodeRequest, RegisterNodeResponse,
};

use super::choose::{self, Choice, Prior, PriorCheck};
use super::cluster_state::{ClusterState, NodeRef};
use super::discovery::{self, Registration};
use super::nodemap::NodeMap;
use futures_util::future::BoxFuture;

/// How often heartbeats are checked and, without a Primary, how often an
/// election is tried.
pub const LOOP_INTERVAL: Duration = Duration::from_millis(500);

/// The cluster-wide settings the Elector works with.
#[derive(Clone, Debug)]
pub struct ElectorSettings {
    pub cluster_id: String,
    /// replication.quorum: 0, k or -1.
    pub quorum: i64,
    /// 0 turns heartbeat checks off.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a node counts as degraded.
    pub degradation_count: u32,
    /// None: degraded nodes are never removed.
    pub deregistration_timeout: Option<Duration>,
    pub primary_prior_timeout: Duration,
}

/// How the Elector reaches nodes (this one included).
pub trait Peers: Send + Sync {
    /// GetNodeState (5 s).
    fn node_state<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<NodeState, String>>;
    /// PushClusterState (5 s).
    fn push<'a>(
        &'a self,
        node: &'a NodeRef,
        state: &'a ClusterState,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Why an Elector RPC was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectorError {
    NotElector,
    Bootstrapping,
    InvalidArgument(String),
    /// The caller's certificate names another node.
    WrongIdentity(String),
    NotRegistered(String),
    Internal(String),
}

impl std::fmt::Display for ElectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElectorError::NotElector => write!(f, "this node is not the elector"),
            ElectorError::Bootstrapping => write!(f, "elector is still bootstrapping"),
            ElectorError::InvalidArgument(m) | ElectorError::WrongIdentity(m) => write!(f, "{m}"),
            ElectorError::NotRegistered(id) => write!(f, "node {id} is not registered"),
            ElectorError::Internal(m) => write!(f, "{m}"),
        }
    }
}

#[derive(Default)]
struct State {
    /// This node holds the lock.
    active: bool,
    /// The map is loaded: registrations are served and elections run.
    ready: bool,
    map: NodeMap,
    primary: Option<NodeRef>,
    /// The Primary before, to be waited for before electing another.
    previous_primary: Option<NodeRef>,
    /// Nodes that deregistered while the map was being loaded.
    deregistered: HashSet<String>,
    /// Bumped at every start and stop, so loops of an earlier term end.
    term: u64,
    /// Bumped at every change worth pushing; a node is never sent an older
    /// state than one it already has.
    version: u64,
}

/// The pushes to one node go one at a time, each with the newest state.
#[derive(Default)]
struct Lane {
    /// The newest version this node has acknowledged.
    delivered: u64,
    /// When the last push to it was tried.
    tried_at: Option<Instant>,
}

pub struct Elector {
    me: Registration,
    settings: ElectorSettings,
    log: Arc<ObjectLog>,
    peers: Arc<dyn Peers>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    lanes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lane>>>>,
}

fn registration(req: &RegisterNodeRequest) -> Result<Registration, ElectorError> {
    if req.node_id.is_empty()
        || req.client_advertise_address.is_empty()
        || req.peer_advertise_address.is_empty()
    {
        return Err(ElectorError::InvalidArgument(
            "node_id, client_advertise_address, and peer_advertise_address are required".into(),
        ));
    }
    Ok(Registration {
        node_id: req.node_id.clone(),
        client_advertise_address: req.client_advertise_address.clone(),
        peer_advertise_address: req.peer_advertise_address.clone(),
    })
}

/// Refuses a caller whose peer certificate names another node (`caller`
/// is None for calls made in-process).
fn check_caller(caller: Option<&str>, node_id: &str) -> Result<(), ElectorError> {
    match caller {
        Some(name) if name != node_id => Err(ElectorError::WrongIdentity(format!(
            "node_id {node_id} does not match the peer certificate ({name})"
        ))),
        _ => Ok(()),
    }
}

impl Elector {
    /// `me` is this node's own registration (its peer address names it in
    /// the cluster state).
    pub fn new(
        me: Registration,
        settings: ElectorSettings,
        log: Arc<ObjectLog>,
        peers: Arc<dyn Peers>,
        metrics: Arc<Metrics>,
    ) -> Elector {
        Elector {
            me,
            settings,
            log,
            peers,
            metrics,
            state: Mutex::new(State::default()),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.lock().active
    }

    pub fn is_ready(&self) -> bool {
        let s = self.lock();
        s.active && s.ready
    }

    /// Takes the role (the lock's acquire hook): loads the map, pushes the
    /// cluster state at once, starts the loops. An error leaves the role
    /// (the caller resigns the lock).
    pub async fn start(self: &Arc<Self>) -> Result<(), String> {
        let term = {
            let mut s = self.lock();
            *s = State {
                active: true,
                term: s.term + 1,
                version: s.version + 1,
                ..State::default()
            };
            s.term
        };
        if let Err(e) = self.bootstrap(term).await {
            self.stop();
            return Err(e);
        }
        log::info!("elector ready: {} nodes registered", self.lock().map.len());
        // In the background: the lock cycle that called this must go on.
        self.push_later();
        let (a, b) = (self.clone(), self.clone());
        tokio::spawn(async move { a.run_every(term, |e| e.check_health()).await });
        tokio::spawn(async move { b.run_every(term, |e| e.elect()).await });
        Ok(())
    }

    /// Leaves the role (the lock's lose hook; idempotent): loops end, the
    /// map and the Primary are forgotten.
    pub fn stop(&self) {
        let mut s = self.lock();
        if s.active {
            log::info!("elector role ended");
        }
        *s = State {
            term: s.term + 1,
            version: s.version + 1,
            ..State::default()
        };
        self.update_gauges(&s);
    }

    async fn run_every<'a, F, Fut>(self: &'a Arc<Self>, term: u64, step: F)
    where
        F: Fn(&'a Arc<Self>) -> Fut,
        Fut: Future<Output = ()> + 'a,
    {
        let mut tick = tokio::time::interval(LOOP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.lock().term != term {
                return;
            }
            step(self).await;
        }
    }

    /// Loads the map from the bucket (reference §10.1): members.json, then
    /// every registration, each with its member id (allocated once, never
    /// reused); a first Elector promotes bootstrap.netsy before it writes
    /// members.json.
    async fn bootstrap(&self, term: u64) -> Result<(), String> {
        let registrations = discovery::list_registrations(&*self.log.store).await?;
        let ids: Vec<String> = registrations.iter().map(|r| r.node_id.clone()).collect();
        let members = discovery::allocate(
            &self.log,
            &self.settings.cluster_id,
            &ids,
            Some(&self.metrics),
        )
        .await?;
        let now = Instant::now();
        let mut s = self.lock();
        if s.term != term {
            return Err("the elector role ended while loading".into());
        }
        for reg in registrations {
            if s.deregistered.contains(&reg.node_id) {
                continue;
            }
            if let Some(id) = members.get(&reg.node_id) {
                s.map.register(reg, *id, now);
            }
        }
        s.deregistered.clear();
        s.ready = true;
        self.update_gauges(&s);
        Ok(())
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Lane>>>> {
        match self.lanes.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The state, if this node holds the role (every RPC checks this
    /// first).
    fn active(&self) -> Result<std::sync::MutexGuard<'_, State>, ElectorError> {
        let s = self.lock();
        if !s.active {
            return Err(ElectorError::NotElector);
        }
        Ok(s)
    }

    fn ready(&self) -> Result<std::sync::MutexGuard<'_, State>, ElectorError> {
        let s = self.active()?;
        if !s.ready {
            return Err(ElectorError::Bootstrapping);
        }
        Ok(s)
    }

    /// The cluster state as of now.
    pub fn cluster_state(&self) -> Result<ClusterState, ElectorError> {
        let s = self.ready()?;
        Ok(self.state_of(&s))
    }

    fn state_of(&self, s: &State) -> ClusterState {
        let member_id = s.map.get(&self.me.node_id).map_or(0, |e| e.member_id);
        ClusterState {
            elector: NodeRef::of(&self.me, member_id),
            primary: s.primary.clone(),
            node_count: s.map.len() as i32,
        }
    }

    /// RegisterNode: the node's member id (allocated once) and the state.
    pub async fn register(
        self: &Arc<Self>,
        req: &RegisterNodeRequest,
        caller: Option<&str>,
    ) -> Result<RegisterNodeResponse, ElectorError> {
        drop(self.active()?);
        let reg = registration(req)?;
        check_caller(caller, &reg.node_id)?;
        // A node in the map has its id already (ids never change).
        let known = self.ready()?.map.get(&reg.node_id).map(|e| e.member_id);
        let member_id = match known {
            Some(id) => id,
            None => self.allocate(&reg.node_id).await?,
        };
        let (state, grew) = {
            let mut s = self.ready()?;
            let grew = s.map.get(&reg.node_id).is_none();
            s.map.register(reg.clone(), member_id, Instant::now());
            if grew {
                s.version += 1;
            }
            self.update_gauges(&s);
            (self.state_of(&s), grew)
        };
        log::info!("node_registered: {} (member id {member_id})", reg.node_id);
        if grew {
            self.push_later();
        } else {
            // A restarted process has no state: it gets the next one again.
            self.lane(&reg.node_id).lock().await.delivered = 0;
        }
        Ok(RegisterNodeResponse {
            member_id,
            cluster_state: Some(state.to_proto()),
        })
    }

    /// The member id of a node new to the map (from members.json, where it
    /// is added if absent).
    async fn allocate(&self, node_id: &str) -> Result<u64, ElectorError> {
        let ids = discovery::allocate(
            &self.log,
            &self.settings.cluster_id,
            &[node_id.to_string()],
            Some(&self.metrics),
        )
        .await
        .map_err(ElectorError::Internal)?;
        ids.get(node_id)
            .copied()
            .ok_or_else(|| ElectorError::Internal("member id missing after allocation".into()))
    }

    /// DeregisterNode: the node leaves the map (its member id stays in
    /// members.json); a deregistered Primary is cleared.
    pub async fn deregister(
        self: &Arc<Self>,
        node_id: &str,
        caller: Option<&str>,
    ) -> Result<(), ElectorError> {
        drop(self.active()?);
        if node_id.is_empty() {
            return Err(ElectorError::InvalidArgument("node_id is required".into()));
        }
        check_caller(caller, node_id)?;
        let cleared = {
            let mut s = self.active()?;
            if !s.ready {
                s.deregistered.insert(node_id.to_string());
            }
            s.map.remove(node_id);
            s.version += 1;
            self.update_gauges(&s);
            clear_primary_if(&mut s, node_id)
        };
        log::info!("node_deregistered: {node_id} (trigger direct)");
        if cleared {
            self.push().await;
        } else {
            self.push_later();
        }
        Ok(())
    }

    /// SendHeartbeat: the node's report about itself.
    /// Before the map is loaded the answer is Unavailable (bootstrapping),
    /// not NotFound: the node is not asked to register again.
    pub fn heartbeat(&self, state: &NodeState, caller: Option<&str>) -> Result<(), ElectorError> {
        drop(self.active()?);
        if state.node_id.is_empty() {
            return Err(ElectorError::InvalidArgument("node_id is required".into()));
        }
        check_caller(caller, &state.node_id)?;
        let mut s = self.ready()?;
        if !s.map.heartbeat(state, Instant::now()) {
            return Err(ElectorError::NotRegistered(state.node_id.clone()));
        }
        Ok(())
    }

    /// GetMemberList: every registered node.
    pub fn member_list(&self) -> Result<GetMemberListResponse, ElectorError> {
        Ok(GetMemberListResponse {
            members: self.ready()?.map.members(),
        })
    }

    /// One heartbeat check (reference §10.5).
    async fn check_health(self: &Arc<Self>) {
        let hb = self.settings.heartbeat_interval;
        if hb.is_zero() {
            return;
        }
        let degrade_after = hb * self.settings.degradation_count.max(1);
        let (checked, cleared) = {
            let mut s = self.lock();
            if !s.ready {
                return;
            }
            let checked = s.map.check(
                Instant::now(),
                degrade_after,
                self.settings.deregistration_timeout,
            );
            let primary = s.primary.as_ref().map(|p| p.node_id.clone());
            let lost = primary.filter(|p| {
                checked.deregistered.contains(p) || s.map.get(p).is_none_or(|e| e.is_degraded())
            });
            let cleared = lost.is_some_and(|p| clear_primary_if(&mut s, &p));
            if !checked.deregistered.is_empty() {
                s.version += 1;
            }
            self.update_gauges(&s);
            (checked, cleared)
        };
        for id in &checked.degraded {
            log::warn!("node {id} missed its heartbeats: degraded");
        }
        for id in &checked.deregistered {
            log::warn!("node_deregistered: {id} (trigger auto, reason timeout)");
            self.metrics.elector_auto_deregistrations.inc();
            if let Err(e) = discovery::delete_registration(&*self.log.store, id).await {
                log::warn!("deleting the registration of {id}: {e}");
            }
        }
        if cleared || !checked.deregistered.is_empty() {
            // In the background: the health loop must keep its beat.
            self.push_later();
        } else {
            self.push_again(degrade_after);
        }
    }

    /// Pushes again, at most once per `pause` per node, to nodes a push
    /// did not reach (their last one failed) and to nodes whose reports
    /// contradict the cluster state: the named Primary reporting itself a
    /// replica (a lost push, or a Primary that stepped down by itself and
    /// recovered), or another node reporting itself starting or active
    /// while a Primary is named.
    fn push_again(self: &Arc<Self>, pause: Duration) {
        let (version, nodes) = {
            let s = self.lock();
            if !s.ready {
                return;
            }
            let primary = s.primary.as_ref().map(|p| p.node_id.as_str());
            let nodes: Vec<(NodeRef, bool)> = s
                .map
                .entries()
                .filter(|e| e.reported && !e.is_degraded())
                .map(|e| {
                    let disagrees = match primary {
                        // A draining Primary is still settling a batch.
                        Some(p) if p == e.registration.node_id => {
                            e.primary_state == PrimaryState::PrimaryReplica
                        }
                        Some(_) => matches!(
                            e.primary_state,
                            PrimaryState::PrimaryStarting | PrimaryState::PrimaryActive
                        ),
                        None => false,
                    };
                    (node_ref(e), disagrees)
                })
                .collect();
            (s.version, nodes)
        };
        let now = Instant::now();
        for (node, disagrees) in nodes {
            let lane = self.lane(&node.node_id);
            let due = lane.try_lock().is_ok_and(|l| {
                (disagrees || l.delivered < version)
                    && l.tried_at.is_none_or(|at| now.duration_since(at) >= pause)
            });
            if !due {
                continue;
            }
            if disagrees {
                log::info!(
                    "{} disagrees with the cluster state: pushing it again",
                    node.node_id
                );
            }
            // In the background: the health loop must keep its beat.
            let me = self.clone();
            tokio::spawn(async move { me.deliver(&node, disagrees).await });
        }
    }

    /// One election attempt while there is no Primary (reference §11).
    async fn elect(self: &Arc<Self>) {
        let (previous, nodes, term) = {
            let s = self.lock();
            if !s.ready || s.primary.is_some() {
                return;
            }
            // Quorum 0 decides from heartbeats: wait until every node has
            // sent one (or missed them), so an active Primary that has not
            // reported yet is not overlooked.
            if self.settings.quorum == 0
                && !self.settings.heartbeat_interval.is_zero()
                && !s.map.all_heard()
            {
                return;
            }
            let nodes: Vec<(NodeRef, NodeState)> =
                s.map.entries().map(|e| (node_ref(e), e.state())).collect();
            (s.previous_primary.clone(), nodes, s.term)
        };
        let started = std::time::Instant::now();
        log::debug!("election_started: {} registered nodes", nodes.len());
        let result = self.elect_from(term, previous, &nodes).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        let m = &self.metrics;
        m.elector_primary_elections
            .get_or_create(&labels(&[("result", outcome)]))
            .inc();
        m.elector_primary_election_duration
            .get_or_create(&labels(&[("result", outcome)]))
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(chosen) => {
                log::info!(
                    "election_completed: {} is the Primary ({:?})",
                    chosen.node_id,
                    started.elapsed()
                );
                self.push().await;
            }
            Err(e) => {
                m.elector_primary_election_failures
                    .get_or_create(&labels(&[("reason", "contact_failure")]))
                    .inc();
                log::info!("election_failed: {e}");
            }
        }
    }

    async fn elect_from(
        &self,
        term: u64,
        previous: Option<NodeRef>,
        nodes: &[(NodeRef, NodeState)],
    ) -> Result<NodeRef, String> {
        // The previous Primary, when it did not stay: its last heartbeat
        // (quorum 0 decides from heartbeats) may still say it is active,
        // and it must not be kept on that word.
        let mut passed_over = None;
        if let Some(prev) = previous {
            let kept = self.wait_for_previous(&prev).await?;
            let mut s = self.lock();
            if s.term != term {
                return Err("the elector role ended during the election".into());
            }
            if let Some(answer) = kept {
                // Still remembered: the next round asks it again.
                if s.map.get(&prev.node_id).is_none() {
                    return Err(format!(
                        "previous primary {} is still active but no longer registered",
                        prev.node_id
                    ));
                }
                // Its answer counts as a heartbeat, so the next health
                // check does not clear it again.
                s.map.heartbeat(&answer, Instant::now());
                log::info!("{} is still the active Primary: it stays", prev.node_id);
                s.previous_primary = None;
                s.primary = Some(prev.clone());
                s.version += 1;
                return Ok(prev);
            }
            s.previous_primary = None;
            passed_over = Some(prev.node_id.clone());
        }
        let states = if self.settings.quorum == 0 {
            nodes
                .iter()
                .filter(|(n, _)| passed_over.as_ref() != Some(&n.node_id))
                .map(|(_, s)| s.clone())
                .collect()
        } else {
            let asks = nodes.iter().map(|(node, _)| async move {
                let answer = self.peers.node_state(node).await;
                let result = if answer.is_ok() { "success" } else { "failure" };
                self.metrics
                    .elector_primary_election_contacts
                    .get_or_create(&labels(&[("result", result)]))
                    .inc();
                answer.ok()
            });
            let answers: Vec<NodeState> = join_all(asks).await.into_iter().flatten().collect();
            choose::enough_answers(self.settings.quorum, nodes.len(), answers.len())?;
            answers
        };
        let chosen = choose::choose(&states)?;
        let mut s = self.lock();
        if s.term != term || !s.ready || s.primary.is_some() {
            return Err("the map changed during the election".into());
        }
        let entry = s
            .map
            .get(chosen.node_id())
            .ok_or_else(|| format!("{} left during the election", chosen.node_id()))?;
        let node = node_ref(entry);
        if let Choice::Keep(id) = &chosen {
            log::info!("{id} is already the active Primary: it stays");
        }
        s.primary = Some(node.clone());
        s.version += 1;
        Ok(node)
    }

    /// Waits for the previous Primary to step down (or not to answer) before
    /// electing another, even when it has left the map. Its answer when it
    /// is active and healthy after all and should stay.
    async fn wait_for_previous(&self, prev: &NodeRef) -> Result<Option<NodeState>, String> {
        let check = PriorCheck::new(
            &prev.node_id,
            Instant::now(),
            self.settings.primary_prior_timeout,
        );
        loop {
            let answer = self.peers.node_state(prev).await;
            if answer.is_err() {
                self.metrics.count_retry("election_contact");
            }
            match check.observe(Instant::now(), answer.as_ref().ok()) {
                Prior::Proceed => return Ok(None),
                Prior::Keep => return Ok(answer.ok()),
                Prior::Fail(e) => return Err(e),
                Prior::AskAgainAt(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// Pushes the cluster state to every node: this one first, then the
    /// Primary, then the rest in parallel; failures are only logged (the
    /// health loop pushes again to nodes that act against the state).
    pub async fn push(&self) {
        let (primary, nodes) = {
            let s = self.lock();
            if !s.ready {
                return;
            }
            let nodes: Vec<NodeRef> = s
                .map
                .entries()
                .filter(|e| e.registration.node_id != self.me.node_id)
                .map(node_ref)
                .collect();
            (s.primary.clone(), nodes)
        };
        let me = NodeRef::of(&self.me, 0);
        self.deliver(&me, false).await;
        let primary = primary.filter(|p| p.node_id != self.me.node_id);
        if let Some(p) = &primary {
            self.deliver(p, false).await;
        }
        let rest = nodes
            .iter()
            .filter(|n| primary.as_ref().is_none_or(|p| p.node_id != n.node_id))
            .map(|n| self.deliver(n, false));
        join_all(rest).await;
    }

    fn lane(&self, node_id: &str) -> Arc<tokio::sync::Mutex<Lane>> {
        self.lanes().entry(node_id.to_string()).or_default().clone()
    }

    /// Sends one node the newest state, unless it already has it (or
    /// `again`): one push at a time per node, so a slow older push never
    /// lands after a newer one.
    async fn deliver(&self, node: &NodeRef, again: bool) {
        let lane = self.lane(&node.node_id);
        let mut lane = lane.lock().await;
        let (version, state) = {
            let s = self.lock();
            if !s.ready {
                return;
            }
            (s.version, self.state_of(&s))
        };
        if lane.delivered >= version && !again {
            return;
        }
        lane.tried_at = Some(Instant::now());
        match self.peers.push(node, &state).await {
            Ok(()) => lane.delivered = version,
            Err(e) => log::warn!("pushing the cluster state to {}: {e}", node.node_id),
        }
    }

    /// Pushes in the background after a membership change: the caller
    /// is answered at once, the others learn the new node count soon.
    fn push_later(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.push().await });
    }

    /// The Elector's metrics exist only while it holds the role.
    fn update_gauges(&self, s: &State) {
        let m = &self.metrics;
        m.set_elector_group(s.active);
        let (registered, healthy, degraded) = s.map.counts();
        m.elector_registered_nodes.set(registered as i64);
        m.elector_healthy_nodes.set(healthy as i64);
        m.elector_degraded_nodes.set(degraded as i64);
    }

    /// This node's view of a Primary's state, for nodes that ask whether
    /// the Elector itself was the previous Primary.
    pub fn primary_id(&self) -> Option<String> {
        self.lock().primary.as_ref().map(|p| p.node_id.clone())
    }
}

fn node_ref(e: &super::nodemap::NodeEntry) -> NodeRef {
    NodeRef::of(&e.registration, e.member_id)
}

/// Clears the Primary if it is `node_id`, remembering it as the previous
/// one; true when it was.
fn clear_primary_if(s: &mut State, node_id: &str) -> bool {
    if s.primary.as_ref().is_some_and(|p| p.node_id == node_id) {
        s.previous_primary = s.primary.take();
        s.version += 1;
        log::warn!("the Primary {node_id} is gone: electing another");
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::objstore::memory::MemoryStore;
    use crate::objstore::ObjectStore;
    use crate::pb::netsy::{HealthState, PrimaryState};

    /// Nodes as the test wants them to answer, and every push made.
    #[derive(Default)]
    struct FakePeers {
        states: Mutex<HashMap<String, NodeState>>,
        pushes: Mutex<Vec<(String, ClusterState)>>,
        /// Nodes pushes do not reach (the attempt is still recorded).
        cut_off: Mutex<HashSet<String>>,
    }

    impl FakePeers {
        fn set(&self, id: &str, health: HealthState, primary: PrimaryState, rev: i64) {
            self.states
                .lock()
                .unwrap()
                .insert(id.into(), state(id, health, primary, rev));
        }

        fn take_pushes(&self) -> Vec<(String, ClusterState)> {
            std::mem::take(&mut *self.pushes.lock().unwrap())
        }
    }

    impl Peers for FakePeers {
        fn node_state<'a>(&'a self, node: &'a NodeRef) -> BoxFuture<'a, Result<NodeState, String>> {
            let answer = self.states.lock().unwrap().get(&node.node_id).cloned();
            Box::pin(async move { answer.ok_or_else(|| "unreachable".to_string()) })
        }

        fn push<'a>(
            &'a self,
            node: &'a NodeRef,
            cs: &'a ClusterState,
        ) -> BoxFuture<'a, Result<(), String>> {
            self.pushes
                .lock()
                .unwrap()
                .push((node.node_id.clone(), cs.clone()));
            let reached = !self.cut_off.lock().unwrap().contains(&node.node_id);
            Box::pin(async move { reached.then_some(()).ok_or_else(|| "cut off".to_string()) })
        }
    }

    fn state(id: &str, health: HealthState, primary: PrimaryState, rev: i64) -> NodeState {
        NodeState {
            node_id: id.into(),
            health_state: health as i32,
            primary_state: primary as i32,
            latest_revision: rev,
            start_time: 1,
            ..Default::default()
        }
    }

    fn reg(id: &str) -> Registration {
        Registration {
            node_id: id.into(),
            client_advertise_address: format!("{id}:2378"),
            peer_advertise_address: format!("{id}:2381"),
        }
    }

    fn request(id: &str) -> RegisterNodeRequest {
        RegisterNodeRequest {
            node_id: id.into(),
            client_advertise_address: format!("{id}:2378"),
            peer_advertise_address: format!("{id}:2381"),
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        bucket: Arc<MemoryStore>,
        peers: Arc<FakePeers>,
        elector: Arc<Elector>,
        metrics: Arc<Metrics>,
    }

    async fn setup(quorum: i64, registered: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Arc::new(MemoryStore::new());
        for id in registered {
            discovery::ensure_registration(&*bucket, &reg(id))
                .await
                .unwrap();
        }
        let log = Arc::new(ObjectLog::new(bucket.clone(), "e", dir.path()).unwrap());
        let peers = Arc::new(FakePeers::default());
        let metrics = Arc::new(Metrics::new());
        let settings = ElectorSettings {
            cluster_id: "c".into(),
            quorum,
            heartbeat_interval: Duration::from_secs(1),
            degradation_count: 2,
            deregistration_timeout: Some(Duration::from_secs(10)),
            primary_prior_timeout: Duration::from_secs(5),
        };
        let elector = Arc::new(Elector::new(
            reg("e"),
            settings,
            log,
            peers.clone(),
            metrics.clone(),
        ));
        Setup {
            _dir: dir,
            bucket,
            peers,
            elector,
            metrics,
        }
    }

    fn beat(e: &Elector, id: &str, health: HealthState, primary: PrimaryState, rev: i64) {
        e.heartbeat(&state(id, health, primary, rev), Some(id))
            .unwrap();
    }

    /// Waits (in fake time, up to a second) until `n` pushes were made.
    async fn pushes_made(peers: &FakePeers, n: usize) {
        for _ in 0..1000 {
            if peers.pushes.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("fewer than {n} pushes: {:?}", peers.pushes.lock().unwrap());
    }

    /// Half-second steps of fake time in which e and b report healthy at
    /// revision 9 and a stays silent.
    async fn e_and_b_keep_beating(e: &Elector, steps: usize) {
        for _ in 0..steps {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for id in ["e", "b"] {
                beat(
                    e,
                    id,
                    HealthState::HealthHealthy,
                    PrimaryState::PrimaryReplica,
                    9,
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_elector_loads_the_registrations_and_pushes_at_once() {
        let t = setup(0, &["e", "a", "b"]).await;
        assert_eq!(
            t.elector.cluster_state().unwrap_err(),
            ElectorError::NotElector
        );
        t.elector.start().await.unwrap();
        pushes_made(&t.peers, 3).await;
        let members = t.bucket.get("members.json").await.unwrap().data;
        assert_eq!(
            &members[..],
            br#"{"cluster_id":"c","members":{"a":1,"b":2,"e":3}}"#,
            "ids in listing order, written create-only"
        );
        let cs = t.elector.cluster_state().unwrap();
        assert_eq!(
            (cs.elector.node_id.as_str(), cs.elector.member_id),
            ("e", 3)
        );
        assert_eq!((cs.primary.clone(), cs.node_count), (None, 3));
        let pushes: Vec<String> = t.peers.take_pushes().into_iter().map(|p| p.0).collect();
        assert_eq!(pushes[0], "e", "applied locally first");
        assert_eq!(pushes.len(), 3, "then everyone: {pushes:?}");
        let listed = t.elector.member_list().unwrap().members;
        assert_eq!(listed.len(), 3);
        assert!(t
            .metrics
            .render()
            .contains("\nnetsy_elector_registered_nodes 3\n"));
        t.elector.stop();
        assert_eq!(
            t.elector.member_list().unwrap_err().to_string(),
            "this node is not the elector"
        );
        assert!(t
            .metrics
            .render()
            .lines()
            .all(|l| !l.starts_with("netsy_elector_")));
    }

    #[tokio::test(start_paused = true)]
    async fn registration_checks_and_stable_member_ids() {
        let t = setup(0, &["e"]).await;
        t.elector.start().await.unwrap();
        let missing = RegisterNodeRequest {
            peer_advertise_address: String::new(),
            ..request("a")
        };
        assert_eq!(
            t.elector
                .register(&missing, None)
                .await
                .unwrap_err()
                .to_string(),
            "node_id, client_advertise_address, and peer_advertise_address are required"
        );
        let impostor = t
            .elector
            .register(&request("a"), Some("b"))
            .await
            .unwrap_err();
        assert!(
            matches!(impostor, ElectorError::WrongIdentity(_)),
            "{impostor}"
        );
        let first = t.elector.register(&request("a"), Some("a")).await.unwrap();
        assert_eq!(first.member_id, 2);
        assert_eq!(first.cluster_state.unwrap().node_count, 2);
        t.elector.deregister("a", Some("a")).await.unwrap();
        assert_eq!(
            t.elector.heartbeat(
                &state(
                    "a",
                    HealthState::HealthHealthy,
                    PrimaryState::PrimaryReplica,
                    1
                ),
                None
            ),
            Err(ElectorError::NotRegistered("a".into()))
        );
        let again = t.elector.register(&request("a"), None).await.unwrap();
        assert_eq!(again.member_id, 2, "a member id is never reused or changed");
        assert_eq!(
            t.elector
                .deregister("", None)
                .await
                .unwrap_err()
                .to_string(),
            "node_id is required"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_nodes_degrade_then_are_deregistered_and_a_lost_primary_is_replaced() {
        let t = setup(0, &["e", "a", "b"]).await;
        t.elector.start().await.unwrap();
        pushes_made(&t.peers, 3).await;
        assert_eq!(
            t.peers.take_pushes().len(),
            3,
            "pushed at once, no Primary yet"
        );
        let e = &t.elector;
        beat(
            e,
            "e",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryReplica,
            5,
        );
        beat(
            e,
            "a",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryReplica,
            9,
        );
        beat(
            e,
            "b",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryReplica,
            7,
        );
        // quorum 0: the election uses heartbeat data; a has the most.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(e.primary_id().as_deref(), Some("a"));
        let pushes = t.peers.take_pushes();
        let (first, second) = (&pushes[0], &pushes[1]);
        assert_eq!(
            (first.0.as_str(), second.0.as_str()),
            ("e", "a"),
            "self, then the Primary"
        );
        assert_eq!(second.1.primary_id(), Some("a"));

        // a goes silent (and becomes a replica elsewhere); e and b keep beating.
        t.peers.set(
            "a",
            HealthState::HealthDegraded,
            PrimaryState::PrimaryReplica,
            9,
        );
        e_and_b_keep_beating(e, 6).await;
        assert!(e.lock().map.get("a").unwrap().is_degraded());
        assert_ne!(
            e.primary_id().as_deref(),
            Some("a"),
            "a degraded Primary is replaced"
        );
        assert!(e.primary_id().is_some(), "by a healthy node");

        // 10 s after degrading, a is removed and its registration deleted.
        e_and_b_keep_beating(e, 22).await;
        assert!(e.lock().map.get("a").is_none());
        assert!(t.bucket.get("nodes/a.json").await.is_err());
        assert_eq!(t.metrics.elector_auto_deregistrations.get(), 1);
        let members = t.bucket.get("members.json").await.unwrap().data;
        assert!(
            String::from_utf8_lossy(&members).contains("\"a\":1"),
            "ids stay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quorum_0_waits_to_hear_from_every_node_before_electing() {
        let t = setup(0, &["e", "a", "b"]).await;
        t.elector.start().await.unwrap();
        let e = &t.elector;
        e_and_b_keep_beating(e, 3).await;
        assert_eq!(e.primary_id(), None, "a has not reported yet");
        e_and_b_keep_beating(e, 2).await;
        assert!(e.lock().map.get("a").unwrap().is_degraded());
        assert!(
            matches!(e.primary_id().as_deref(), Some("e" | "b")),
            "a missed its heartbeats: it no longer holds the election up"
        );
    }

    /// e, a and b report; a, the furthest ahead, is elected.
    async fn a_elected() -> Setup {
        let t = setup(0, &["e", "a", "b"]).await;
        t.elector.start().await.unwrap();
        for (id, rev) in [("e", 1), ("a", 2), ("b", 1)] {
            beat(
                &t.elector,
                id,
                HealthState::HealthHealthy,
                PrimaryState::PrimaryReplica,
                rev,
            );
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(t.elector.primary_id().as_deref(), Some("a"));
        t
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_acting_against_the_state_is_pushed_again() {
        let t = a_elected().await;
        let e = &t.elector;
        t.peers.take_pushes();
        // a never took the role (its push was lost): it keeps saying replica.
        for _ in 0..6 {
            for id in ["e", "a", "b"] {
                beat(
                    e,
                    id,
                    HealthState::HealthHealthy,
                    PrimaryState::PrimaryReplica,
                    2,
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let again: Vec<String> = t.peers.take_pushes().into_iter().map(|p| p.0).collect();
        assert!(
            again.iter().all(|id| id == "a") && !again.is_empty() && again.len() <= 2,
            "a alone, at most once per 2 s: {again:?}"
        );
        // b says it is active though a is named: b is told again too.
        for _ in 0..5 {
            beat(
                e,
                "a",
                HealthState::HealthHealthy,
                PrimaryState::PrimaryActive,
                2,
            );
            beat(
                e,
                "b",
                HealthState::HealthHealthy,
                PrimaryState::PrimaryActive,
                2,
            );
            beat(
                e,
                "e",
                HealthState::HealthHealthy,
                PrimaryState::PrimaryReplica,
                2,
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let again: Vec<String> = t.peers.take_pushes().into_iter().map(|p| p.0).collect();
        assert!(
            again.iter().all(|id| id == "b") && !again.is_empty(),
            "{again:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_a_push_missed_gets_the_state_again() {
        let t = setup(0, &["e", "a", "b"]).await;
        t.peers.cut_off.lock().unwrap().insert("b".into());
        t.elector.start().await.unwrap();
        let e = &t.elector;
        for (id, rev) in [("e", 1), ("a", 2), ("b", 1)] {
            beat(
                e,
                id,
                HealthState::HealthHealthy,
                PrimaryState::PrimaryReplica,
                rev,
            );
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(e.primary_id().as_deref(), Some("a"));
        t.peers.cut_off.lock().unwrap().clear();
        t.peers.take_pushes();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for id in ["e", "a", "b"] {
                let primary = if id == "a" {
                    PrimaryState::PrimaryActive
                } else {
                    PrimaryState::PrimaryReplica
                };
                beat(e, id, HealthState::HealthHealthy, primary, 2);
            }
        }
        let again: Vec<(String, Option<String>)> = t
            .peers
            .take_pushes()
            .into_iter()
            .map(|(id, cs)| (id, cs.primary_id().map(str::to_string)))
            .collect();
        assert_eq!(
            again,
            vec![("b".to_string(), Some("a".to_string()))],
            "b, once, with the newest state; the others had it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_that_was_only_slow_to_report_stays() {
        let t = a_elected().await;
        let e = &t.elector;
        // a's heartbeats stop arriving, but asked directly it is fine.
        t.peers.set(
            "a",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryActive,
            3,
        );
        e_and_b_keep_beating(e, 5).await;
        assert_eq!(e.primary_id().as_deref(), Some("a"), "not replaced");
        let entry = e.lock().map.get("a").unwrap().clone();
        assert!(
            !entry.is_degraded() && entry.latest_revision == 3,
            "its answer counts as a heartbeat: {entry:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_previous_primary_still_active_blocks_the_election() {
        let t = setup(-1, &["e", "a", "b"]).await;
        t.elector.start().await.unwrap();
        let e = &t.elector;
        for id in ["e", "a", "b"] {
            t.peers.set(
                id,
                HealthState::HealthHealthy,
                PrimaryState::PrimaryReplica,
                3,
            );
        }
        t.peers.set(
            "a",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryReplica,
            4,
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            e.primary_id().as_deref(),
            Some("a"),
            "asked every node; a is ahead"
        );
        // The Primary leaves the map but still says it is active.
        t.peers.set(
            "a",
            HealthState::HealthDegraded,
            PrimaryState::PrimaryActive,
            4,
        );
        e.deregister("a", None).await.unwrap();
        assert_eq!(e.primary_id(), None);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(e.primary_id(), None, "still active: no new Primary");
        t.peers.set(
            "a",
            HealthState::HealthDegraded,
            PrimaryState::PrimaryReplica,
            4,
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(matches!(e.primary_id().as_deref(), Some("e" | "b")));
    }

    #[tokio::test(start_paused = true)]
    async fn majority_needs_enough_answers() {
        let t = setup(-1, &["e", "a", "b"]).await;
        t.elector.start().await.unwrap();
        t.peers.set(
            "e",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryReplica,
            3,
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(t.elector.primary_id(), None, "1 of 3 answered");
        let failures = t
            .metrics
            .elector_primary_election_failures
            .get_or_create(&labels(&[("reason", "contact_failure")]))
            .get();
        assert!(failures >= 2, "{failures}");
        t.peers.set(
            "b",
            HealthState::HealthHealthy,
            PrimaryState::PrimaryReplica,
            2,
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            t.elector.primary_id().as_deref(),
            Some("e"),
            "2 of 3 suffice"
        );
    }
}
