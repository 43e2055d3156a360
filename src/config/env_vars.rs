//! Every `NETSY_*` environment variable netsy knows: the one list that
//! node settings read their defaults from, `netsy --help` prints, and the
//! unknown-variable check compares against, so the three cannot drift.

use super::{suggest, Problem};

/// One variable (or, with [`EnvVar::family`], every variable starting with
/// `name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    /// The value when unset, outside `--dev`.
    pub default: &'static str,
    /// The value when unset with `--dev`, where it differs.
    pub dev_default: Option<&'static str>,
    pub meaning: &'static str,
    /// `name` is a prefix: `NETSY_FAILPOINT_<NAME>`.
    pub family: bool,
}

impl EnvVar {
    const fn new(name: &'static str, default: &'static str, meaning: &'static str) -> EnvVar {
        EnvVar {
            name,
            default,
            dev_default: None,
            meaning,
            family: false,
        }
    }

    const fn dev(mut self, dev_default: &'static str) -> EnvVar {
        self.dev_default = Some(dev_default);
        self
    }

    /// The default in this mode.
    pub fn default_for(&self, dev: bool) -> &'static str {
        match self.dev_default {
            Some(d) if dev => d,
            _ => self.default,
        }
    }

    /// How `--help` and suggestions write it.
    pub fn display_name(&self) -> String {
        if self.family {
            format!("{}<NAME>", self.name)
        } else {
            self.name.to_string()
        }
    }

    fn matches(&self, name: &str) -> bool {
        if self.family {
            name.starts_with(self.name) && name.len() > self.name.len()
        } else {
            name == self.name
        }
    }
}

pub const CONFIG: EnvVar = EnvVar::new(
    "NETSY_CONFIG",
    "",
    "path of the JSONC cluster config (required outside --dev; --config wins)",
);
pub const NODE_ID: EnvVar = EnvVar::new(
    "NETSY_NODE_ID",
    "",
    "this node's id, as in its certificates (required)",
)
.dev("dev-node-1");
pub const BIND_CLIENT: EnvVar = EnvVar::new(
    "NETSY_BIND_CLIENT",
    ":2378",
    "etcd client API listen address",
)
.dev("127.0.0.1:2378");
pub const ADVERTISE_CLIENT: EnvVar = EnvVar::new(
    "NETSY_ADVERTISE_CLIENT",
    "",
    "client API address others dial (empty: the bound one)",
);
pub const BIND_PEER: EnvVar =
    EnvVar::new("NETSY_BIND_PEER", ":2381", "peer API listen address").dev("127.0.0.1:2381");
pub const ADVERTISE_PEER: EnvVar = EnvVar::new(
    "NETSY_ADVERTISE_PEER",
    "",
    "peer API address others dial (empty: the bound one)",
);
pub const BIND_ELECTION: EnvVar = EnvVar::new(
    "NETSY_BIND_ELECTION",
    ":8443",
    "election HTTPS listen address",
)
.dev("127.0.0.1:8443");
pub const ADVERTISE_ELECTION: EnvVar = EnvVar::new(
    "NETSY_ADVERTISE_ELECTION",
    "",
    "election address others dial (empty: the bound one)",
);
pub const BIND_HEALTH: EnvVar = EnvVar::new(
    "NETSY_BIND_HEALTH",
    ":8080",
    "/health and /metrics, plain HTTP (empty: off)",
)
.dev("127.0.0.1:8080");
pub const TLS_CA_CERT: EnvVar = EnvVar::new("NETSY_TLS_CA_CERT", "", "cluster CA (PEM file)");
pub const TLS_SERVER_CERT: EnvVar = EnvVar::new(
    "NETSY_TLS_SERVER_CERT",
    "",
    "this node's server certificate (PEM file)",
);
pub const TLS_SERVER_KEY: EnvVar =
    EnvVar::new("NETSY_TLS_SERVER_KEY", "", "its private key (PEM file)");
