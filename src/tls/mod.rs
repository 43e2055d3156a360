//! mTLS: certificate files from `NETSY_TLS_*`, rustls configurations per
//! listener (the peer API TLS 1.3 only, the client API TLS 1.3 or 1.2 with
//! ECDHE and AEAD suites; client certificates required and verified against
//! the cluster CA, then authorised by the `netsy://` identity and the
//! listener's role), the client configuration for outbound peer
//! connections, and the checks a node runs on its own certificates at start.

pub mod certs;
pub mod identity;

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use crate::config::node_env::TlsPaths;
pub use identity::{Identity, Role};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS versions the listener admitting `role` accepts. The peer API is
/// TLS 1.3 only (the reference's rule). The client API also takes TLS 1.2:
/// etcd's Go client capped TLS at 1.2 until 3.5.8, so etcdctl 3.5.x and the
/// kube-apiserver builds vendoring it cannot speak 1.3.
pub fn listener_versions(role: Role) -> &'static [&'static SupportedProtocolVersion] {
    static CLIENT: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static PEER: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match role {
        Role::Client => &CLIENT,
        Role::Peer => &PEER,
    }
}

/// The cipher suites our listeners offer: every TLS 1.3 suite, and for
/// TLS 1.2 only ECDHE key exchange with AEAD ciphers (no CBC, no RSA key
/// exchange). Listed explicitly so a change of rustls' defaults cannot
/// widen them.
pub fn listener_cipher_suites() -> Vec<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

fn listener_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: listener_cipher_suites(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// The node's certificate material, loaded and parsed.
pub struct TlsMaterial {
    pub paths: TlsPaths,
    pub roots: Arc<RootCertStore>,
    pub server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    pub client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
}

fn require<'a>(setting: &str, path: &'a str, what: &str) -> Result<&'a str, String> {
    if path.is_empty() {
        return Err(format!(
            "{setting} is required outside --dev: the path of the {what} (PEM)"
        ));
    }
    Ok(path)
}

/// Reads every certificate in a PEM file.
pub fn read_certs(setting: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(io) => {
                format!("{setting} ({path}): cannot read: {io}")
            }
            other => format!("{setting} ({path}): cannot read: {other}"),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting} ({path}): not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{setting} ({path}): no certificate in the file"));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 RSA or SEC1 EC). The key itself is
/// never put in an error or a log line.
pub fn read_key(setting: &str, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(Path::new(path)).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(io) => format!("{setting} ({path}): cannot read: {io}"),
        _ => format!("{setting} ({path}): no PEM private key in the file"),
    })
}

