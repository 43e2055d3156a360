//! Certificates for a netsy cluster (`netsy certs`, and tests): a cluster
//! CA, per-node server and peer certificates carrying
//! `netsy://{cluster}/peer/{node}`, and client certificates carrying
//! `netsy://{cluster}/client/{name}`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority able to issue leaves.
pub struct Authority {
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a leaf certificate says.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub common_name: String,
    /// The netsy:// URI SAN (any URI for tests of malformed ones).
    pub uri: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Leaf {
    /// A leaf valid from yesterday for `days` days.
    pub fn new(common_name: &str, uri: Option<String>, days: i64) -> Leaf {
        let now = OffsetDateTime::now_utc();
        Leaf {
            common_name: common_name.to_string(),
            uri,
            dns: vec![],
            ips: vec![],
            server_auth: false,
            client_auth: false,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(days),
        }
    }

    /// A node's server certificate: localhost, 127.0.0.1, ::1 and `hosts`.
    pub fn server(cluster_id: &str, node_id: &str, hosts: &[String], days: i64) -> Leaf {
        let mut leaf = Leaf::new(
            node_id,
            Some(format!("netsy://{cluster_id}/peer/{node_id}")),
            days,
        );
        leaf.server_auth = true;
        leaf.dns.push("localhost".into());
        leaf.ips.push(IpAddr::from([127, 0, 0, 1]));
        leaf.ips.push(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]));
        for h in hosts {
            match h.parse::<IpAddr>() {
                Ok(ip) if !leaf.ips.contains(&ip) => leaf.ips.push(ip),
                Ok(_) => {}
                Err(_) if !leaf.dns.contains(h) => leaf.dns.push(h.clone()),
                Err(_) => {}
            }
        }
        leaf
    }

    /// A node's certificate for outbound peer connections.
    pub fn peer_client(cluster_id: &str, node_id: &str, days: i64) -> Leaf {
        let mut leaf = Leaf::new(
            node_id,
            Some(format!("netsy://{cluster_id}/peer/{node_id}")),
            days,
        );
        leaf.client_auth = true;
        leaf
    }

    /// An external client's certificate.
    pub fn client(cluster_id: &str, name: &str, days: i64) -> Leaf {
        let mut leaf = Leaf::new(
            name,
            Some(format!("netsy://{cluster_id}/client/{name}")),
            days,
        );
        leaf.client_auth = true;
        leaf
    }
}

fn err(what: &str, e: rcgen::Error) -> String {
    format!("{what}: {e}")
}

impl Authority {
    /// A new CA for `cluster_id`, valid for `days`.
    pub fn generate(cluster_id: &str, days: i64) -> Result<Authority, String> {
        let key = KeyPair::generate().map_err(|e| err("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{cluster_id}-ca"));
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(days);
        let cert = params
            .self_signed(&key)
            .map_err(|e| err("signing the CA", e))?;
        let key_pem = key.serialize_pem();
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its PEM files' contents.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| err("reading the CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| err("reading the CA certificate", e))?;
        Ok(Authority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf: (certificate PEM, private key PEM).
    pub fn issue(&self, leaf: &Leaf) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| err("generating a key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name.as_str());
        params.distinguished_name = dn;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.use_authority_key_identifier_extension = true;
        for d in &leaf.dns {
            params.subject_alt_names.push(SanType::DnsName(
                d.clone().try_into().map_err(|e| err("a DNS name", e))?,
            ));
        }
        for ip in &leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if let Some(uri) = &leaf.uri {
            params.subject_alt_names.push(SanType::URI(
                uri.clone().try_into().map_err(|e| err("the URI", e))?,
            ));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.server_auth {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err("signing a certificate", e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes `contents`; private keys get mode 0600.
pub fn write(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("protecting {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `netsy certs`: a CA (reused when `out` already has one) and the
/// certificates of the given nodes and clients. Returns the files written.
pub fn write_cluster(
    out: &Path,
    cluster_id: &str,
    nodes: &[String],
    clients: &[String],
    hosts: &[String],
    days: i64,
) -> Result<Vec<PathBuf>, String> {
    let (ca_cert, ca_key) = (out.join("ca.crt"), out.join("ca.key"));
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert =
            std::fs::read_to_string(&ca_cert).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
        let key =
            std::fs::read_to_string(&ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?;
        Authority::load(&cert, &key)?
    } else {
        let ca = Authority::generate(cluster_id, days.max(3650))?;
        write(&ca_cert, &ca.cert_pem, false)?;
        write(&ca_key, ca.key_pem(), true)?;
        written.extend([ca_cert.clone(), ca_key.clone()]);
        ca
    };
    for node in nodes {
        let dir = out.join(node);
        for (name, leaf) in [
            ("server", Leaf::server(cluster_id, node, hosts, days)),
            ("peer", Leaf::peer_client(cluster_id, node, days)),
        ] {
            let (cert, key) = ca.issue(&leaf)?;
            let (cp, kp) = (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            );
            write(&cp, &cert, false)?;
            write(&kp, &key, true)?;
            written.extend([cp, kp]);
        }
    }
    for client in clients {
        let (cert, key) = ca.issue(&Leaf::client(cluster_id, client, days))?;
        let dir = out.join("client");
        let (cp, kp) = (
            dir.join(format!("{client}.crt")),
            dir.join(format!("{client}.key")),
        );
        write(&cp, &cert, false)?;
        write(&kp, &key, true)?;
        written.extend([cp, kp]);
    }
    Ok(written)
}
