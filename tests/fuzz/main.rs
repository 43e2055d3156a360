//! Fuzzing on stable Rust: every target in `netsy::fuzzing` runs its seed
//! inputs, then mutations of them, for a bounded time (5 s each by
//! default; `NETSY_FUZZ_SECONDS` for longer runs by hand, 0 for the seeds
//! alone). Inputs come from a seeded generator: the seed is printed, and
//! `NETSY_FUZZ_SEED` replays a run. An input that panics is shrunk, saved
//! under `target/tmp/fuzz-crashes/` and printed as a byte string to paste
//! into `regressions.rs`. The seeds are written to `target/tmp/fuzz-seeds/`
//! for cargo-fuzz to start from.
//!
//! There is no coverage feedback here (that needs nightly: see `fuzz/`),
//! so the mutations know the input formats a little: protobuf varints,
//! gRPC length prefixes, and splices of the seeds.

mod mutate;
mod regressions;

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use mutate::{Mutator, Rng};
use netsy::fuzzing::{self, Target};

const SECONDS_VAR: &str = "NETSY_FUZZ_SECONDS";
const SEED_VAR: &str = "NETSY_FUZZ_SEED";
const DEFAULT_SECONDS: f64 = 5.0;

/// How long a crash is shrunk for at most.
const SHRINK_TIME: Duration = Duration::from_secs(10);

thread_local! {
    /// Set while a fuzz input runs on this thread: its panic message is
    /// kept here instead of printed (shrinking panics thousands of times).
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that is quiet for fuzz inputs and the
/// default everywhere else.
fn quiet_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let caught = CAUGHT.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        *slot = Some(format!("{}{at}", message(info.payload())));
                        true
                    }
                    None => false,
                }
            });
            if !caught {
                default(info);
            }
        }));
    });
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// Runs one input; the panic message (with its location) if it panicked.
fn panics(target: &Target, input: &[u8]) -> Option<String> {
    quiet_panics();
    CAUGHT.with(|c| *c.borrow_mut() = Some(None));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let caught = CAUGHT.with(|c| c.borrow_mut().take()).flatten();
    result
        .err()
        .map(|payload| caught.unwrap_or_else(|| message(&*payload)))
}

fn seconds() -> f64 {
    match std::env::var(SECONDS_VAR) {
        Ok(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| panic!("{SECONDS_VAR}={s:?} is not a number of seconds")),
        Err(_) => DEFAULT_SECONDS,
    }
}

fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// Removes pieces of a crashing input while it still panics at the same
/// place, so the saved input shows what matters.
fn shrink(target: &Target, mut input: Vec<u8>, first: &str) -> (Vec<u8>, String) {
    let place = |m: &str| m.rsplit_once(" at ").map(|(_, at)| at.to_string());
    let want = place(first);
    let mut message = first.to_string();
    let deadline = Instant::now() + SHRINK_TIME;
    let mut cut = input.len() / 2;
    while cut > 0 && Instant::now() < deadline {
        let mut shrunk = false;
        let mut at = 0;
        while at < input.len() && Instant::now() < deadline {
            let end = (at + cut).min(input.len());
            let candidate: Vec<u8> = [&input[..at], &input[end..]].concat();
            match panics(target, &candidate) {
                Some(m) if place(&m) == want => {
                    input = candidate;
                    message = m;
                    shrunk = true;
                }
                _ => at += cut,
            }
        }
        if !shrunk {
            cut /= 2;
        }
    }
    (input, message)
}

/// The input as a Rust byte string literal.
fn literal(input: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &b in input {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

fn save(target: &Target, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    // FNV-1a names the input, so the same crash is saved once.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let path = dir.join(format!("{}-{hash:016x}", target.name));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("could not save {}: {e}", path.display());
    }
    path
}

/// Writes the seeds where `cargo fuzz run NAME CORPUS SEEDS` can start
/// from them (libFuzzer takes extra corpus folders as read-only seeds).
fn write_seeds(name: &str, seeds: &[Vec<u8>]) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-seeds")
        .join(name);
    if std::fs::create_dir_all(&dir).is_ok() {
        for (i, seed) in seeds.iter().enumerate() {
            let _ = std::fs::write(dir.join(format!("seed-{i:02}")), seed);
        }
    }
}

fn crash(target: &Target, input: Vec<u8>, first: String, seed: u64, runs: u64) -> ! {
    let (input, message) = shrink(target, input, &first);
    let path = save(target, &input);
    panic!(
        "fuzz target {name} panicked on run {runs} ({SEED_VAR}={seed}): {message}\n\
         input ({len} bytes) saved to {path}\n\
         as a regression test: netsy::fuzzing::{name}({lit});",
        name = target.name,
        len = input.len(),
        path = path.display(),
        lit = literal(&input),
    );
}

/// Runs `name`'s seeds, then mutations for the configured time.
fn fuzz(name: &str) {
    let target = fuzzing::target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    let seeds = fuzzing::seeds(name);
    assert!(!seeds.is_empty(), "{name} has no seeds");
    write_seeds(name, &seeds);
    let seed = seed();
    let time = Duration::from_secs_f64(seconds());
    let mut runs = 0u64;
    for input in &seeds {
        runs += 1;
        if let Some(m) = panics(target, input) {
            crash(target, input.clone(), m, seed, runs);
        }
    }
    // Each target its own stream, so that one seed replays any of them.
    let name_hash = name
        .bytes()
        .fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut mutator = Mutator::new(Rng::new(name_hash), seeds, target.max_len);
    let started = Instant::now();
    while started.elapsed() < time {
        let input = mutator.next_input();
        runs += 1;
        match panics(target, &input) {
            Some(m) => crash(target, input, m, seed, runs),
            None => mutator.keep(input),
        }
    }
    eprintln!(
        "fuzz {name}: {runs} inputs in {:.1}s, {SEED_VAR}={seed}",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn grpc_frames() {
    fuzz("grpc_frames");
}

#[test]
fn etcd_requests() {
    fuzz("etcd_requests");
}

#[test]
fn datafile() {
    fuzz("datafile");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn election_json() {
    fuzz("election_json");
}

#[test]
fn every_target_has_a_test_here() {
    let tests = [
        "grpc_frames",
        "etcd_requests",
        "datafile",
        "config",
        "election_json",
    ];
    let targets: Vec<&str> = fuzzing::TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(targets, tests);
}
