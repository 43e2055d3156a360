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
