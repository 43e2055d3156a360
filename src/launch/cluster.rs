//! A cluster of real netsy processes on loopback, for tests and
//! benchmarks, started as the deployment starts them: per-node `NETSY_*`
//! variables with every port chosen up front (client, peer, election,
//! health), certificates from `netsy certs`, one shared JSONC config and one
//! shared bucket. Nodes can be killed, stopped and restarted on their data
//! directories, and a node can advertise a fault proxy in front of its
//! peer or client API instead of the port it binds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::faults::tcp::{TcpFaults, TcpMode, TcpProxy};
use super::{free_port, TempDir};

/// What cluster to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub cluster_id: String,
    /// The config's `storage` object.
    pub storage_json: String,
    /// Environment the bucket needs (AWS_* for S3).
    pub env: Vec<(String, String)>,
    /// replication.quorum.
    pub quorum: i64,
    pub heartbeat_interval: String,
    pub deregistration_timeout: String,
    pub primary_prior_timeout: String,
    /// NETSY_TEST_ELECTION_SPEEDUP; None keeps the reference's timings.
    pub speedup: Option<u32>,
    /// compaction_interval (a Go duration); None leaves it unset (off).
    pub compaction_interval: Option<String>,
}

impl ClusterSpec {
    /// N nodes on a bucket with the deployment's example settings.
    pub fn new(nodes: usize, storage_json: &str, env: Vec<(String, String)>) -> ClusterSpec {
        ClusterSpec {
            nodes,
            cluster_id: "test-cluster".into(),
            storage_json: storage_json.to_string(),
            env,
            quorum: -1,
            heartbeat_interval: "1s".into(),
            deregistration_timeout: "3m".into(),
            primary_prior_timeout: "5s".into(),
            speedup: None,
            compaction_interval: None,
        }
    }

    fn config(&self) -> String {
        format!(
            r#"{{
  // Shared by every node of the cluster (written by the launcher).
  "cluster_id": "{}",
  "storage": {},
  "heartbeat_interval": "{}",
  "elector": {{"degradation_count": 2, "deregistration_timeout": "{}", "primary_prior_timeout": "{}"}},
  "replication": {{"quorum": {}, "degradation_count": 2, "chunk_buffer": {{"threshold_size_mb": 4, "threshold_age_minutes": 1}}}},{}
}}
"#,
            self.cluster_id,
            self.storage_json,
            self.heartbeat_interval,
            self.deregistration_timeout,
            self.primary_prior_timeout,
            self.quorum,
            self.compaction_interval
                .as_ref()
                .map(|d| format!("\n  \"compaction_interval\": {d:?},"))
                .unwrap_or_default()
        )
    }
}

/// The loopback ports of one node.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    pub election: u16,
    pub health: u16,
}

/// Addresses a node advertises in place of the ports it binds (None: the
/// bound one), such as a proxy that forwards to them.
#[derive(Clone, Debug, Default)]
pub struct Advertise {
    pub client: Option<String>,
    pub peer: Option<String>,
}

