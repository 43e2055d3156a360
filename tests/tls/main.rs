//! mTLS outside --dev: a node started exactly as deployed (NETSY_* env, a
//! JSONC config with an S3 bucket, certificates from `netsy certs`-style
//! issuance) serves only clients with the right certificate, refuses
//! everything else at the handshake, and refuses to start with bad
//! certificates of its own. The client listener speaks TLS 1.3 and 1.2
//! (ECDHE with AEAD suites only, for etcdctl 3.5.x), the peer listener 1.3
//! only.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netsy::grpc::Channel;
use netsy::pb::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use netsy::pb::netsy::NodeState;
use netsy::tls::certs::{Authority, Leaf};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use support::{run_refusing, start_moto, tool, Bucket, Netsy, NetsyOptions, DEADLINE};

const CLUSTER: &str = "prod-cluster";
const NODE: &str = "node-1";

/// A cluster CA and this node's certificates, as files.
struct Pki {
    dir: PathBuf,
    ca: Authority,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        Pki::with_ca_name(dir, CLUSTER)
    }

    /// Like `new`, with a CA named after `ca_cluster`: its leaves still
    /// name CLUSTER.
    fn with_ca_name(dir: &Path, ca_cluster: &str) -> Pki {
        let ca = Authority::generate(ca_cluster, 30).unwrap();
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

/// What netsy logs when a client offers only TLS 1.2 to a TLS 1.3-only
/// listener.
const TLS12_NOT_ENABLED: &str = "failed: peer is incompatible: Tls12NotOfferedOrEnabled";

/// Where a refused certificate is presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Client,
    Peer,
}

/// A certificate the node must refuse, and how the refusal shows.
struct Refusal {
    name: &'static str,
    port: Port,
    /// The certificate and key presented; None presents none.
    cert: Option<(PathBuf, PathBuf)>,
    /// The TLS alert netsy sends, as rustls names it (a rustls client
    /// reports `received fatal alert: {rustls}`).
    rustls: &'static str,
    /// What netsy logs about it.
    log: &'static str,
}

/// The node under test and its well-behaved clients.
struct Target {
    addr: String,
    peer_addr: String,
    roots: Arc<rustls::RootCertStore>,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    peer: (PathBuf, PathBuf),
    log: support::Lines,
}

/// Every error in a chain, Display and Debug, so the cause is searchable.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{e:?}");
    let mut cause = Some(e);
    while let Some(c) = cause {
        text += &format!(" / {c}");
        cause = c.source();
    }
    text
}

impl Target {
    fn port(&self, port: Port) -> &str {
        match port {
            Port::Client => &self.addr,
            Port::Peer => &self.peer_addr,
        }
    }