pub const TLS_CLIENT_CERT: EnvVar = EnvVar::new(
    "NETSY_TLS_CLIENT_CERT",
    "",
    "this node's peer client certificate (PEM file)",
);
pub const TLS_CLIENT_KEY: EnvVar =
    EnvVar::new("NETSY_TLS_CLIENT_KEY", "", "its private key (PEM file)");
pub const DATA_DIR: EnvVar = EnvVar::new(
    "NETSY_DATA_DIR",
    "/var/lib/netsy",
    "local database and scratch files",
)
.dev("./netsy-data");
pub const DEBUG: EnvVar = EnvVar::new(
    "NETSY_DEBUG",
    "false",
    "debug logging when exactly \"true\"",
);
/// Tests only: set by the cluster launcher for failover tests and benchmarks.
pub const TEST_ELECTION_SPEEDUP: EnvVar = EnvVar::new(
    "NETSY_TEST_ELECTION_SPEEDUP",
    "",
    "tests only: divide the election timings by 2-100",
);
/// Tests only: links this node dials through a proxy (`crate::failpoint`).
pub const TEST_DIAL_VIA: EnvVar = EnvVar::new(
    "NETSY_TEST_DIAL_VIA",
    "",
    "tests only (debug builds): ADDR=PROXY,... dial PROXY wherever ADDR would be dialled \
     (peer and election links, so a test can cut them one by one)",
);
/// Tests only: the machine boot the node takes itself to run on
/// (`crate::failpoint`).
pub const TEST_BOOT_ID: EnvVar = EnvVar::new(
    "NETSY_TEST_BOOT_ID",
    "",
    "tests only (debug builds): the boot id the local store is opened on, in place of the \
     kernel's (a restart with another one acts as a machine restart)",
);
/// Tests only: fault points (`crate::failpoint`).
pub const FAILPOINT: EnvVar = EnvVar {
    name: "NETSY_FAILPOINT_",
    default: "",
    dev_default: None,
    meaning: "tests only (debug builds): fault point NAME does hold:<path>, crash, \
              crash-after:<n> or stall:<ms>",
    family: true,
};
/// Read by the test launcher, not the node; a node started by it inherits
/// the variable, so it must not be reported as unknown.
pub const LAUNCH_KEEP: EnvVar = EnvVar::new(
    "NETSY_LAUNCH_KEEP",
    "",
    "tests only: the launcher keeps its scratch directories",
);
/// Read by the test launcher, like [`LAUNCH_KEEP`].
pub const CLUSTER_ECHO: EnvVar = EnvVar::new(
    "NETSY_CLUSTER_ECHO",
    "",
    "tests only: the launcher echoes every node's log",
);
/// Read by the fuzz test (`tests/fuzz`), not the node; listed so that
/// a node started from a shell that set it does not warn.
pub const FUZZ_SECONDS: EnvVar = EnvVar::new(
    "NETSY_FUZZ_SECONDS",
    "5",
    "tests only: seconds each fuzz target runs in the fuzz test",
);
/// Read by the fault suite (`tests/faults`), like [`FUZZ_SECONDS`].
pub const FAULT_ROUNDS: EnvVar = EnvVar::new(
    "NETSY_FAULT_ROUNDS",
    "1",
    "tests only: rounds of each fault in the fault suite (scripts/faults --long sets it)",
);
/// Read by the fuzz test, like [`FUZZ_SECONDS`].
pub const FUZZ_SEED: EnvVar = EnvVar::new(
    "NETSY_FUZZ_SEED",
    "",
    "tests only: the fuzz test's random seed (empty: a new one, printed)",
);

