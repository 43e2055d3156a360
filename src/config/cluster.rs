//! The cluster-wide JSONC config (identical on every node): its keys, the
//! reference implementation's defaults, and its validation rules and texts.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{duration, identifier};

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

/// Reads one typed value out of the JSON tree, naming the setting in errors.
struct Reader<'a> {
    root: &'a Map<String, Value>,
}

impl<'a> Reader<'a> {
    fn get(&self, path: &str) -> Option<&'a Value> {
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

    fn string(&self, path: &str, default: &str) -> Result<String, String> {
        match self.get(path) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{path} must be a string, got {other}")),
        }
    }

    fn int(&self, path: &str, default: i64) -> Result<i64, String> {
        match self.get(path) {
            None => Ok(default),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| format!("{path} must be a whole number, got {n}")),
            Some(other) => Err(format!("{path} must be a number, got {other}")),
        }
    }

    fn duration(&self, path: &str) -> Result<Option<Duration>, String> {
        match self.get(path) {
            None => Ok(None),
            Some(Value::String(s)) => duration::parse(s)
                .map(Some)
                .map_err(|e| format!("{path}: {e}")),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(ns) if ns >= 0 => Ok(Some(Duration::from_nanos(ns as u64))),
                _ => Err(format!("{path}: invalid duration {n}")),
            },
            Some(_) => Err(format!("{path}: invalid duration type")),
        }
    }

    fn section(&self, path: &str) -> Result<(), String> {
        match self.get(path) {
            None | Some(Value::Object(_)) => Ok(()),
            Some(other) => Err(format!("{path} must be an object, got {other}")),
        }
    }
}

