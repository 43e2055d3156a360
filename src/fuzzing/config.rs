//! The JSONC cluster config (parsing, checking, describing it), the values
//! inside it (durations, identifiers, suggestions for unknown keys), and
//! the node's `NETSY_*` environment, from `NAME=value` lines of the input.

use std::collections::BTreeMap;

use crate::config::{
    cluster, duration, env_vars, identifier, jsonc, node_env, suggest, ClusterConfig, Config,
    NodeEnv,
};

/// Lines longer than this are not matched against known names: the edit
/// distance is quadratic (slow in a debug build), and every config key and
/// variable name is shorter.
const MAX_NAME: usize = 48;

/// Lines matched against known names per input, for the same reason.
const MAX_SUGGESTIONS: usize = 1;

/// Input: config text; invalid UTF-8 is read as the lossy conversion.
pub fn config(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
}

fn check(text: &str) {
    if let Ok(json) = jsonc::to_json(text) {
        // Comments become spaces so that JSON errors point at the right
        // line and column: every newline stays where it was.
        assert_eq!(json.len(), text.len());
        let newlines = |s: &str| s.match_indices('\n').map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(newlines(&json), newlines(text));
    }
    match ClusterConfig::parse_lenient(text) {
        Ok((config, problems)) => {
            assert_eq!(ClusterConfig::parse(text).is_ok(), problems.is_empty());
            let _ = config.problems();
            let node = NodeEnv::from_env(&|_| None, true);
            let _ = Config {
                node,
                cluster: config,
                dev: false,
            }
            .describe();
        }
        Err(_) => assert!(ClusterConfig::parse(text).is_err()),
    }

    let known = cluster::key_paths();
    let mut env = BTreeMap::new();
    let mut suggestions = 0;
    for line in text.lines().take(64) {
        if let Ok(d) = duration::parse(line) {
            // What --help and errors print reads back.
            let shown = duration::format(d);
            assert!(duration::parse(&shown).is_ok(), "{d:?} shown as {shown}");
        }
        let _ = identifier::validate("node_id", line);
        let _ = node_env::bind_address("NETSY_BIND_CLIENT", line);
        if line.len() <= MAX_NAME && suggestions < MAX_SUGGESTIONS {
            suggestions += 1;
            let _ = suggest::closest(line, known.iter().map(String::as_str));
        }
        if let Some((name, value)) = line.split_once('=') {
            env.insert(name.to_string(), value.to_string());
        }
    }
    let short = env
        .keys()
        .filter(|n| n.len() <= MAX_NAME)
        .take(MAX_SUGGESTIONS);
    let _ = env_vars::unknown(short.map(String::as_str));
    for dev in [false, true] {
        let node = NodeEnv::from_env(&|name| env.get(name).cloned(), dev);
        let _ = node.problems();
    }
}