/// Every known variable, in `--help` order.
pub const ALL: &[EnvVar] = &[
    CONFIG,
    NODE_ID,
    BIND_CLIENT,
    ADVERTISE_CLIENT,
    BIND_PEER,
    ADVERTISE_PEER,
    BIND_ELECTION,
    ADVERTISE_ELECTION,
    BIND_HEALTH,
    TLS_CA_CERT,
    TLS_SERVER_CERT,
    TLS_SERVER_KEY,
    TLS_CLIENT_CERT,
    TLS_CLIENT_KEY,
    DATA_DIR,
    DEBUG,
    TEST_ELECTION_SPEEDUP,
    TEST_DIAL_VIA,
    TEST_BOOT_ID,
    FAILPOINT,
    LAUNCH_KEEP,
    CLUSTER_ECHO,
    FUZZ_SECONDS,
    FUZZ_SEED,
    FAULT_ROUNDS,
];

/// Every `NETSY_*` name in `names` that is not a known variable, with the
/// closest known one when there is one close enough.
pub fn unknown<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Problem> {
    let mut unknown: Vec<&str> = names
        .into_iter()
        .filter(|n| n.starts_with("NETSY_") && !ALL.iter().any(|v| v.matches(n)))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    unknown
        .into_iter()
        .map(|name| {
            let message = match closest(name) {
                Some(known) => {
                    format!("unknown environment variable {name}; did you mean {known}?")
                }
                None => format!("unknown environment variable {name}"),
            };
            Problem::new(name, message)
        })
        .collect()
}

/// The known variable closest to `name`, compared without the `NETSY_`
/// every one shares (which would make any two look alike). A family is
/// compared by its prefix and suggested with the rest of `name` kept, so
/// `NETSY_FAILPIONT_LOADING` finds `NETSY_FAILPOINT_LOADING`.
fn closest(name: &str) -> Option<String> {
    let unprefixed = |n: &str| n.strip_prefix("NETSY_").unwrap_or(n).to_string();
    ALL.iter()
        .filter_map(|v| {
            let (written, suggestion) = if v.family {
                let prefix_len = v.name.chars().count();
                let rest: String = name.chars().skip(prefix_len).collect();
                let suggestion = if rest.is_empty() {
                    v.display_name()
                } else {
                    format!("{}{rest}", v.name)
                };
                (name.chars().take(prefix_len).collect(), suggestion)
            } else {
                (name.to_string(), v.name.to_string())
            };
            let (written, known) = (unprefixed(&written), unprefixed(v.name));
            suggest::is_close(&written, &known)
                .then(|| (suggest::distance(&written, &known), suggestion))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, suggestion)| suggestion)
}