impl ClusterConfig {
    /// Parses the JSONC text, applying the reference's defaults. Validation
    /// is separate ([`ClusterConfig::validate`]) because its order mixes in
    /// the node id.
    pub fn parse(text: &str) -> Result<ClusterConfig, String> {
        let json = super::jsonc::to_json(text)?;
        let value: Value =
            serde_json::from_str(&json).map_err(|e| format!("config is not valid JSON: {e}"))?;
        let root = value
            .as_object()
            .ok_or_else(|| "config must be a JSON object".to_string())?;
        let r = Reader { root };
        for section in [
            "storage",
            "elector",
            "replication",
            "replication.chunk_buffer",
            "snapshot",
        ] {
            r.section(section)?;
        }
        let provider = match r.string("storage.provider", "s3")?.as_str() {
            "s3" => Provider::S3,
            "fs" => Provider::Fs,
            other => {
                return Err(format!(
                    "invalid storage.provider {other:?}: must be s3 or fs"
                ))
            }
        };
        let cleanup_strategy = match r.string("snapshot.cleanup_strategy", "auto")?.as_str() {
            "auto" => CleanupStrategy::Auto,
            "list" => CleanupStrategy::List,
            "direct" => CleanupStrategy::Direct,
            other => {
                return Err(format!(
                    "invalid snapshot.cleanup_strategy {other:?}: must be auto, list, or direct"
                ))
            }
        };
        let nonzero = |v: i64, default: i64| if v == 0 { default } else { v };
        let batch_size = r.int("snapshot.cleanup_batch_size", 250)?;
        Ok(ClusterConfig {
            cluster_id: r.string("cluster_id", "")?,
            storage: StorageConfig {
                provider,
                bucket_name: r.string("storage.bucket_name", "")?,
                key_prefix: r.string("storage.key_prefix", "")?,
                class: r.string("storage.class", "STANDARD")?,
                encryption: r.string("storage.encryption", "provider-managed")?,
                kms_key_id: r.string("storage.kms_key_id", "")?,
                path: r.string("storage.path", "")?,
            },
            heartbeat_interval: r.duration("heartbeat_interval")?,
            elector: ElectorConfig {
                degradation_count: nonzero(r.int("elector.degradation_count", 2)?, 2),
                deregistration_timeout: r
                    .duration("elector.deregistration_timeout")?
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(180)),
                primary_prior_timeout: r.duration("elector.primary_prior_timeout")?,
            },
            replication: ReplicationConfig {
                quorum: r.int("replication.quorum", -1)?,
                degradation_count: nonzero(r.int("replication.degradation_count", 2)?, 2),
                chunk_buffer: ChunkBufferConfig {
                    threshold_size_mb: r.int("replication.chunk_buffer.threshold_size_mb", 0)?,
                    threshold_age_minutes: r
                        .int("replication.chunk_buffer.threshold_age_minutes", 0)?,
                },
            },
            snapshot: SnapshotConfig {
                threshold_records: nonzero(r.int("snapshot.threshold_records", 10_000)?, 10_000),
                threshold_size_mb: nonzero(r.int("snapshot.threshold_size_mb", 10_000)?, 10_000),
                threshold_age_minutes: r.int("snapshot.threshold_age_minutes", 0)?,
                cleanup_batch_size: if batch_size <= 0 { 250 } else { batch_size },
                cleanup_batch_interval: r
                    .duration("snapshot.cleanup_batch_interval")?
                    .unwrap_or(Duration::from_secs(1)),
                cleanup_strategy,
            },
            compaction_interval: r.duration("compaction_interval")?,
        })
    }

    /// The reference's checks, in its order, after the node id's.
    pub fn validate(&self) -> Result<(), String> {
        identifier::validate("cluster_id", &self.cluster_id)?;
        let s = &self.storage;
        match s.provider {
            Provider::S3 => {
                if s.bucket_name.is_empty() {
                    return Err("storage.bucket_name is required".into());
                }
            }
            Provider::Fs => {
                if s.path.is_empty() {
                    return Err("storage.path is required when storage.provider is fs".into());
                }
            }
        }
        if s.encryption != "provider-managed" && s.encryption != "customer-managed" {
            return Err(format!(
                "invalid storage.encryption {:?}: must be provider-managed or customer-managed",
                s.encryption
            ));
        }
        if s.encryption == "customer-managed" && s.kms_key_id.is_empty() {
            return Err(
                "storage.kms_key_id is required when storage.encryption is customer-managed".into(),
            );
        }
        if s.provider == Provider::S3
            && !["STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING"].contains(&s.class.as_str())
        {
            return Err(format!(
                "invalid storage.class {:?}: must be STANDARD, STANDARD_IA or INTELLIGENT_TIERING",
                s.class
            ));
        }
        if self.elector.degradation_count < 1 {
            return Err("elector.degradation_count must be at least 1".into());
        }
        if self.replication.degradation_count < 1 {
            return Err("replication.degradation_count must be at least 1".into());
        }
        let heartbeat = match self.heartbeat_interval {
            Some(h) if !h.is_zero() => h,
            _ => return Err("heartbeat_interval is required and must be greater than 0".into()),
        };
        if let Some(prior) = self.elector.primary_prior_timeout {
            let min = heartbeat * self.elector.degradation_count as u32;
            if prior < min {
                return Err(format!(
                    "elector.primary_prior_timeout ({}) must be at least elector.degradation_count × heartbeat_interval ({})",
                    duration::format(prior),
                    duration::format(min)
                ));
            }
        }
        if self.replication.quorum < -1 {
            return Err(
                "replication.quorum must be -1 (majority), 0 (disabled) or a positive count".into(),
            );
        }
        if self.replication.quorum != 0 && self.replication.chunk_buffer.threshold_age_minutes <= 0
        {
            return Err(
                "replication.chunk_buffer.threshold_age_minutes must be greater than 0 when replication.quorum is not 0"
                    .into(),
            );
        }
        Ok(())
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
        assert_eq!(
            c.validate().unwrap_err(),
            "heartbeat_interval is required and must be greater than 0"
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
            ClusterConfig::parse(&v.to_string()).and_then(|c| c.validate())
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