/// One node: its settings and, while it runs, its process and output.
pub struct ClusterNode {
    pub id: String,
    pub ports: Ports,
    pub data_dir: PathBuf,
    /// Set before the node's first start: the bucket keeps the addresses
    /// a node registered, and refuses a restart that advertises others.
    pub advertise: Advertise,
    child: Option<Child>,
    /// Whether it was ever started (see `advertise`).
    started: bool,
    /// Proxies in front of this node's listeners, kept as long as the node.
    proxies: Vec<TcpProxy>,
    /// Variables for this node only, after the cluster's (so they win):
    /// its own S3 endpoint, its dialled links.
    pub env: Vec<(String, String)>,
    /// Every line the current process printed.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ClusterNode {
    /// The client API as bound (tests dial it directly).
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }

    /// The peer API as bound.
    pub fn peer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.peer)
    }

    /// The client API as other nodes and member lists name it.
    pub fn advertised_client_addr(&self) -> String {
        self.advertise
            .client
            .clone()
            .unwrap_or_else(|| self.client_addr())
    }

    /// The peer API as other nodes dial it.
    pub fn advertised_peer_addr(&self) -> String {
        self.advertise
            .peer
            .clone()
            .unwrap_or_else(|| self.peer_addr())
    }

    pub fn election_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.election)
    }

    pub fn health_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.health)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process printed a line containing `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| line.contains(text)))
            .unwrap_or(false)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl ClusterNode {
    /// SIGKILL and reap, if running.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster's files and nodes.
pub struct LaunchedCluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<ClusterNode>,
    pub config_path: PathBuf,
    /// `netsy certs` output: ca.crt, {node}/server.*, {node}/peer.*,
    /// client/{name}.*.
    pub certs: PathBuf,
    bin: PathBuf,
    dir: TempDir,
    /// One proxy per (from, to) node pair when [`LaunchedCluster::separate_links`]
    /// was called: `from` dials `to`'s peer and election APIs through it.
    links: Vec<Link>,
}

/// The link from one node to another: what `from` dials to reach `to`.
struct Link {
    from: usize,
    to: usize,
    /// The peer API's proxy and the election endpoint's, switched together.
    faults: Vec<TcpFaults>,
}

/// The name of the client certificate `netsy certs` issues for tools.
pub const CLIENT_NAME: &str = "tester";

impl LaunchedCluster {
    /// Chooses ports, issues certificates with `bin certs`, writes the
    /// config. Starts nothing.
    pub fn create(bin: &Path, spec: ClusterSpec) -> Result<LaunchedCluster, String> {
        let dir = TempDir::new("cluster")?;
        let certs = dir.path().join("certs");
        let ids: Vec<String> = (1..=spec.nodes).map(|i| format!("node-{i}")).collect();
        let mut cmd = Command::new(bin);
        cmd.args([
            "certs",
            "--cluster",
            &spec.cluster_id,
            "--client",
            CLIENT_NAME,
            "--host",
            "127.0.0.1",
        ]);
        for id in &ids {
            cmd.args(["--node", id]);
        }
        let out = cmd
            .arg("--out")
            .arg(&certs)
            .output()
            .map_err(|e| format!("netsy certs: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "netsy certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let config_path = dir.path().join("config.jsonc");
        std::fs::write(&config_path, spec.config()).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for id in ids {
            let ports = Ports {
                client: free_port()?,
                peer: free_port()?,
                election: free_port()?,
                health: free_port()?,
            };
            nodes.push(ClusterNode {
                data_dir: dir.path().join(format!("data-{id}")),
                id,
                ports,
                advertise: Advertise::default(),
                child: None,
                started: false,
                proxies: Vec::new(),
                env: Vec::new(),
                log: Arc::default(),
            });
        }
        Ok(LaunchedCluster {
            spec,
            nodes,
            config_path,
            certs,
            bin: bin.to_path_buf(),
            dir,
            links: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The files of the tools' client certificate: (ca, cert, key).
    pub fn client_tls(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.certs.join("ca.crt"),
            self.certs.join("client").join(format!("{CLIENT_NAME}.crt")),
            self.certs.join("client").join(format!("{CLIENT_NAME}.key")),
        )
    }

    /// The environment node `i` runs with, as deployed.
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        let n = &self.nodes[i];
        let at = |port: u16| format!("127.0.0.1:{port}");
        let cert = |name: &str| self.certs.join(&n.id).join(name).display().to_string();
        let mut env = vec![
            (
                "NETSY_CONFIG".into(),
                self.config_path.display().to_string(),
            ),
            ("NETSY_NODE_ID".into(), n.id.clone()),
            ("NETSY_BIND_CLIENT".into(), at(n.ports.client)),
            ("NETSY_ADVERTISE_CLIENT".into(), n.advertised_client_addr()),
            ("NETSY_BIND_PEER".into(), at(n.ports.peer)),
            ("NETSY_ADVERTISE_PEER".into(), n.advertised_peer_addr()),
            ("NETSY_BIND_ELECTION".into(), at(n.ports.election)),
            ("NETSY_ADVERTISE_ELECTION".into(), at(n.ports.election)),
            ("NETSY_BIND_HEALTH".into(), at(n.ports.health)),
            (
                "NETSY_TLS_CA_CERT".into(),
                self.certs.join("ca.crt").display().to_string(),
            ),
            ("NETSY_TLS_SERVER_CERT".into(), cert("server.crt")),
            ("NETSY_TLS_SERVER_KEY".into(), cert("server.key")),
            ("NETSY_TLS_CLIENT_CERT".into(), cert("peer.crt")),
            ("NETSY_TLS_CLIENT_KEY".into(), cert("peer.key")),
            ("NETSY_DATA_DIR".into(), n.data_dir.display().to_string()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(self.spec.env.iter().cloned());
        if let Some(s) = self.spec.speedup {
            env.push((
                crate::config::env_vars::TEST_ELECTION_SPEEDUP.name.into(),
                s.to_string(),
            ));
        }
        env.extend(n.env.iter().cloned());
        env
    }

    /// Starts node `i` (again, on its data directory, if it ran before).
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        let env = self.env(i);
        let echo = std::env::var_os(crate::config::env_vars::CLUSTER_ECHO.name).is_some();
        let n = &mut self.nodes[i];
        n.kill();
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", n.id))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (lines, id) = (log.clone(), n.id.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{id}] {line}");
                }
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
        n.log = log;
        n.child = Some(child);
        n.started = true;
        Ok(())
    }

    /// Puts a [`TcpProxy`] in front of node `i`'s peer API: the node binds
    /// its port and advertises the proxy's, so every peer connection made
    /// *to* it crosses the proxy (the Follow streams of the replicas while
    /// it is the Primary, heartbeats while it is the Elector, the Elector's
    /// calls to it); its own outgoing connections do not. Before the
    /// node's first start only. The proxy lives as long as the cluster.
    pub fn proxy_peer(&mut self, i: usize) -> Result<TcpFaults, String> {
        let n = self.unstarted(i)?;
        let proxy = TcpProxy::start(&n.peer_addr())?;
        n.advertise.peer = Some(proxy.addr());
        let faults = proxy.faults();
        n.proxies.push(proxy);
        Ok(faults)
    }

    /// Puts a [`TcpProxy`] in front of node `i`'s client API, as
    /// [`LaunchedCluster::proxy_peer`] does for the peer API: what is
    /// dialled through the advertised address (member lists, clients that
    /// follow them) crosses it; [`ClusterNode::client_addr`] does not.
    pub fn proxy_client(&mut self, i: usize) -> Result<TcpFaults, String> {
        let n = self.unstarted(i)?;
        let proxy = TcpProxy::start(&n.client_addr())?;
        n.advertise.client = Some(proxy.addr());
        let faults = proxy.faults();
        n.proxies.push(proxy);
        Ok(faults)
    }

    /// Gives every ordered pair of nodes its own link: node `from` dials
    /// `to`'s peer and election APIs through a proxy of its own (a debug
    /// build's `NETSY_TEST_DIAL_VIA`), so [`LaunchedCluster::isolate`] can
    /// cut one node off from the others in both directions while the rest
    /// still reach each other. Before any node starts.
    pub fn separate_links(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.unstarted(i)?;
        }
        let var = crate::config::env_vars::TEST_DIAL_VIA.name;
        for from in 0..self.nodes.len() {
            let mut routes = Vec::new();
            let mut proxies = Vec::new();
            for to in (0..self.nodes.len()).filter(|to| *to != from) {
                let target = &self.nodes[to];
                let (peer, election) = (target.peer_addr(), target.election_addr());
                let peer_proxy = TcpProxy::start(&peer)?;
                let election_proxy = TcpProxy::start(&election)?;
                routes.push(format!("{peer}={}", peer_proxy.addr()));
                routes.push(format!("{election}={}", election_proxy.addr()));
                self.links.push(Link {
                    from,
                    to,
                    faults: vec![peer_proxy.faults(), election_proxy.faults()],
                });
                proxies.extend([peer_proxy, election_proxy]);
            }
            let n = &mut self.nodes[from];
            n.env.push((var.to_string(), routes.join(",")));
            n.proxies.extend(proxies);
        }
        Ok(())
    }

    /// Sets the link from `from` to `to` (after [`LaunchedCluster::separate_links`]).
    pub fn set_link(&self, from: usize, to: usize, mode: TcpMode) -> Result<(), String> {
        let link = self
            .links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .ok_or_else(|| format!("no link from node {from} to node {to}"))?;
        link.faults.iter().for_each(|f| f.set(mode));
        Ok(())
    }

    /// Blackholes every link to and from node `i` (the others stay
    /// connected): a partition that leaves connections hanging, as a
    /// dropped network does, rather than refusing them.
    pub fn isolate(&self, i: usize) -> Result<(), String> {
        self.set_links_of(i, TcpMode::Blackhole)
    }

    /// Undoes [`LaunchedCluster::isolate`].
    pub fn rejoin(&self, i: usize) -> Result<(), String> {
        self.set_links_of(i, TcpMode::Pass)
    }

    fn set_links_of(&self, i: usize, mode: TcpMode) -> Result<(), String> {
        let touching: Vec<&Link> = self
            .links
            .iter()
            .filter(|l| l.from == i || l.to == i)
            .collect();
        if touching.is_empty() {
            return Err(format!("node {i} has no separate links"));
        }
        for link in touching {
            link.faults.iter().for_each(|f| f.set(mode));
        }
        Ok(())
    }

    fn unstarted(&mut self, i: usize) -> Result<&mut ClusterNode, String> {
        let n = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| format!("there is no node {i}"))?;
        if n.started {
            return Err(format!(
                "{} has started: the bucket keeps the addresses it advertised",
                n.id
            ));
        }
        Ok(n)
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// SIGKILL: the node gets no chance to do anything.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// SIGTERM, then waits up to `deadline` for the exit.
    pub fn terminate(&mut self, i: usize, deadline: Duration) -> Result<ExitStatus, String> {
        let n = &mut self.nodes[i];
        let Some(mut child) = n.child.take() else {
            return Err(format!("{} is not running", n.id));
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !sent.success() {
            return Err("kill -TERM failed".into());
        }
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not exit within {deadline:?} of SIGTERM",
                    n.id
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Node `i`'s /metrics text.
    pub fn metrics(&self, i: usize) -> Result<String, String> {
        http_get(&self.nodes[i].health_addr(), "/metrics")
    }

    /// Whether node `i`'s metrics say `name{label}` is 1 (one-hot states).
    pub fn has_state(&self, i: usize, name: &str, state: &str) -> bool {
        let want = format!("{name}{{state=\"{state}\"}} 1");
        self.metrics(i)
            .map(|m| m.lines().any(|l| l == want))
            .unwrap_or(false)
    }

    /// The running nodes whose metrics show them as Elector.
    pub fn electors(&mut self) -> Vec<usize> {
        self.running_with("netsy_state_elector", "leader")
    }

    /// The running nodes whose metrics show them as the active Primary.
    pub fn primaries(&mut self) -> Vec<usize> {
        self.running_with("netsy_state_primary", "active")
    }

    fn running_with(&mut self, name: &str, state: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running() && self.has_state(*i, name, state))
            .collect()
    }
}

/// A plain HTTP GET (the health listener); the body of a 200.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("incomplete answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}