/// The variables as a table for `--help`: name, default, meaning.
pub fn help_table() -> String {
    let default = |v: &EnvVar| {
        let shown = |d: &str| {
            if d.is_empty() {
                "(none)".to_string()
            } else {
                d.to_string()
            }
        };
        match v.dev_default {
            Some(dev) => format!("{} (--dev {})", shown(v.default), shown(dev)),
            None => shown(v.default),
        }
    };
    let rows: Vec<(String, String, &str)> = ALL
        .iter()
        .map(|v| (v.display_name(), default(v), v.meaning))
        .collect();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let default_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = format!(
        "  {:name_width$}  {:default_width$}  {}\n",
        "VARIABLE", "DEFAULT", "MEANING"
    );
    for (name, default, meaning) in rows {
        out.push_str(&format!(
            "  {name:name_width$}  {default:default_width$}  {meaning}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(names: &[&str]) -> Vec<String> {
        unknown(names.iter().copied())
            .into_iter()
            .map(|p| p.message)
            .collect()
    }

    #[test]
    fn known_variables_and_other_programs_variables_pass() {
        let names: Vec<String> = ALL
            .iter()
            .map(|v| {
                if v.family {
                    format!("{}LOADING", v.name)
                } else {
                    v.name.to_string()
                }
            })
            .chain(["PATH", "AWS_REGION", "RUST_LOG", "netsy_lowercase"].map(String::from))
            .collect();
        assert_eq!(
            messages(&names.iter().map(String::as_str).collect::<Vec<_>>()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        assert_eq!(
            messages(&[
                "NETSY_NODEID",
                "NETSY_TLS_CA",
                "NETSY_COLOUR",
                "NETSY_NODEID"
            ]),
            [
                "unknown environment variable NETSY_COLOUR",
                "unknown environment variable NETSY_NODEID; did you mean NETSY_NODE_ID?",
                "unknown environment variable NETSY_TLS_CA; did you mean NETSY_TLS_CA_CERT?",
            ]
        );
        let problems = unknown(["NETSY_DATADIR"]);
        assert_eq!(problems[0].setting, "NETSY_DATADIR");
    }

    #[test]
    fn failpoints_are_a_family() {
        assert!(unknown(["NETSY_FAILPOINT_DRAINING", "NETSY_FAILPOINT_ANYTHING"]).is_empty());
        assert_eq!(
            messages(&["NETSY_FAILPOINT_", "NETSY_FAILPIONT_LOADING"]),
            [
                "unknown environment variable NETSY_FAILPIONT_LOADING; did you mean NETSY_FAILPOINT_LOADING?",
                "unknown environment variable NETSY_FAILPOINT_; did you mean NETSY_FAILPOINT_<NAME>?",
            ]
        );
    }

    /// Every `NETSY_*` name the repository's code, tests, scripts and
    /// deploy files mention is in [`ALL`], unless it is not an environment
    /// variable of the netsy process; so a variable added without being
    /// listed fails here rather than warning in production.
    #[test]
    fn every_variable_the_repository_mentions_is_listed() {
        // Not seen by a netsy process: the object-storage race tests' helper
        // process, and the provisioning script's input.
        const NOT_NETSY_PROCESS: &[&str] = &[
            "NETSY_RACE_ROOT",
            "NETSY_RACE_MODE",
            "NETSY_RACE_ID",
            "NETSY_RACE_ETAG",
            "NETSY_RELEASE",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        // src/config and the CLI tests spell names wrong on purpose.
        let skipped = [
            root.join("src/config"),
            root.join("tests/single_node/cli.rs"),
        ];
        let mut files = Vec::new();
        let mut dirs: Vec<_> = [
            "src",
            "tests",
            "scripts",
            "deploy",
            "benchmarks",
            "conformance/src",
        ]
        .iter()
        .map(|d| root.join(d))
        .collect();
        dirs.push(root.join("build.rs"));
        while let Some(path) = dirs.pop() {
            if skipped.contains(&path) {
                continue;
            }
            if path.is_dir() {
                dirs.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                files.push((path, text));
            }
        }
        assert!(files.len() > 50, "only {} files found", files.len());
        let mut mentioned = Vec::new();
        for (path, text) in &files {
            for (at, _) in text.match_indices("NETSY_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                mentioned.push((name, path.display().to_string()));
            }
        }
        let listed = |name: &str| {
            ALL.iter().any(|v| v.matches(name))
                // A prefix written in prose or code: `NETSY_TLS_*`, the family's own.
                || (name.ends_with('_') && ALL.iter().any(|v| v.name.starts_with(name)))
        };
        let unlisted: Vec<_> = mentioned
            .iter()
            .filter(|(name, _)| !listed(name) && !NOT_NETSY_PROCESS.contains(&name.as_str()))
            .collect();
        assert!(unlisted.is_empty(), "not in env_vars::ALL: {unlisted:#?}");
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let table = help_table();
        for v in ALL {
            let line = table
                .lines()
                .find(|l| l.trim_start().starts_with(&v.display_name()))
                .unwrap_or_else(|| panic!("{} is not in\n{table}", v.name));
            assert!(line.contains(v.meaning), "{line}");
        }
        assert!(
            table.contains("NETSY_BIND_CLIENT            :2378 (--dev 127.0.0.1:2378)"),
            "{table}"
        );
        assert!(table.contains("NETSY_FAILPOINT_<NAME>"), "{table}");
    }
}
