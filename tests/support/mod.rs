//! Test support: starts the real `netsy` binary on loopback with a fresh
//! data directory, finds the test tools installed by scripts/setup, and
//! polls conditions with deadlines instead of sleeping.

#![allow(dead_code)]

pub mod cluster;
pub mod traffic;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen quickly.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test tool installed by scripts/setup into .tools/bin (or on PATH).
pub fn tool(name: &str) -> PathBuf {
    let local = repo().join(".tools/bin").join(name);
    if local.exists() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{name} not found: run ./scripts/setup first");
}

/// Lines a child process printed, shared with a reader thread.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Lines {
    pub fn follow(
        stream: impl std::io::Read + Send + 'static,
        echo: Option<&'static str>,
    ) -> Lines {
        let lines = Lines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(prefix) = echo {
                    eprintln!("[{prefix}] {line}");
                }
                let (m, cv) = &*l.inner;
                m.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        lines
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Waits until some line satisfies `f` and returns it.
    pub fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let (m, cv) = &*self.inner;
        let deadline = Instant::now() + DEADLINE;
        let mut seen = m.lock().unwrap();
        loop {
            if let Some(l) = seen.iter().find(|l| f(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    seen.join("\n")
                );
            }
            seen = cv.wait_timeout(seen, deadline - now).unwrap().0;
        }
    }

    /// Waits until at least `n` lines arrived.
    pub fn wait_count(&self, n: usize) -> Vec<String> {
        let (m, cv) = &*self.inner;
        let deadline = Instant::now() + DEADLINE;
        let mut seen = m.lock().unwrap();
        while seen.len() < n {
            let now = Instant::now();
            if now >= deadline {
                panic!("timed out waiting for {n} lines; got:\n{}", seen.join("\n"));
            }
            seen = cv.wait_timeout(seen, deadline - now).unwrap().0;
        }
        seen.clone()
    }
}

/// A running netsy process.
pub struct Netsy {
    pub child: Child,
    pub data_dir: PathBuf,
    pub client_addr: String,
    pub health_addr: String,
    /// The peer listener (production mode only).
    pub peer_addr: Option<String>,
    pub log: Lines,
}

/// How to start a node.
#[derive(Clone, Default)]
pub struct NetsyOptions {
    pub config: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Production mode (no --dev): TLS, the NETSY_* environment as deployed.
    pub production: bool,
}

impl Netsy {
    /// `netsy --dev` on loopback ephemeral ports with its own data dir.
    pub fn start_dev(data_dir: &Path) -> Netsy {
        Netsy::start(data_dir, NetsyOptions::default())
    }

    pub fn start(data_dir: &Path, opts: NetsyOptions) -> Netsy {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_netsy"));
        if !opts.production {
            cmd.arg("--dev");
        }
        if let Some(c) = &opts.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("NETSY_BIND_CLIENT", "127.0.0.1:0")
            .env("NETSY_BIND_PEER", "127.0.0.1:0")
            .env("NETSY_BIND_ELECTION", "127.0.0.1:0")
            .env("NETSY_BIND_HEALTH", "127.0.0.1:0")
            .env("NETSY_DATA_DIR", data_dir)
            .env("RUST_LOG", "info")
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start netsy");
        let log = Lines::follow(child.stderr.take().unwrap(), None);
        let client = log.wait_for("the client listener", |l| {
            l.contains("serving the etcd API on ")
        });
        let client_addr = after(&client, "serving the etcd API on ");
        let health = log.wait_for("the health listener", |l| {
            l.contains("serving health and metrics on ")
        });
        let health_addr = after(&health, "serving health and metrics on ");
        let peer_addr = log
            .snapshot()
            .iter()
            .find(|l| l.contains("serving the peer API on "))
            .map(|l| after(l, "serving the peer API on "));
        Netsy {
            child,
            data_dir: data_dir.to_path_buf(),
            client_addr,
            health_addr,
            peer_addr,
            log,
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "netsy did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs etcdctl (3.5.1) against this node.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.client_addr, args, None)
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        etcdctl(&self.client_addr, args, Some(stdin))
    }

    /// Runs etcdctl and returns stdout, failing the test on a non-zero exit.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// An etcd-client connected to this node (within the deadline).
    pub async fn client(&self) -> etcd_client::Client {
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(DEADLINE);
        tokio::time::timeout(
            DEADLINE,
            etcd_client::Client::connect([self.client_addr.as_str()], Some(opts)),
        )
        .await
        .expect("etcd-client connects within the deadline")
        .expect("etcd-client connects")
    }

    pub async fn channel(&self) -> netsy::grpc::Channel {
        netsy::grpc::Channel::connect(&self.client_addr)
            .await
            .expect("grpc connect")
    }
}

impl Drop for Netsy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

fn after(line: &str, marker: &str) -> String {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace().next().unwrap().to_string()
}

pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(tool("etcdctl"));
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => cmd.stdin(Stdio::null()).output().unwrap(),
        Some(input) => {
            use std::io::Write;
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

/// Polls `f` until it returns Some, or fails the test at the deadline.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that the node's `/metrics` (health listener `health_addr`)
/// has exactly `line`.
pub fn assert_metric_line(health_addr: &str, line: &str) {
    let (_, metrics) = http_get(health_addr, "/metrics");
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} not in:\n{metrics}"
    );
}

