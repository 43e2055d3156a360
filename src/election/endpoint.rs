//! The election endpoint: `GET /health/leadership` on the election listener
//! (HTTPS, no client certificate) answers 200 with the lock record when
//! this node holds the lock, 404 "Not leader" otherwise, 405 for other
//! methods; and the client side, with which a follower asks the known
//! leader directly instead of reading the bucket (peer mode).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{Response, Routes};
use crate::store::Timestamp;

use futures_util::future::BoxFuture;

use super::lock::{LeaderProbe, LockRecord};

/// The endpoint's path.
pub const PATH: &str = "/health/leadership";

/// How long one probe may take (the reference's peer timeout).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The wait before a probe's last attempt.
pub const PROBE_LAST_ATTEMPT_AFTER: Duration = Duration::from_secs(1);

/// Whether this node holds the lock, as its lock runner last found.
pub struct Leadership {
    leader: AtomicBool,
    id: String,
    addr: String,
}

impl Leadership {
    pub fn new(id: &str, addr: &str) -> Leadership {
        Leadership {
            leader: AtomicBool::new(false),
            id: id.to_string(),
            addr: addr.to_string(),
        }
    }

    pub fn set(&self, leader: bool) {
        self.leader.store(leader, Ordering::Release);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }
}

/// The endpoint's routes.
pub fn routes(leadership: Arc<Leadership>) -> Routes {
    Arc::new(move |method, path| {
        if path != PATH {
            return Response::not_found();
        }
        if method != "GET" {
            return Response::method_not_allowed();
        }
        if !leadership.is_leader() {
            return Response::new("404 Not Found", "text/plain", "Not leader\n".into());
        }
        let record = LockRecord {
            leader_id: leadership.id.clone(),
            leader_addr: leadership.addr.clone(),
            last_updated: Timestamp::now(),
        };
        let body = String::from_utf8_lossy(&record.to_json()).into_owned();
        Response::new("200 OK", "application/json", body)
    })
}

/// Asks election endpoints over HTTPS, verifying them against the cluster
/// CA: try, try again at once, then once more after a second.
pub struct HttpsProbe {
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl HttpsProbe {
    pub fn new(config: Arc<rustls::ClientConfig>) -> HttpsProbe {
        HttpsProbe {
            config,
            timeout: PROBE_TIMEOUT,
        }
    }

    async fn once(&self, addr: &str) -> Result<Option<LockRecord>, String> {
        let attempt = async {
            let host = crate::tls::host_of(addr).ok_or_else(|| format!("{addr}: no host"))?;
            let tcp = TcpStream::connect(crate::failpoint::dial_address(addr))
                .await
                .map_err(|e| format!("connect to {addr}: {e}"))?;
            let mut tls = crate::tls::connect(tcp, self.config.clone(), host, addr).await?;
            let request =
                format!("GET {PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            parse_answer(&answer).map_err(|e| format!("{addr}: {e}"))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("{addr}: no answer within {:?}", self.timeout)),
        }
    }
}

/// The record from a 200, None from a 404.
pub fn parse_answer(answer: &[u8]) -> Result<Option<LockRecord>, String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("incomplete HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    match status {
        "200" => LockRecord::parse(body.as_bytes()).map(Some),
        "404" => Ok(None),
        other => Err(format!("unexpected HTTP status {other:?}")),
    }
}

impl LeaderProbe for HttpsProbe {
    fn probe<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<Option<LockRecord>, String>> {
        Box::pin(async move {
            if let Ok(r) = self.once(addr).await {
                return Ok(r);
            }
            if let Ok(r) = self.once(addr).await {
                return Ok(r);
            }
            tokio::time::sleep(PROBE_LAST_ATTEMPT_AFTER).await;
            self.once(addr).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node_env::TlsPaths;
    use crate::tls::TlsMaterial;

    fn material(dir: &std::path::Path) -> TlsMaterial {
        crate::tls::certs::write_cluster(dir, "c", &["n1".into()], &[], &[], 30).unwrap();
        let p = |f: &str| dir.join(f).display().to_string();
        TlsMaterial::load(&TlsPaths {
            ca_cert: p("ca.crt"),
            server_cert: p("n1/server.crt"),
            server_key: p("n1/server.key"),
            client_cert: p("n1/peer.crt"),
            client_key: p("n1/peer.key"),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_endpoint_answers_as_the_reference_and_the_probe_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let tls = material(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let leadership = Arc::new(Leadership::new("n1", &addr));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.election_server_config().unwrap());
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::http::serve_with(
            listener,
            Some(acceptor),
            routes(leadership.clone()),
            rx,
        ));
        let probe = HttpsProbe::new(tls.election_client_config().unwrap());
        assert_eq!(probe.once(&addr).await, Ok(None), "not leader: 404");
        leadership.set(true);
        let before = Timestamp::now();
        let record = probe.once(&addr).await.unwrap().unwrap();
        assert_eq!(
            (record.leader_id.as_str(), record.leader_addr.as_str()),
            ("n1", addr.as_str())
        );
        assert!(record.last_updated >= before, "lastUpdated is now");
        let via_probe = probe.probe(&addr).await.unwrap().unwrap();
        assert_eq!(via_probe.leader_id, "n1");
        // TLS 1.2 clients are served too (the reference's TLS >= 1.2).
        let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(tls.roots.clone())
        .with_no_client_auth();
        let old = HttpsProbe::new(Arc::new(tls12));
        assert!(old.once(&addr).await.unwrap().is_some());
        // A node that is not there: the probe gives up with an error.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        assert!(probe.once(&gone_addr).await.is_err());
    }

    #[test]
    fn routes_refuse_other_methods_and_paths() {
        let leadership = Arc::new(Leadership::new("n1", "a:8443"));
        let r = routes(leadership.clone());
        assert_eq!(r("POST", PATH).status, "405 Method Not Allowed");
        assert_eq!(r("GET", "/other").status, "404 Not Found");
        let not = r("GET", PATH);
        assert_eq!(
            (not.status, not.body.as_str()),
            ("404 Not Found", "Not leader\n")
        );
        leadership.set(true);
        let yes = r("GET", PATH);
        assert_eq!(
            (yes.status, yes.content_type),
            ("200 OK", "application/json")
        );
        let record = LockRecord::parse(yes.body.as_bytes()).unwrap();
        assert_eq!(record.leader_addr, "a:8443");
    }

    #[test]
    fn answers_are_parsed_strictly() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\nNot leader\n"),
            Ok(None)
        );
        assert!(parse_answer(b"HTTP/1.1 500 Oops\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{broken").is_err());
        assert!(parse_answer(b"garbage").is_err());
    }
}
