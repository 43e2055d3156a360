//! The deploy/ folder stays true: the systemd unit verifies, the env and
//! config examples pass `netsy --validate`, the Nstance example parses and
//! wires the certificates netsy needs, and the Helm chart is well-formed.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use support::repo;

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/netsy.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/netsy --config /etc/netsy/config.jsonc"));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/netsy",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // Verify the unit as written, with ExecStart pointing at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netsy.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/netsy", env!("CARGO_BIN_EXE_netsy")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (run ./scripts/setup)");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// KEY=value lines of an env file (comments and blanks skipped).
fn env_file(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn env_and_config_examples_validate() {
    let env = env_file(&repo().join("deploy/netsy.env.example"));
    assert!(env.iter().any(|(k, _)| k == "NETSY_NODE_ID"));
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--validate")
        .arg(repo().join("deploy/config.jsonc"))
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Config is valid.\n");
    // The check is real: a bad node id fails it.
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--validate")
        .arg(repo().join("deploy/config.jsonc"))
        .env_clear()
        .envs(env)
        .env("NETSY_NODE_ID", "Node_1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Validation failed: node_id"));
    // Every key of the cluster config is documented with a comment.
    let config = std::fs::read_to_string(repo().join("deploy/config.jsonc")).unwrap();
    for key in [
        "cluster_id",
        "bucket_name",
        "heartbeat_interval",
        "quorum",
        "threshold_records",
        "compaction_interval",
    ] {
        let line = config
            .lines()
            .position(|l| l.contains(&format!("\"{key}\"")))
            .unwrap();
        assert!(
            config
                .lines()
                .nth(line - 1)
                .unwrap()
                .trim_start()
                .starts_with("//"),
            "{key} has no comment"
        );
    }
}

#[test]
fn nstance_example_wires_netsy_certificates_and_settings() {
    let text = std::fs::read_to_string(repo().join("deploy/nstance/netsy.jsonc")).unwrap();
    let json = netsy::config::jsonc::to_json(&text).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSONC");
    let uri = v["certificates"]["netsy-server"]["uri"][0]
        .as_str()
        .unwrap();
    assert_eq!(
        uri,
        "netsy://{{ .Vars.NetsyClusterID }}/peer/{{ .Instance.ID }}"
    );
    assert_eq!(v["certificates"]["netsy-peer"]["kind"], "client");
    let files = &v["templates"]["netsy"]["files"];
    let env = &files["netsy.env"]["template"];
    for var in [
        "NETSY_NODE_ID",
        "NETSY_TLS_CA_CERT",
        "NETSY_TLS_SERVER_KEY",
        "NETSY_TLS_CLIENT_CERT",
        "NETSY_CONFIG",
    ] {
        assert!(env.get(var).is_some(), "{var}");
    }
    // The delivered cluster config is one netsy accepts.
    let cluster = files["netsy.json"]["template"]
        .to_string()
        .replace("{{ .Vars.NetsyClusterID }}", "prod-cluster")
        .replace("{{ .Vars.NetsyBucket }}", "netsy-prod");
    let parsed = netsy::config::ClusterConfig::parse(&cluster).unwrap();
    parsed.validate().unwrap();
    assert_eq!(v["groups"]["default"]["netsy"]["size"], 3);
    let script = repo().join("deploy/nstance/userdata.sh");
    let out = Command::new("sh").arg("-n").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "userdata.sh has a syntax error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn helm_chart_is_well_formed() {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/python/check_helm_chart.py"))
        .arg(repo().join("deploy/helm"))
        .output()
        .expect("the project venv (run ./scripts/setup)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("StatefulSet"));
}
