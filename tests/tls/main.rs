//! mTLS outside --dev: a node started exactly as deployed (NETSY_* env, a
//! JSONC config with an S3 bucket, certificates from `netsy certs`-style
//! issuance) serves only clients with the right certificate, refuses
//! everything else at the handshake, and refuses to start with bad
//! certificates of its own.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use netsy::grpc::Channel;
use netsy::pb::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use netsy::pb::netsy::NodeState;
use netsy::tls::certs::{Authority, Leaf};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use support::{start_moto, tool, Bucket, Netsy, NetsyOptions};

const CLUSTER: &str = "prod-cluster";
const NODE: &str = "node-1";

/// A cluster CA and this node's certificates, as files.
struct Pki {
    dir: PathBuf,
    ca: Authority,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Authority::generate(CLUSTER, 30).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca,
        };
        pki.issue("server", &Leaf::server(CLUSTER, NODE, &[], 30));
        pki.issue("peer", &Leaf::peer_client(CLUSTER, NODE, 30));
        pki.issue("client", &Leaf::client(CLUSTER, "app", 30));
        pki
    }

    /// Issues `leaf` into NAME.crt / NAME.key.
    fn issue(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.issue(leaf).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The node's environment, as the seed deploys it.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("NETSY_NODE_ID", NODE.to_string()),
            ("NETSY_ADVERTISE_CLIENT", "127.0.0.1:2378".to_string()),
            ("NETSY_ADVERTISE_PEER", "localhost:2381".to_string()),
            ("NETSY_TLS_CA_CERT", self.path("ca.crt")),
            ("NETSY_TLS_SERVER_CERT", self.path("server.crt")),
            ("NETSY_TLS_SERVER_KEY", self.path("server.key")),
            ("NETSY_TLS_CLIENT_CERT", self.path("peer.crt")),
            ("NETSY_TLS_CLIENT_KEY", self.path("peer.key")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn config(dir: &Path, bucket: &Bucket) -> PathBuf {
    let path = dir.join("netsy.jsonc");
    std::fs::write(
        &path,
        format!(
            r#"{{
  // The shared cluster config, as delivered to every VM.
  "cluster_id": "{CLUSTER}",
  "storage": {},
  "heartbeat_interval": "1s",
  "elector": {{"degradation_count": 2, "deregistration_timeout": "3m", "primary_prior_timeout": "5s"}},
  "replication": {{"quorum": -1, "degradation_count": 2, "chunk_buffer": {{"threshold_size_mb": 4, "threshold_age_minutes": 1}}}},
  "compaction_interval": "5m",
}}
"#,
            bucket.storage_json()
        ),
    )
    .unwrap();
    path
}

fn start(data: &Path, conf: &Path, env: Vec<(String, String)>) -> Netsy {
    Netsy::start(
        data,
        NetsyOptions {
            config: Some(conf.to_path_buf()),
            env,
            production: true,
        },
    )
}

fn ca_roots(pki: &Pki) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.dir.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(roots)
}

fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// A Range through our own client presenting `cert`/`key`, trusting `roots`.
async fn try_range(
    addr: &str,
    roots: Arc<rustls::RootCertStore>,
    cert: &Path,
    key: &Path,
) -> Result<i64, String> {
    let config = netsy::tls::client_config(
        roots,
        chain(cert),
        PrivateKeyDer::from_pem_file(key).unwrap(),
    )?;
    let attempt = async {
        let ch = Channel::connect_tls(addr, config, "127.0.0.1")
            .await
            .map_err(|e| e.to_string())?;
        let r: RangeResponse = ch
            .unary(
                "/etcdserverpb.KV/Range",
                &RangeRequest {
                    key: "a".into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.header.map_or(0, |h| h.revision))
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_required_and_authorised_per_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let moto = Arc::new(start_moto());
    let bucket = Bucket::s3(&moto, "prod");
    let mut env = pki.env();
    env.extend(bucket.env());
    let node = start(&tmp.path().join("data"), &config(tmp.path(), &bucket), env);
    let addr = node.client_addr.clone();
    let peer_addr = node
        .peer_addr
        .clone()
        .expect("a peer listener outside --dev");
    let roots = ca_roots(&pki);

    // The right client certificate works: our client, etcdctl, etcd-client.
    let (client_crt, client_key) = (pki.dir.join("client.crt"), pki.dir.join("client.key"));
    assert!(try_range(&addr, roots.clone(), &client_crt, &client_key)
        .await
        .is_ok());
    let ctl = |extra: &[&str]| {
        let mut args = vec![
            format!("--endpoints=https://{addr}"),
            "--dial-timeout=3s".into(),
            "--command-timeout=5s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(tool("etcdctl34"))
            .env("ETCDCTL_API", "3")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let tls_args = |crt: &Path, key: &Path| {
        vec![
            format!("--cacert={}", pki.path("ca.crt")),
            format!("--cert={}", crt.display()),
            format!("--key={}", key.display()),
        ]
    };
    let args = tls_args(&client_crt, &client_key);
    let mut put = args.clone();
    put.extend(["put".into(), "a".into(), "1".into()]);
    let out = ctl(&put.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "etcdctl with a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(pki.dir.join("ca.crt")).unwrap(),
        ))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&client_crt).unwrap(),
            std::fs::read(&client_key).unwrap(),
        ));
    let mut c = etcd_client::Client::connect(
        [format!("https://{addr}")],
        Some(etcd_client::ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap();
    assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"1");

    // No client certificate (etcdctl with only the CA).
    let no_cert = ctl(&[&format!("--cacert={}", pki.path("ca.crt")), "get", "a"]);
    assert!(
        !no_cert.status.success(),
        "no client certificate must be refused"
    );

    // A certificate from another CA.
    let other_dir = tmp.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Pki::new(&other_dir);
    assert!(try_range(
        &addr,
        roots.clone(),
        &other.dir.join("client.crt"),
        &other.dir.join("client.key")
    )
    .await
    .is_err());

    // A peer certificate on the client port, a client certificate on the peer port.
    let (peer_crt, peer_key) = (pki.dir.join("peer.crt"), pki.dir.join("peer.key"));
    assert!(try_range(&addr, roots.clone(), &peer_crt, &peer_key)
        .await
        .is_err());
    let peer_cfg = |crt: &Path, key: &Path| {
        netsy::tls::client_config(
            roots.clone(),
            chain(crt),
            PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap()
    };
    let node_state = |cfg| {
        let peer_addr = peer_addr.clone();
        async move {
            let ch = Channel::connect_tls(&peer_addr, cfg, "localhost")
                .await
                .map_err(|e| e.to_string())?;
            ch.unary::<(), NodeState>("/netsy.Node/GetNodeState", &())
                .await
                .map_err(|e| e.to_string())
        }
    };
    let state = node_state(peer_cfg(&peer_crt, &peer_key))
        .await
        .expect("a peer certificate on the peer port works");
    assert_eq!(state.node_id, NODE);
    assert!(
        node_state(peer_cfg(&client_crt, &client_key))
            .await
            .is_err(),
        "a client certificate on the peer port"
    );

    // Another cluster id; expired; a malformed netsy:// path; a peer with an
    // invalid node id.
    let cases = [
        ("other-cluster", Leaf::client("another-cluster", "app", 30)),
        ("expired", {
            let mut l = Leaf::client(CLUSTER, "app", 30);
            l.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
            l.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
            l
        }),
        ("malformed-san", {
            let mut l = Leaf::client(CLUSTER, "app", 30);
            l.uri = Some(format!("netsy://{CLUSTER}/client"));
            l
        }),
        ("no-san", {
            let mut l = Leaf::client(CLUSTER, "app", 30);
            l.uri = None;
            l
        }),
    ];
    for (name, leaf) in cases {
        let (crt, key) = pki.issue(name, &leaf);
        assert!(
            try_range(&addr, roots.clone(), &crt, &key).await.is_err(),
            "{name} must be refused"
        );
    }

    // TLS 1.2-only clients: our own, and etcdctl 3.5.1 (which caps at 1.2).
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_client_auth_cert(
        chain(&client_crt),
        PrivateKeyDer::from_pem_file(&client_key).unwrap(),
    )
    .unwrap();
    let mut tls12 = tls12;
    tls12.alpn_protocols = vec![b"h2".to_vec()];
    let refused = Channel::connect_tls(&addr, Arc::new(tls12), "127.0.0.1").await;
    assert!(refused.is_err(), "a TLS 1.2-only client must be refused");
    let mut get = args.clone();
    get.extend(["get".into(), "a".into()]);
    let old_ctl = Command::new(tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{addr}"))
        .args(["--dial-timeout=2s", "--command-timeout=3s"])
        .args(&get)
        .output()
        .unwrap();
    assert!(
        !old_ctl.status.success(),
        "etcdctl 3.5.1 offers only TLS 1.2 and is refused"
    );

    // After all that, good clients are still served.
    let put: PutResponse = {
        let config = netsy::tls::client_config(
            roots.clone(),
            chain(&client_crt),
            PrivateKeyDer::from_pem_file(&client_key).unwrap(),
        )
        .unwrap();
        let ch = Channel::connect_tls(&addr, config, "127.0.0.1")
            .await
            .unwrap();
        ch.unary(
            "/etcdserverpb.KV/Put",
            &PutRequest {
                key: "b".into(),
                value: "2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    };
    assert_eq!(put.header.unwrap().revision, 3);
    let refusals = node
        .log
        .snapshot()
        .iter()
        .filter(|l| l.contains("refused a client connection"))
        .count();
    assert!(refusals >= 3, "refusals are logged with their reason");
    assert_no_key_material(&node.log.snapshot().join("\n"), &pki);
}

fn assert_no_key_material(text: &str, pki: &Pki) {
    assert!(!text.contains("PRIVATE KEY"), "a private key was logged");
    for name in ["server.key", "peer.key", "client.key"] {
        let pem = std::fs::read_to_string(pki.dir.join(name)).unwrap();
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
        {
            assert!(!text.contains(line), "key material of {name} was logged");
        }
    }
}

/// Runs the node expecting it to refuse to start: (stderr).
fn refuses(data: &Path, conf: &Path, env: Vec<(String, String)>) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("--config")
        .arg(conf)
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_PEER", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "127.0.0.1:0")
        .env("NETSY_DATA_DIR", data)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "netsy must exit 1: {err}");
    assert!(!err.contains("serving"), "nothing may be served: {err}");
    err
}

#[test]
fn startup_refuses_bad_node_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let bucket = Bucket::fs(&tmp.path().join("bucket"));
    let conf = config(tmp.path(), &bucket);
    let data = tmp.path().join("data");
    let with = |key: &str, value: &str| {
        let mut env = pki.env();
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
        env
    };
    let mut all = String::new();

    let err = refuses(
        &data,
        &conf,
        with("NETSY_ADVERTISE_CLIENT", "db.example.com:2378"),
    );
    assert!(
        err.contains("NETSY_TLS_SERVER_CERT")
            && err.contains("db.example.com")
            && err.contains("NETSY_ADVERTISE_CLIENT"),
        "{err}"
    );
    all += &err;

    let err = refuses(&data, &conf, with("NETSY_NODE_ID", "node-2"));
    assert!(
        err.contains(r#"is for node "node-1", but NETSY_NODE_ID is "node-2""#),
        "{err}"
    );
    all += &err;

    let err = refuses(
        &data,
        &conf,
        with("NETSY_TLS_SERVER_KEY", &pki.path("peer.key")),
    );
    assert!(
        err.contains("NETSY_TLS_SERVER_KEY") && err.contains("does not belong"),
        "{err}"
    );
    all += &err;

    let err = refuses(
        &data,
        &conf,
        with("NETSY_TLS_CA_CERT", "/nonexistent/ca.crt"),
    );
    assert!(
        err.contains("NETSY_TLS_CA_CERT (/nonexistent/ca.crt): cannot read"),
        "{err}"
    );
    all += &err;

    let err = refuses(&data, &conf, with("NETSY_TLS_CLIENT_CERT", ""));
    assert!(err.contains("NETSY_TLS_CLIENT_CERT is required"), "{err}");
    all += &err;

    // A client certificate where the node's server certificate belongs.
    let err = refuses(
        &data,
        &conf,
        with("NETSY_TLS_SERVER_CERT", &pki.path("client.crt")),
    );
    assert!(
        err.contains("role") || err.contains("does not belong"),
        "{err}"
    );
    all += &err;

    assert_no_key_material(&all, &pki);
    assert!(!data.join("db.sqlite3").exists(), "nothing was written");
}
