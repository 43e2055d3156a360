//! Named fault points for tests (TiKV-style, minimal): code marks a spot
//! with [`hit`] (async) or [`hit_blocking`] (threads), and a test picks
//! what happens there with `NETSY_FAILPOINT_<NAME>=<action>`:
//!
//! * `hold:<path>`, or a bare absolute path: wait while the file exists;
//! * `crash`: the process kills itself with SIGKILL at once (no
//!   destructors, no flush, no core file), as a power cut or `kill -9`
//!   would end it;
//! * `crash-after:<n>`: pass n−1 times, crash the n-th time;
//! * `stall:<ms>`: wait that long every time;
//! * `off` or empty: nothing.
//!
//! Beside the points, `NETSY_TEST_DIAL_VIA=<addr>=<proxy>,...` reroutes
//! the peer and election links this node dials ([`dial_address`]): every
//! node registers its real addresses, and a test puts one proxy on each
//! link from one node to another, so it can cut a node off from the others
//! (both directions) while the rest stay connected.
//!
//! And `NETSY_TEST_BOOT_ID=<id>` is the machine boot the local store is
//! opened on ([`test_boot_id`]): a node restarted with another id acts as
//! one whose machine restarted.
//!
//! Only debug builds (the tests') have them. A release build compiles
//! every point to an empty inline function and never reads the variables
//! (only [`init`] warns that they are ignored). In a debug build the
//! variables are read once, at [`init`] or the first point reached, so an
//! unset point costs a check of an empty list.

use std::path::PathBuf;
use std::time::Duration;

/// Every fault point, with where it sits. A variable naming another point
/// gets a warning at start (its action would never run).
pub const POINTS: &[(&str, &str)] = &[
    ("loading", "a node starts loading its store (async)"),
    ("draining", "graceful stop, once the node drains (async)"),
    (
        "follow_apply",
        "a replica is about to apply records its Primary streamed (async)",
    ),
    (
        "replica_receipt",
        "a replica committed records to SQLite, before it sends their receipt (async)",
    ),
    (
        "chunk_uploaded",
        "sync write path: the batch's chunk is in the bucket, not yet in SQLite (the commit \
         thread, or the worker committing a lone write)",
    ),
    (
        "quorum_committed",
        "quorum write path: enough receipts came, before the commit is applied and broadcast \
         (commit thread)",
    ),
    (
        "buffer_flush",
        "a chunk-buffer flush took its records, before it uploads them (async)",
    ),
    (
        "snapshot_upload",
        "a snapshot file is written locally, before it is uploaded (async)",
    ),
    (
        "preflight_start",
        "a new Primary starts its preflight, before it catches up with the bucket (async)",
    ),
    (
        "preflight",
        "a new Primary caught up with the bucket, before it uploads records only it has (async)",
    ),
];

/// What a fault point does when reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Off,
    /// Waits while this file exists.
    Hold(PathBuf),
    Crash,
    /// Crashes the n-th time the point is reached (n ≥ 1).
    CrashAfter(u64),
    Stall(Duration),
}

impl Action {
    /// Parses a variable's value. An unknown action is refused rather than
    /// taken for a path, so a misspelt `crahs` does not silently do nothing.
    pub fn parse(value: &str) -> Result<Action, String> {
        let value = value.trim();
        if value.is_empty() || value == "off" {
            return Ok(Action::Off);
        }
        if value == "crash" {
            return Ok(Action::Crash);
        }
        let (kind, arg) = value.split_once(':').unwrap_or((value, ""));
        match kind {
            "hold" if !arg.is_empty() => Ok(Action::Hold(PathBuf::from(arg))),
            "hold" => Err("hold needs a file: hold:<path>".into()),
            "crash-after" => match arg.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Action::CrashAfter(n)),
                _ => Err(format!(
                    "crash-after needs a count of 1 or more: crash-after:<n>, not {value:?}"
                )),
            },
            "stall" => arg
                .parse::<u64>()
                .map(|ms| Action::Stall(Duration::from_millis(ms)))
                .map_err(|_| format!("stall needs milliseconds: stall:<ms>, not {value:?}")),
            // Before actions existed the value was the hold file's path.
            _ if value.starts_with('/') => Ok(Action::Hold(PathBuf::from(value))),
            _ => Err(format!(
                "unknown fault action {value:?}: use hold:<path>, crash, crash-after:<n>, \
                 stall:<ms> or off"
            )),
        }
    }
}

