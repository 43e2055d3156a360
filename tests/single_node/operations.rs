//! Operations: /health through startup, /metrics as Prometheus text with
//! counters and request-duration histograms that move, and SIGTERM during
//! writes (on the fs provider and on an S3 bucket).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    assert_present, next_watch_response, poll, signal, start_moto, AckedWrites, Bucket, Lines,
    Netsy, DEADLINE,
};

/// How long one HTTP request to the health listener may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A minimal HTTP GET against the health listener: (status code, body).
/// Connecting, writing and reading are bounded by HTTP_TIMEOUT, so a
/// listener that hangs fails the test instead of stalling it.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().expect("a loopback ip:port");
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut s = std::net::TcpStream::connect_timeout(&sock, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "GET {path} on {addr}: no full answer in {HTTP_TIMEOUT:?}"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("GET {path} on {addr}: {e}"),
        }
    }
    let text = String::from_utf8(buf).expect("a UTF-8 answer");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path} on {addr}: not HTTP: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A child process killed when the test ends, passing or failing.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn health_reports_loading_then_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-loading");
    std::fs::write(&hold, b"").unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_netsy"))
            .arg("--dev")
            .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
            .env("NETSY_BIND_HEALTH", "127.0.0.1:0")
            .env("NETSY_DATA_DIR", dir.path().join("data"))
            .env("NETSY_FAILPOINT_LOADING", &hold)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = Lines::follow(child.0.stderr.take().unwrap(), None);
    let line = log.wait_for("the health listener", |l| {
        l.contains("serving health and metrics on ")
    });
    let addr = line
        .split("serving health and metrics on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let (code, body) = http_get(&addr, "/health");
    assert_eq!((code, body.as_str()), (503, r#"{"status":"loading"}"#));
    std::fs::remove_file(&hold).unwrap();
    poll("healthy", || {
        (http_get(&addr, "/health") == (200, r#"{"status":"healthy"}"#.to_string())).then_some(())
    });
    let (code, _) = http_get(&addr, "/nope");
    assert_eq!(code, 404);
}

/// The samples of one scrape.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text"))
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
        self.0.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The sum of the counter/gauge samples named `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// The +Inf bucket of histogram `name` with `labels` (summed over the
    /// series that match), which must equal its `_count`.
    fn inf_bucket(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than == f64::INFINITY)
                    .map_or(0.0, |b| b.count),
                _ => 0.0,
            })
            .sum()
    }
}

/// Scrapes /metrics until `ready` holds for the scrape, failing at the
/// deadline with the last scrape.
async fn scrape_until(addr: &str, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, body) = http_get(addr, "/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        let scrape = Scrape::parse(&body);
        if ready(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for /metrics to show {what}; last scrape:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const PUT_OK: &[(&str, &str)] = &[("kind", "put"), ("result", "success")];
const RANGE_OK: &[(&str, &str)] = &[("kind", "range"), ("result", "success")];
const GRPC_PUT_OK: &[(&str, &str)] = &[("grpc_method", "Put"), ("grpc_code", "OK")];
const CLIENT_DURATION: &str = "netsy_client_request_duration_seconds";
const GRPC_DURATION: &str = "grpc_server_handling_seconds";

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_counters_move() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let before = scrape_until(&n.health_addr, "a healthy node", |s| {
        s.value("netsy_state_health", &[("state", "healthy")]) == 1.0
    })
    .await;
    let puts = before.value("netsy_client_requests_total", PUT_OK);
    let ranges = before.value("netsy_client_requests_total", RANGE_OK);
    let put_count = |s: &Scrape| s.value(&format!("{CLIENT_DURATION}_count"), &[("kind", "put")]);
    let put_sum = |s: &Scrape| s.value(&format!("{CLIENT_DURATION}_sum"), &[("kind", "put")]);
    let range_count =
        |s: &Scrape| s.value(&format!("{CLIENT_DURATION}_count"), &[("kind", "range")]);
    let grpc_put_count =
        |s: &Scrape| s.value(&format!("{GRPC_DURATION}_count"), &[("grpc_method", "Put")]);
    let (puts_timed, puts_time) = (put_count(&before), put_sum(&before));
    let (ranges_timed, grpc_puts_timed) = (range_count(&before), grpc_put_count(&before));

    let mut c = n.client().await;
    for i in 0..5 {
        c.put(format!("m{i}"), "v", None).await.unwrap();
    }
    c.get("m0", None).await.unwrap();

    let after = scrape_until(&n.health_addr, "the 5 puts and the range", |s| {
        s.value("netsy_client_requests_total", PUT_OK) >= puts + 5.0
            && s.value("netsy_client_requests_total", RANGE_OK) > ranges
            && put_count(s) >= puts_timed + 5.0
            && range_count(s) > ranges_timed
            && grpc_put_count(s) >= grpc_puts_timed + 5.0
            && s.value("grpc_server_handled_total", GRPC_PUT_OK) >= 5.0
            && s.value("netsy_committed_revision", &[]) >= 6.0
            && s.value(
                "netsy_object_storage_writes_total",
                &[("kind", "chunk"), ("result", "success")],
            ) >= 5.0
    })
    .await;
    // Exactly the requests made, no more.
    assert_eq!(
        after.value("netsy_client_requests_total", PUT_OK),
        puts + 5.0
    );
    assert_eq!(after.value("netsy_committed_revision", &[]), 6.0);
    // The request-duration histograms observed every request.
    assert_eq!(put_count(&after), puts_timed + 5.0, "{CLIENT_DURATION}");
    assert!(put_sum(&after) > puts_time, "{CLIENT_DURATION}_sum moved");
    assert_eq!(
        after.inf_bucket(CLIENT_DURATION, &[("kind", "put")]),
        put_count(&after),
        "the +Inf bucket counts every observation"
    );
    assert_eq!(
        grpc_put_count(&after),
        grpc_puts_timed + 5.0,
        "{GRPC_DURATION}"
    );
    assert_eq!(
        after.inf_bucket(GRPC_DURATION, &[("grpc_method", "Put")]),
        grpc_put_count(&after)
    );
    assert_eq!(
        after.value("netsy_state_primary", &[("state", "active")]),
        1.0
    );
    assert_eq!(
        after.value(
            "netsy_info",
            &[("node_id", "dev-node-1"), ("quorum_config", "disabled")]
        ),
        1.0
    );
    assert!(after.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(
        after
            .matching("netsy_loading_stage_duration_seconds", &[])
            .any(|s| matches!(&s.value, prometheus_parse::Value::Histogram(b) if !b.is_empty())),
        "loading stages are timed"
    );
    // Watch gauges follow open streams.
    let (_w, _s) = c.watch("m", None).await.unwrap();
    scrape_until(&n.health_addr, "one watch", |s| {
        s.value("netsy_watches", &[]) == 1.0
    })
    .await;
}

/// Writers put until `node` goes away; SIGTERM it mid-stream. It must exit
/// 0 and the writers must stop within the deadline. Returns every
/// acknowledged write.
async fn terminate_during_writes(node: Netsy, prefix: &str) -> Vec<(String, i64)> {
    let writes = AckedWrites::start(&node, 4, prefix).await;
    writes.wait_for(100).await;
    let status = node.terminate();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let acked = tokio::time::timeout(DEADLINE, writes.finish())
        .await
        .expect("the writers stop once their node is gone");
    assert!(acked.len() >= 100, "{} acknowledged writes", acked.len());
    acked
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_writes_exits_zero_and_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let acked = terminate_during_writes(Netsy::start_dev(dir.path()), "/t/").await;
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    assert_present(&mut c, &acked).await;
}

/// SIGTERM with a watch open: the stream ends with UNAVAILABLE (clients
/// then go to another member) rather than holding the drain, and the node
/// exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_an_open_watch_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let node = Netsy::start_dev(dir.path());
    let mut c = node.client().await;
    let (_watcher, mut events) = c.watch("w", None).await.unwrap();
    c.put("w", "1", None).await.unwrap();
    let first = next_watch_response("the put's event", &mut events).await;
    assert_eq!(first.events().len(), 1);
    let status = tokio::task::spawn_blocking(move || node.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let ended = tokio::time::timeout(DEADLINE, events.message())
        .await
        .expect("the watch stream ends");
    match ended {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            assert_eq!(format!("{:?}", s.code()), "Unavailable", "{s:?}");
            assert_eq!(s.message(), "netsy: the server is shutting down");
        }
        other => panic!("the watch stream ended otherwise: {other:?}"),
    }
}

/// The same on an S3 bucket (moto), restored by a node with an empty data
/// directory: what SIGTERM's drain acknowledged is in the bucket.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_s3_keeps_every_acknowledged_write_in_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Arc::new(start_moto());
    let bucket = Bucket::s3(&moto, "netsy-sigterm");
    let first = Netsy::on_bucket(&dir.path().join("a"), &bucket, dir.path(), "");
    let acked = terminate_during_writes(first, "/s3/").await;
    let fresh_dir = dir.path().join("b");
    assert!(!fresh_dir.exists());
    let fresh = Netsy::on_bucket(&fresh_dir, &bucket, dir.path(), "");
    let mut c = fresh.client().await;
    assert_present(&mut c, &acked).await;
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the graceful drain, so only the second signal can end the process.
    let hold = dir.path().join("hold-draining");
    std::fs::write(&hold, b"").unwrap();
    let opts = crate::support::NetsyOptions {
        env: vec![(
            "NETSY_FAILPOINT_DRAINING".into(),
            hold.display().to_string(),
        )],
        ..Default::default()
    };
    let mut n = Netsy::start(&dir.path().join("data"), opts);
    let pid = n.child.id();
    signal(pid, "TERM");
    n.log.wait_for("the drain to hold", |l| {
        l.contains("fault point draining: holding")
    });
    assert!(n.child.try_wait().unwrap().is_none(), "still draining");
    signal(pid, "INT");
    let status = poll("exit", || n.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(1), "the second signal exits at once");
}

/// The node allocates with jemalloc under the settings `main.rs` gives it:
/// jemalloc's thread that hands freed pages back to the system runs only
/// when those settings were read.
#[test]
fn freed_memory_is_handed_back_by_the_allocators_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let node = Netsy::start_dev(dir.path());
    let pid = node.child.id();
    poll("jemalloc's background thread in the node", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .any(|name| name.trim_end() == "jemalloc_bg_thd")
            .then_some(())
    });
}
