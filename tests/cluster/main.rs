//! Clusters of real netsy processes, started as deployed (per-node NETSY_*
//! variables, per-node certificates from `netsy certs`, one JSONC config,
//! one bucket): they agree on one Elector and one Primary through the
//! bucket alone, replace either when it dies, keep member ids, and take
//! nodes in and out. Tier-1 timings are shortened through the test setting
//! (cycle 0.5 s, leader timeout 1.5 s); everything else is as configured.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use support::cluster::TestCluster;

/// Clusters are heavy on two cores: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every running node lists the same members; returns them.
fn agreed_members(t: &mut TestCluster, running: &[usize], expected: usize) -> Vec<(String, u64)> {
    t.until(
        &format!("{expected} members listed alike on every node"),
        |t| {
            let lists: Vec<Vec<(String, u64)>> = running
                .iter()
                .map(|i| t.members(*i).ok())
                .collect::<Option<_>>()?;
            let first = lists.first()?.clone();
            (first.len() == expected && lists.iter().all(|l| *l == first)).then_some(first)
        },
    )
}

/// Every running node reports the Primary's member id as leader.
fn agreed_leader(t: &mut TestCluster, running: &[usize], primary: usize) {
    let members = agreed_members(t, running, running.len());
    let id = members
        .iter()
        .find(|(name, _)| *name == t.c.nodes[primary].id)
        .map(|(_, id)| *id)
        .expect("the Primary is a member");
    t.until("the same leader everywhere", |t| {
        running
            .iter()
            .all(|i| t.leader(*i) == Some(id))
            .then_some(())
    });
}

async fn put(t: &TestCluster, i: usize, key: &str) -> Result<i64, String> {
    let mut c = t.client(i).await;
    c.put(key, "v", None)
        .await
        .map(|r| r.header().map_or(0, |h| h.revision()))
        .map_err(|e| e.to_string())
}

/// Runs `f` on one runtime shared by the tests (made once).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| tokio::runtime::Runtime::new().unwrap())
        .block_on(f)
}

#[test]
fn three_nodes_on_s3_agree_on_one_elector_and_one_primary() {
    let _one = serial();
    let mut t = TestCluster::on_moto(3, |_| {});
    t.start_all();
    let (elector, primary) = t.settled();
    let all = [0, 1, 2];
    let agreed = agreed_members(&mut t, &all, 3);
    let ids: BTreeSet<u64> = agreed.iter().map(|m| m.1).collect();
    assert_eq!(ids.len(), 3, "distinct member ids: {agreed:?}");
    agreed_leader(&mut t, &all, primary);

    let replica = (0..3).find(|i| *i != primary).unwrap();
    let rev = block_on(put(&t, primary, "/a")).unwrap();
    // A write through a replica goes to the Primary.
    let forwarded = block_on(put(&t, replica, "/b")).unwrap();
    assert_eq!(forwarded, rev + 1);
    // The replica reads what the Primary wrote.
    block_on(async {
        let mut c = t.client(replica).await;
        let r = c.get("/a", None).await.unwrap();
        assert_eq!(r.kvs()[0].mod_revision(), rev);
    });
    let metrics = t.c.metrics(elector).unwrap();
    assert!(
        metrics.contains("netsy_elector_registered_nodes 3"),
        "{metrics}"
    );
    // The Elector's lock and the registrations are the reference's files.
    let store = t.bucket().store();
    let read = |key: &str| {
        let data = block_on(store.get(key)).unwrap().data;
        String::from_utf8(data.to_vec()).unwrap()
    };
    let lock: serde_json::Value = serde_json::from_str(&read("leader/elector.json")).unwrap();
    let e = &t.c.nodes[elector];
    assert_eq!(lock["leaderID"], e.id.as_str(), "{lock}");
    assert_eq!(lock["leaderAddr"], e.election_addr().as_str(), "{lock}");
    let updated = lock["lastUpdated"].as_str().unwrap();
    assert!(
        updated.ends_with('Z') && updated.contains('.') && updated.len() >= 27,
        "RFC 3339 with fractional seconds: {updated}"
    );
    for node in &t.c.nodes {
        assert_eq!(
            read(&format!("nodes/{}.json", node.id)),
            format!(
                r#"{{"node_id":"{}","client_advertise_address":"{}","peer_advertise_address":"{}"}}"#,
                node.id,
                node.client_addr(),
                node.peer_addr()
            )
        );
    }
    let members: serde_json::Value = serde_json::from_str(&read("members.json")).unwrap();
    assert_eq!(members["cluster_id"], "test-cluster", "{members}");
    assert_eq!(members_ids(&members).len(), 3, "{members}");
    for (id, member_id) in &members_ids(&members) {
        assert!(
            members_contains(&agreed, id, *member_id),
            "members.json {members} against member list {agreed:?}"
        );
    }
}