/// The fault points the environment sets, by lowercase name, with what is
/// wrong: errors (a value that does not parse) and warnings (a point that
/// does not exist).
#[derive(Debug, Default)]
pub struct Parsed {
    pub points: Vec<(String, Action)>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads the `NETSY_FAILPOINT_*` variables among `vars`.
pub fn parse_env(vars: impl IntoIterator<Item = (String, String)>) -> Parsed {
    let prefix = crate::config::env_vars::FAILPOINT.name;
    let mut parsed = Parsed::default();
    for (var, value) in vars {
        let Some(name) = var.strip_prefix(prefix).filter(|n| !n.is_empty()) else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        match Action::parse(&value) {
            Ok(action) => {
                if !POINTS.iter().any(|(known, _)| *known == name) {
                    let known: Vec<&str> = POINTS.iter().map(|p| p.0).collect();
                    parsed.warnings.push(format!(
                        "{var}: there is no fault point {name}; the known ones are {}",
                        known.join(", ")
                    ));
                }
                parsed.points.push((name, action));
            }
            Err(e) => parsed.errors.push(format!("{var}: {e}")),
        }
    }
    parsed
}

/// Reads the variables now (a debug build) and says what is wrong with
/// them: Err with the values that do not parse, which a test should not
/// run with; Ok with warnings otherwise.
#[cfg(debug_assertions)]
pub fn init() -> Result<Vec<String>, Vec<String>> {
    let parsed = armed::parse_process_env();
    let set = armed::table();
    if !set.is_empty() {
        let names: Vec<String> = set
            .iter()
            .map(|p| format!("{}={:?}", p.name, p.action))
            .collect();
        log::warn!("fault points set: {}", names.join(", "));
    }
    let mut errors = parsed.errors;
    match armed::parse_dial_via_env() {
        Ok(routes) if !routes.is_empty() => {
            let shown: Vec<String> = routes.iter().map(|(f, t)| format!("{f} via {t}")).collect();
            log::warn!("peer links dialled through proxies: {}", shown.join(", "));
        }
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    if errors.is_empty() {
        Ok(parsed.warnings)
    } else {
        Err(errors)
    }
}

/// A release build has no fault points: a variable that sets one is
/// ignored, and said to be.
#[cfg(not(debug_assertions))]
pub fn init() -> Result<Vec<String>, Vec<String>> {
    let prefix = crate::config::env_vars::FAILPOINT.name;
    let dial_via = crate::config::env_vars::TEST_DIAL_VIA.name;
    let boot_id = crate::config::env_vars::TEST_BOOT_ID.name;
    Ok(std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with(prefix) || name == dial_via || name == boot_id)
        .map(|name| format!("{name} is ignored: fault points exist only in debug builds"))
        .collect())
}

/// Reads a `NETSY_TEST_DIAL_VIA` value: `host:port=host:port` pairs,
/// separated by commas (an empty value reroutes nothing).
pub fn parse_dial_via(value: &str) -> Result<Vec<(String, String)>, String> {
    let var = crate::config::env_vars::TEST_DIAL_VIA.name;
    value
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (from, to) = pair
                .split_once('=')
                .map(|(f, t)| (f.trim(), t.trim()))
                .filter(|(f, t)| f.contains(':') && t.contains(':'))
                .ok_or_else(|| format!("{var}: {pair:?} is not <host:port>=<host:port>"))?;
            Ok((from.to_string(), to.to_string()))
        })
        .collect()
}

