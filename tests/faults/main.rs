//! The fault suite and its pieces. `suite`: Kubernetes-shaped traffic
//! through every node while a fault strikes, every recorded history
//! checked. The pieces themselves: fault points compiled into the test
//! build (a crash between a chunk upload and the SQLite commit loses
//! nothing the bucket holds), the S3 proxy's modes against moto and a node
//! behind it during an outage, and the TCP proxy's modes against a plain
//! echo server and between the nodes of a cluster.

#[path = "../support/mod.rs"]
mod support;

mod failpoints;
mod s3proxy;
mod suite;
mod tcpproxy;

/// Every key's latest state plus the revision, as comparable text.
pub async fn fingerprint(c: &mut etcd_client::Client) -> Vec<String> {
    let all = c
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let mut out = vec![format!("revision {}", all.header().unwrap().revision())];
    out.extend(all.kvs().iter().map(|kv| {
        format!(
            "{} = {} (create {}, mod {}, version {})",
            kv.key_str().unwrap(),
            kv.value_str().unwrap(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        )
    }));
    out
}