/// A minimal HTTP GET against the health listener: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

pub use netsy::launch::Moto;

/// Starts moto from the project's tools; panics with the fix when missing.
pub fn start_moto() -> Moto {
    Moto::start(&tool("moto_server")).unwrap_or_else(|e| panic!("{e} (run ./scripts/setup)"))
}

/// Creates a bucket on moto; panics when it cannot.
pub fn create_bucket(moto: &Moto, name: &str) {
    moto.create_bucket(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Where a test node keeps its objects.
pub enum Bucket {
    /// A directory (the fs provider).
    Fs(PathBuf),
    /// A bucket on a moto server.
    S3 { moto: Arc<Moto>, name: String },
}

impl Bucket {
    pub fn fs(dir: &Path) -> Bucket {
        Bucket::Fs(dir.to_path_buf())
    }

    pub fn s3(moto: &Arc<Moto>, name: &str) -> Bucket {
        create_bucket(moto, name);
        Bucket::S3 {
            moto: moto.clone(),
            name: name.to_string(),
        }
    }

    /// The `storage` block of a cluster config for this bucket.
    pub fn storage_json(&self) -> String {
        match self {
            Bucket::Fs(dir) => format!(
                r#"{{"provider": "fs", "path": {:?}}}"#,
                dir.display().to_string()
            ),
            Bucket::S3 { name, .. } => format!(r#"{{"provider": "s3", "bucket_name": "{name}"}}"#),
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Bucket::Fs(_) => vec![],
            Bucket::S3 { moto, .. } => moto.env(),
        }
    }

    /// Writes a dev-mode cluster config using this bucket; `extra` is
    /// spliced into the top-level object (e.g. snapshot thresholds).
    pub fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        let path = dir.join("cluster.jsonc");
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",\n  {extra}")
        };
        std::fs::write(
            &path,
            format!(
                "{{\n  // written by the test\n  \"cluster_id\": \"test-cluster\",\n  \"storage\": {},\n  \"heartbeat_interval\": \"1s\",\n  \"replication\": {{\"quorum\": 0}}{extra}\n}}\n",
                self.storage_json()
            ),
        )
        .unwrap();
        path
    }

    /// Direct access to the objects, through netsy's own providers.
    pub fn store(&self) -> Arc<dyn netsy::objstore::ObjectStore> {
        let text = format!(
            r#"{{"cluster_id": "x", "storage": {}}}"#,
            self.storage_json()
        );
        let cfg = netsy::config::ClusterConfig::parse(&text).unwrap();
        let env: std::collections::HashMap<String, String> = self.env().into_iter().collect();
        netsy::objstore::from_config(
            &cfg.storage,
            &move |k: &str| env.get(k).cloned(),
            &Default::default(),
        )
        .unwrap()
    }
}

impl Netsy {
    /// `--dev --config` on a bucket: a lone node whose permanent store is it.
    pub fn on_bucket(data_dir: &Path, bucket: &Bucket, config_dir: &Path, extra: &str) -> Netsy {
        Netsy::start(
            data_dir,
            NetsyOptions {
                config: Some(bucket.config(config_dir, extra)),
                env: bucket.env(),
                production: false,
            },
        )
    }
}

