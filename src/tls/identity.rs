//! Identities in certificates: the first URI SAN with scheme `netsy`,
//! `netsy://{cluster_id}/{role}/{identity}`, role `peer` or `client`.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::identifier;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Peer,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Client => "client",
        }
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub role: Role,
    /// A node id for peers, any name for clients.
    pub name: String,
}

impl Identity {
    pub fn uri(&self) -> String {
        format!(
            "netsy://{}/{}/{}",
            self.cluster_id,
            self.role.as_str(),
            self.name
        )
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri())
    }
}

/// Parses one `netsy://` URI with the reference's error texts.
pub fn parse_uri(uri: &str) -> Result<Identity, String> {
    let rest = uri
        .strip_prefix("netsy://")
        .ok_or_else(|| format!("URI SAN {uri:?} is not a netsy:// URI"))?;
    let (cluster, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if cluster.is_empty() {
        return Err(format!("URI SAN {uri:?} has empty cluster_id"));
    }
    let segments: Vec<&str> = path
        .strip_prefix('/')
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    if segments.len() != 2 {
        return Err(format!(
            "URI SAN {uri:?} must have path /{{role}}/{{identity}}"
        ));
    }
    let role = match segments[0] {
        "peer" => Role::Peer,
        "client" => Role::Client,
        other => return Err(format!("URI SAN {uri:?} has invalid role {other:?}")),
    };
    if segments[1].is_empty() {
        return Err(format!("URI SAN {uri:?} has empty identity"));
    }
    Ok(Identity {
        cluster_id: cluster.to_string(),
        role,
        name: segments[1].to_string(),
    })
}

/// The identity in a DER certificate: its first `netsy://` URI SAN.
pub fn from_certificate(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("certificate does not parse: {e}"))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| format!("certificate has a malformed subject alternative name: {e}"))?;
    let uri = sans
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("netsy:") => Some(u.to_string()),
            _ => None,
        })
        .ok_or_else(|| "certificate has no netsy:// URI SAN".to_string())?;
    parse_uri(&uri)
}

/// Checks an identity against a listener's rules: the expected role, our
/// cluster, and (for peers) a valid node id.
pub fn authorise(identity: &Identity, role: Role, cluster_id: &str) -> Result<(), String> {
    if identity.role != role {
        return Err(format!(
            "certificate role {:?} is not allowed here (this listener accepts {:?})",
            identity.role.as_str(),
            role.as_str()
        ));
    }
    if identity.cluster_id != cluster_id {
        return Err(format!(
            "certificate is for cluster {:?}, not {cluster_id:?}",
            identity.cluster_id
        ));
    }
    if role == Role::Peer {
        identifier::validate("peer identity", &identity.name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netsy_uris() {
        let id = parse_uri("netsy://dev-cluster/peer/dev-node-1").unwrap();
        assert_eq!(
            id,
            Identity {
                cluster_id: "dev-cluster".into(),
                role: Role::Peer,
                name: "dev-node-1".into()
            }
        );
        assert_eq!(id.uri(), "netsy://dev-cluster/peer/dev-node-1");
        assert_eq!(
            parse_uri("netsy://c/client/etcd-client").unwrap().role,
            Role::Client
        );
    }

    #[test]
    fn reference_error_texts() {
        assert_eq!(
            parse_uri("netsy:///peer/n").unwrap_err(),
            r#"URI SAN "netsy:///peer/n" has empty cluster_id"#
        );
        assert_eq!(
            parse_uri("netsy://c/peer").unwrap_err(),
            r#"URI SAN "netsy://c/peer" must have path /{role}/{identity}"#
        );
        assert_eq!(
            parse_uri("netsy://c/peer/n/extra").unwrap_err(),
            r#"URI SAN "netsy://c/peer/n/extra" must have path /{role}/{identity}"#
        );
        assert_eq!(
            parse_uri("netsy://c/admin/n").unwrap_err(),
            r#"URI SAN "netsy://c/admin/n" has invalid role "admin""#
        );
        assert_eq!(
            parse_uri("netsy://c/client/").unwrap_err(),
            r#"URI SAN "netsy://c/client/" has empty identity"#
        );
    }

    #[test]
    fn listener_rules() {
        let client = parse_uri("netsy://c/client/app").unwrap();
        let peer = parse_uri("netsy://c/peer/n1").unwrap();
        assert!(authorise(&client, Role::Client, "c").is_ok());
        assert!(authorise(&peer, Role::Peer, "c").is_ok());
        assert!(authorise(&peer, Role::Client, "c")
            .unwrap_err()
            .contains("role"));
        assert!(authorise(&client, Role::Peer, "c")
            .unwrap_err()
            .contains("role"));
        assert!(authorise(&client, Role::Client, "other")
            .unwrap_err()
            .contains("cluster"));
        let bad_peer = parse_uri("netsy://c/peer/Not_A_Node").unwrap();
        assert!(authorise(&bad_peer, Role::Peer, "c").is_err());
    }
}
