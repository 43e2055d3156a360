//! Scenario files: JSON lines, one step per line; `#` lines are comments.
//! A step is an object with one operation key (range, put, delete, txn,
//! compact, lease_grant, lease_revoke, lease_time_to_live, lease_leases,
//! lease_keep_alive, status, alarm, member_list, call, watch, watch_expect)
//! whose value is the request.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::json::fnv_str;
use crate::requests;

#[derive(Clone, Debug)]
pub struct Step {
    /// 1-based line in the scenario file.
    pub line: usize,
    pub op: String,
    pub body: Value,
    /// The step as written, for cassettes and reports.
    pub source: Value,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    /// The comment lines at the top: what the scenario is about.
    pub description: String,
    pub steps: Vec<Step>,
    /// Hash of the file, to detect stale cassettes.
    pub fingerprint: String,
}

const OPS: &[&str] = &[
    "range",
    "put",
    "delete",
    "txn",
    "compact",
    "lease_grant",
    "lease_revoke",
    "lease_time_to_live",
    "lease_leases",
    "lease_keep_alive",
    "status",
    "alarm",
    "member_list",
    "call",
    "watch",
    "watch_expect",
];

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
            .ok_or_else(|| format!("{}: scenario files end in .jsonl", path.display()))?
            .to_string();
        let mut steps = Vec::new();
        let mut description = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                if steps.is_empty() {
                    description.push(comment.trim().to_string());
                }
                continue;
            }
            let at = |e: String| format!("{}:{}: {e}", path.display(), i + 1);
            let source: Value = serde_json::from_str(trimmed).map_err(|e| at(e.to_string()))?;
            let o = source
                .as_object()
                .ok_or_else(|| at("a step is a JSON object".into()))?;
            if o.len() != 1 {
                return Err(at(format!(
                    "a step has exactly one operation key, got {:?}",
                    o.keys().collect::<Vec<_>>()
                )));
            }
            let (op, body) = o.iter().next().ok_or_else(|| at("empty step".into()))?;
            if !OPS.contains(&op.as_str()) {
                return Err(at(format!("unknown operation {op:?} (known: {OPS:?})")));
            }
            check(op, body).map_err(at)?;
            steps.push(Step {
                line: i + 1,
                op: op.clone(),
                body: body.clone(),
                source: source.clone(),
            });
        }
        if steps.is_empty() {
            return Err(format!("{}: no steps", path.display()));
        }
        Ok(Scenario {
            name,
            path: path.to_path_buf(),
            description: description.join(" "),
            steps,
            fingerprint: fnv_str(&text),
        })
    }

    /// Whether the scenario opens watch streams (and so has an
    /// end-of-scenario watch check).
    pub fn opens_watch_streams(&self) -> bool {
        self.steps.iter().any(|s| s.op == "watch")
    }

    pub fn cassette_path(&self) -> PathBuf {
        self.path
            .with_file_name(format!("{}.cassette.json", self.name))
    }
}

/// Parses a step's request once up front so a broken scenario fails at load.
fn check(op: &str, body: &Value) -> Result<(), String> {
    // Lease references resolve at run time; any name is fine here.
    let leases = requests::Leases::lenient();
    match op {
        "range" => requests::range(body).map(drop),
        "put" => requests::put(body, &leases).map(drop),
        "delete" => requests::delete(body).map(drop),
        "txn" => requests::txn(body, &leases).map(drop),
        "compact" => requests::compact(body).map(drop),
        "lease_grant" => requests::lease_grant(body).map(drop),
        "lease_revoke" => requests::lease_revoke(body, &leases).map(drop),
        "lease_time_to_live" => requests::lease_time_to_live(body, &leases).map(drop),
        "lease_leases" => requests::lease_leases(body).map(drop),
        "lease_keep_alive" => requests::lease_keep_alive(body, &leases).map(drop),
        "alarm" => requests::alarm(body).map(drop),
        _ => Ok(()),
    }
}

/// Every scenario in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Scenario::load(p)).collect()
}