/// Runs `netsy --dev --config` expecting it to fail; returns its stderr.
pub fn start_fails(data_dir: &Path, bucket: &Bucket, config_dir: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_netsy"));
    cmd.args(["--dev", "--config"])
        .arg(bucket.config(config_dir, ""))
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "")
        .env("NETSY_DATA_DIR", data_dir)
        .envs(bucket.env());
    let (status, stderr) = run_refusing(cmd).unwrap();
    assert!(!status.success(), "netsy was expected to refuse to start");
    stderr
}

/// Runs a netsy command that is expected to refuse to start: waits for it
/// to exit, failing if it serves first or still runs at the deadline, and
/// returns its exit status and all it wrote to stderr.
pub fn run_refusing(mut cmd: Command) -> std::io::Result<(std::process::ExitStatus, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (lines, stderr) = (lines.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let served = lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("serving the ") || l.contains("serving health"));
        if served || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "netsy was expected to refuse to start but {}:\n{}",
                if served {
                    "it served"
                } else {
                    "it still ran at the deadline"
                },
                lines.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The pipe closes when netsy exits: the reader ends with all of it.
    reader.join().unwrap();
    let stderr = lines.lock().unwrap().join("\n");
    Ok((status, stderr))
}

/// Polls an async condition until it returns Some, or fails at the deadline.
pub async fn poll_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The watch stream's next response within DEADLINE; fails the test,
/// naming `what` was awaited, when none comes, the stream fails or ends.
pub async fn next_watch_response(
    what: &str,
    events: &mut etcd_client::WatchStream,
) -> etcd_client::WatchResponse {
    match tokio::time::timeout(DEADLINE, events.message()).await {
        Err(_) => panic!("timed out waiting for {what}"),
        Ok(Err(e)) => panic!("the watch stream failed while waiting for {what}: {e}"),
        Ok(Ok(None)) => panic!("the watch stream ended while waiting for {what}"),
        Ok(Ok(Some(response))) => response,
    }
}

/// Writers putting unique keys until their node goes away, recording every
/// acknowledged write (key, revision): the input of crash-safety checks.
pub struct AckedWrites {
    pub acked: Arc<Mutex<Vec<(String, i64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AckedWrites {
    pub async fn start(node: &Netsy, writers: usize, prefix: &str) -> AckedWrites {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let mut c = node.client().await;
            let (acked, prefix) = (acked.clone(), prefix.to_string());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("{prefix}{w}/{i}");
                    match c.put(key.clone(), "v", None).await {
                        Ok(r) => acked
                            .lock()
                            .unwrap()
                            .push((key, r.header().unwrap().revision())),
                        Err(_) => return,
                    }
                }
            }));
        }
        AckedWrites { acked, tasks }
    }

    /// Waits until at least `n` writes were acknowledged.
    pub async fn wait_for(&self, n: usize) {
        poll_async("acknowledged writes", || async {
            (self.acked.lock().unwrap().len() >= n).then_some(())
        })
        .await;
    }

    /// Waits for the writers to stop (their node went away) and returns
    /// every acknowledged write.
    pub async fn finish(self) -> Vec<(String, i64)> {
        for t in self.tasks {
            let _ = t.await;
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Asserts that every acknowledged write is present at its revision.
pub async fn assert_present(c: &mut etcd_client::Client, acked: &[(String, i64)]) {
    for (key, rev) in acked {
        let got = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(
            got.kvs().first().map(|kv| kv.mod_revision()),
            Some(*rev),
            "acknowledged write {key} at {rev}"
        );
    }
}

/// How many keys are under `prefix`.
pub async fn count_prefix(c: &mut etcd_client::Client, prefix: &str) -> i64 {
    c.get(
        prefix,
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        ),
    )
    .await
    .unwrap()
    .count()
}

/// Every key's latest state plus the revision, as comparable text.
pub async fn fingerprint(c: &mut etcd_client::Client) -> Vec<String> {
    let all = c
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let mut out = vec![format!("revision {}", all.header().unwrap().revision())];
    out.extend(all.kvs().iter().map(|kv| {
        format!(
            "{} = {} (create {}, mod {}, version {})",
            kv.key_str().unwrap(),
            kv.value_str().unwrap(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        )
    }));
    out
}
