//! `--cluster N`: N netsy nodes (quorum −1, on a shared directory or, with
//! `--moto`, a moto bucket) beside an N-member etcd, all on loopback; the
//! load goes to netsy's Primary and to etcd's leader, alternately, as the
//! single-node comparison does.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netsy::grpc::Channel;
use netsy::launch::cluster::{ClusterSpec, LaunchedCluster};
use netsy::launch::{self, Moto, Server, TempDir};
use netsy::pb::etcdserverpb::{PutRequest, PutResponse, StatusRequest, StatusResponse};

/// How long the clusters may take to be ready.
const PATIENCE: Duration = Duration::from_secs(120);

/// What every mode that launches its own nodes needs.
pub struct LaunchOptions<'a> {
    pub netsy_bin: &'a Path,
    pub moto_bin: &'a Path,
    /// A moto bucket instead of a directory.
    pub moto: bool,
    pub json: bool,
}

/// A running netsy cluster and what must live as long as it.
pub struct NetsyCluster {
    /// Runs as long as this value lives.
    pub cluster: LaunchedCluster,
    pub primary_addr: String,
    pub tls: Arc<rustls::ClientConfig>,
    _bucket: Bucket,
}

impl NetsyCluster {
    /// Waits until node `i` is the Primary and acknowledges a put, then
    /// returns its client address.
    pub async fn primary_serving(&mut self, i: usize) -> Result<String, String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.cluster.primaries().contains(&i) {
                let addr = self.cluster.nodes[i].client_addr();
                if put(&addr, &self.tls).await {
                    self.primary_addr = addr.clone();
                    return Ok(addr);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {i} did not become a Primary taking writes; {}",
                    last_lines(&self.cluster)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The pid of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Result<u32, String> {
        self.cluster.nodes[i]
            .pid()
            .ok_or_else(|| format!("node {i} is not running"))
    }
}

/// A cluster's bucket: a moto bucket, or a shared directory (fs).
pub struct Bucket {
    pub moto: Option<Moto>,
    pub dir: Option<TempDir>,
    /// The config's `storage` object.
    pub storage: String,
    /// What the nodes need in their environment for it.
    pub env: Vec<(String, String)>,
}

/// A fresh bucket `name` on a new moto server, or a fresh directory.
pub fn bucket(moto_bin: &Path, moto: bool, name: &str) -> Result<Bucket, String> {
    if moto {
        let moto = Moto::start(moto_bin)?;
        moto.create_bucket(name)?;
        let env = moto.env();
        return Ok(Bucket {
            moto: Some(moto),
            dir: None,
            storage: format!(r#"{{"provider": "s3", "bucket_name": "{name}"}}"#),
            env,
        });
    }
    let dir = TempDir::new(&format!("{name}-bucket"))?;
    let storage = format!(
        r#"{{"provider": "fs", "path": {:?}}}"#,
        dir.path().display().to_string()
    );
    Ok(Bucket {
        moto: None,
        dir: Some(dir),
        storage,
        env: vec![],
    })
}

/// Starts `n` nodes on `bucket` with `quorum`, and waits until the Primary
/// takes writes (on the quorum path unless the quorum is 0).
pub async fn start_netsy(
    bin: &Path,
    bucket: Bucket,
    n: usize,
    quorum: i64,
) -> Result<NetsyCluster, String> {
    let mut spec = ClusterSpec::new(n, &bucket.storage, bucket.env.clone());
    spec.quorum = quorum;
    // Only the first election is sped up; writes run at deployed settings.
    spec.speedup = Some(10);
    let mut cluster = LaunchedCluster::create(bin, spec)?;
    cluster.start_all()?;
    let (ca, cert, key) = cluster.client_tls();
    let tls = netsy::tls::client_config_from_files(&ca, &cert, &key)?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let [p] = cluster.primaries()[..] {
            let addr = cluster.nodes[p].client_addr();
            let route = quorum == 0
                || cluster
                    .metrics(p)
                    .is_ok_and(|m| m.contains("netsy_primary_write_path{path=\"quorum\"} 1"));
            if put(&addr, &tls).await && route {
                return Ok(NetsyCluster {
                    cluster,
                    primary_addr: addr,
                    tls,
                    _bucket: bucket,
                });
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the netsy cluster did not settle on a Primary taking writes; {}",
                last_lines(&cluster)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines each node logged, for an error that needs them.
fn last_lines(cluster: &LaunchedCluster) -> String {
    let mut out = Vec::new();
    for n in &cluster.nodes {
        let text = n.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        out.push(format!("{} logged last:\n    {tail}", n.id));
    }
    out.join("\n")
}

async fn put(addr: &str, tls: &Arc<rustls::ClientConfig>) -> bool {
    let attempt = async {
        let ch = Channel::connect_tls(addr, tls.clone(), "127.0.0.1")
            .await
            .ok()?;
        let req = PutRequest {
            key: b"/bench-ready".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        let r: PutResponse = ch
            .unary_with_timeout("/etcdserverpb.KV/Put", &req, Some(Duration::from_secs(2)))
            .await
            .ok()?;
        Some(r)
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// An `n`-member etcd and its leader's client address.
pub async fn start_etcd(bin: &Path, n: usize) -> Result<(Vec<Server>, String), String> {
    let members = launch::start_etcd_cluster(bin, n).await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        for m in &members {
            let Ok(ch) = Channel::connect(&m.addr).await else {
                continue;
            };
            let status: Result<StatusResponse, _> = ch
                .unary_with_timeout(
                    "/etcdserverpb.Maintenance/Status",
                    &StatusRequest {},
                    Some(Duration::from_secs(2)),
                )
                .await;
            if let Ok(s) = status {
                let me = s.header.map_or(0, |h| h.member_id);
                if s.leader != 0 && s.leader == me {
                    let addr = m.addr.clone();
                    return Ok((members, addr));
                }
            }
        }
        if Instant::now() > deadline {
            return Err("the etcd cluster elected no leader".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
