//! The cluster-wide JSONC config (identical on every node): its keys, the
//! reference implementation's defaults, and its validation rules and texts.

use std::cell::RefCell;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{duration, identifier, suggest, Problem, Problems};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    S3,
    /// A directory on local disk (ours; the embedded default).
    Fs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanupStrategy {
    Auto,
    List,
    Direct,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    pub provider: Provider,
    pub bucket_name: String,
    pub key_prefix: String,
    pub class: String,
    pub encryption: String,
    pub kms_key_id: String,
    /// Directory of the fs provider.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ElectorConfig {
    pub degradation_count: i64,
    pub deregistration_timeout: Duration,
    pub primary_prior_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChunkBufferConfig {
    pub threshold_size_mb: i64,
    pub threshold_age_minutes: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationConfig {
    /// -1 majority, 0 always synchronous to object storage, k > 0 static.
    pub quorum: i64,
    pub degradation_count: i64,
    pub chunk_buffer: ChunkBufferConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    pub threshold_records: i64,
    pub threshold_size_mb: i64,
    pub threshold_age_minutes: i64,
    pub cleanup_batch_size: i64,
    pub cleanup_batch_interval: Duration,
    pub cleanup_strategy: CleanupStrategy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub cluster_id: String,
    pub storage: StorageConfig,
    pub heartbeat_interval: Option<Duration>,
    pub elector: ElectorConfig,
    pub replication: ReplicationConfig,
    pub snapshot: SnapshotConfig,
    pub compaction_interval: Option<Duration>,
}

/// A key of the cluster config: a setting, or a section with keys of its
/// own.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// Empty for a setting.
    pub keys: &'static [Key],
}

const fn setting(name: &'static str) -> Key {
    Key { name, keys: &[] }
}

const fn section(name: &'static str, keys: &'static [Key]) -> Key {
    Key { name, keys }
}

/// Every key the cluster config may have (the reference's, plus
/// `storage.path` for the fs provider); anything else is refused.
pub const KEYS: &[Key] = &[
    setting("cluster_id"),
    section(
        "storage",
        &[
            setting("provider"),
            setting("bucket_name"),
            setting("key_prefix"),
            setting("class"),
            setting("encryption"),
            setting("kms_key_id"),
            setting("path"),
        ],
    ),
    setting("heartbeat_interval"),
    section(
        "elector",
        &[
            setting("degradation_count"),
            setting("deregistration_timeout"),
            setting("primary_prior_timeout"),
        ],
    ),
    section(
        "replication",
        &[
            setting("quorum"),
            setting("degradation_count"),
            section(
                "chunk_buffer",
                &[
                    setting("threshold_size_mb"),
                    setting("threshold_age_minutes"),
                ],
            ),
        ],
    ),
    section(
        "snapshot",
        &[
            setting("threshold_records"),
            setting("threshold_size_mb"),
            setting("threshold_age_minutes"),
            setting("cleanup_batch_size"),
            setting("cleanup_batch_interval"),
            setting("cleanup_strategy"),
        ],
    ),
    setting("compaction_interval"),
];

/// Every key of [`KEYS`] by its JSON path (`replication.chunk_buffer`).
pub fn key_paths() -> Vec<String> {
    fn walk(keys: &[Key], parent: &str, out: &mut Vec<String>) {
        for k in keys {
            let path = join(parent, k.name);
            out.push(path.clone());
            walk(k.keys, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(KEYS, "", &mut out);
    out
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// A problem for every key of `object` (at `parent`) that `keys` does not
/// have, and in the sections that it has.
fn unknown_keys(object: &Map<String, Value>, keys: &[Key], parent: &str, out: &mut Vec<Problem>) {
    for (name, value) in object {
        let path = join(parent, name);
        match keys.iter().find(|k| k.name == name) {
            Some(k) if !k.keys.is_empty() => {
                // A section of the wrong type is reported where it is read.
                if let Value::Object(inner) = value {
                    unknown_keys(inner, k.keys, &path, out);
                }
            }
            Some(_) => {}
            None => {
                let message = match suggestion(name, keys, parent) {
                    Some(known) => {
                        format!("unknown key {path} in the config; did you mean {known}?")
                    }
                    None => format!("unknown key {path} in the config"),
                };
                out.push(Problem::new(path, message));
            }
        }
    }
}

/// The known key an unknown `name` (in section `parent`, whose keys are
/// `siblings`) most likely meant, by its path: the same name in another
/// section (a key put in the wrong place), else the closest key of the
/// same section, else the closest anywhere.
fn suggestion(name: &str, siblings: &[Key], parent: &str) -> Option<String> {
    let everywhere = key_paths();
    let last = |path: &str| path.rsplit('.').next().unwrap_or(path).to_string();
    if let Some(same) = everywhere
        .iter()
        .find(|p| suggest::distance(&last(p), name) == 0)
    {
        return Some(same.clone());
    }
    if let Some(close) = suggest::closest(name, siblings.iter().map(|k| k.name)) {
        return Some(join(parent, close));
    }
    let leaves: Vec<String> = everywhere.iter().map(|p| last(p)).collect();
    let close = suggest::closest(name, leaves.iter().map(String::as_str))?;
    everywhere.into_iter().find(|p| last(p) == close)
}

/// Reads typed values out of the JSON tree. A value of the wrong type is
/// recorded as a problem naming its key, and the default is used so that
/// the rest of the config is still checked.
struct Reader<'a> {
    root: &'a Map<String, Value>,
    problems: RefCell<Vec<Problem>>,
}

impl<'a> Reader<'a> {
    fn get(&self, path: &str) -> Option<&'a Value> {
        debug_assert!(
            key_paths().iter().any(|p| p == path),
            "{path} is read but not in KEYS, so a config setting it would be refused"
        );
        let mut node = self.root;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let v = node.get(part)?;
            if parts.peek().is_none() {
                return if v.is_null() { None } else { Some(v) };
            }
            node = v.as_object()?;
        }
        None
    }

    fn problem(&self, path: &str, message: String) {
        self.problems.borrow_mut().push(Problem::new(path, message));
    }

    fn string(&self, path: &str, default: &str) -> String {
        match self.get(path) {
            None => default.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                self.problem(path, format!("{path} must be a string, got {other}"));
                default.to_string()
            }
        }
    }

    fn int(&self, path: &str, default: i64) -> i64 {
        let message = match self.get(path) {
            None => return default,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => return v,
                None => format!("{path} must be a whole number, got {n}"),
            },
            Some(other) => format!("{path} must be a number, got {other}"),
        };
        self.problem(path, message);
        default
    }

    fn duration(&self, path: &str) -> Option<Duration> {
        let message = match self.get(path) {
            None => return None,
            Some(Value::String(s)) => match duration::parse(s) {
                Ok(d) => return Some(d),
                Err(e) => format!("{path}: {e}"),
            },
            Some(Value::Number(n)) => match n.as_i64() {
                Some(ns) if ns >= 0 => return Some(Duration::from_nanos(ns as u64)),
                _ => format!("{path}: invalid duration {n}"),
            },
            Some(_) => format!("{path}: invalid duration type"),
        };
        self.problem(path, message);
        None
    }

    fn section(&self, path: &str) {
        match self.get(path) {
            None | Some(Value::Object(_)) => {}
            Some(other) => self.problem(path, format!("{path} must be an object, got {other}")),
        }
    }
}

