//! Clusters of real netsy processes for tests: the launcher's cluster on a
//! moto bucket or a shared directory, with mTLS clients (etcd-client and
//! etcdctl 3.4), and polling helpers that find the Elector and the Primary
//! from outside.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netsy::launch::cluster::{ClusterSpec, LaunchedCluster};

use super::{create_bucket, start_moto, tool, Bucket, Moto};

/// How long a test waits for the cluster to settle after a change.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// Shortened tier-1 timings for tests (cycle 0.5 s, leader timeout 1.5 s).
pub const TEST_SPEEDUP: u32 = 10;

pub struct TestCluster {
    pub c: LaunchedCluster,
    _moto: Option<Arc<Moto>>,
    _dir: Option<tempfile::TempDir>,
    /// The fault-injecting proxy every node reaches the bucket through.
    pub s3_proxy: Option<netsy::launch::faults::s3::S3Proxy>,
    /// With [`TestCluster::partitionable`]: node i's own S3 proxy.
    pub node_s3: Vec<netsy::launch::faults::s3::S3Proxy>,
}

fn fast(spec: &mut ClusterSpec) {
    spec.speedup = Some(TEST_SPEEDUP);
    spec.heartbeat_interval = "200ms".into();
    spec.primary_prior_timeout = "1s".into();
}

impl TestCluster {
    /// `n` nodes on a fresh bucket of a fresh moto server.
    pub fn on_moto(n: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        TestCluster::moto(n, tweak, false)
    }

    /// `n` nodes on a fresh moto bucket reached through an S3 proxy whose
    /// faults the test switches (`s3_proxy`).
    pub fn on_moto_through_proxy(n: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        TestCluster::moto(n, tweak, true)
    }

    /// `n` nodes on a fresh moto bucket where each node reaches the bucket
    /// through its own S3 proxy (`node_s3`) and every other node through
    /// links of its own, so one node can be partitioned from the others
    /// and from the bucket ([`TestCluster::partition`]).
    pub fn partitionable(n: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        let mut t = TestCluster::moto(n, tweak, false);
        let moto = t._moto.clone().expect("a moto cluster");
        for i in 0..n {
            let proxy = netsy::launch::faults::s3::S3Proxy::in_front_of(&moto).unwrap();
            t.c.nodes[i].env.extend(proxy.env());
            t.node_s3.push(proxy);
        }
        t.c.separate_links().unwrap();
        t
    }

    /// Cuts node `i` off from every other node (both directions) and from
    /// the bucket; its clients still reach it.
    pub fn partition(&self, i: usize) {
        self.c.isolate(i).unwrap();
        self.node_s3[i]
            .faults()
            .set(netsy::launch::faults::s3::S3Mode::Outage);
    }

    /// Undoes [`TestCluster::partition`].
    pub fn heal(&self, i: usize) {
        self.c.rejoin(i).unwrap();
        self.node_s3[i]
            .faults()
            .set(netsy::launch::faults::s3::S3Mode::Pass);
    }

