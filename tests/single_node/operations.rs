//! Operations: /health through startup, /metrics as Prometheus text with
//! counters that move, and SIGTERM during writes.

use std::process::{Command, Stdio};

use crate::support::{assert_present, http_get, poll, signal, AckedWrites, Lines, Netsy};

#[test]
fn health_reports_loading_then_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold-loading");
    std::fs::write(&hold, b"").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--dev")
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "127.0.0.1:0")
        .env("NETSY_DATA_DIR", dir.path().join("data"))
        .env("NETSY_FAILPOINT_LOADING", &hold)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Lines::follow(child.stderr.take().unwrap(), None);
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
    let _ = child.kill();
    let _ = child.wait();
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_counters_move() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let scrape = || {
        let (code, body) = http_get(&n.health_addr, "/metrics");
        assert_eq!(code, 200);
        body
    };
    let before = scrape();
    let puts_before = sample(
        &before,
        "netsy_client_requests_total",
        &[("kind", "put"), ("result", "success")],
    );
    let mut c = n.client().await;
    for i in 0..5 {
        c.put(format!("m{i}"), "v", None).await.unwrap();
    }
    c.get("m0", None).await.unwrap();
    let after = scrape();
    assert_eq!(
        sample(
            &after,
            "netsy_client_requests_total",
            &[("kind", "put"), ("result", "success")]
        ),
        puts_before + 5.0
    );
    assert!(
        sample(
            &after,
            "netsy_client_requests_total",
            &[("kind", "range"), ("result", "success")]
        ) >= 1.0
    );
    assert_eq!(sample(&after, "netsy_committed_revision", &[]), 6.0);
    assert_eq!(
        sample(&after, "netsy_state_health", &[("state", "healthy")]),
        1.0
    );
    assert_eq!(
        sample(&after, "netsy_state_primary", &[("state", "active")]),
        1.0
    );
    assert!(
        sample(
            &after,
            "netsy_object_storage_writes_total",
            &[("kind", "chunk"), ("result", "success")]
        ) >= 5.0
    );
    assert!(
        sample(
            &after,
            "grpc_server_handled_total",
            &[("grpc_method", "Put"), ("grpc_code", "OK")]
        ) >= 5.0
    );
    assert!(
        sample(
            &after,
            "netsy_info",
            &[("node_id", "dev-node-1"), ("quorum_config", "disabled")]
        ) == 1.0
    );
    assert!(sample(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(
        after.contains("netsy_loading_stage_duration_seconds_bucket{"),
        "loading stages are timed"
    );
    // Watch gauges follow open streams.
    let (_w, _s) = c.watch("m", None).await.unwrap();
    let with_watch = scrape();
    assert_eq!(sample(&with_watch, "netsy_watches", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_writes_exits_zero_and_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let writes = AckedWrites::start(&n, 4, "/t/").await;
    writes.wait_for(100).await;
    let status = n.terminate();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    let acked = writes.finish().await;
    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
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
