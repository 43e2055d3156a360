//! Starting servers for tools (conformance runner, benchmarks): a fresh
//! etcd or a fresh `netsy --dev`, each on free loopback ports with its own
//! data directory, removed when the server is dropped.

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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir, String> {
        let base = std::env::temp_dir().join(format!(
            "netsy-conformance-{tag}-{}-{}",
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
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A number unique within this process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> Result<u16, String> {
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
    let dir = TempDir::new("etcd")?;
    let (client, peer) = (free_port()?, free_port()?);
    let addr = format!("127.0.0.1:{client}");
    let mut child = Command::new(bin)
        .arg("--name=conformance")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls=http://{addr}"))
        .arg(format!("--advertise-client-urls=http://{addr}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!(
            "--initial-cluster=conformance=http://127.0.0.1:{peer}"
        ))
        .arg("--log-level=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start etcd ({}): {e}", bin.display()))?;
    wait_ready(&addr, &mut child, "etcd").await?;
    Ok(Server {
        child,
        addr,
        _dir: dir,
    })
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("serving the etcd API on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "netsy did not report its client address".to_string())?;
    wait_ready(&addr, &mut child, "netsy").await?;
    Ok(Server {
        child,
        addr,
        _dir: dir,
    })
}
