//! Durability: every write acknowledged before a SIGKILL is there after a
//! restart, with its revision.

use etcd_client::GetOptions;

use crate::support::Netsy;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let mut acked = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = n.client().await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25 {
                let key = format!("/k/{w}/{i}");
                let r = c.put(key.clone(), format!("v{i}"), None).await.unwrap();
                mine.push((key, r.header().unwrap().revision()));
            }
            mine
        }));
    }
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    n.kill9();

    let n = Netsy::start_dev(dir.path());
    let mut c = n.client().await;
    let all = c
        .get("/k/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.count(), acked.len() as i64);
    assert_eq!(
        all.header().unwrap().revision(),
        1 + acked.len() as i64,
        "revisions are contiguous"
    );
    for (key, rev) in &acked {
        let got = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), *rev, "{key}");
    }
    let next = c.put("after", "restart", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), 2 + acked.len() as i64);
}
