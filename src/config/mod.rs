//! Configuration: per-node `NETSY_*` environment variables plus the shared
//! JSONC cluster config, with the reference's defaults, validation order and
//! error texts. `--dev` supplies a single-node config without any file.

pub mod cluster;
pub mod duration;
pub mod env_vars;
pub mod identifier;
pub mod jsonc;
pub mod node_env;
pub mod suggest;

use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use cluster::{ClusterConfig, Provider};
pub use node_env::NodeEnv;

/// Everything a node runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeEnv,
    pub cluster: ClusterConfig,
    /// Single plain-text node (no TLS, no peers).
    pub dev: bool,
}

impl Config {
    /// Every effective setting as `name = value` lines for the startup log.
    /// Secrets (credentials, key material) are never included; file paths
    /// of keys are.
    pub fn describe(&self) -> Vec<String> {
        let n = &self.node;
        let c = &self.cluster;
        let d = |v: Option<Duration>| v.map(duration::format).unwrap_or_else(|| "unset".into());
        let mut lines = vec![
            format!(
                "mode = {}",
                if self.dev {
                    "dev (plain HTTP/2, no TLS)"
                } else {
                    "production (mTLS)"
                }
            ),
            format!("NETSY_NODE_ID = {}", n.node_id),
            format!("NETSY_CONFIG = {}", n.config_path.as_deref().unwrap_or("")),
            format!("NETSY_DATA_DIR = {}", n.data_dir.display()),
            format!("NETSY_BIND_CLIENT = {}", n.bind_client),
            format!("NETSY_ADVERTISE_CLIENT = {}", n.advertise_client),
            format!("NETSY_BIND_PEER = {}", n.bind_peer),
            format!("NETSY_ADVERTISE_PEER = {}", n.advertise_peer),
            format!("NETSY_BIND_ELECTION = {}", n.bind_election),
            format!("NETSY_ADVERTISE_ELECTION = {}", n.advertise_election),
            format!("NETSY_BIND_HEALTH = {}", n.bind_health),
            format!("NETSY_TLS_CA_CERT = {}", n.tls.ca_cert),
            format!("NETSY_TLS_SERVER_CERT = {}", n.tls.server_cert),
            format!("NETSY_TLS_SERVER_KEY = {}", n.tls.server_key),
            format!("NETSY_TLS_CLIENT_CERT = {}", n.tls.client_cert),
            format!("NETSY_TLS_CLIENT_KEY = {}", n.tls.client_key),
            format!("cluster_id = {}", c.cluster_id),
            format!("storage.provider = {:?}", c.storage.provider),
            format!("storage.bucket_name = {}", c.storage.bucket_name),
            format!("storage.key_prefix = {}", c.storage.key_prefix),
            format!("storage.path = {}", c.storage.path),
            format!("storage.class = {}", c.storage.class),
            format!("storage.encryption = {}", c.storage.encryption),
            format!(
                "storage.kms_key_id = {}",
                if c.storage.kms_key_id.is_empty() {
                    "unset"
                } else {
                    "set"
                }
            ),
            format!("heartbeat_interval = {}", d(c.heartbeat_interval)),
            format!(
                "elector.degradation_count = {}",
                c.elector.degradation_count
            ),
            format!(
                "elector.deregistration_timeout = {}",
                duration::format(c.elector.deregistration_timeout)
            ),
            format!(
                "elector.primary_prior_timeout = {}",
                d(c.elector.primary_prior_timeout)
            ),
            format!("replication.quorum = {}", c.replication.quorum),
            format!(
                "replication.degradation_count = {}",
                c.replication.degradation_count
            ),
            format!(
                "replication.chunk_buffer.threshold_size_mb = {}",
                c.replication.chunk_buffer.threshold_size_mb
            ),
            format!(
                "replication.chunk_buffer.threshold_age_minutes = {}",
                c.replication.chunk_buffer.threshold_age_minutes
            ),
            format!(
                "snapshot.threshold_records = {}",
                c.snapshot.threshold_records
            ),
            format!(
                "snapshot.threshold_size_mb = {}",
                c.snapshot.threshold_size_mb
            ),
            format!(
                "snapshot.threshold_age_minutes = {}",
                c.snapshot.threshold_age_minutes
            ),
            format!(
                "snapshot.cleanup_batch_size = {}",
                c.snapshot.cleanup_batch_size
            ),
            format!(
                "snapshot.cleanup_batch_interval = {}",
                duration::format(c.snapshot.cleanup_batch_interval)
            ),
            format!(
                "snapshot.cleanup_strategy = {:?}",
                c.snapshot.cleanup_strategy
            ),
            format!("compaction_interval = {}", d(c.compaction_interval)),
        ];
        for var in [
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_S3_USE_PATH_STYLE",
        ] {
            if let Ok(v) = std::env::var(var) {
                lines.push(format!("{var} = {v}"));
            }
        }
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            if std::env::var(var).is_ok() {
                lines.push(format!("{var} = (set, not shown)"));
            }
        }
        lines
    }
}