impl TlsMaterial {
    pub fn load(paths: &TlsPaths) -> Result<TlsMaterial, String> {
        let ca = read_certs(
            "NETSY_TLS_CA_CERT",
            require(
                "NETSY_TLS_CA_CERT",
                &paths.ca_cert,
                "cluster CA certificate",
            )?,
        )?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| {
                format!(
                    "NETSY_TLS_CA_CERT ({}): not a usable CA certificate: {e}",
                    paths.ca_cert
                )
            })?;
        }
        let server_chain = read_certs(
            "NETSY_TLS_SERVER_CERT",
            require(
                "NETSY_TLS_SERVER_CERT",
                &paths.server_cert,
                "node's server certificate",
            )?,
        )?;
        let server_key = read_key(
            "NETSY_TLS_SERVER_KEY",
            require(
                "NETSY_TLS_SERVER_KEY",
                &paths.server_key,
                "server certificate's key",
            )?,
        )?;
        let client_chain = read_certs(
            "NETSY_TLS_CLIENT_CERT",
            require(
                "NETSY_TLS_CLIENT_CERT",
                &paths.client_cert,
                "node's peer (client) certificate",
            )?,
        )?;
        let client_key = read_key(
            "NETSY_TLS_CLIENT_KEY",
            require(
                "NETSY_TLS_CLIENT_KEY",
                &paths.client_key,
                "peer certificate's key",
            )?,
        )?;
        Ok(TlsMaterial {
            paths: paths.clone(),
            roots: Arc::new(roots),
            server_chain,
            server_key,
            client_chain,
            client_key,
        })
    }

    /// Startup checks (reference §25.3): both certificates name this node in
    /// this cluster with role peer, each key matches its certificate, and
    /// the server certificate is valid for every advertised host.
    pub fn validate(
        &self,
        cluster_id: &str,
        node_id: &str,
        advertised: &[(&str, &str)],
    ) -> Result<(), String> {
        let p = &self.paths;
        for (setting, path, chain, key, key_setting) in [
            (
                "NETSY_TLS_SERVER_CERT",
                &p.server_cert,
                &self.server_chain,
                &self.server_key,
                "NETSY_TLS_SERVER_KEY",
            ),
            (
                "NETSY_TLS_CLIENT_CERT",
                &p.client_cert,
                &self.client_chain,
                &self.client_key,
                "NETSY_TLS_CLIENT_KEY",
            ),
        ] {
            let id = identity::from_certificate(&chain[0])
                .map_err(|e| format!("{setting} ({path}): {e}"))?;
            if id.role != Role::Peer {
                return Err(format!(
                    "{setting} ({path}): the certificate has role {:?}; node certificates need netsy://{cluster_id}/peer/{node_id}",
                    id.role.as_str()
                ));
            }
            if id.cluster_id != cluster_id {
                return Err(format!(
                    "{setting} ({path}): the certificate is for cluster {:?}, but cluster_id is {cluster_id:?}",
                    id.cluster_id
                ));
            }
            if id.name != node_id {
                return Err(format!(
                    "{setting} ({path}): the certificate is for node {:?}, but NETSY_NODE_ID is {node_id:?}",
                    id.name
                ));
            }
            let signing = provider()
                .key_provider
                .load_private_key(key.clone_key())
                .map_err(|e| format!("{key_setting}: unusable private key: {e}"))?;
            rustls::sign::CertifiedKey::new(chain.clone(), signing)
                .keys_match()
                .map_err(|_| format!("{key_setting}: the key does not belong to the certificate in {setting} ({path})"))?;
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| format!("NETSY_TLS_CA_CERT ({}): {e}", p.ca_cert))?;
        for (setting, address) in advertised.iter().filter(|(_, a)| !a.is_empty()) {
            let host =
                host_of(address).ok_or_else(|| format!("{setting} {address:?} has no host"))?;
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("{setting} {address:?}: invalid host: {e}"))?;
            verifier
                .verify_server_cert(&self.server_chain[0], &self.server_chain[1..], &name, &[], UnixTime::now())
                .map_err(|e| {
                    format!(
                        "NETSY_TLS_SERVER_CERT ({}) is not valid for {host} ({setting}): {e}; issue it with that host as a DNS or IP SAN",
                        p.server_cert
                    )
                })?;
        }
        Ok(())
    }

    /// The server configuration of a listener accepting `role`, with
    /// [`listener_versions`] and [`listener_cipher_suites`]. The client
    /// certificate is verified and authorised the same way under TLS 1.2
    /// and 1.3.
    pub fn server_config(&self, role: Role, cluster_id: &str) -> Result<Arc<ServerConfig>, String> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| format!("NETSY_TLS_CA_CERT: {e}"))?;
        let verifier = Arc::new(RoleVerifier {
            inner,
            role,
            cluster_id: cluster_id.to_string(),
        });
        let mut config = ServerConfig::builder_with_provider(listener_provider())
            .with_protocol_versions(listener_versions(role))
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(|e| format!("NETSY_TLS_SERVER_KEY: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The election endpoint's server configuration (reference §9.4): the
    /// node's server certificate, TLS 1.2 or 1.3, no client certificate
    /// asked for (it only tells who holds the lock).
    pub fn election_server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .map_err(|e| format!("NETSY_TLS_SERVER_KEY: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// For asking another node's election endpoint: servers verified
    /// against the cluster CA, no client certificate, TLS 1.2 or 1.3.
    pub fn election_client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration for outbound peer connections: our peer
    /// certificate, servers verified against the CA and the dialled host.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        client_config(
            self.roots.clone(),
            self.client_chain.clone(),
            self.client_key.clone_key(),
        )
    }
}

/// A TLS 1.3 client configuration presenting a certificate.
pub fn client_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("TLS client certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration from PEM files: the CA to verify servers with,
/// and the certificate chain and key to present.
pub fn client_config_from_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, String> {
    let text = |p: &Path| p.display().to_string();
    let mut roots = RootCertStore::empty();
    for der in read_certs("CA certificate", &text(ca))? {
        roots
            .add(der)
            .map_err(|e| format!("CA certificate ({}): {e}", text(ca)))?;
    }
    let chain = read_certs("certificate", &text(cert))?;
    let key = read_key("private key", &text(key))?;
    client_config(Arc::new(roots), chain, key)
}

/// The client side of a TLS handshake on `tcp` (dialled at `addr`), the
/// server verified as `server_name`.
pub async fn connect(
    tcp: tokio::net::TcpStream,
    config: Arc<ClientConfig>,
    server_name: &str,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("invalid server name {server_name:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(address: &str) -> Option<&str> {
    let host = if let Some(rest) = address.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        address.rsplit_once(':').map_or(address, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

/// Verifies the chain with webpki, then requires the leaf's netsy://
/// identity to have the listener's role and our cluster id. A refusal ends
/// the handshake.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    role: Role,
    cluster_id: String,
}

impl ClientCertVerifier for RoleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let allowed = identity::from_certificate(end_entity)
            .and_then(|id| identity::authorise(&id, self.role, &self.cluster_id).map(|_| id));
        match allowed {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(reason) => {
                log::warn!("refused a {} connection: {reason}", self.role.as_str());
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The identity of a verified TLS peer, as "role/name".
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<Identity> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| identity::from_certificate(leaf).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("node-1.example:2378"), Some("node-1.example"));
        assert_eq!(host_of("127.0.0.1:2378"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:2378"), Some("::1"));
        assert_eq!(host_of(":2378"), None);
    }

    #[test]
    fn only_the_client_listener_takes_tls12() {
        let names = |role| {
            listener_versions(role)
                .iter()
                .map(|v| format!("{:?}", v.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Role::Client), ["TLSv1_3", "TLSv1_2"]);
        assert_eq!(names(Role::Peer), ["TLSv1_3"]);
    }

    #[test]
    fn tls12_suites_are_ecdhe_with_aead_only() {
        let suites: Vec<String> = listener_cipher_suites()
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        let (tls13, tls12): (Vec<&String>, Vec<&String>) =
            suites.iter().partition(|s| s.starts_with("TLS13_"));
        assert_eq!((tls13.len(), tls12.len()), (3, 6), "{suites:?}");
        for s in tls12 {
            assert!(
                (s.starts_with("TLS_ECDHE_ECDSA_WITH_") || s.starts_with("TLS_ECDHE_RSA_WITH_"))
                    && (s.contains("_GCM_") || s.contains("_CHACHA20_POLY1305_")),
                "{s}"
            );
        }
    }
}
