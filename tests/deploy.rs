//! The deploy/ folder stays true: the systemd unit verifies without a
//! warning, the env and config examples pass `netsy --validate`, the
//! Nstance example parses and wires the certificates netsy needs, and the
//! Helm chart is well-formed with every value documented. Also
//! `netsy --version`, which the deployed binary answers.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use support::repo;

/// What `systemd-analyze verify` objects to in `unit` (with ExecStart
/// pointed at the built binary): a failed exit and every output line about
/// our unit. systemd-analyze exits 0 for unknown keys and unparsable values
/// and only prints a warning, so the lines are what matters. Lines that do
/// not mention netsy are about the environment (other units on the host);
/// they are shown but not held against the unit.
fn systemd_verify_problems(unit: &str) -> Vec<String> {
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
    let mut problems = Vec::new();
    if !out.status.success() {
        problems.push(format!("systemd-analyze verify exited with {}", out.status));
    }
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("netsy") || line.contains(&*dir.path().to_string_lossy()) {
            problems.push(line.to_string());
        } else {
            eprintln!("systemd-analyze, not about our unit (ignored): {line}");
        }
    }
    problems
}

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
    // The unit as written: no failure and no warning.
    let problems = systemd_verify_problems(&unit);
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");

    // The check bites: an unknown key and a bad value (both of which leave
    // systemd-analyze's exit status at 0) are reported.
    assert!(unit.contains("[Service]\n") && unit.contains("\nRestart=always\n"));
    let bogus = unit.replace("[Service]\n", "[Service]\nBogusKey=1\n");
    let problems = systemd_verify_problems(&bogus);
    assert!(
        problems.iter().any(|l| l.contains("BogusKey")),
        "an unknown key went unnoticed: {problems:#?}"
    );
    let bad_value = unit.replace("\nRestart=always\n", "\nRestart=sometimes\n");
    let problems = systemd_verify_problems(&bad_value);
    assert!(
        problems.iter().any(|l| l.contains("sometimes")),
        "a bad value went unnoticed: {problems:#?}"
    );
}

#[test]
fn version_prints_version_commit_and_build_date() {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    assert!(
        words.contains(&env!("CARGO_PKG_VERSION")),
        "no version {} in {text:?}",
        env!("CARGO_PKG_VERSION")
    );
    let is_commit = |w: &str| w.len() >= 7 && w.chars().all(|c| c.is_ascii_hexdigit());
    assert!(
        words.iter().any(|w| is_commit(w)),
        "no git commit (7+ hex digits) in {text:?}"
    );
    let is_date = |w: &str| {
        let p: Vec<&str> = w.split('-').collect();
        p.len() == 3
            && [4, 2, 2]
                .iter()
                .zip(&p)
                .all(|(n, s)| s.len() == *n && s.chars().all(|c| c.is_ascii_digit()))
            && (1..=12).contains(&p[1].parse::<u32>().unwrap())
            && (1..=31).contains(&p[2].parse::<u32>().unwrap())
    };
    assert!(
        words.iter().any(|w| is_date(w)),
        "no YYYY-MM-DD build date in {text:?}"
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
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Validation failed: NETSY_NODE_ID must be lowercase alphanumeric with hyphens, no leading/trailing hyphens\n"
    );
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
    // Every variable it delivers is one netsy knows.
    let names: Vec<&str> = env
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(netsy::config::env_vars::unknown(names), []);
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

/// Runs tests/python/check_helm_chart.py on a chart and its README.
fn check_chart(chart: &std::path::Path, readme: &std::path::Path) -> std::process::Output {
    Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/python/check_helm_chart.py"))
        .arg(chart)
        .arg(readme)
        .output()
        .expect("the project venv (run ./scripts/setup)")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn helm_chart_is_well_formed_and_its_values_documented() {
    let readme = repo().join("deploy/README.md");
    let out = check_chart(&repo().join("deploy/helm"), &readme);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("StatefulSet"));

    // The documentation check bites: a value without a comment, and a
    // commented value missing from the README's table, both fail it.
    let values = std::fs::read_to_string(repo().join("deploy/helm/values.yaml")).unwrap();
    for (extra, expected) in [
        ("\nuncommentedKey: 1\n", "uncommentedKey has no comment"),
        (
            "\n# A value the README does not list.\nundocumentedKey: 1\n",
            "undocumentedKey is not in the README",
        ),
        (
            "\n# A nested value the README does not list.\ntls2:\n  # Its leaf.\n  leaf: 1\n",
            "tls2.leaf is not in the README",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("helm");
        copy_dir(&repo().join("deploy/helm"), &chart);
        std::fs::write(chart.join("values.yaml"), format!("{values}{extra}")).unwrap();
        let out = check_chart(&chart, &readme);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{extra:?} was not reported as {expected:?}: {stderr}"
        );
    }
}

/// Every file under `dir` (recursively, not following links) with its
/// modification time and, for links, their target.
fn listing(dir: &std::path::Path) -> Vec<(String, std::time::SystemTime, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            if meta.is_dir() {
                todo.push(e.path());
            }
            out.push((
                e.path().display().to_string(),
                meta.modified().unwrap(),
                target,
            ));
        }
    }
    out.sort();
    out
}

/// scripts/setup leaves the machine alone: it never kills processes by name
/// or touches services, and a second run (the suite has just run it once)
/// changes nothing it installed.
#[test]
fn setup_is_idempotent_and_leaves_the_machine_alone() {
    for script in ["scripts/setup", "scripts/test", ".ci/run"] {
        let text = std::fs::read_to_string(repo().join(script)).unwrap();
        for word in ["pkill", "killall", "systemctl"] {
            assert!(!text.contains(word), "{script} uses {word}");
        }
    }
    let setup = || {
        let out = Command::new(repo().join("scripts/setup"))
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    setup();
    let tools = repo().join(".tools");
    let marker = repo().join(".venv/.requirements.installed");
    let before = (
        listing(&tools),
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
    );
    let second = setup();
    assert_eq!(
        second
            .lines()
            .filter(|l| !l.starts_with("setup: ready"))
            .count(),
        0,
        "the second run installed something: {second}"
    );
    let after = (
        listing(&tools),
        std::fs::metadata(&marker).unwrap().modified().unwrap(),
    );
    assert_eq!(before, after, "the second run changed .tools or .venv");
}
