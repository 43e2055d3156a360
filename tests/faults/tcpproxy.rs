//! The TCP fault proxy: each mode against an echo server that records
//! what reached it, then between the nodes of a cluster.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netsy::launch::faults::tcp::{Direction, TcpMode, TcpProxy};

use crate::support::cluster::TestCluster;
use crate::support::poll;

/// Echoes every byte back and keeps a copy of all it received.
struct Echo {
    addr: String,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let copy = received.clone();
        // Lives until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let copy = copy.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        copy.lock().unwrap().extend_from_slice(&buf[..n]);
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo { addr, received }
    }

    fn got(&self, text: &str) -> bool {
        String::from_utf8_lossy(&self.received.lock().unwrap()).contains(text)
    }
}

fn connect(addr: &str, read_timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Reads exactly `n` bytes within the stream's read timeout.
fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The connection was reset or closed: a read gets an error or the end.
fn is_cut(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

/// Nothing arrives within `quiet`: a bounded check that bytes are held.
fn nothing_arrives(s: &mut TcpStream, quiet: Duration) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected nothing to arrive, got {other:?}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
}

#[test]
fn every_mode_does_what_it_says() {
    let echo = Echo::start();
    let proxy = TcpProxy::start(&echo.addr).unwrap();
    let faults = proxy.faults();
    let addr = proxy.addr();
    let long = Duration::from_secs(10);

    // Pass.
    let mut s = connect(&addr, long);
    s.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut s, 4).unwrap(), "ping");

    // Delay: each way waits, so the round trip takes at least twice.
    faults.set(TcpMode::Delay(Duration::from_millis(200)));
    let started = Instant::now();
    s.write_all(b"slow").unwrap();
    assert_eq!(read_n(&mut s, 4).unwrap(), "slow");
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Blackhole: nothing reaches the server or comes back; the bytes are
    // held, not lost, and flow once the link heals.
    faults.set(TcpMode::Blackhole);
    s.write_all(b"held").unwrap();
    nothing_arrives(&mut s, Duration::from_millis(300));
    assert!(!echo.got("held"));
    let mut during = connect(&addr, long);
    during.write_all(b"newc").unwrap();
    nothing_arrives(&mut during, Duration::from_millis(300));
    faults.set(TcpMode::Pass);
    assert_eq!(read_n(&mut s, 4).unwrap(), "held");
    assert_eq!(read_n(&mut during, 4).unwrap(), "newc");

    // One way: the server gets the bytes, the echo does not come back
    // until both ways flow again.
    faults.set(TcpMode::OneWay(Direction::ToTarget));
    s.write_all(b"half").unwrap();
    poll("the server to get the bytes", || {
        echo.got("half").then_some(())
    });
    nothing_arrives(&mut s, Duration::from_millis(300));
    faults.set(TcpMode::Pass);
    assert_eq!(read_n(&mut s, 4).unwrap(), "half");

    // A byte is counted once its write returned, which may be just after
    // the client read it.
    poll("the bytes to be counted", || {
        let c = faults.counts();
        (c.bytes_to_target == 20 && c.bytes_from_target == 20).then_some(())
    });
    let counts = faults.counts();
    assert_eq!((counts.accepted, counts.open), (2, 2));

    // Reset: open connections now, new ones at once.
    faults.set(TcpMode::Reset);
    assert!(is_cut(&mut s));
    assert!(is_cut(&mut during));
    let mut refused = connect(&addr, long);
    let _ = refused.write_all(b"x");
    assert!(is_cut(&mut refused));
    faults.set(TcpMode::Pass);
    poll("the reset connections to close", || {
        (faults.counts().open == 0).then_some(())
    });
    assert_eq!(faults.counts().reset, 3);

    // A reset of the open connections that keeps the mode.
    let mut old = connect(&addr, long);
    old.write_all(b"old!").unwrap();
    assert_eq!(read_n(&mut old, 4).unwrap(), "old!");
    faults.reset_now();
    assert!(is_cut(&mut old));
    let mut new = connect(&addr, long);
    new.write_all(b"new!").unwrap();
    assert_eq!(read_n(&mut new, 4).unwrap(), "new!");
}

#[test]
fn a_target_that_is_down_resets_the_client() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = closed.local_addr().unwrap().to_string();
    drop(closed);
    let proxy = TcpProxy::start(&target).unwrap();
    let mut s = connect(&proxy.addr(), Duration::from_secs(10));
    assert!(is_cut(&mut s));
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Serializable reads answer from the node's own data: how far it is.
async fn revision_on(t: &TestCluster, i: usize) -> Option<i64> {
    let mut c = t.client(i).await;
    let options = etcd_client::GetOptions::new()
        .with_serializable()
        .with_count_only();
    Some(c.get("/", Some(options)).await.ok()?.header()?.revision())
}

/// The route node `i`'s last batch took (`netsy_primary_write_path`).
fn write_path(t: &TestCluster, i: usize) -> &'static str {
    let metrics = t.c.metrics(i).unwrap_or_default();
    ["quorum", "sync"]
        .into_iter()
        .find(|p| {
            metrics
                .lines()
                .any(|l| l == format!("netsy_primary_write_path{{path=\"{p}\"}} 1"))
        })
        .unwrap_or("none")
}

/// Every peer API behind a proxy. A replica dials its Primary's advertised
/// peer address, so blackholing the Primary's proxy cuts every replica's
/// stream at once (a proxy sees who it is in front of, not who dials):
/// the Primary keeps acknowledging writes, through the bucket once the
/// receipts stop, and the replicas catch up when the link heals.
#[test]
fn a_primary_cut_off_from_its_replicas_keeps_taking_writes() {
    let mut t = TestCluster::on_fs(3, |_| {});
    let proxies: Vec<_> = (0..3).map(|i| t.c.proxy_peer(i).unwrap()).collect();
    for (i, n) in t.c.nodes.iter().enumerate() {
        assert_ne!(n.advertised_peer_addr(), n.peer_addr(), "node {i}");
    }
    t.start_all();
    let (_, primary) = t.settled();
    let first = t.until("the Primary writing on the quorum path", |t| {
        let revision = block_on(async {
            let mut c = t.client(primary).await;
            c.put("/cut/first", "x", None)
                .await
                .ok()?
                .header()
                .map(|h| h.revision())
        })?;
        (write_path(t, primary) == "quorum").then_some(revision)
    });
    for (i, proxy) in proxies.iter().enumerate() {
        assert!(proxy.counts().accepted > 0, "node {i}'s proxy is used");
    }

    proxies[primary].set(TcpMode::Blackhole);
    let last = block_on(async {
        let mut c = t.client(primary).await;
        let mut last = first;
        for n in 0..20 {
            let put = tokio::time::timeout(
                Duration::from_secs(20),
                c.put(format!("/cut/{n}"), "v", None),
            )
            .await
            .expect("a write is answered while the replicas are cut off")
            .expect("a write is acknowledged while the replicas are cut off");
            last = put.header().unwrap().revision();
        }
        last
    });
    assert!(last >= first + 20);
    for i in (0..3).filter(|i| *i != primary) {
        let revision = block_on(revision_on(&t, i)).unwrap();
        assert!(revision < last, "node {i} got the writes through the cut");
    }
    assert_eq!(write_path(&t, primary), "sync", "the receipts stopped");

    proxies[primary].set(TcpMode::Pass);
    for i in (0..3).filter(|i| *i != primary) {
        t.until(&format!("node {i} to catch up to {last}"), |t| {
            (block_on(revision_on(t, i))? >= last).then_some(())
        });
    }
}
