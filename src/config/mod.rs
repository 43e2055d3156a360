//! Configuration: per-node `NETSY_*` environment variables plus the shared
//! JSONC cluster config, with the reference's defaults, validation order and
//! error texts. `--dev` supplies a single-node config without any file.

pub mod cluster;
pub mod duration;
pub mod identifier;
pub mod jsonc;
pub mod node_env;

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

/// Cluster id used by `--dev` without a config file.
pub const DEV_CLUSTER_ID: &str = "dev-cluster";

/// Reads and parses a cluster config file.
pub fn read_cluster_config(path: &Path) -> Result<ClusterConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    ClusterConfig::parse(&text)
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

/// Loads the node's config. `config_flag` overrides NETSY_CONFIG.
pub fn load(
    dev: bool,
    config_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let node = NodeEnv::from_env(env, dev);
    let path = config_flag
        .map(str::to_string)
        .or_else(|| node.config_path.clone());
    let cluster = match (&path, dev) {
        (Some(p), _) => read_cluster_config(Path::new(p))?,
        (None, true) => dev_cluster(&node),
        (None, false) => {
            return Err(
                "config file path required (use --config flag or NETSY_CONFIG env var)".into(),
            )
        }
    };
    node.validate()?;
    cluster.validate()?;
    Ok(Config { node, cluster, dev })
}
