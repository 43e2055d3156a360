//! `netsy-bench failover`: a three-node cluster with the reference's default
//! timings (or the test speed-up when asked), on a moto bucket or a shared
//! directory. Kills (SIGKILL) the Primary, the Elector, or a node that is
//! both, and measures from the kill until writes are acknowledged again
//! (for the Elector alone: until another node is Elector and the Primary
//! still acknowledges writes). Prints the median, minimum and maximum of
//! each kind.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netsy::grpc::Channel;
use netsy::launch::cluster::{ClusterSpec, LaunchedCluster};
use netsy::launch::{Moto, TempDir};
use netsy::pb::etcdserverpb::{PutRequest, PutResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::stats::median;

/// How long anything may take before the run gives up.
const PATIENCE: Duration = Duration::from_secs(180);

pub struct FailoverOptions<'a> {
    pub netsy_bin: &'a Path,
    pub moto_bin: &'a Path,
    pub moto: bool,
    pub rounds: usize,
    pub speedup: Option<u32>,
    pub json: bool,
}

fn client_config(c: &LaunchedCluster) -> Result<Arc<rustls::ClientConfig>, String> {
    let (ca, cert, key) = c.client_tls();
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(&ca).map_err(|e| e.to_string())? {
        roots
            .add(der.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| e.to_string())?;
    netsy::tls::client_config(Arc::new(roots), chain, key)
}

/// One put through node `i`, within a second.
async fn put(c: &LaunchedCluster, tls: &Arc<rustls::ClientConfig>, i: usize, key: &str) -> bool {
    let addr = c.nodes[i].client_addr();
    let attempt = async {
        let ch = Channel::connect_tls(&addr, tls.clone(), "127.0.0.1")
            .await
            .ok()?;
        let req = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        ch.unary_with_timeout::<_, PutResponse>(
            "/etcdserverpb.KV/Put",
            &req,
            Some(Duration::from_secs(1)),
        )
        .await
        .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
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
    let (_moto, _dir, storage, env) = if o.moto {
        let moto = Moto::start(o.moto_bin)?;
        moto.create_bucket("failover")?;
        let env = moto.env();
        (
            Some(moto),
            None,
            r#"{"provider": "s3", "bucket_name": "failover"}"#.to_string(),
            env,
        )
    } else {
        let dir = TempDir::new("failover-bucket")?;
        let storage = format!(
            r#"{{"provider": "fs", "path": {:?}}}"#,
            dir.path().display().to_string()
        );
        (None, Some(dir), storage, vec![])
    };
    let mut spec = ClusterSpec::new(3, &storage, env);
    spec.speedup = o.speedup;
    let mut c = LaunchedCluster::create(o.netsy_bin, spec)?;
    c.start_all()?;
    for i in 0..3 {
        serving(&mut c, i).await?;
    }
    let tls = client_config(&c)?;
    let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let full =
        |s: &BTreeMap<&'static str, Vec<f64>>, k: &str| s.get(k).map_or(0, Vec::len) >= o.rounds;
    for round in 0..o.rounds * 8 {
        if ["both", "primary", "elector"]
            .iter()
            .all(|k| full(&samples, k))
        {
            break;
        }
        let (elector, primary) = settled(&mut c).await?;
        let kind = if elector == primary {
            "both"
        } else if !full(&samples, "primary")
            && samples.get("primary").map_or(0, Vec::len)
                <= samples.get("elector").map_or(0, Vec::len)
        {
            "primary"
        } else {
            "elector"
        };
        let victim = if kind == "elector" { elector } else { primary };
        let marker = format!("/failover/{round}/before");
        if !put(&c, &tls, primary, &marker).await {
            return Err("the Primary did not acknowledge a write before the kill".into());
        }
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
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        if !full(&samples, kind) {
            samples.entry(kind).or_default().push(seconds);
        }
        if !o.json {
            println!(
                "round {}: killed the {kind} ({}): {seconds:.2} s",
                round + 1,
                c.nodes[victim].id
            );
        }
        c.start(victim)?;
        serving(&mut c, victim).await?;
    }
    let mut rows = Vec::new();
    for (kind, s) in &samples {
        let min = s.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = s.iter().cloned().fold(0.0, f64::max);
        rows.push((kind.to_string(), s.len(), median(s.clone()), min, max));
    }
    if o.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(k, n, med, min, max)| {
                serde_json::json!({"killed": k, "samples": n, "median_s": med, "min_s": min, "max_s": max})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!("\nkilled     samples  median s  min s  max s");
        for (k, n, med, min, max) in &rows {
            println!("{k:<10} {n:>7}  {med:>8.2}  {min:>5.2}  {max:>5.2}");
        }
    }
    Ok(["both", "primary", "elector"]
        .iter()
        .all(|k| full(&samples, k)))
}
