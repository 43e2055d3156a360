//! `netsy-bench failover`: a three-node cluster with the reference's default
//! timings (or the test speed-up when asked), on a moto bucket or a shared
//! directory. Kills (SIGKILL) the Primary, the Elector, or a node that is
//! both, at a random point of the lock's renewal cycle, and measures from
//! the kill until a surviving node acknowledges a put (for the Elector
//! alone: once another node is Elector). Prints the median, minimum and maximum of
//! each kind, then reads every acknowledged put back from every node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netsy::grpc::Channel;
use netsy::launch::cluster::{ClusterSpec, LaunchedCluster};
use netsy::pb::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

use crate::cluster::LaunchOptions;
use crate::stats::median;

/// How long anything may take before the run gives up.
const PATIENCE: Duration = Duration::from_secs(180);

pub struct FailoverOptions<'a> {
    pub launch: LaunchOptions<'a>,
    pub rounds: usize,
    pub speedup: Option<u32>,
}

fn client_config(c: &LaunchedCluster) -> Result<Arc<rustls::ClientConfig>, String> {
    let (ca, cert, key) = c.client_tls();
    netsy::tls::client_config_from_files(&ca, &cert, &key)
}

/// One unary call to node `i` on a fresh connection; None unless it answers
/// within a second (two with the handshake).
async fn call<Req: prost::Message, Resp: prost::Message + Default>(
    c: &LaunchedCluster,
    tls: &Arc<rustls::ClientConfig>,
    i: usize,
    method: &str,
    req: &Req,
) -> Option<Resp> {
    let addr = c.nodes[i].client_addr();
    let attempt = async {
        let ch = Channel::connect_tls(&addr, tls.clone(), "127.0.0.1")
            .await
            .ok()?;
        ch.unary_with_timeout(method, req, Some(Duration::from_secs(1)))
            .await
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Whether node `i` acknowledges a put of `key`.
async fn put(c: &LaunchedCluster, tls: &Arc<rustls::ClientConfig>, i: usize, key: &str) -> bool {
    let req = PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    call::<_, PutResponse>(c, tls, i, "/etcdserverpb.KV/Put", &req)
        .await
        .is_some()
}

/// The keys under `/failover/` that node `i` serves, or None if it did not
/// answer.
async fn failover_keys(
    c: &LaunchedCluster,
    tls: &Arc<rustls::ClientConfig>,
    i: usize,
) -> Option<BTreeSet<String>> {
    let req = RangeRequest {
        key: b"/failover/".to_vec().into(),
        range_end: b"/failover0".to_vec().into(),
        keys_only: true,
        ..Default::default()
    };
    let resp: RangeResponse = call(c, tls, i, "/etcdserverpb.KV/Range", &req).await?;
    Some(
        resp.kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect(),
    )
}

/// How many acknowledged keys node `i` still lacks once it has had time to
/// catch up (replicas follow the Primary's stream).
async fn lost_on(
    c: &LaunchedCluster,
    tls: &Arc<rustls::ClientConfig>,
    i: usize,
    acknowledged: &BTreeSet<String>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = match failover_keys(c, tls, i).await {
            Some(held) => acknowledged.difference(&held).count(),
            None => acknowledged.len(),
        };
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for exactly one Elector and one Primary among the running nodes.
async fn settled(c: &mut LaunchedCluster) -> Result<(usize, usize), String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (e, p) = (c.electors(), c.primaries());
        if let ([e], [p]) = (&e[..], &p[..]) {
            return Ok((*e, *p));
        }
        if Instant::now() > deadline {
            return Err("the cluster did not settle".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A duration picked uniformly below `max` (every new RandomState has
/// fresh random keys, so its empty hash is a random number).
fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = (bits >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(fraction)
}

/// A graceful restart of node `i` (it resigns and deregisters first).
async fn restart(c: &mut LaunchedCluster, i: usize) -> Result<(), String> {
    c.terminate(i, Duration::from_secs(60))?;
    c.start(i)?;
    serving(c, i).await
}

/// Stops every node gracefully (the Elector last, so its lock is resigned
/// rather than left to go stale), starts the first alone — it becomes
/// Elector and Primary — then the others, which join it.
async fn make_one_node_both(c: &mut LaunchedCluster) -> Result<(), String> {
    let (elector, _) = settled(c).await?;
    for i in (0..c.nodes.len()).filter(|i| *i != elector) {
        c.terminate(i, Duration::from_secs(60))?;
    }
    c.terminate(elector, Duration::from_secs(60))?;
    c.start(0)?;
    serving(c, 0).await?;
    for i in 1..c.nodes.len() {
        c.start(i)?;
        serving(c, i).await?;
    }
    Ok(())
}

async fn serving(c: &mut LaunchedCluster, i: usize) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while !c.nodes[i].logged("serving the etcd API on ") {
        if Instant::now() > deadline || !c.nodes[i].is_running() {
            return Err(format!(
                "{} did not serve:\n{}",
                c.nodes[i].id,
                c.nodes[i].log_text()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn run(o: &FailoverOptions<'_>) -> Result<bool, String> {
    let crate::cluster::Bucket {
        moto: _moto,
        dir: _dir,
        storage,
        env,
    } = crate::cluster::bucket(o.launch.moto_bin, o.launch.moto, "failover")?;
    let mut spec = ClusterSpec::new(3, &storage, env);
    spec.speedup = o.speedup;
    let cycle = netsy::election::lock::CYCLE_INTERVAL / o.speedup.unwrap_or(1).max(1);
    let mut c = LaunchedCluster::create(o.launch.netsy_bin, spec)?;
    c.start_all()?;
    for i in 0..3 {
        serving(&mut c, i).await?;
    }
    let tls = client_config(&c)?;
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut acknowledged = BTreeSet::new();
    let count = |s: &BTreeMap<&'static str, Vec<f64>>, k: &str| s.get(k).map_or(0, Vec::len);
    for round in 0..o.rounds * 8 {
        // The kind with the fewest samples so far.
        let Some(mut kind) = ["both", "primary", "elector"]
            .into_iter()
            .filter(|k| count(&samples, k) < o.rounds)
            .min_by_key(|k| count(&samples, k))
        else {
            break;
        };
        let (elector, primary) = settled(&mut c).await?;
        if elector == primary && count(&samples, "both") < o.rounds {
            kind = "both";
        }
        // Arrange the roles the kind needs (not measured).
        if kind == "both" && elector != primary {
            make_one_node_both(&mut c).await?;
            continue;
        }
        if kind != "both" && elector == primary {
            restart(&mut c, primary).await?;
            continue;
        }
        let victim = if kind == "elector" { elector } else { primary };
        let marker = format!("/failover/{round}/before");
        if !put(&c, &tls, primary, &marker).await {
            return Err("the Primary did not acknowledge a write before the kill".into());
        }
        acknowledged.insert(marker);
        // Failures come at any point of the Elector's renewal cycle, not
        // just after the settling above: wait a random part of one.
        tokio::time::sleep(random_below(cycle)).await;
        let started = Instant::now();
        c.kill(victim);
        let key = format!("/failover/{round}/after");
        loop {
            if started.elapsed() > PATIENCE {
                return Err(format!(
                    "no recovery within {PATIENCE:?} after killing the {kind}"
                ));
            }
            let live: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
            // After the Elector alone, recovery also needs a new Elector.
            let elector_back = kind != "elector"
                || live
                    .iter()
                    .any(|i| c.has_state(*i, "netsy_state_elector", "leader"));
            let mut recovered = false;
            if elector_back {
                for i in &live {
                    if put(&c, &tls, *i, &key).await {
                        recovered = true;
                        break;
                    }
                }
            }
            if recovered {
                acknowledged.insert(key);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        samples.entry(kind).or_default().push(seconds);
        if !o.launch.json {
            println!(
                "round {}: killed the {kind} ({}): {seconds:.2} s",
                round + 1,
                c.nodes[victim].id
            );
        }
        c.start(victim)?;
        serving(&mut c, victim).await?;
    }
    // Every acknowledged put must be on every node afterwards.
    let mut lost = 0;
    for i in 0..c.nodes.len() {
        let missing = lost_on(&c, &tls, i, &acknowledged).await;
        if missing > 0 {
            eprintln!(
                "{} lacks {missing} of {} acknowledged puts",
                c.nodes[i].id,
                acknowledged.len()
            );
        }
        lost = lost.max(missing);
    }
    let mut rows = Vec::new();
    for (kind, s) in &samples {
        let min = s.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = s.iter().cloned().fold(0.0, f64::max);
        rows.push((kind.to_string(), s.len(), median(s.clone()), min, max));
    }
    if o.launch.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(k, n, med, min, max)| {
                serde_json::json!({"killed": k, "samples": n, "median_s": med, "min_s": min, "max_s": max})
            })
            .collect();
        let report = serde_json::json!({
            "rounds": rows,
            "acknowledged_puts": acknowledged.len(),
            "lost_puts": lost,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("\nkilled     samples  median s  min s  max s");
        for (k, n, med, min, max) in &rows {
            println!("{k:<10} {n:>7}  {med:>8.2}  {min:>5.2}  {max:>5.2}");
        }
        println!(
            "acknowledged puts: {}, lost on any node: {lost}",
            acknowledged.len()
        );
    }
    Ok(lost == 0
        && ["both", "primary", "elector"]
            .iter()
            .all(|k| count(&samples, k) >= o.rounds))
}