/// Where to dial to reach `addr`: the proxy `NETSY_TEST_DIAL_VIA` puts on
/// that link, or `addr` itself.
#[cfg(debug_assertions)]
pub fn dial_address(addr: &str) -> &str {
    armed::dial_via()
        .iter()
        .find(|(from, _)| from == addr)
        .map_or(addr, |(_, to)| to.as_str())
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn dial_address(addr: &str) -> &str {
    addr
}

/// The boot id `NETSY_TEST_BOOT_ID` sets, if any (not empty).
#[cfg(debug_assertions)]
pub fn test_boot_id() -> Option<String> {
    std::env::var(crate::config::env_vars::TEST_BOOT_ID.name)
        .ok()
        .filter(|id| !id.trim().is_empty())
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn test_boot_id() -> Option<String> {
    None
}

/// Fault point `name`, in async code.
#[cfg(debug_assertions)]
pub async fn hit(name: &str) {
    match armed::reached(name) {
        None => {}
        Some(armed::Now::Crash) => armed::crash(name),
        Some(armed::Now::Stall(d)) => tokio::time::sleep(d).await,
        Some(armed::Now::Hold(path)) => {
            armed::log_hold(name, path);
            while path.exists() {
                tokio::time::sleep(armed::HOLD_POLL).await;
            }
        }
    }
}

/// Fault point `name`, on a thread that may block (the commit thread, or a
/// worker committing a lone write).
#[cfg(debug_assertions)]
pub fn hit_blocking(name: &str) {
    match armed::reached(name) {
        None => {}
        Some(armed::Now::Crash) => armed::crash(name),
        Some(armed::Now::Stall(d)) => std::thread::sleep(d),
        Some(armed::Now::Hold(path)) => {
            armed::log_hold(name, path);
            while path.exists() {
                std::thread::sleep(armed::HOLD_POLL);
            }
        }
    }
}

/// Whether point `name` has an action set: code may take a slower,
/// ordered path only when a test asks for this point.
#[cfg(debug_assertions)]
pub fn is_set(name: &str) -> bool {
    armed::table()
        .iter()
        .any(|p| p.name == name && p.action != Action::Off)
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn hit(_name: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit_blocking(_name: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn is_set(_name: &str) -> bool {
    false
}

#[cfg(debug_assertions)]
mod armed {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::{Action, Parsed};

    /// How often a hold looks for its file.
    pub const HOLD_POLL: Duration = Duration::from_millis(20);

    pub struct Point {
        pub name: String,
        pub action: Action,
        reached: AtomicU64,
    }

    pub enum Now {
        Crash,
        Stall(Duration),
        Hold(&'static Path),
    }

    static TABLE: OnceLock<Vec<Point>> = OnceLock::new();
    static DIAL_VIA: OnceLock<Vec<(String, String)>> = OnceLock::new();

    pub fn parse_dial_via_env() -> Result<Vec<(String, String)>, String> {
        let var = crate::config::env_vars::TEST_DIAL_VIA.name;
        match std::env::var(var) {
            Ok(value) => super::parse_dial_via(&value),
            Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{var}: not UTF-8")),
        }
    }

    /// The rerouted links, read once; a value that does not parse reroutes
    /// nothing (and makes [`super::init`] refuse the start).
    pub fn dial_via() -> &'static [(String, String)] {
        DIAL_VIA.get_or_init(|| parse_dial_via_env().unwrap_or_default())
    }

    pub fn parse_process_env() -> Parsed {
        // Names or values that are not UTF-8 cannot set a fault point.
        super::parse_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The points set, read once; values that do not parse are left out
    /// (and make [`super::init`] refuse the start).
    pub fn table() -> &'static [Point] {
        TABLE.get_or_init(|| {
            parse_process_env()
                .points
                .into_iter()
                .filter(|(_, action)| *action != Action::Off)
                .map(|(name, action)| Point {
                    name,
                    action,
                    reached: AtomicU64::new(0),
                })
                .collect()
        })
    }

    /// Counts a visit to point `name` and says what to do now.
    pub fn reached(name: &str) -> Option<Now> {
        let point = table().iter().find(|p| p.name == name)?;
        let visit = point.reached.fetch_add(1, Ordering::AcqRel) + 1;
        match &point.action {
            Action::Off => None,
            Action::Crash => Some(Now::Crash),
            Action::CrashAfter(n) => (visit >= *n).then_some(Now::Crash),
            Action::Stall(d) => Some(Now::Stall(*d)),
            Action::Hold(path) => Some(Now::Hold(path.as_path())),
        }
    }

    pub fn log_hold(name: &str, path: &Path) {
        if path.exists() {
            log::warn!(
                "fault point {name}: holding while {} exists",
                path.display()
            );
        }
    }

    /// SIGKILL to itself: nothing runs after it, as with `kill -9` (abort
    /// would run a SIGABRT handler and may write a core file).
    pub fn crash(name: &str) -> ! {
        log::warn!("fault point {name}: crashing (SIGKILL)");
        // SAFETY: getpid and kill have no preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; should it not be delivered at once.
        std::process::abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_via_parses() {
        assert_eq!(parse_dial_via(""), Ok(vec![]));
        assert_eq!(
            parse_dial_via("127.0.0.1:1=127.0.0.1:2, 127.0.0.1:3 = 127.0.0.1:4,"),
            Ok(vec![
                ("127.0.0.1:1".into(), "127.0.0.1:2".into()),
                ("127.0.0.1:3".into(), "127.0.0.1:4".into())
            ])
        );
        for bad in ["127.0.0.1:1", "127.0.0.1:1=", "a=b", "=127.0.0.1:2"] {
            let e = parse_dial_via(bad).unwrap_err();
            assert!(e.starts_with("NETSY_TEST_DIAL_VIA: "), "{e}");
        }
    }

    #[test]
    fn actions_parse() {
        assert_eq!(Action::parse(""), Ok(Action::Off));
        assert_eq!(Action::parse("off"), Ok(Action::Off));
        assert_eq!(Action::parse("crash"), Ok(Action::Crash));
        assert_eq!(Action::parse("crash-after:3"), Ok(Action::CrashAfter(3)));
        assert_eq!(
            Action::parse("stall:250"),
            Ok(Action::Stall(Duration::from_millis(250)))
        );
        assert_eq!(
            Action::parse("hold:/tmp/h"),
            Ok(Action::Hold(PathBuf::from("/tmp/h")))
        );
        assert_eq!(
            Action::parse("hold:relative/file"),
            Ok(Action::Hold(PathBuf::from("relative/file")))
        );
        // The old form: a bare path, even with a colon in it.
        assert_eq!(
            Action::parse("/tmp/x:y"),
            Ok(Action::Hold(PathBuf::from("/tmp/x:y")))
        );
    }

    #[test]
    fn bad_actions_are_refused() {
        for bad in [
            "crahs",
            "crash-after:0",
            "crash-after:x",
            "crash-after",
            "stall:",
            "stall:1s",
            "hold:",
            "hold",
            "relative/path",
        ] {
            assert!(Action::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(Action::parse("crahs")
            .unwrap_err()
            .contains("crash-after:<n>"));
    }

    #[test]
    fn the_environment_names_points_case_insensitively() {
        let parsed = parse_env([
            ("NETSY_FAILPOINT_CHUNK_UPLOADED".into(), "crash".into()),
            ("NETSY_FAILPOINT_NOWHERE".into(), "/nonexistent".into()),
            ("NETSY_FAILPOINT_PREFLIGHT".into(), "stall:x".into()),
            ("NETSY_FAILPOINT_".into(), "crash".into()),
            ("PATH".into(), "/bin".into()),
        ]);
        assert_eq!(
            parsed.points,
            [
                ("chunk_uploaded".to_string(), Action::Crash),
                (
                    "nowhere".to_string(),
                    Action::Hold(PathBuf::from("/nonexistent"))
                ),
            ]
        );
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(parsed.warnings[0].contains("no fault point nowhere"));
        assert_eq!(
            parsed.errors,
            ["NETSY_FAILPOINT_PREFLIGHT: stall needs milliseconds: stall:<ms>, not \"stall:x\""]
        );
    }

    #[tokio::test]
    async fn an_unset_point_passes() {
        hit("no_such_point_is_set").await;
        hit_blocking("no_such_point_is_set");
        assert!(!is_set("no_such_point_is_set"));
    }
}
