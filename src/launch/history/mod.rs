//! Checkers for recorded client histories: from what clients sent and were
//! told (operations, watch streams) and what the store holds at the end,
//! decide whether netsy behaved as a linearizable, durable etcd.
//!
//! They are pure functions of a [`Recording`]; making one (traffic, faults)
//! is the caller's job.
//!
//! * [`well_formed`]: each answer fits its request (a harness check).
//! * [`linearizable`]: per key, a search for an order of the operations that
//!   fits real time, the revisions and etcd's semantics; plus revisions
//!   growing with real time across keys.
//! * [`reads`]: every read equals the final history at its revision;
//!   serializable reads never go back and never run ahead.
//! * [`watch`]: each stream is ordered, gapless, duplicate-free, with the
//!   right values and prev_kv.
//! * [`durability`]: every acknowledged write is in the final state and
//!   history, at its own revision.
//!
//! [`Recording::check`] runs every check the recording has data for.

pub mod durability;
pub mod linearizable;
pub mod operation;
pub mod reads;
pub mod watch;
pub mod well_formed;
pub mod write_log;

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod testkit;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use operation::{describe, ClientId, Kv, Operation, Outcome, Request, Response, Revision};
pub use watch::{EventKind, WatchCancel, WatchEvent, WatchStream, Watched};
pub use write_log::{Change, StoredValue, Write, WriteLog};

/// Everything a run recorded, in one serialisable value (a failing run is
/// saved as JSON to be checked again or read by a person).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub watches: Vec<WatchStream>,
    /// The live keys at the end (key → value and mod revision).
    #[serde(default)]
    pub final_state: Option<BTreeMap<String, StoredValue>>,
    /// Every write by revision from the run's first write on, read back
    /// from the store at the end (a watch from the first revision, before
    /// any compaction). Without it the acknowledged writes stand in, which
    /// are the whole history only when no write's outcome is unknown.
    #[serde(default)]
    pub history: Option<Vec<Write>>,
}

/// One thing the system did wrong (or the recording got wrong).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub check: Check,
    /// Indexes into the recording's operations, the ones the message names.
    pub operations: Vec<usize>,
    /// Index of the watch stream, for watch violations.
    pub watch: Option<usize>,
    pub message: String,
}

/// Which check found a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    WellFormed,
    /// A revision lower than one already returned before the operation began.
    RevisionOrder,
    Linearizable,
    /// The linearizability search gave up on a key: undecided, not passed.
    SearchLimit,
    Serializable,
    /// A read that disagrees with the final history at its revision.
    Snapshot,
    Watch,
    Durability,
}

/// The result of [`Recording::check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub violations: Vec<Violation>,
    /// Checks that could not run, and why.
    pub skipped: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl Violation {
    fn new(check: Check, operations: Vec<usize>, message: String) -> Violation {
        Violation {
            check,
            operations,
            watch: None,
            message,
        }
    }
}

/// What a recording holds, for the fault table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub operations: usize,
    /// Writes answered (a failed compare included: a Primary answered).
    pub answered_writes: usize,
    pub unknown: usize,
    /// The longest time between two answered writes: how long writes
    /// stopped around the fault.
    pub longest_write_pause: Duration,
}

