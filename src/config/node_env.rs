//! Per-node settings from `NETSY_*` environment variables, with the
//! reference's defaults (or the dev-mode ones) from [`super::env_vars`].

use std::path::PathBuf;

use super::env_vars::{self, EnvVar};
use super::{identifier, Problem};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEnv {
    pub config_path: Option<String>,
    pub node_id: String,
    pub bind_client: String,
    pub advertise_client: String,
    pub bind_peer: String,
    pub advertise_peer: String,
    pub bind_election: String,
    pub advertise_election: String,
    /// Empty disables the health/metrics listener.
    pub bind_health: String,
    pub tls: TlsPaths,
    pub data_dir: PathBuf,
    pub debug: bool,
}

impl NodeEnv {
    /// Reads the environment through `get` (injectable for tests), with the
    /// defaults of [`env_vars`] for the mode. A set but empty variable counts
    /// as set.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>, dev: bool) -> NodeEnv {
        let var = |v: &EnvVar| get(v.name).unwrap_or_else(|| v.default_for(dev).to_string());
        let path = |v: &EnvVar| resolve(&var(v));
        NodeEnv {
            config_path: get(env_vars::CONFIG.name),
            node_id: var(&env_vars::NODE_ID),
            bind_client: var(&env_vars::BIND_CLIENT),
            advertise_client: var(&env_vars::ADVERTISE_CLIENT),
            bind_peer: var(&env_vars::BIND_PEER),
            advertise_peer: var(&env_vars::ADVERTISE_PEER),
            bind_election: var(&env_vars::BIND_ELECTION),
            advertise_election: var(&env_vars::ADVERTISE_ELECTION),
            bind_health: var(&env_vars::BIND_HEALTH),
            tls: TlsPaths {
                ca_cert: path(&env_vars::TLS_CA_CERT),
                server_cert: path(&env_vars::TLS_SERVER_CERT),
                server_key: path(&env_vars::TLS_SERVER_KEY),
                client_cert: path(&env_vars::TLS_CLIENT_CERT),
                client_key: path(&env_vars::TLS_CLIENT_KEY),
            },
            data_dir: PathBuf::from(path(&env_vars::DATA_DIR)),
            debug: var(&env_vars::DEBUG) == "true",
        }
    }

    /// Every problem with the node's variables, each naming its variable.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let node_id = env_vars::NODE_ID.name;
        if let Err(e) = identifier::validate(node_id, &self.node_id) {
            out.push(Problem::new(node_id, e));
        }
        let bind_client = env_vars::BIND_CLIENT.name;
        if self.bind_client.is_empty() {
            out.push(Problem::new(
                bind_client,
                format!("{bind_client} must not be empty"),
            ));
        } else if let Err(e) = bind_address(bind_client, &self.bind_client) {
            out.push(Problem::new(bind_client, e));
        }
        let bind_health = env_vars::BIND_HEALTH.name;
        if !self.bind_health.is_empty() {
            if let Err(e) = bind_address(bind_health, &self.bind_health) {
                out.push(Problem::new(bind_health, e));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            let data_dir = env_vars::DATA_DIR.name;
            out.push(Problem::new(
                data_dir,
                format!("{data_dir} must not be empty"),
            ));
        }
        out
    }
}

/// `./x` paths are made absolute against the working directory.
fn resolve(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("./") {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(rest).to_string_lossy().into_owned();
        }
    }
    path.to_string()
}

/// A listen address: `host:port`, `[v6]:port`, or `:port` for every
/// interface. Names are resolved when binding.
pub fn bind_address(setting: &str, value: &str) -> Result<String, String> {
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    let (host, port) = full
        .rsplit_once(':')
        .ok_or_else(|| format!("{setting}: invalid address {value:?}: expected host:port"))?;
    if port.parse::<u16>().is_err() {
        return Err(format!("{setting}: invalid port in {value:?}"));
    }
    if host.is_empty() {
        return Err(format!(
            "{setting}: invalid address {value:?}: missing host"
        ));
    }
    Ok(full)
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

    #[test]
    fn reference_defaults() {
        let e = NodeEnv::from_env(&env(&[("NETSY_NODE_ID", "n1")]), false);
        assert_eq!(e.bind_client, ":2378");
        assert_eq!(e.bind_health, ":8080");
        assert_eq!(e.data_dir, PathBuf::from("/var/lib/netsy"));
        assert_eq!(e.problems(), []);
        assert_eq!(bind_address("x", &e.bind_client).unwrap(), "0.0.0.0:2378");
    }

    #[test]
    fn dev_defaults_can_be_overridden() {
        let e = NodeEnv::from_env(
            &env(&[
                ("NETSY_BIND_CLIENT", "127.0.0.1:0"),
                ("NETSY_DATA_DIR", "/tmp/x"),
            ]),
            true,
        );
        assert_eq!(e.bind_client, "127.0.0.1:0");
        assert_eq!(e.bind_health, "127.0.0.1:8080");
        assert_eq!(e.node_id, "dev-node-1");
        assert_eq!(e.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn set_but_empty_counts_as_set() {
        let e = NodeEnv::from_env(
            &env(&[("NETSY_NODE_ID", "n1"), ("NETSY_BIND_HEALTH", "")]),
            false,
        );
        assert_eq!(e.bind_health, "");
        assert_eq!(
            e.problems(),
            [],
            "an empty health bind disables the listener"
        );
        let e = NodeEnv::from_env(
            &env(&[("NETSY_NODE_ID", "n1"), ("NETSY_BIND_CLIENT", "")]),
            false,
        );
        assert_eq!(messages(&e), ["NETSY_BIND_CLIENT must not be empty"]);
    }

    fn messages(e: &NodeEnv) -> Vec<String> {
        e.problems().into_iter().map(|p| p.message).collect()
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = NodeEnv::from_env(
            &env(&[("NETSY_NODE_ID", "n1"), ("NETSY_BIND_CLIENT", "nonsense")]),
            false,
        );
        assert_eq!(
            messages(&e),
            ["NETSY_BIND_CLIENT: invalid address \"nonsense\": expected host:port"]
        );
        let e = NodeEnv::from_env(&env(&[("NETSY_NODE_ID", "N1")]), false);
        assert_eq!(
            messages(&e),
            ["NETSY_NODE_ID must be lowercase alphanumeric with hyphens, no leading/trailing hyphens"]
        );
        assert!(!NodeEnv::from_env(&env(&[("NETSY_DEBUG", "1")]), false).debug);
        assert!(NodeEnv::from_env(&env(&[("NETSY_DEBUG", "true")]), false).debug);
    }

    #[test]
    fn every_problem_is_reported_by_its_variable() {
        let e = NodeEnv::from_env(
            &env(&[
                ("NETSY_BIND_CLIENT", ""),
                ("NETSY_BIND_HEALTH", "localhost:http"),
                ("NETSY_DATA_DIR", ""),
            ]),
            false,
        );
        let settings: Vec<String> = e.problems().into_iter().map(|p| p.setting).collect();
        assert_eq!(
            settings,
            [
                "NETSY_NODE_ID",
                "NETSY_BIND_CLIENT",
                "NETSY_BIND_HEALTH",
                "NETSY_DATA_DIR"
            ]
        );
        assert_eq!(messages(&e)[0], "NETSY_NODE_ID is required");
    }
}