impl ClusterConfig {
    /// Parses the JSONC text, applying the reference's defaults; unknown
    /// keys and values of the wrong type are refused. Validation is
    /// separate ([`ClusterConfig::validate`]) because its order mixes in the
    /// node id.
    pub fn parse(text: &str) -> Result<ClusterConfig, Problems> {
        match ClusterConfig::parse_lenient(text) {
            Ok((config, problems)) if problems.is_empty() => Ok(config),
            Ok((_, problems)) => Err(Problems(problems)),
            Err(fatal) => Err(Problems(vec![fatal])),
        }
    }

    /// Parses what it can: the config with defaults in place of bad values,
    /// and every problem found. Only text that is not a JSON object at all
    /// is an error.
    pub fn parse_lenient(text: &str) -> Result<(ClusterConfig, Vec<Problem>), Problem> {
        let json = super::jsonc::to_json(text).map_err(|e| Problem::new("config", e))?;
        let value: Value = serde_json::from_str(&json)
            .map_err(|e| Problem::new("config", format!("config is not valid JSON: {e}")))?;
        let root = value
            .as_object()
            .ok_or_else(|| Problem::new("config", "config must be a JSON object"))?;
        let mut unknown = Vec::new();
        unknown_keys(root, KEYS, "", &mut unknown);
        let r = Reader {
            root,
            problems: RefCell::new(unknown),
        };
        for section in [
            "storage",
            "elector",
            "replication",
            "replication.chunk_buffer",
            "snapshot",
        ] {
            r.section(section);
        }
        let provider = match r.string("storage.provider", "s3").as_str() {
            "s3" => Provider::S3,
            "fs" => Provider::Fs,
            other => {
                r.problem(
                    "storage.provider",
                    format!("invalid storage.provider {other:?}: must be s3 or fs"),
                );
                Provider::S3
            }
        };
        let cleanup_strategy = match r.string("snapshot.cleanup_strategy", "auto").as_str() {
            "auto" => CleanupStrategy::Auto,
            "list" => CleanupStrategy::List,
            "direct" => CleanupStrategy::Direct,
            other => {
                r.problem(
                    "snapshot.cleanup_strategy",
                    format!(
                        "invalid snapshot.cleanup_strategy {other:?}: must be auto, list, or direct"
                    ),
                );
                CleanupStrategy::Auto
            }
        };
        let nonzero = |v: i64, default: i64| if v == 0 { default } else { v };
        let batch_size = r.int("snapshot.cleanup_batch_size", 250);
        let config = ClusterConfig {
            cluster_id: r.string("cluster_id", ""),
            storage: StorageConfig {
                provider,
                bucket_name: r.string("storage.bucket_name", ""),
                key_prefix: r.string("storage.key_prefix", ""),
                class: r.string("storage.class", "STANDARD"),
                encryption: r.string("storage.encryption", "provider-managed"),
                kms_key_id: r.string("storage.kms_key_id", ""),
                path: r.string("storage.path", ""),
            },
            heartbeat_interval: r.duration("heartbeat_interval"),
            elector: ElectorConfig {
                degradation_count: nonzero(r.int("elector.degradation_count", 2), 2),
                deregistration_timeout: r
                    .duration("elector.deregistration_timeout")
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(180)),
                primary_prior_timeout: r.duration("elector.primary_prior_timeout"),
            },
            replication: ReplicationConfig {
                quorum: r.int("replication.quorum", -1),
                degradation_count: nonzero(r.int("replication.degradation_count", 2), 2),
                chunk_buffer: ChunkBufferConfig {
                    threshold_size_mb: r.int("replication.chunk_buffer.threshold_size_mb", 0),
                    threshold_age_minutes: r
                        .int("replication.chunk_buffer.threshold_age_minutes", 0),
                },
            },
            snapshot: SnapshotConfig {
                threshold_records: nonzero(r.int("snapshot.threshold_records", 10_000), 10_000),
                threshold_size_mb: nonzero(r.int("snapshot.threshold_size_mb", 10_000), 10_000),
                threshold_age_minutes: r.int("snapshot.threshold_age_minutes", 0),
                cleanup_batch_size: if batch_size <= 0 { 250 } else { batch_size },
                cleanup_batch_interval: r
                    .duration("snapshot.cleanup_batch_interval")
                    .unwrap_or(Duration::from_secs(1)),
                cleanup_strategy,
            },
            compaction_interval: r.duration("compaction_interval"),
        };
        Ok((config, r.problems.into_inner()))
    }

    /// The reference's checks, in its order (after the node id's), every
    /// failing one reported.
    pub fn validate(&self) -> Result<(), Problems> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }

    /// What [`ClusterConfig::validate`] finds, in its order.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |setting: &str, message: String| out.push(Problem::new(setting, message));
        if let Err(e) = identifier::validate("cluster_id", &self.cluster_id) {
            problem("cluster_id", e);
        }
        let s = &self.storage;
        match s.provider {
            Provider::S3 => {
                if s.bucket_name.is_empty() {
                    problem(
                        "storage.bucket_name",
                        "storage.bucket_name is required".into(),
                    );
                }
            }
            Provider::Fs => {
                if s.path.is_empty() {
                    problem(
                        "storage.path",
                        "storage.path is required when storage.provider is fs".into(),
                    );
                }
            }
        }
        if s.encryption != "provider-managed" && s.encryption != "customer-managed" {
            problem(
                "storage.encryption",
                format!(
                    "invalid storage.encryption {:?}: must be provider-managed or customer-managed",
                    s.encryption
                ),
            );
        }
        if s.encryption == "customer-managed" && s.kms_key_id.is_empty() {
            problem(
                "storage.kms_key_id",
                "storage.kms_key_id is required when storage.encryption is customer-managed".into(),
            );
        }
        if s.provider == Provider::S3
            && !["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING"].contains(&s.class.as_str())
        {
            problem(
                "storage.class",
                format!(
                    "invalid storage.class {:?}: must be STANDARD, STANDARD_IA or INTELLIGENT_TIERING",
                    s.class
                ),
            );
        }
        if self.elector.degradation_count < 1 {
            problem(
                "elector.degradation_count",
                "elector.degradation_count must be at least 1".into(),
            );
        }
        if self.replication.degradation_count < 1 {
            problem(
                "replication.degradation_count",
                "replication.degradation_count must be at least 1".into(),
            );
        }
        let heartbeat = self.heartbeat_interval.filter(|h| !h.is_zero());
        if heartbeat.is_none() {
            problem(
                "heartbeat_interval",
                "heartbeat_interval is required and must be greater than 0".into(),
            );
        }
        // The bound needs a usable heartbeat and count (reported above
        // otherwise); a product too large for a Duration is unreachable.
        let count = u32::try_from(self.elector.degradation_count).ok();
        if let (Some(prior), Some(heartbeat), Some(count)) =
            (self.elector.primary_prior_timeout, heartbeat, count)
        {
            let min = heartbeat.checked_mul(count).unwrap_or(Duration::MAX);
            if prior < min {
                problem(
                    "elector.primary_prior_timeout",
                    format!(
                        "elector.primary_prior_timeout ({}) must be at least elector.degradation_count × heartbeat_interval ({})",
                        duration::format(prior),
                        duration::format(min)
                    ),
                );
            }
        }
        if self.replication.quorum < -1 {
            problem(
                "replication.quorum",
                "replication.quorum must be -1 (majority), 0 (disabled) or a positive count".into(),
            );
        }
        if self.replication.quorum != 0 && self.replication.chunk_buffer.threshold_age_minutes <= 0
        {
            problem(
                "replication.chunk_buffer.threshold_age_minutes",
                "replication.chunk_buffer.threshold_age_minutes must be greater than 0 when replication.quorum is not 0"
                    .into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      // the reference's example values
      "cluster_id": "dev-cluster",
      "storage": {"provider": "s3", "bucket_name": "netsy-dev", "key_prefix": "", "class": "STANDARD", "encryption": "provider-managed"},
      "heartbeat_interval": "1s",
      "elector": {"degradation_count": 2, "deregistration_timeout": "3m", "primary_prior_timeout": "5s"},
      "replication": {"quorum": -1, "degradation_count": 2, "chunk_buffer": {"threshold_size_mb": 4, "threshold_age_minutes": 1}},
      "snapshot": {"threshold_records": 10000, "threshold_size_mb": 10000, "threshold_age_minutes": 0,
                   "cleanup_batch_size": 250, "cleanup_batch_interval": "1s", "cleanup_strategy": "auto"},
      "compaction_interval": "5m",
    }"#;

    #[test]
    fn example_parses_and_validates() {
        let c = ClusterConfig::parse(EXAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(1)));
        assert_eq!(c.replication.quorum, -1);
        assert_eq!(c.compaction_interval, Some(Duration::from_secs(300)));
    }

    #[test]
    fn defaults_follow_the_reference() {
        let c = ClusterConfig::parse(r#"{"cluster_id": "c", "storage": {"bucket_name": "b"}}"#)
            .unwrap();
        assert_eq!(c.storage.provider, Provider::S3);
        assert_eq!(c.replication.quorum, -1);
        assert_eq!(c.elector.degradation_count, 2);
        assert_eq!(c.elector.deregistration_timeout, Duration::from_secs(180));
        assert_eq!(c.snapshot.threshold_records, 10_000);
        assert_eq!(c.snapshot.cleanup_strategy, CleanupStrategy::Auto);
        // Both rules the reference's example config satisfies.
        assert_eq!(
            c.validate().unwrap_err().messages(),
            [
                "heartbeat_interval is required and must be greater than 0",
                "replication.chunk_buffer.threshold_age_minutes must be greater than 0 when replication.quorum is not 0"
            ]
        );
        let null_quorum = ClusterConfig::parse(r#"{"replication": {"quorum": null}}"#).unwrap();
        assert_eq!(null_quorum.replication.quorum, -1);
    }

    #[test]
    fn each_rule_names_its_setting() {
        let with = |patch: &str| {
            let mut v: Value =
                serde_json::from_str(&super::super::jsonc::to_json(EXAMPLE).unwrap()).unwrap();
            let p: Value = serde_json::from_str(patch).unwrap();
            merge(&mut v, &p);
            ClusterConfig::parse(&v.to_string())
                .and_then(|c| c.validate())
                .map_err(|e| e.to_string())
        };
        let cases = [
            (r#"{"cluster_id": "Bad"}"#, "cluster_id must be lowercase"),
            (
                r#"{"storage": {"bucket_name": ""}}"#,
                "storage.bucket_name is required",
            ),
            (r#"{"storage": {"provider": "gcs"}}"#, "storage.provider"),
            (r#"{"storage": {"encryption": "x"}}"#, "storage.encryption"),
            (
                r#"{"storage": {"encryption": "customer-managed"}}"#,
                "storage.kms_key_id",
            ),
            (r#"{"storage": {"class": "GLACIER"}}"#, "storage.class"),
            (
                r#"{"elector": {"degradation_count": -1}}"#,
                "elector.degradation_count",
            ),
            (
                r#"{"replication": {"degradation_count": -3}}"#,
                "replication.degradation_count",
            ),
            (r#"{"heartbeat_interval": "0s"}"#, "heartbeat_interval"),
            (r#"{"heartbeat_interval": true}"#, "invalid duration type"),
            (
                r#"{"elector": {"primary_prior_timeout": "1s"}}"#,
                "elector.primary_prior_timeout",
            ),
            (
                r#"{"replication": {"chunk_buffer": {"threshold_age_minutes": 0}}}"#,
                "threshold_age_minutes",
            ),
            (
                r#"{"snapshot": {"cleanup_strategy": "x"}}"#,
                "snapshot.cleanup_strategy",
            ),
            (r#"{"storage": "s3"}"#, "storage must be an object"),
            (
                r#"{"replication": {"quorum": "all"}}"#,
                "replication.quorum",
            ),
        ];
        for (patch, want) in cases {
            let err = with(patch).unwrap_err();
            assert!(err.contains(want), "{patch}: {err}");
        }
        assert!(with(
            r#"{"replication": {"quorum": 0, "chunk_buffer": {"threshold_age_minutes": 0}}}"#
        )
        .is_ok());
    }

    /// The messages of parsing `text`, or of validating it once it parses.
    fn problems(text: &str) -> Vec<String> {
        match ClusterConfig::parse(text).and_then(|c| c.validate()) {
            Ok(()) => Vec::new(),
            Err(problems) => problems.messages(),
        }
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level_with_the_closest_known_key() {
        let cases = [
            (
                r#"{"storgae": {}}"#,
                "unknown key storgae in the config; did you mean storage?",
            ),
            (
                r#"{"storage": {"bucketname": "b"}}"#,
                "unknown key storage.bucketname in the config; did you mean storage.bucket_name?",
            ),
            (
                r#"{"elector": {"primary_prior_timout": "5s"}}"#,
                "unknown key elector.primary_prior_timout in the config; did you mean elector.primary_prior_timeout?",
            ),
            (
                r#"{"replication": {"chunk_buffer": {"threshold_age_minute": 1}}}"#,
                "unknown key replication.chunk_buffer.threshold_age_minute in the config; did you mean replication.chunk_buffer.threshold_age_minutes?",
            ),
            (
                r#"{"snapshot": {"cleanup_stratgy": "auto"}}"#,
                "unknown key snapshot.cleanup_stratgy in the config; did you mean snapshot.cleanup_strategy?",
            ),
            // A key in the wrong section is pointed to where it belongs.
            (
                r#"{"quorum": 0}"#,
                "unknown key quorum in the config; did you mean replication.quorum?",
            ),
            (
                r#"{"storage": {"heartbeat_intervall": "1s"}}"#,
                "unknown key storage.heartbeat_intervall in the config; did you mean heartbeat_interval?",
            ),
            (
                r#"{"Cluster_ID": "c"}"#,
                "unknown key Cluster_ID in the config; did you mean cluster_id?",
            ),
            // Nothing close: no guess.
            (r#"{"logging": {}}"#, "unknown key logging in the config"),
            (
                r#"{"storage": {"region": "eu-west-1"}}"#,
                "unknown key storage.region in the config",
            ),
            // A dotted name is not a path into a section.
            (
                r#"{"storage.bucket_name": "b"}"#,
                "unknown key storage.bucket_name in the config",
            ),
        ];
        for (text, want) in cases {
            let got = ClusterConfig::parse(text).unwrap_err().messages();
            assert_eq!(got, [want], "{text}");
        }
        // The reference's example (every reference key) and storage.path.
        assert_eq!(problems(EXAMPLE), Vec::<String>::new());
        let fs = r#"{"cluster_id": "c", "storage": {"provider": "fs", "path": "/b"}, "heartbeat_interval": "1s", "replication": {"quorum": 0}}"#;
        assert_eq!(problems(fs), Vec::<String>::new());
        // A section of the wrong type is reported once, as a type.
        assert_eq!(
            problems(r#"{"snapshot": [{"x": 1}]}"#),
            [r#"snapshot must be an object, got [{"x":1}]"#]
        );
    }

    #[test]
    fn every_known_key_is_read() {
        // A wrong type at each path is reported by that path: parse reads
        // every key KEYS lists (and reads nothing else, by its assertion).
        for path in key_paths() {
            let mut v = Value::Null;
            for part in path.split('.').rev() {
                let mut m = Map::new();
                m.insert(part.to_string(), v);
                v = Value::Object(m);
            }
            let leaf = v
                .pointer_mut(&format!("/{}", path.replace('.', "/")))
                .unwrap();
            *leaf = Value::Array(vec![]);
            let (_, problems) = ClusterConfig::parse_lenient(&v.to_string()).unwrap();
            let settings: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
            assert_eq!(settings, [path.as_str()], "{v}");
        }
    }

    #[test]
    fn every_problem_is_reported_in_order() {
        let text = r#"{
          "cluster_id": "Bad",
          "storage": {"provider": "s3", "class": "GLACIER", "bucket": "b"},
          "heartbeat_interval": "1s",
          "elector": {"degradation_count": -1, "primary_prior_timeout": "1s"},
          "replication": {"quorum": 2, "degradation_count": "two", "chunk_buffer": {"threshold_age_minutes": 0}},
          "snapshot": {"cleanup_strategy": "never"},
        }"#;
        let (c, parse) = ClusterConfig::parse_lenient(text).unwrap();
        let parse: Vec<String> = parse.into_iter().map(|p| p.message).collect();
        assert_eq!(
            parse,
            [
                "unknown key storage.bucket in the config; did you mean storage.bucket_name?",
                r#"invalid snapshot.cleanup_strategy "never": must be auto, list, or direct"#,
                r#"replication.degradation_count must be a number, got "two""#,
            ]
        );
        assert_eq!(
            c.validate().unwrap_err().messages(),
            [
                "cluster_id must be lowercase alphanumeric with hyphens, no leading/trailing hyphens",
                "storage.bucket_name is required",
                r#"invalid storage.class "GLACIER": must be STANDARD, STANDARD_IA or INTELLIGENT_TIERING"#,
                "elector.degradation_count must be at least 1",
                "replication.chunk_buffer.threshold_age_minutes must be greater than 0 when replication.quorum is not 0",
            ]
        );
    }

    #[test]
    fn a_huge_prior_bound_is_a_problem_not_a_panic() {
        let text = r#"{"cluster_id": "c", "storage": {"bucket_name": "b"}, "heartbeat_interval": "2562047h",
          "elector": {"degradation_count": 4000000000, "primary_prior_timeout": "1h"},
          "replication": {"quorum": 0}}"#;
        let got = problems(text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("elector.primary_prior_timeout (1h0m0s) must be at least"));
    }

    fn merge(a: &mut Value, b: &Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    match a.get_mut(k) {
                        Some(existing) if existing.is_object() && v.is_object() => {
                            merge(existing, v)
                        }
                        _ => {
                            a.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (a, b) => *a = b.clone(),
        }
    }
}