    fn moto(n: usize, tweak: impl FnOnce(&mut ClusterSpec), proxied: bool) -> TestCluster {
        let moto = Arc::new(start_moto());
        create_bucket(&moto, "cluster");
        let proxy =
            proxied.then(|| netsy::launch::faults::s3::S3Proxy::in_front_of(&moto).unwrap());
        let env = proxy.as_ref().map_or_else(|| moto.env(), |p| p.env());
        let mut spec = ClusterSpec::new(n, r#"{"provider": "s3", "bucket_name": "cluster"}"#, env);
        fast(&mut spec);
        tweak(&mut spec);
        TestCluster {
            c: LaunchedCluster::create(&bin(), spec).unwrap(),
            _moto: Some(moto),
            _dir: None,
            s3_proxy: proxy,
            node_s3: Vec::new(),
        }
    }

    /// `n` nodes sharing a directory as their bucket (the fs provider).
    pub fn on_fs(n: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let storage = format!(
            r#"{{"provider": "fs", "path": {:?}}}"#,
            dir.path().join("bucket").display().to_string()
        );
        let mut spec = ClusterSpec::new(n, &storage, vec![]);
        fast(&mut spec);
        tweak(&mut spec);
        TestCluster {
            c: LaunchedCluster::create(&bin(), spec).unwrap(),
            _moto: None,
            _dir: Some(dir),
            s3_proxy: None,
            node_s3: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.c.nodes.len()
    }

    /// The cluster's bucket, to read its objects directly.
    pub fn bucket(&self) -> Bucket {
        match (&self._moto, &self._dir) {
            (Some(moto), _) => Bucket::S3 {
                moto: moto.clone(),
                name: "cluster".into(),
            },
            (None, Some(dir)) => Bucket::Fs(dir.path().join("bucket")),
            (None, None) => unreachable!("a test cluster has a bucket"),
        }
    }

    /// Waits until node `i` serves the etcd API.
    pub fn wait_serving(&mut self, i: usize) {
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        while !self.c.nodes[i].logged("serving the etcd API on ") {
            assert!(
                self.c.nodes[i].is_running(),
                "{} exited:\n{}",
                self.c.nodes[i].id,
                self.c.nodes[i].log_text()
            );
            assert!(
                Instant::now() < deadline,
                "{} did not serve in time:\n{}",
                self.c.nodes[i].id,
                self.c.nodes[i].log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn start(&mut self, i: usize) {
        self.c.start(i).unwrap();
        self.wait_serving(i);
    }

    pub fn start_all(&mut self) {
        self.c.start_all().unwrap();
        for i in 0..self.len() {
            self.wait_serving(i);
        }
    }

    /// Polls until `f` returns Some, failing at the deadline with the
    /// running nodes' logs.
    pub fn until<T>(&mut self, what: &str, mut f: impl FnMut(&mut TestCluster) -> Option<T>) -> T {
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .c
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.id, tail(&n.log_text(), 40)))
                    .collect();
                panic!("timed out waiting for {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The one Elector and the one Primary, once the running nodes agree
    /// that there is exactly one of each.
    pub fn settled(&mut self) -> (usize, usize) {
        self.until("exactly one Elector and one Primary", |t| {
            let (electors, primaries) = (t.c.electors(), t.c.primaries());
            match (&electors[..], &primaries[..]) {
                ([e], [p]) => Some((*e, *p)),
                _ => None,
            }
        })
    }

    pub fn client_tls(&self) -> (PathBuf, PathBuf, PathBuf) {
        self.c.client_tls()
    }

    /// etcdctl 3.4 (TLS 1.3) against node `i` with the client certificate.
    pub fn etcdctl(&self, i: usize, args: &[&str]) -> Output {
        let (ca, cert, key) = self.client_tls();
        Command::new(tool("etcdctl34"))
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=https://{}",
                self.c.nodes[i].client_addr()
            ))
            .args(["--dial-timeout=3s", "--command-timeout=5s"])
            .arg(format!("--cacert={}", ca.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// `etcdctl member list` on node `i`: (name, id) sorted by name, or
    /// the error it printed.
    pub fn members(&self, i: usize) -> Result<Vec<(String, u64)>, String> {
        let out = self.etcdctl(i, &["member", "list", "-w", "json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let mut members: Vec<(String, u64)> = v["members"]
            .as_array()
            .ok_or("no members")?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_string(),
                    m["ID"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        members.sort();
        Ok(members)
    }

    /// `etcdctl endpoint status` on node `i`: the leader it reports.
    pub fn leader(&self, i: usize) -> Option<u64> {
        let out = self.etcdctl(i, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["Status"]["leader"].as_u64()
    }

    /// An etcd-client over mTLS to node `i`.
    pub async fn client(&self, i: usize) -> etcd_client::Client {
        let addr = self.c.nodes[i].client_addr();
        connect(&self.client_tls(), &addr, Duration::from_secs(10))
            .await
            .unwrap()
    }
}

/// An etcd-client over mTLS to `addr` with the client certificate `tls`
/// (CA, certificate, key), each call bounded by `timeout`.
pub async fn connect(
    (ca, cert, key): &(PathBuf, PathBuf, PathBuf),
    addr: &str,
    timeout: Duration,
) -> Result<etcd_client::Client, etcd_client::Error> {
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(ca).unwrap(),
        ))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(timeout);
    etcd_client::Client::connect([format!("https://{addr}")], Some(options)).await
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netsy"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
