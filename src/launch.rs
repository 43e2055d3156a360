//! Starting servers for tools and tests (conformance runner, benchmarks):
//! a fresh etcd, a fresh `netsy --dev`, a cluster of netsy nodes
//! (`cluster`) or a moto S3 server, each on free loopback ports with its
//! own data directory, removed when dropped; and proxies that inject
//! faults between them (`faults`).

pub mod cluster;
pub mod faults;
pub mod history;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::grpc::Channel;
use crate::pb::etcdserverpb::{StatusRequest, StatusResponse};

/// A server process; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    _dir: TempDir,
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed on drop, unless `NETSY_LAUNCH_KEEP` is set
/// (benchmarks keep them until the end of a run: removing thousands of
/// files slows the next run's file creation on some filesystems).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, String> {
        let base = std::env::temp_dir().join(format!(
            "netsy-launch-{tag}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        Ok(TempDir(base))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os(crate::config::env_vars::LAUNCH_KEEP.name).is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A number unique within this process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A loopback port free now, for a server started later. Taken below the
/// kernel's ephemeral range (Linux: 32768 and up), where outgoing
/// connections never take it in the meantime; a random one of the
/// ephemeral range only when none is found there. A port is handed out
/// once per process: the nodes of one cluster are started only after all
/// their ports are chosen, so a port free at both choices went to two
/// nodes now and then (about one cluster in 200).
fn free_port() -> Result<u16, String> {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = LOW + (random % u64::from(HIGH - LOW)) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Waits until the server answers Status.
async fn wait_ready(addr: &str, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited during start: {status}"));
        }
        if let Ok(ch) = Channel::connect(addr).await {
            let r: Result<StatusResponse, _> = ch
                .unary_with_timeout(
                    "/etcdserverpb.Maintenance/Status",
                    &StatusRequest {},
                    Some(Duration::from_secs(2)),
                )
                .await;
            if r.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{what} on {addr} did not become ready"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A single-member etcd with default settings on loopback.
pub async fn start_etcd(bin: &Path) -> Result<Server, String> {
    start_etcd_cluster(bin, 1)
        .await?
        .pop()
        .ok_or_else(|| "etcd did not start".to_string())
}

/// An etcd cluster of `n` members on loopback (plain HTTP), each with its
/// own data directory; the members' client addresses in member order.
pub async fn start_etcd_cluster(bin: &Path, n: usize) -> Result<Vec<Server>, String> {
    let ports: Vec<(u16, u16)> = (0..n)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_, String>>()?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let initial = initial.join(",");
    let mut started = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let dir = TempDir::new("etcd")?;
        let addr = format!("127.0.0.1:{client}");
        let child = Command::new(bin)
            .arg(format!("--name=m{i}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls=http://{addr}"))
            .arg(format!("--advertise-client-urls=http://{addr}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd ({}): {e}", bin.display()))?;
        started.push(Server {
            child,
            addr,
            _dir: dir,
        });
    }
    for server in &mut started {
        let addr = server.addr.clone();
        wait_ready(&addr, &mut server.child, "etcd").await?;
    }
    Ok(started)
}

/// Extra settings for a launched netsy.
#[derive(Clone, Debug, Default)]
pub struct NetsyLaunch {
    /// `--config FILE` (cluster settings, e.g. an S3 bucket).
    pub config: Option<PathBuf>,
    /// Extra environment (AWS_* for S3).
    pub env: Vec<(String, String)>,
}

/// `netsy --dev` on an ephemeral loopback port.
pub async fn start_netsy(bin: &Path) -> Result<Server, String> {
    start_netsy_with(bin, &NetsyLaunch::default()).await
}

/// `netsy --dev [--config FILE]` on an ephemeral loopback port.
pub async fn start_netsy_with(bin: &Path, launch: &NetsyLaunch) -> Result<Server, String> {
    let dir = TempDir::new("netsy")?;
    let mut cmd = Command::new(bin);
    cmd.arg("--dev");
    if let Some(config) = &launch.config {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "")
        .env("NETSY_DATA_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start netsy ({}): {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    // The reader keeps draining stderr; it reports the address, or the
    // last lines netsy printed if it ends before serving.
    let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
    std::thread::spawn(move || {
        let mut sent = false;
        let mut last = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            if let Some(rest) = line.split("serving the etcd API on ").nth(1) {
                let _ = tx.send(Ok(rest.split_whitespace().next().unwrap_or("").to_string()));
                sent = true;
            } else {
                last.push_back(line);
                if last.len() > 5 {
                    last.pop_front();
                }
            }
        }
        if !sent {
            let _ = tx.send(Err(Vec::from(last).join("\n")));
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(log)) => return Err(format!("netsy exited before serving:\n{log}")),
        Err(_) => return Err("netsy did not report its client address in 30s".to_string()),
    };
    wait_ready(&addr, &mut child, "netsy").await?;
    Ok(Server {
        child,
        addr,
        _dir: dir,
    })
}

/// A moto S3 server on a loopback port, killed when dropped. Moto does not
/// check signatures, so any credentials do.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `bin` (moto_server) and waits until it accepts connections.
    pub fn start(bin: &Path) -> Result<Moto, String> {
        let port = free_port()?;
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start moto ({}): {e}", bin.display()))?;
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(moto.addr()).is_err() {
            if Instant::now() > deadline {
                return Err(format!("moto on {} did not start listening", moto.addr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(moto)
    }

    fn addr(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// The AWS variables that point clients at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        let addr = self.addr();
        let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        write!(
            s,
            "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        if resp.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("creating bucket {name}: {resp}"))
        }
    }
}

/// The AWS variables that point an S3 client at `endpoint` (moto, or a
/// proxy in front of it): moto checks no signature, so any credentials do.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_S3_USE_PATH_STYLE", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