impl Recording {
    pub fn counts(&self) -> Counts {
        let ops = &self.operations;
        let mut answered: Vec<u64> = ops
            .iter()
            .filter(|o| o.request.is_write() && matches!(o.outcome, Outcome::Ok(_)))
            .map(|o| o.returned_at_ns)
            .collect();
        answered.sort_unstable();
        let pause = answered.windows(2).map(|w| w[1] - w[0]).max();
        Counts {
            operations: ops.len(),
            answered_writes: answered.len(),
            unknown: ops
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Unknown { .. }))
                .count(),
            longest_write_pause: Duration::from_nanos(pause.unwrap_or(0)),
        }
    }

    /// Every check this recording has the data for. With a final history,
    /// the linearizability search takes from it whether and where writes
    /// with unknown outcomes happened.
    pub fn check(&self) -> Verdict {
        let ops = &self.operations;
        let mut verdict = Verdict::default();
        let violations = &mut verdict.violations;
        violations.extend(well_formed::check(ops));
        violations.extend(durability::check_revisions_unique(ops));

        let log = match &self.history {
            Some(writes) => WriteLog::new(writes.clone()).map_err(|e| {
                violations.push(Violation::new(
                    Check::Durability,
                    Vec::new(),
                    format!("the final history is not one write per revision: {e}"),
                ));
                e
            }),
            None => WriteLog::from_acknowledged(ops),
        };
        let history = self.history.as_ref().and(log.as_ref().ok());
        violations.extend(linearizable::check_with(
            ops,
            history,
            linearizable::SearchLimits::default(),
        ));
        match &log {
            Ok(log) => {
                violations.extend(reads::check_against_log(ops, log));
                for (index, stream) in self.watches.iter().enumerate() {
                    violations.extend(watch::check(index, stream, log));
                }
                if self.history.is_some() {
                    violations.extend(durability::check_history(ops, log));
                }
            }
            Err(e) => verdict.skipped.push(format!(
                "reads against the history and watch streams: no complete history ({e})"
            )),
        }
        let log = log.ok();
        let highest = log.as_ref().and_then(WriteLog::last_revision);
        verdict
            .violations
            .extend(reads::check_serializable(ops, highest));
        match &self.final_state {
            Some(state) => {
                verdict
                    .violations
                    .extend(durability::check_final_state(ops, state, log.as_ref()))
            }
            None => verdict
                .skipped
                .push("durability against the final state: none recorded".into()),
        }
        verdict
    }

    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|e| format!("recording to JSON: {e}"))
    }

    pub fn from_json(json: &str) -> Result<Recording, String> {
        serde_json::from_str(json).map_err(|e| format!("recording from JSON: {e}"))
    }

    /// Writes the recording as JSON, to look at or check again later.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, self.to_json()?).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Recording, String> {
        let json = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Recording::from_json(&json)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.check, self.message)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            write!(f, "passed")?;
        } else {
            write!(f, "{} violations:", self.violations.len())?;
            for violation in &self.violations {
                write!(f, "\n  {violation}")?;
            }
        }
        for skipped in &self.skipped {
            write!(f, "\n  skipped: {skipped}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::simulation::{simulate, Shape};
    use super::*;

    #[test]
    fn counts_find_the_longest_pause_between_answered_writes() {
        let mut recording = simulate(Shape {
            seed: 3,
            clients: 2,
            keys: 3,
            operations: 40,
            unknown_percent: 0,
            failed_percent: 0,
        });
        let before = recording.counts();
        assert_eq!((before.operations, before.unknown), (40, 0));
        assert!(before.answered_writes > 5, "{before:?}");
        // Everything from the middle of the run on happens 7 s later.
        let mut invoked: Vec<u64> = recording
            .operations
            .iter()
            .map(|o| o.invoked_at_ns)
            .collect();
        invoked.sort_unstable();
        let middle = invoked[invoked.len() / 2];
        let seven = Duration::from_secs(7);
        for op in recording.operations.iter_mut() {
            if op.invoked_at_ns >= middle {
                op.invoked_at_ns += seven.as_nanos() as u64;
                op.returned_at_ns += seven.as_nanos() as u64;
            }
        }
        let after = recording.counts();
        assert_eq!(after.answered_writes, before.answered_writes);
        assert!(
            after.longest_write_pause >= seven
                && after.longest_write_pause <= before.longest_write_pause * 2 + seven,
            "{after:?} (before: {before:?})"
        );
    }

    fn shape(seed: u64) -> Shape {
        Shape {
            seed,
            clients: 16,
            keys: 300,
            operations: 4000,
            unknown_percent: 5,
            failed_percent: 3,
        }
    }

    #[test]
    fn a_large_correct_recording_passes_quickly() {
        let recording = simulate(shape(1));
        let unknown_writes = recording
            .operations
            .iter()
            .filter(|op| op.request.is_write() && matches!(op.outcome, Outcome::Unknown { .. }))
            .count();
        assert!(unknown_writes > 50, "{unknown_writes}");
        let started = Instant::now();
        let verdict = recording.check();
        let elapsed = started.elapsed();
        assert!(verdict.passed(), "{verdict}");
        assert!(verdict.skipped.is_empty(), "{verdict}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        // Without the final history the search guesses at the unknown
        // outcomes, still quickly.
        let started = Instant::now();
        let violations = linearizable::check(&recording.operations);
        assert!(violations.is_empty(), "{violations:#?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn hot_keys_with_many_clients_pass_quickly() {
        // 32 clients on two keys: about fifteen operations in flight per key.
        let recording = simulate(Shape {
            clients: 32,
            keys: 2,
            operations: 3000,
            unknown_percent: 10,
            ..shape(2)
        });
        let started = Instant::now();
        let verdict = recording.check();
        let elapsed = started.elapsed();
        assert!(verdict.passed(), "{verdict}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    }

    #[test]
    fn correct_recordings_of_many_shapes_pass() {
        for seed in 0..40 {
            let recording = simulate(Shape {
                clients: 1 + (seed % 7) as u32,
                keys: 1 + seed % 5,
                operations: 150,
                unknown_percent: 15,
                failed_percent: 5,
                seed,
            });
            let verdict = recording.check();
            assert!(verdict.passed(), "seed {seed}: {verdict}");
            let violations = linearizable::check(&recording.operations);
            assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
        }
    }

    #[test]
    fn a_recording_survives_json() {
        let recording = simulate(Shape {
            operations: 300,
            ..shape(3)
        });
        let json = recording.to_json().unwrap();
        let loaded = Recording::from_json(&json).unwrap();
        assert_eq!(loaded, recording);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recording.json");
        recording.save(&path).unwrap();
        assert_eq!(Recording::load(&path).unwrap(), recording);
    }

    #[test]
    fn a_stale_read_in_a_large_recording_is_caught() {
        let mut recording = simulate(shape(4));
        let log = WriteLog::new(recording.history.clone().unwrap()).unwrap();
        // A linearizable Get that saw a second version: make it see the first.
        let (index, older) = recording
            .operations
            .iter()
            .enumerate()
            .find_map(|(index, op)| match (&op.request, op.response()) {
                (
                    Request::Get {
                        revision: None,
                        serializable: false,
                        ..
                    },
                    Some(Response::Get { kv: Some(kv), .. }),
                ) if kv.version >= 2 => Some((index, log.kv_at(&kv.key, kv.mod_revision - 1)?)),
                _ => None,
            })
            .unwrap();
        let Outcome::Ok(Response::Get { kv, .. }) = &mut recording.operations[index].outcome else {
            unreachable!()
        };
        *kv = Some(older);
        let verdict = recording.check();
        let checks: Vec<Check> = verdict
            .violations
            .iter()
            .filter(|v| v.operations.contains(&index))
            .map(|v| v.check)
            .collect();
        assert_eq!(checks, [Check::Linearizable, Check::Snapshot], "{verdict}");
    }

    #[test]
    fn a_lost_write_in_a_large_recording_is_caught() {
        let mut recording = simulate(shape(5));
        // The last acknowledged put of some key vanishes from the store.
        let state = recording.final_state.as_mut().unwrap();
        let (index, key) = recording
            .operations
            .iter()
            .enumerate()
            .find_map(|(index, op)| {
                let revision = op.acknowledged_write()?;
                let key = op.request.key()?;
                (state.get(key)?.mod_revision == revision).then(|| (index, key.to_string()))
            })
            .unwrap();
        state.remove(&key);
        let history = recording.history.as_mut().unwrap();
        let revision = recording.operations[index].acknowledged_write().unwrap();
        history.retain(|w| w.revision != revision);
        let verdict = recording.check();
        let named: Vec<Check> = verdict
            .violations
            .iter()
            .filter(|v| v.operations.contains(&index))
            .map(|v| v.check)
            .collect();
        assert!(named.contains(&Check::Durability), "{verdict}");
    }

    #[test]
    fn a_broken_watch_in_a_large_recording_is_caught() {
        let mut recording = simulate(shape(6));
        let events = &mut recording.watches[0].events;
        let dropped = events.remove(events.len() / 2);
        let duplicate = events[10].clone();
        events.insert(11, duplicate);
        let verdict = recording.check();
        assert_eq!(verdict.violations.len(), 2, "{verdict}");
        assert!(verdict.violations.iter().all(|v| v.watch == Some(0)));
        assert!(
            verdict.violations[1]
                .message
                .contains("missed 1 events between revisions 2 and"),
            "{verdict}"
        );
        assert!(verdict.violations[1]
            .message
            .contains(&format!("at {}", dropped.kv.mod_revision)));
    }
}