fn members_ids(members: &serde_json::Value) -> Vec<(String, u64)> {
    members["members"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn members_contains(agreed: &[(String, u64)], id: &str, member_id: u64) -> bool {
    agreed.iter().any(|(n, m)| n == id && *m == member_id)
}

#[test]
fn five_nodes_on_a_shared_directory_agree() {
    let _one = serial();
    let mut t = TestCluster::on_fs(5, |_| {});
    t.start_all();
    let (_, primary) = t.settled();
    let all = [0, 1, 2, 3, 4];
    agreed_leader(&mut t, &all, primary);
    assert!(block_on(put(&t, primary, "/five")).is_ok());
}

/// Which kind of failover a kill caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Killed {
    Elector,
    Primary,
    Both,
}

#[test]
fn failovers_of_the_elector_the_primary_and_both_keep_every_acknowledged_write() {
    const ROUNDS: usize = 24;
    let _one = serial();
    let mut t = TestCluster::on_moto(3, |_| {});
    // The first node, alone, becomes Elector and Primary (the others then
    // join it), so the first round kills a node that is both.
    t.start(0);
    assert_eq!(t.settled(), (0, 0));
    t.start(1);
    t.start(2);
    let all = [0, 1, 2];
    let before = agreed_members(&mut t, &all, 3);
    let mut acked: Vec<(String, i64)> = Vec::new();
    let mut seen = BTreeSet::new();
    // Which survivor becomes Elector, and which Primary (the one with the
    // newest data), is up to timing: a node that is both can come back
    // several times in a row, so allow rounds enough for the other kinds.
    for round in 0..ROUNDS {
        let (elector, primary) = t.settled();
        // Choose the kind of failover not seen yet, when the roles allow.
        let (victim, kind) = if elector == primary {
            (primary, Killed::Both)
        } else if !seen.contains(&Killed::Primary) {
            (primary, Killed::Primary)
        } else {
            (elector, Killed::Elector)
        };
        let key = format!("/k{round}");
        acked.push((key.clone(), block_on(put(&t, primary, &key)).unwrap()));
        t.c.kill(victim);
        // (settled counts running nodes only.) After the Elector alone, the
        // Primary may stay or be replaced: it steps down while it cannot
        // reach an Elector, and the new Elector appoints whoever is best.
        // Writes are accepted again, and nothing acknowledged was lost.
        let key = format!("/after{round}");
        let (new_primary, rev) = t.until("a write on the new Primary", |t| {
            let [p] = t.c.primaries()[..] else {
                return None;
            };
            Some((p, block_on(put(t, p, &key)).ok()?))
        });
        acked.push((key, rev));
        block_on(async {
            let mut c = t.client(new_primary).await;
            for (key, rev) in &acked {
                let r = c.get(key.as_str(), None).await.unwrap();
                assert_eq!(r.kvs()[0].mod_revision(), *rev, "{key} after {kind:?}");
            }
        });
        seen.insert(kind);
        // The victim comes back with its member id.
        t.start(victim);
        assert_eq!(agreed_members(&mut t, &all, 3), before);
        if seen.len() == 3 {
            return;
        }
    }
    panic!("not every kind of failover happened in {ROUNDS} rounds: {seen:?}");
}

/// A node that is neither the Elector nor the Primary.
fn bystander(t: &mut TestCluster) -> (usize, usize) {
    let (elector, primary) = t.settled();
    let node = (0..t.len())
        .find(|i| *i != elector && *i != primary)
        .expect("a node with no role");
    (node, elector)
}

#[test]
fn a_stopped_node_deregisters_and_a_silent_one_is_removed() {
    let _one = serial();
    let mut t = TestCluster::on_moto(3, |s| s.deregistration_timeout = "3s".into());
    t.start_all();
    let before = agreed_members(&mut t, &[0, 1, 2], 3);

    // SIGTERM: it exits cleanly, deregisters and removes its file.
    let (quiet, _) = bystander(&mut t);
    let status = t.c.terminate(quiet, Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}");
    assert!(t.c.nodes[quiet].logged("deregistered from the cluster"));
    let running: Vec<usize> = (0..3).filter(|i| *i != quiet).collect();
    let shrunk = agreed_members(&mut t, &running, 2);
    assert!(shrunk.iter().all(|m| m.0 != t.c.nodes[quiet].id));

    // It comes back with the same member id.
    t.start(quiet);
    assert_eq!(agreed_members(&mut t, &[0, 1, 2], 3), before);

    // SIGKILL: degraded, then removed once degraded for 3 s.
    let (silent, elector) = bystander(&mut t);
    t.c.kill(silent);
    let running: Vec<usize> = (0..3).filter(|i| *i != silent).collect();
    let shrunk = agreed_members(&mut t, &running, 2);
    assert!(shrunk.iter().all(|m| m.0 != t.c.nodes[silent].id));
    let metrics = t.c.metrics(elector).unwrap();
    assert!(
        metrics.contains("netsy_elector_auto_deregistrations_total 1"),
        "{metrics}"
    );
    // Back again, still with its member id.
    t.start(silent);
    assert_eq!(agreed_members(&mut t, &[0, 1, 2], 3), before);
}

#[test]
fn a_node_claiming_another_id_never_enters_the_map() {
    use netsy::grpc::{Channel, Code};
    use netsy::pb::netsy::{
        GetMemberListRequest, GetMemberListResponse, RegisterNodeRequest, RegisterNodeResponse,
    };
    let _one = serial();
    let mut t = TestCluster::on_moto(2, |_| {});
    t.start_all();
    let (elector, _) = t.settled();
    let certs = t.c.certs.clone();
    let peer_addr = t.c.nodes[elector].peer_addr();
    let other = t.c.nodes[1 - elector].id.clone();
    block_on(async {
        let config = netsy::tls::client_config_from_files(
            &certs.join("ca.crt"),
            &certs.join(format!("{other}/peer.crt")),
            &certs.join(format!("{other}/peer.key")),
        )
        .unwrap();
        let ch = Channel::connect_tls(&peer_addr, config, "127.0.0.1")
            .await
            .unwrap();
        let impostor = RegisterNodeRequest {
            node_id: "node-9".into(),
            client_advertise_address: "127.0.0.1:1".into(),
            peer_advertise_address: "127.0.0.1:2".into(),
        };
        let err = ch
            .unary::<_, RegisterNodeResponse>("/netsy.Elector/RegisterNode", &impostor)
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::PermissionDenied, "{err:?}");
        assert!(
            err.message.contains("does not match the peer certificate"),
            "{err:?}"
        );
        let list: GetMemberListResponse = ch
            .unary("/netsy.Elector/GetMemberList", &GetMemberListRequest {})
            .await
            .unwrap();
        assert!(list.members.iter().all(|m| m.node_id != "node-9"));
        assert_eq!(list.members.len(), 2);
    });
}

#[test]
fn a_node_whose_registration_changed_refuses_to_start_and_exits_after_a_pause() {
    let _one = serial();
    let mut t = TestCluster::on_fs(1, |_| {});
    let id = t.c.nodes[0].id.clone();
    // An earlier registration of this node id with other addresses.
    let other = format!(
        r#"{{"node_id":"{id}","client_advertise_address":"127.0.0.1:1","peer_advertise_address":"127.0.0.1:2"}}"#
    );
    block_on(t.bucket().store().put(
        &format!("nodes/{id}.json"),
        other.clone().into(),
        netsy::objstore::Condition::None,
    ))
    .unwrap();
    t.c.start(0).unwrap();
    let log = t.until("the node to exit", |t| {
        (!t.c.nodes[0].is_running()).then(|| t.c.nodes[0].log_text())
    });
    let refusal = format!(
        "discovery: node registration nodes/{id}.json already exists with different values; exiting in "
    );
    assert!(log.contains(&refusal), "{log}");
    // Nothing was changed in the bucket.
    let kept = block_on(t.bucket().store().get(&format!("nodes/{id}.json")))
        .unwrap()
        .data;
    assert_eq!(kept, other.as_bytes());
}
