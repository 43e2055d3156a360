//! The Python etcd3 client against netsy.

use std::process::Command;

use crate::support::{repo, Netsy};

#[test]
fn python_etcd3_client_works() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "run ./scripts/setup first");
    let (host, port) = n.client_addr.rsplit_once(':').unwrap();
    let out = Command::new(python)
        .arg(repo().join("tests/python/etcd3_client.py"))
        .args([host, port])
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcd3 client failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
