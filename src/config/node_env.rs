//! Per-node settings from `NETSY_*` environment variables, with the
//! reference's defaults (or the dev-mode ones).

use std::path::PathBuf;

use super::identifier;

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
    /// Reads the environment through `get` (injectable for tests). A set but
    /// empty variable counts as set.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>, dev: bool) -> NodeEnv {
        let var = |name: &str, default: &str| get(name).unwrap_or_else(|| default.to_string());
        let (client, health, data_dir, node_id) = if dev {
            (
                "127.0.0.1:2378",
                "127.0.0.1:8080",
                "./netsy-data",
                "dev-node-1",
            )
        } else {
            (":2378", ":8080", "/var/lib/netsy", "")
        };
        NodeEnv {
            config_path: get("NETSY_CONFIG"),
            node_id: var("NETSY_NODE_ID", node_id),
            bind_client: var("NETSY_BIND_CLIENT", client),
            advertise_client: var("NETSY_ADVERTISE_CLIENT", ""),
            bind_peer: var(
                "NETSY_BIND_PEER",
                if dev { "127.0.0.1:2381" } else { ":2381" },
            ),
            advertise_peer: var("NETSY_ADVERTISE_PEER", ""),
            bind_election: var(
                "NETSY_BIND_ELECTION",
                if dev { "127.0.0.1:8443" } else { ":8443" },
            ),
            advertise_election: var("NETSY_ADVERTISE_ELECTION", ""),
            bind_health: var("NETSY_BIND_HEALTH", health),
            tls: TlsPaths {
                ca_cert: resolve(&var("NETSY_TLS_CA_CERT", "")),
                server_cert: resolve(&var("NETSY_TLS_SERVER_CERT", "")),
                server_key: resolve(&var("NETSY_TLS_SERVER_KEY", "")),
                client_cert: resolve(&var("NETSY_TLS_CLIENT_CERT", "")),
                client_key: resolve(&var("NETSY_TLS_CLIENT_KEY", "")),
            },
            data_dir: PathBuf::from(resolve(&var("NETSY_DATA_DIR", data_dir))),
            debug: get("NETSY_DEBUG").as_deref() == Some("true"),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        identifier::validate("node_id", &self.node_id)?;
        if self.bind_client.is_empty() {
            return Err("NETSY_BIND_CLIENT must not be empty".into());
        }
        bind_address("NETSY_BIND_CLIENT", &self.bind_client)?;
        if !self.bind_health.is_empty() {
            bind_address("NETSY_BIND_HEALTH", &self.bind_health)?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("NETSY_DATA_DIR must not be empty".into());
        }
        Ok(())
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
        assert!(e.validate().is_ok());
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
        assert!(
            e.validate().is_ok(),
            "an empty health bind disables the listener"
        );
        let e = NodeEnv::from_env(
            &env(&[("NETSY_NODE_ID", "n1"), ("NETSY_BIND_CLIENT", "")]),
            false,
        );
        assert_eq!(
            e.validate().unwrap_err(),
            "NETSY_BIND_CLIENT must not be empty"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = NodeEnv::from_env(
            &env(&[("NETSY_NODE_ID", "n1"), ("NETSY_BIND_CLIENT", "nonsense")]),
            false,
        );
        assert!(e.validate().unwrap_err().starts_with("NETSY_BIND_CLIENT"));
        let e = NodeEnv::from_env(&env(&[("NETSY_NODE_ID", "N1")]), false);
        assert!(e.validate().unwrap_err().starts_with("node_id"));
        assert!(!NodeEnv::from_env(&env(&[("NETSY_DEBUG", "1")]), false).debug);
        assert!(NodeEnv::from_env(&env(&[("NETSY_DEBUG", "true")]), false).debug);
    }
}
