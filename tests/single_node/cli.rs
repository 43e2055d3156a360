//! The command line around a node: `--validate` reports every problem with
//! the config and the environment, a starting node warns about unknown
//! `NETSY_*` variables, and `--help` works for netsy and its subcommands.

use std::process::{Command, Output};

use crate::support::{Netsy, NetsyOptions};

fn netsy(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config with two mistakes: a misspelt key in a section and a value
/// its rule refuses.
const TWO_MISTAKES: &str = r#"{
  // fs bucket, single node
  "cluster_id": "demo",
  "storage": {"provider": "fs", "path": "bucket"},
  "heartbeat_interval": "1s",
  "replication": {"quorum": -2, "chunk_buffer": {"threshold_age_minutes": 1}},
  "snapshot": {"treshold_records": 100},
}"#;

#[test]
fn validate_prints_every_problem_one_per_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netsy.jsonc");
    std::fs::write(&path, TWO_MISTAKES).unwrap();
    let path = path.to_str().unwrap();

    let out = netsy(&["--validate", path], &[("NETSY_NODE_ID", "node-1")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stdout), "", "nothing claims the config is valid");
    assert_eq!(
        text(&out.stderr),
        "Validation failed: unknown key snapshot.treshold_records in the config; did you mean snapshot.threshold_records?\n\
         Validation failed: replication.quorum must be -1 (majority), 0 (disabled) or a positive count\n"
    );

    // An unknown variable and a missing node id join the list.
    let out = netsy(&["--validate", path], &[("NETSY_NODEID", "node-1")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "Validation failed: NETSY_NODE_ID is required",
            "Validation failed: unknown environment variable NETSY_NODEID; did you mean NETSY_NODE_ID?",
            "Validation failed: unknown key snapshot.treshold_records in the config; did you mean snapshot.threshold_records?",
            "Validation failed: replication.quorum must be -1 (majority), 0 (disabled) or a positive count",
        ]
    );

    // Fixed, it passes, with the variables tests set known to it.
    let fixed = TWO_MISTAKES
        .replace("-2", "-1")
        .replace("treshold_records", "threshold_records");
    std::fs::write(path, fixed).unwrap();
    let out = netsy(
        &["--validate", path],
        &[
            ("NETSY_NODE_ID", "node-1"),
            ("NETSY_FAILPOINT_LOADING", "/nonexistent"),
            ("NETSY_TEST_ELECTION_SPEEDUP", "10"),
            ("NETSY_LAUNCH_KEEP", "1"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Config is valid.\n");
}

#[test]
fn a_starting_node_warns_once_about_each_unknown_variable() {
    let dir = tempfile::tempdir().unwrap();
    let node = Netsy::start(
        dir.path(),
        NetsyOptions {
            env: vec![
                ("NETSY_DATADIR".into(), "/tmp/elsewhere".into()),
                ("NETSY_COLOUR".into(), "blue".into()),
                ("NETSY_FAILPOINT_NOWHERE".into(), "/nonexistent".into()),
            ],
            ..Default::default()
        },
    );
    let unknown: Vec<String> = node
        .log
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("unknown environment variable"))
        .collect();
    assert_eq!(unknown.len(), 2, "{unknown:#?}");
    assert!(
        unknown[0].contains("WARN")
            && unknown[0].ends_with("unknown environment variable NETSY_COLOUR"),
        "{unknown:#?}"
    );
    assert!(
        unknown[1].contains("WARN")
            && unknown[1].ends_with(
                "unknown environment variable NETSY_DATADIR; did you mean NETSY_DATA_DIR?"
            ),
        "{unknown:#?}"
    );
    // It started all the same: Netsy::start saw it serve.
    drop(node);
}

#[test]
fn help_lists_every_variable_with_its_default() {
    for flag in ["--help", "-h"] {
        let out = netsy(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let help = text(&out.stdout);
        assert!(help.starts_with("usage: netsy"), "{help}");
        for var in netsy::config::env_vars::ALL {
            assert!(help.contains(&var.display_name()), "{}: {help}", var.name);
        }
        let line = |name: &str| {
            help.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no line for {name} in {help}"))
                .to_string()
        };
        assert!(line("NETSY_BIND_CLIENT").contains(":2378 (--dev 127.0.0.1:2378)"));
        assert!(line("NETSY_DATA_DIR").contains("/var/lib/netsy"));
        assert!(line("NETSY_FAILPOINT_<NAME>").contains("tests only"));
    }
}

#[test]
fn subcommands_print_their_help() {
    for (command, words) in [
        ("certs", ["usage: netsy certs", "--cluster ID", "--out DIR"]),
        ("inspect", ["usage: netsy inspect", "FILE", "OBJECT-KEY"]),
    ] {
        for flag in ["--help", "-h"] {
            let out = netsy(&[command, flag], &[]);
            assert_eq!(out.status.code(), Some(0), "{command} {flag}: {out:?}");
            let help = text(&out.stdout);
            for word in words {
                assert!(help.contains(word), "{command} {flag}: {help}");
            }
            assert_eq!(text(&out.stderr), "", "{command} {flag}");
        }
    }
}