/// One thing wrong with the settings. The message names the setting as the
/// operator writes it: a config key by its JSON path (`storage.bucket_name`),
/// an environment variable by its name (`NETSY_NODE_ID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key's path or the variable's name (`config` for the file itself).
    pub setting: String,
    pub message: String,
}

impl Problem {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every problem found, in the order they are checked; displayed one per
/// line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl Problems {
    /// The messages, one per problem.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(|p| p.message.clone()).collect()
    }
}

/// Cluster id used by `--dev` without a config file.
pub const DEV_CLUSTER_ID: &str = "dev-cluster";

/// Reads and parses a cluster config file (without validating it).
pub fn read_cluster_config(path: &Path) -> Result<ClusterConfig, Problems> {
    ClusterConfig::parse(&read_config_text(path).map_err(|p| Problems(vec![p]))?)
}

fn read_config_text(path: &Path) -> Result<String, Problem> {
    std::fs::read_to_string(path).map_err(|e| {
        Problem::new(
            "config",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })
}

/// The single-node cluster `--dev` runs without a config file: the fs
/// provider under the data dir, objects written synchronously (quorum 0).
pub fn dev_cluster(node: &NodeEnv) -> ClusterConfig {
    let mut c = ClusterConfig::parse("{}").unwrap_or_else(|e| panic!("built-in config: {e}"));
    c.cluster_id = DEV_CLUSTER_ID.to_string();
    c.storage.provider = Provider::Fs;
    c.storage.path = node.data_dir.join("bucket").to_string_lossy().into_owned();
    c.heartbeat_interval = Some(Duration::from_secs(1));
    c.replication.quorum = 0;
    c
}

/// Loads the node's config, reporting every problem found. `config_flag`
/// overrides NETSY_CONFIG. Unknown `NETSY_*` variables are not problems
/// here: a starting node only warns about them ([`env_vars::unknown`]).
pub fn load(
    dev: bool,
    config_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    check(dev, config_flag, env, Vec::new())
}

/// What `netsy --validate` checks: everything [`load`] does, and also that
/// every `NETSY_*` name in `env_names` is a variable netsy knows.
pub fn validate<'a>(
    dev: bool,
    config_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    env_names: impl IntoIterator<Item = &'a str>,
) -> Result<Config, Problems> {
    check(dev, config_flag, env, env_vars::unknown(env_names))
}