    /// A TLS 1.3 client configuration presenting `cert` (or none).
    fn config(&self, cert: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
        match cert {
            Some((crt, key)) => netsy::tls::client_config(
                self.roots.clone(),
                chain(crt),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
            None => {
                let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
                c.alpn_protocols = vec![b"h2".to_vec()];
                Arc::new(c)
            }
        }
    }

    /// A TLS 1.2-only client configuration (what etcdctl 3.5.x's Go client
    /// offers) with rustls' default suites, presenting `cert` (or none).
    fn config12(&self, cert: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
        self.config12_with(cert, rustls::crypto::ring::DEFAULT_CIPHER_SUITES.to_vec())
    }

    /// A TLS 1.2-only client configuration offering only `suites`.
    fn config12_with(
        &self,
        cert: Option<&(PathBuf, PathBuf)>,
        suites: Vec<rustls::SupportedCipherSuite>,
    ) -> Arc<rustls::ClientConfig> {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::ring::default_provider()
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut c = match cert {
            Some((crt, key)) => builder
                .with_client_auth_cert(chain(crt), PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    }

    /// A completed handshake's version and cipher suite, as rustls names
    /// them ("TLSv1_2 TLS_ECDHE_…"), or the handshake's error.
    async fn negotiated(
        &self,
        port: Port,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<String, String> {
        let addr = self.port(port).to_string();
        let attempt = async move {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let conn = tls.get_ref().1;
            Ok(format!(
                "{:?} {:?}",
                conn.protocol_version().unwrap(),
                conn.negotiated_cipher_suite().unwrap().suite()
            ))
        };
        tokio::time::timeout(DEADLINE, attempt)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    /// netsy's answer to a hand-built TLS 1.2 ClientHello offering only
    /// `suites` (IANA numbers) and otherwise what a modern client sends
    /// (ECDHE groups, point formats, signature algorithms, EMS, ALPN h2):
    /// "ServerHello 0x…" naming the chosen suite, or "alert N". rustls has
    /// no CBC or RSA key exchange suites a client could offer instead.
    async fn tls12_hello(&self, port: Port, suites: &[u16]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let u16s = |v: &[u16]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        let with_len = |v: Vec<u8>| [(v.len() as u16).to_be_bytes().to_vec(), v].concat();
        let extension =
            |kind: u16, data: Vec<u8>| [kind.to_be_bytes().to_vec(), with_len(data)].concat();
        let extensions = [
            // supported_groups: x25519, secp256r1
            extension(0x000a, with_len(u16s(&[0x001d, 0x0017]))),
            // ec_point_formats: uncompressed
            extension(0x000b, vec![1, 0]),
            // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
            extension(0x000d, with_len(u16s(&[0x0403, 0x0804, 0x0401]))),
            // extended_master_secret
            extension(0x0017, vec![]),
            // renegotiation_info: initial handshake
            extension(0xff01, vec![0]),
            // ALPN: h2
            extension(0x0010, with_len(vec![2, b'h', b'2'])),
        ]
        .concat();
        let body = [
            vec![3, 3],  // client_version TLS 1.2, no supported_versions
            vec![7; 32], // random
            vec![0],     // no session id
            with_len(u16s(suites)),
            vec![1, 0], // compression: null
            with_len(extensions),
        ]
        .concat();
        let len = (body.len() as u32).to_be_bytes();
        let handshake = [vec![1], len[1..].to_vec(), body].concat();
        let record = [vec![22, 3, 1], with_len(handshake)].concat();

        let addr = self.port(port).to_string();
        let attempt = async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.write_all(&record).await.unwrap();
            let mut header = [0u8; 5];
            tcp.read_exact(&mut header)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            let mut payload = vec![0u8; u16::from_be_bytes([header[3], header[4]]) as usize];
            tcp.read_exact(&mut payload)
                .await
                .map_err(|e| format!("a short record: {e}"))?;
            match (header[0], payload.first()) {
                (21, _) if payload.len() == 2 => Ok(format!("alert {}", payload[1])),
                (22, Some(2)) => {
                    // type, length(3), version(2), random(32), session id
                    let sid = 4 + 2 + 32;
                    let at = sid + 1 + payload[sid] as usize;
                    Ok(format!(
                        "ServerHello {:#06x}",
                        u16::from_be_bytes([payload[at], payload[at + 1]])
                    ))
                }
                _ => Err(format!("unexpected record {header:?} {payload:?}")),
            }
        };
        tokio::time::timeout(DEADLINE, attempt)
            .await
            .unwrap_or_else(|_| Err("no answer before the deadline".to_string()))
            .unwrap_or_else(|e| e)
    }

    /// One request through netsy's own client: a Range on the client port,
    /// GetNodeState on the peer port.
    async fn netsy_client(
        &self,
        port: Port,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<String, String> {
        let addr = self.port(port).to_string();
        let attempt = async move {
            let ch = Channel::connect_tls(&addr, config, "127.0.0.1")
                .await
                .map_err(|e| e.to_string())?;
            match port {
                Port::Client => {
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
                    Ok(format!("revision {}", r.header.map_or(0, |h| h.revision)))
                }
                Port::Peer => {
                    let s: NodeState = ch
                        .unary("/netsy.Node/GetNodeState", &())
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(s.node_id)
                }
            }
        };
        tokio::time::timeout(DEADLINE, attempt)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    /// `binary` (etcdctl34: 3.4, TLS 1.3; etcdctl: 3.5.1, TLS 1.2 only)
    /// with `args` against `port`, presenting `cert` (or none).
    fn etcdctl_as(
        &self,
        binary: &str,
        port: Port,
        cert: Option<&(PathBuf, PathBuf)>,
        args: &[&str],
    ) -> Ran {
        self.etcdctl_within("3s", binary, port, cert, args)
    }

    /// `binary get a`, expected to be refused. etcdctl retries a refused
    /// connection until its command times out and then prints the last
    /// attempt's reason; on loopback the first attempt is refused within
    /// milliseconds, so it gives up after 1 s instead of 3 (two refusals a
    /// case, 15 cases: most of this test's time). Too short a wait fails
    /// the test (no reason printed); it cannot pass one.
    fn etcdctl_refused(&self, binary: &str, port: Port, cert: Option<&(PathBuf, PathBuf)>) -> Ran {
        self.etcdctl_within("1s", binary, port, cert, &["get", "a"])
    }

    fn etcdctl_within(
        &self,
        command_timeout: &str,
        binary: &str,
        port: Port,
        cert: Option<&(PathBuf, PathBuf)>,
        args: &[&str],
    ) -> Ran {
        let mut cmd = Command::new(tool(binary));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}", self.port(port)))
            .arg("--dial-timeout=2s")
            .arg(format!("--command-timeout={command_timeout}"))
            .arg(format!("--cacert={}", self.ca.display()));
        if let Some((crt, key)) = cert {
            cmd.arg(format!("--cert={}", crt.display()))
                .arg(format!("--key={}", key.display()));
        }
        cmd.args(args);
        run_bounded(cmd)
    }

    /// A get through the etcd-client crate against `port`.
    async fn etcd_client(
        &self,
        port: Port,
        cert: Option<&(PathBuf, PathBuf)>,
    ) -> Result<Vec<u8>, String> {
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(std::fs::read(&self.ca).unwrap()),
        );
        if let Some((crt, key)) = cert {
            tls = tls.identity(etcd_client::Identity::from_pem(
                std::fs::read(crt).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        let options = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(5));
        let url = format!("https://{}", self.port(port));
        let attempt = async move {
            let mut c = etcd_client::Client::connect([url], Some(options))
                .await
                .map_err(|e| error_text(&e))?;
            let r = c.get("a", None).await.map_err(|e| match &e {
                etcd_client::Error::GRpcStatus(s) => {
                    format!("status {:?}: {}", s.code(), error_text(s))
                }
                _ => error_text(&e),
            })?;
            Ok(r.kvs().first().map_or(vec![], |kv| kv.value().to_vec()))
        };
        tokio::time::timeout(DEADLINE, attempt)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    /// The node still serves good clients on both ports.
    async fn still_serves(&self, after: &str) {
        let r = self
            .netsy_client(Port::Client, self.config(Some(&self.client)))
            .await;
        assert_eq!(
            r.as_deref(),
            Ok("revision 2"),
            "a good client after {after}"
        );
        let r = self
            .netsy_client(Port::Peer, self.config(Some(&self.peer)))
            .await;
        assert_eq!(r.as_deref(), Ok(NODE), "a good peer after {after}");
    }

    /// How many log lines contain `text`.
    fn logged(&self, text: &str) -> usize {
        self.log
            .snapshot()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Waits until more than `before` log lines contain `text`.
    fn logs_more(&self, text: &str, before: usize, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        while self.logged(text) <= before {
            if Instant::now() >= deadline {
                let tls: Vec<String> = self
                    .log
                    .snapshot()
                    .into_iter()
                    .filter(|l| l.contains("refused a") || l.contains("TLS handshake"))
                    .collect();
                panic!(
                    "netsy did not log {text:?} for {what}; its TLS lines:\n{}",
                    tls.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The handshake as a bare rustls client sees it: handshake, then read
    /// without writing anything, so netsy's alert is what arrives (a client
    /// writing right after its Finished can instead meet the reset of the
    /// closed socket). The error text, or what came instead.
    async fn handshake_error(&self, port: Port, config: Arc<rustls::ClientConfig>) -> String {
        use tokio::io::AsyncReadExt;
        let addr = self.port(port).to_string();
        let attempt = async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = match tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
            {
                Ok(tls) => tls,
                Err(e) => return format!("handshake: {e}"),
            };
            let mut buf = [0u8; 4096];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) => return "closed without an alert".to_string(),
                    Ok(_) => continue,
                    Err(e) => return e.to_string(),
                }
            }
        };
        tokio::time::timeout(DEADLINE, attempt)
            .await
            .unwrap_or_else(|_| "no refusal before the deadline".to_string())
    }

    /// Presents the case's certificate with a bare rustls client, netsy's
    /// own client, etcdctl and etcd-client; checks each refusal's reason,
    /// and that good clients are served after each.
    async fn refuses(&self, case: &Refusal) {
        let cert = case.cert.as_ref();
        let name = case.name;
        let alert = format!("received fatal alert: {}", case.rustls);

        // The alert itself.
        let before = self.logged(case.log);
        let err = self.handshake_error(case.port, self.config(cert)).await;
        assert_eq!(err, alert, "{name}: the alert netsy sends");
        self.logs_more(case.log, before, name);
        self.still_serves(&format!("{name} (rustls)")).await;

        // The same under TLS 1.2: the client listener verifies and
        // authorises the certificate as under 1.3 (the alert ends the
        // handshake, which under 1.2 finishes only after the client's
        // certificate); the peer listener refuses the version itself.
        let (alert12, log12) = match case.port {
            Port::Client => (alert.clone(), case.log),
            Port::Peer => (
                "received fatal alert: ProtocolVersion".to_string(),
                TLS12_NOT_ENABLED,
            ),
        };
        let before = self.logged(log12);
        let err = self.handshake_error(case.port, self.config12(cert)).await;
        assert_eq!(
            err,
            format!("handshake: {alert12}"),
            "{name}: the alert netsy sends a TLS 1.2 client"
        );
        self.logs_more(log12, before, name);
        self.still_serves(&format!("{name} (rustls, TLS 1.2)"))
            .await;

        // netsy's client: the alert, or the reset that overtook it.
        let before = self.logged(case.log);
        let err = self
            .netsy_client(case.port, self.config(cert))
            .await
            .expect_err(name);
        assert!(
            err.starts_with("UNAVAILABLE: "),
            "{name}, netsy client: {err}"
        );
        assert_connection_refused(&err, &alert, &format!("{name}, netsy client"));
        self.logs_more(case.log, before, name);
        self.still_serves(&format!("{name} (netsy client)")).await;

        // etcd-client (tonic): a transport failure, not a status from netsy.
        let before = self.logged(case.log);
        let err = self.etcd_client(case.port, cert).await.expect_err(name);
        assert!(
            (err.starts_with("status Cancelled: ") || err.starts_with("status Unknown: "))
                && err.contains(" / transport error / "),
            "{name}, etcd-client: {err}"
        );
        assert_connection_refused(&err, &alert, &format!("{name}, etcd-client"));
        self.logs_more(case.log, before, name);
        self.still_serves(&format!("{name} (etcd-client)")).await;

        // etcdctl last: it retries, and a late attempt must not count for
        // another client. etcdctl 3.4 completes its TLS 1.3 handshake before
        // netsy verifies the certificate and does not print the alert that
        // follows: its connection never becomes ready, so no RPC is
        // answered; netsy's log has the reason.
        let before = self.logged(case.log);
        let out = self.etcdctl_refused("etcdctl34", case.port, cert);
        assert!(
            !out.status.success()
                && out
                    .stderr
                    .contains("latest balancer error: all SubConns are in TransientFailure"),
            "{name}, etcdctl: {out:?}"
        );
        self.logs_more(case.log, before, name);
        self.still_serves(&format!("{name} (etcdctl)")).await;

        // etcdctl 3.5.1 speaks TLS 1.2, where the alert arrives inside the
        // handshake, so it prints the reason (in Go's words).
        let (go_alert, log35) = match case.port {
            Port::Client => (go_alert(case.rustls), case.log),
            Port::Peer => ("protocol version not supported", TLS12_NOT_ENABLED),
        };
        let before = self.logged(log35);
        let out = self.etcdctl_refused("etcdctl", case.port, cert);
        assert!(
            !out.status.success()
                && out
                    .stderr
                    .contains(&format!("remote error: tls: {go_alert}")),
            "{name}, etcdctl 3.5.1: {out:?}"
        );
        self.logs_more(log35, before, name);
        self.still_serves(&format!("{name} (etcdctl 3.5.1)")).await;
    }
}

/// How Go's crypto/tls names the alert rustls calls `rustls`.
fn go_alert(rustls: &str) -> &'static str {
    match rustls {
        "AccessDenied" => "access denied",
        "CertificateExpired" => "expired certificate",
        "CertificateRequired" => "certificate required",
        "DecryptError" => "error decrypting message",
        "UnknownCA" => "unknown certificate authority",
        other => panic!("no Go name for the alert {other}"),
    }
}

/// A client's error for a connection netsy refused at the handshake: the
/// expected alert, or (when the client was writing as netsy closed the
/// socket) the connection's reset or close, never another alert.
fn assert_connection_refused(err: &str, alert: &str, who: &str) {
    if err.contains("received fatal alert") {
        assert!(err.contains(alert), "{who}: not {alert}: {err}");
    } else {
        assert!(
            ["broken pipe", "connection reset", "connection closed"]
                .iter()
                .any(|t| err.to_lowercase().contains(t)),
            "{who}: not a refused connection: {err}"
        );
    }
}

/// A finished command's status and output.
#[derive(Debug)]
struct Ran {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion within DEADLINE; kills it and fails the test
/// if it is still running then.
fn run_bounded(mut cmd: Command) -> Ran {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let drain = |mut s: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still ran after {DEADLINE:?}; stderr:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_required_and_authorised_per_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let moto = Arc::new(start_moto());
    let bucket = Bucket::s3(&moto, "prod");
    let mut env = pki.env();
    env.extend(bucket.env());
    // Debug logging, so the key-material scan below covers the most verbose
    // log an operator would turn on.
    env.push(("RUST_LOG".into(), "debug".into()));
    let node = start(&tmp.path().join("data"), &config(tmp.path(), &bucket), env);
    let t = Target {
        addr: node.client_addr.clone(),
        peer_addr: node
            .peer_addr
            .clone()
            .expect("a peer listener outside --dev"),
        roots: ca_roots(&pki),
        ca: pki.dir.join("ca.crt"),
        client: (pki.dir.join("client.crt"), pki.dir.join("client.key")),
        peer: (pki.dir.join("peer.crt"), pki.dir.join("peer.key")),
        log: node.log.clone(),
    };
    let addr = t.addr.clone();

    // The right client certificate works: etcdctl 3.4 (TLS 1.3) and 3.5.1
    // (TLS 1.2), etcd-client, our client.
    let out = t.etcdctl_as(
        "etcdctl34",
        Port::Client,
        Some(&t.client),
        &["put", "a", "1"],
    );
    assert!(
        out.status.success() && out.stdout.trim() == "OK",
        "etcdctl with a client certificate: {out:?}"
    );
    let out = t.etcdctl_as("etcdctl", Port::Client, Some(&t.client), &["get", "a"]);
    assert!(
        out.status.success() && out.stdout == "a\n1\n",
        "etcdctl 3.5.1 get: {out:?}"
    );
    assert_eq!(
        t.etcd_client(Port::Client, Some(&t.client)).await,
        Ok(b"1".to_vec()),
        "etcd-client with a client certificate"
    );
    t.still_serves("nothing").await;
    let out = t.etcdctl_as("etcdctl34", Port::Client, Some(&t.client), &["get", "a"]);
    assert!(
        out.status.success() && out.stdout == "a\n1\n",
        "etcdctl get: {out:?}"
    );

    // Everything that must be refused, on the port it is presented to.
    let other_dir = tmp.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = Pki::new(&other_dir);
    let stranger_dir = tmp.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = Pki::with_ca_name(&stranger_dir, "stranger-cluster");
    let issue = |name: &str, leaf: Leaf| Some(pki.issue(name, &leaf));
    let client_with_uri = |uri: Option<&str>| {
        let mut l = Leaf::client(CLUSTER, "app", 30);
        l.uri = uri.map(str::to_string);
        l
    };
    let cases = [
        Refusal {
            name: "no client certificate",
            port: Port::Client,
            cert: None,
            rustls: "CertificateRequired",
            log: "failed: peer sent no certificates",
        },
        Refusal {
            // The same distinguished name as the cluster CA: webpki finds it
            // as the issuer and the signature does not verify.
            name: "a certificate from another CA of the same name",
            port: Port::Client,
            cert: Some((other.dir.join("client.crt"), other.dir.join("client.key"))),
            rustls: "DecryptError",
            log: "failed: invalid peer certificate: BadSignature",
        },
        Refusal {
            name: "a certificate from another CA",
            port: Port::Client,
            cert: Some((
                stranger.dir.join("client.crt"),
                stranger.dir.join("client.key"),
            )),
            rustls: "UnknownCA",
            log: "failed: invalid peer certificate: UnknownIssuer",
        },
        Refusal {
            name: "a peer certificate on the client port",
            port: Port::Client,
            cert: Some(t.peer.clone()),
            rustls: "AccessDenied",
            log: r#"refused a client connection: certificate role "peer" is not allowed here"#,
        },
        Refusal {
            name: "a client certificate on the peer port",
            port: Port::Peer,
            cert: Some(t.client.clone()),
            rustls: "AccessDenied",
            log: r#"refused a peer connection: certificate role "client" is not allowed here"#,
        },
        Refusal {
            name: "a peer with an invalid node id",
            port: Port::Peer,
            cert: issue("bad-node-id", Leaf::peer_client(CLUSTER, "Node_1", 30)),
            rustls: "AccessDenied",
            log: "refused a peer connection: peer identity must be lowercase alphanumeric",
        },
        Refusal {
            name: "a client certificate for another cluster",
            port: Port::Client,
            cert: issue("other-cluster", Leaf::client("another-cluster", "app", 30)),
            rustls: "AccessDenied",
            log: r#"refused a client connection: certificate is for cluster "another-cluster""#,
        },
        Refusal {
            name: "a peer certificate for another cluster",
            port: Port::Peer,
            cert: issue(
                "other-cluster-peer",
                Leaf::peer_client("another-cluster", NODE, 30),
            ),
            rustls: "AccessDenied",
            log: r#"refused a peer connection: certificate is for cluster "another-cluster""#,
        },
        Refusal {
            name: "an expired certificate",
            port: Port::Client,
            cert: issue("expired", {
                let mut l = Leaf::client(CLUSTER, "app", 30);
                l.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
                l.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
                l
            }),
            rustls: "CertificateExpired",
            log: "failed: invalid peer certificate: certificate expired",
        },
        Refusal {
            name: "a URI SAN without identity",
            port: Port::Client,
            cert: issue(
                "san-no-identity",
                client_with_uri(Some(&format!("netsy://{CLUSTER}/client"))),
            ),
            rustls: "AccessDenied",
            log: r#"prod-cluster/client" must have path /{role}/{identity}"#,
        },
        Refusal {
            name: "a URI SAN with an extra path segment",
            port: Port::Client,
            cert: issue(
                "san-extra-segment",
                client_with_uri(Some(&format!("netsy://{CLUSTER}/client/app/extra"))),
            ),
            rustls: "AccessDenied",
            log: r#"/client/app/extra" must have path /{role}/{identity}"#,
        },
        Refusal {
            name: "a URI SAN without role",
            port: Port::Client,
            cert: issue(
                "san-no-role",
                client_with_uri(Some(&format!("netsy://{CLUSTER}/app"))),
            ),
            rustls: "AccessDenied",
            log: r#"/app" must have path /{role}/{identity}"#,
        },
        Refusal {
            name: "a URI SAN with an unknown role",
            port: Port::Client,
            cert: issue(
                "san-admin-role",
                client_with_uri(Some(&format!("netsy://{CLUSTER}/admin/app"))),
            ),
            rustls: "AccessDenied",
            log: r#"has invalid role "admin""#,
        },
        Refusal {
            name: "a URI SAN with another scheme",
            port: Port::Client,
            cert: issue(
                "san-other-scheme",
                client_with_uri(Some(&format!("spiffe://{CLUSTER}/client/app"))),
            ),
            rustls: "AccessDenied",
            log: "refused a client connection: certificate has no netsy:// URI SAN",
        },
        Refusal {
            name: "no URI SAN",
            port: Port::Client,
            cert: issue("no-san", client_with_uri(None)),
            rustls: "AccessDenied",
            log: "refused a client connection: certificate has no netsy:// URI SAN",
        },
    ];
    for case in &cases {
        t.refuses(case).await;
    }

    // TLS 1.2 on the client listener, as etcdctl 3.5.x speaks it: each
    // ECDHE-ECDSA AEAD suite completes the handshake (the node's key is
    // ECDSA, so the ECDHE-RSA ones cannot be chosen here), and requests are
    // served over it.
    use rustls::crypto::ring::cipher_suite as cs;
    for suite in [
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        assert_eq!(
            t.negotiated(Port::Client, t.config12_with(Some(&t.client), vec![suite]))
                .await,
            Ok(format!("TLSv1_2 {:?}", suite.suite())),
            "a TLS 1.2 client offering only {:?}",
            suite.suite()
        );
    }
    assert_eq!(
        t.netsy_client(Port::Client, t.config12(Some(&t.client)))
            .await
            .as_deref(),
        Ok("revision 2"),
        "a TLS 1.2 netsy client"
    );

    // Hand-built TLS 1.2 hellos: an AEAD suite is taken; only CBC suites,
    // or only RSA key exchange, end in handshake_failure (40).
    assert_eq!(
        t.tls12_hello(Port::Client, &[0xc02b]).await,
        "ServerHello 0xc02b",
        "a TLS 1.2 hello offering ECDHE-ECDSA-AES128-GCM-SHA256"
    );
    let no_suite = "failed: peer is incompatible: NoCipherSuitesInCommon";
    for (what, suites) in [
        (
            "ECDHE with CBC",
            &[
                0xc009, 0xc00a, 0xc023, 0xc024, 0xc013, 0xc014, 0xc027, 0xc028,
            ][..],
        ),
        (
            "RSA key exchange",
            &[0x002f, 0x0035, 0x003c, 0x003d, 0x009c, 0x009d][..],
        ),
    ] {
        let before = t.logged(no_suite);
        assert_eq!(
            t.tls12_hello(Port::Client, suites).await,
            "alert 40",
            "a TLS 1.2 hello offering only {what}"
        );
        t.logs_more(no_suite, before, what);
    }
    t.still_serves("TLS 1.2 hellos").await;

    // The peer listener stays TLS 1.3 only: TLS 1.2 is refused with
    // protocol_version (70) before any certificate is looked at.
    let before = t.logged(TLS12_NOT_ENABLED);
    assert_eq!(
        t.handshake_error(Port::Peer, t.config12(Some(&t.peer)))
            .await,
        "handshake: received fatal alert: ProtocolVersion",
        "a TLS 1.2 peer"
    );
    t.logs_more(TLS12_NOT_ENABLED, before, "a TLS 1.2 peer");
    let before = t.logged(TLS12_NOT_ENABLED);
    let err = t
        .netsy_client(Port::Peer, t.config12(Some(&t.peer)))
        .await
        .expect_err("a TLS 1.2 peer must be refused");
    assert!(
        err.starts_with("UNAVAILABLE: TLS handshake with ")
            && err.ends_with(": received fatal alert: ProtocolVersion"),
        "a TLS 1.2 netsy peer client: {err}"
    );
    t.logs_more(TLS12_NOT_ENABLED, before, "a TLS 1.2 netsy peer client");
    assert_eq!(
        t.tls12_hello(Port::Peer, &[0xc02b]).await,
        "alert 70",
        "a TLS 1.2 hello to the peer listener"
    );
    t.still_serves("TLS 1.2 peers").await;

    // openssl, a TLS 1.2 client independent of rustls and Go, when present.
    openssl_tls12(&t);

    // After all that, good clients can still write.
    let put: PutResponse = {
        let ch = Channel::connect_tls(&addr, t.config(Some(&t.client)), "127.0.0.1")
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

    // etcdctl 3.5.1 (TLS 1.2 only) writes, reads and reports status.
    let out = t.etcdctl_as("etcdctl", Port::Client, Some(&t.client), &["put", "c", "3"]);
    assert!(
        out.status.success() && out.stdout.trim() == "OK",
        "etcdctl 3.5.1 put: {out:?}"
    );
    let out = t.etcdctl_as("etcdctl", Port::Client, Some(&t.client), &["get", "c"]);
    assert!(
        out.status.success() && out.stdout == "c\n3\n",
        "etcdctl 3.5.1 get: {out:?}"
    );
    let out = t.etcdctl_as(
        "etcdctl",
        Port::Client,
        Some(&t.client),
        &["endpoint", "status", "-w", "json"],
    );
    assert!(
        out.status.success(),
        "etcdctl 3.5.1 endpoint status: {out:?}"
    );
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (
            &status[0]["Status"]["header"]["revision"],
            &status[0]["Status"]["version"]
        ),
        (
            &serde_json::json!(4),
            &serde_json::json!(netsy::etcd::ETCD_VERSION)
        ),
        "etcdctl 3.5.1 endpoint status: {}",
        out.stdout
    );

    let log = node.log.snapshot().join("\n");
    assert!(log.contains(" DEBUG "), "the node ran with debug logging");
    assert_no_key_material(&log, &[&pki, &other, &stranger]);
}

/// `openssl s_client -tls1_2` against the client listener: with the
/// client certificate and ECDHE-ECDSA-AES128-GCM-SHA256 it completes the
/// handshake; offering only CBC suites or RSA key exchange it is refused.
/// Skipped, saying so, where openssl is not installed.
fn openssl_tls12(t: &Target) {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("skipping the openssl TLS 1.2 checks: no openssl on PATH");
        return;
    }
    let s_client = |ciphers: &str| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-brief", "-tls1_2", "-verify_return_error"])
            .args(["-connect", &t.addr, "-cipher", ciphers])
            .arg("-CAfile")
            .arg(&t.ca)
            .arg("-cert")
            .arg(&t.client.0)
            .arg("-key")
            .arg(&t.client.1);
        run_bounded(cmd)
    };
    let out = s_client("ECDHE-ECDSA-AES128-GCM-SHA256");
    assert!(
        out.status.success()
            && out.stderr.contains("Protocol version: TLSv1.2")
            && out
                .stderr
                .contains("Ciphersuite: ECDHE-ECDSA-AES128-GCM-SHA256"),
        "openssl, TLS 1.2 with an AEAD suite: {out:?}"
    );
    // SECLEVEL=0 so openssl itself still offers these old suites.
    for (what, ciphers) in [
        (
            "ECDHE with CBC",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:@SECLEVEL=0",
        ),
        (
            "RSA key exchange",
            "AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:@SECLEVEL=0",
        ),
    ] {
        let out = s_client(ciphers);
        assert!(
            !out.status.success() && out.stderr.contains("alert handshake failure"),
            "openssl, TLS 1.2 offering only {what}: {out:?}"
        );
    }
}

/// No private key of any of `pkis` (every *.key file written into their
/// directories, and the CAs' keys) appears in `text`, nor any PEM key block.
fn assert_no_key_material(text: &str, pkis: &[&Pki]) {
    assert!(!text.contains("PRIVATE KEY"), "a private key was logged");
    let mut keys = Vec::new();
    for pki in pkis {
        keys.push(("the CA key".to_string(), pki.ca.key_pem().to_string()));
        for entry in std::fs::read_dir(&pki.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                let pem = std::fs::read_to_string(&path).unwrap();
                keys.push((path.display().to_string(), pem));
            }
        }
    }
    // server, peer, client and the CA key at least, for each authority.
    assert!(keys.len() >= 4 * pkis.len(), "keys scanned: {}", keys.len());
    for (name, pem) in &keys {
        let lines: Vec<&str> = pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .collect();
        assert!(!lines.is_empty(), "{name} has no key lines to look for");
        for line in lines {
            assert!(!text.contains(line), "key material of {name} was logged");
        }
    }
}

/// Runs the node (with debug logging) expecting it to refuse to start, as
/// user `uid` when given: returns its stderr. Fails if it serves or is still
/// running at the deadline.
fn refuses_as(
    binary: &Path,
    data: &Path,
    conf: &Path,
    env: Vec<(String, String)>,
    uid: Option<u32>,
) -> Result<String, std::io::Error> {
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(conf)
        .env("NETSY_BIND_CLIENT", "127.0.0.1:0")
        .env("NETSY_BIND_PEER", "127.0.0.1:0")
        .env("NETSY_BIND_ELECTION", "127.0.0.1:0")
        .env("NETSY_BIND_HEALTH", "127.0.0.1:0")
        .env("NETSY_DATA_DIR", data)
        .env("RUST_LOG", "debug")
        .envs(env);
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let (status, err) = run_refusing(cmd)?;
    assert_eq!(status.code(), Some(1), "netsy must exit 1: {err}");
    assert!(!err.contains("serving"), "nothing may be served: {err}");
    Ok(err)
}

fn refuses(data: &Path, conf: &Path, env: Vec<(String, String)>) -> String {
    refuses_as(
        Path::new(env!("CARGO_BIN_EXE_netsy")),
        data,
        conf,
        env,
        None,
    )
    .unwrap()
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
        err.contains("NETSY_TLS_CA_CERT (/nonexistent/ca.crt): cannot read: ")
            && err.contains("No such file or directory (os error 2)"),
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
        err.contains(&format!(
            r#"NETSY_TLS_SERVER_CERT ({}): the certificate has role "client"; node certificates need netsy://{CLUSTER}/peer/{NODE}"#,
            pki.path("client.crt")
        )),
        "{err}"
    );
    all += &err;

    // Files that exist but cannot be read (mode 000): the CA certificate and
    // the server key. Root reads them anyway, so as root netsy runs as
    // nobody (65534) for this; skipped only where that is impossible.
    for (setting, file) in [
        ("NETSY_TLS_CA_CERT", "ca.crt"),
        ("NETSY_TLS_SERVER_KEY", "server.key"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let locked = tmp.path().join(format!("locked-{file}"));
        std::fs::copy(pki.dir.join(file), &locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let env = with(setting, &locked.display().to_string());
        let err = if std::fs::read(&locked).is_err() {
            refuses(&data, &conf, env)
        } else {
            // Everything else must stay readable for nobody.
            for dir in [tmp.path(), pki.dir.as_path()] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            // Root reads anything: run as nobody, from a copy of the binary
            // nobody can reach (the build dir may sit under /root). Failing
            // to is a failure, not a skip: the case must be checked.
            let binary = tmp.path().join("netsy-as-nobody");
            if !binary.exists() {
                std::fs::copy(env!("CARGO_BIN_EXE_netsy"), &binary).unwrap();
                std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            refuses_as(&binary, &data, &conf, env, Some(65534))
                .unwrap_or_else(|e| panic!("cannot run netsy as nobody to check {file}: {e}"))
        };
        let expected = format!("{setting} ({}): cannot read: ", locked.display());
        assert!(
            err.contains(&expected) && err.contains("Permission denied (os error 13)"),
            "{err}"
        );
        all += &err;
    }

    assert!(!data.join("db.sqlite3").exists(), "nothing was written");

    // A node that starts, at debug level, with a good and a refused client:
    // its log carries no key material either.
    let node = start(
        &data,
        &conf,
        pki.env()
            .into_iter()
            .chain([("RUST_LOG".to_string(), "debug".to_string())])
            .collect(),
    );
    let t = Target {
        addr: node.client_addr.clone(),
        peer_addr: node.peer_addr.clone().unwrap(),
        roots: ca_roots(&pki),
        ca: pki.dir.join("ca.crt"),
        client: (pki.dir.join("client.crt"), pki.dir.join("client.key")),
        peer: (pki.dir.join("peer.crt"), pki.dir.join("peer.key")),
        log: node.log.clone(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(
            t.handshake_error(Port::Client, t.config(Some(&t.peer)))
                .await,
            "received fatal alert: AccessDenied"
        );
        assert_eq!(
            t.netsy_client(Port::Client, t.config(Some(&t.client)))
                .await
                .as_deref(),
            Ok("revision 1")
        );
    });
    t.logs_more("refused a client connection", 0, "a peer certificate");
    all += &node.log.snapshot().join("\n");
    assert!(all.contains(" DEBUG "), "debug logging was on");
    assert_no_key_material(&all, &[&pki]);
}