/// Problems in the reference's order: the config file's path and syntax,
/// the node's variables (then `unknown_env`), the config's keys and types,
/// then its rules.
fn check(
    dev: bool,
    config_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    unknown_env: Vec<Problem>,
) -> Result<Config, Problems> {
    let node = NodeEnv::from_env(env, dev);
    let path = config_flag
        .map(str::to_string)
        .or_else(|| node.config_path.clone());
    let mut problems = Vec::new();
    let parsed = match (&path, dev) {
        (Some(p), _) => read_config_text(Path::new(p))
            .and_then(|text| ClusterConfig::parse_lenient(&text))
            .map_err(|p| problems.push(p))
            .ok(),
        (None, true) => Some((dev_cluster(&node), Vec::new())),
        (None, false) => {
            problems.push(Problem::new(
                env_vars::CONFIG.name,
                "config file path required (use --config flag or NETSY_CONFIG env var)",
            ));
            None
        }
    };
    problems.extend(node.problems());
    problems.extend(unknown_env);
    let cluster = parsed.map(|(cluster, parse_problems)| {
        // A key already reported (a bad type, say) holds its default now;
        // its rule would only repeat the complaint.
        let reported: Vec<String> = parse_problems.iter().map(|p| p.setting.clone()).collect();
        problems.extend(parse_problems);
        problems.extend(
            cluster
                .problems()
                .into_iter()
                .filter(|p| !reported.contains(&p.setting)),
        );
        cluster
    });
    match cluster {
        Some(cluster) if problems.is_empty() => Ok(Config { node, cluster, dev }),
        _ => Err(Problems(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    const GOOD: &str = r#"{"cluster_id": "c", "storage": {"bucket_name": "b"}, "heartbeat_interval": "1s",
        "replication": {"chunk_buffer": {"threshold_age_minutes": 1}}}"#;

    #[test]
    fn messages_name_variables_and_keys_as_written() {
        let file = config_file(GOOD);
        let path = file.path().to_str().unwrap();
        let err = load(false, Some(path), &env(&[])).unwrap_err();
        assert_eq!(err.messages(), ["NETSY_NODE_ID is required"]);
        assert_eq!(err.0[0].setting, "NETSY_NODE_ID");
        let err = load(false, None, &env(&[("NETSY_NODE_ID", "n1")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file path required (use --config flag or NETSY_CONFIG env var)"
        );
        let ok = load(
            false,
            None,
            &env(&[("NETSY_NODE_ID", "n1"), ("NETSY_CONFIG", path)]),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn every_problem_is_reported_one_per_line() {
        // A misspelt section, a value of the wrong type (whose rule is then
        // not repeated), a broken rule, a bad variable and an unknown one.
        let file = config_file(
            r#"{"cluster_id": "c", "storgae": {"bucket_name": "b"}, "heartbeat_interval": true,
                "replication": {"quorum": 0}}"#,
        );
        let path = file.path().to_str().unwrap();
        let vars = [("NETSY_NODE_ID", "Node_1"), ("NETSY_NODEID", "n1")];
        let err = validate(false, Some(path), &env(&vars), vars.map(|(k, _)| k)).unwrap_err();
        let want = [
            "NETSY_NODE_ID must be lowercase alphanumeric with hyphens, no leading/trailing hyphens",
            "unknown environment variable NETSY_NODEID; did you mean NETSY_NODE_ID?",
            "unknown key storgae in the config; did you mean storage?",
            "heartbeat_interval: invalid duration type",
            "storage.bucket_name is required",
        ];
        assert_eq!(err.messages(), want);
        assert_eq!(err.to_string(), want.join("\n"));
        // A starting node only warns about unknown variables.
        let err = load(false, Some(path), &env(&vars)).unwrap_err();
        assert_eq!(err.messages().len(), want.len() - 1);
    }

    #[test]
    fn an_unreadable_config_still_reports_the_variables() {
        let err = validate(
            false,
            Some("/nonexistent/netsy.jsonc"),
            &env(&[]),
            ["NETSY_CONFG"],
        )
        .unwrap_err();
        let messages = err.messages();
        assert!(
            messages[0].starts_with("cannot read config file /nonexistent/netsy.jsonc"),
            "{messages:?}"
        );
        assert_eq!(
            &messages[1..],
            [
                "NETSY_NODE_ID is required",
                "unknown environment variable NETSY_CONFG; did you mean NETSY_CONFIG?",
            ]
        );
        let file = config_file("{ not json");
        let err = validate(false, file.path().to_str(), &env(&[]), []).unwrap_err();
        assert!(
            err.messages()[0].starts_with("config is not valid JSON"),
            "{err}"
        );
        assert_eq!(err.messages().len(), 2, "{err}");
    }

    #[test]
    fn dev_mode_needs_no_file() {
        let c = load(true, None, &env(&[("NETSY_DATA_DIR", "/tmp/d")])).unwrap();
        assert_eq!(c.cluster.cluster_id, DEV_CLUSTER_ID);
        assert_eq!(c.node.node_id, "dev-node-1");
    }
}
