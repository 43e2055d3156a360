//! The S3 fault proxy in front of moto: each mode seen by a plain HTTP
//! client, then a node whose bucket is behind the proxy through an outage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netsy::launch::faults::s3::{S3Mode, S3Proxy};

use crate::support::{
    assert_metric_line, create_bucket, poll_async, start_moto, Bucket, Netsy, NetsyOptions,
};

/// Moto answers 403 to anonymous reads; it checks no signature, so a
/// made-up one does.
const AUTH: &str = "Authorization: AWS4-HMAC-SHA256 \
    Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n\
    x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n";

/// One HTTP/1.1 connection, kept alive between requests.
struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

/// An answer: status and body; None when the connection closed or was
/// reset without one.
type Answer = Option<(u16, String)>;

impl Http {
    fn connect(addr: &str) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Http {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n{AUTH}",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body.as_bytes()).is_err()
        {
            return None;
        }
        self.read_answer(method == "HEAD")
    }

    fn read_answer(&mut self, head_only: bool) -> Answer {
        let mut status_line = String::new();
        match self.reader.read_line(&mut status_line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok()?;
                }
                assert!(
                    !(k.eq_ignore_ascii_case("transfer-encoding")),
                    "chunked answers are not expected from moto"
                );
            }
        }
        let mut body = vec![0; if head_only { 0 } else { length }];
        self.reader.read_exact(&mut body).ok()?;
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One request on a fresh connection.
fn once(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    Http::connect(addr).send(method, path, headers, body)
}

fn status(answer: &Answer) -> Option<u16> {
    answer.as_ref().map(|a| a.0)
}

#[test]
fn every_mode_does_what_it_says() {
    let moto = start_moto();
    create_bucket(&moto, "modes");
    let proxy = S3Proxy::in_front_of(&moto).unwrap();
    let faults = proxy.faults();
    let addr = proxy.addr().to_string();
    assert_eq!(proxy.endpoint(), format!("http://{addr}"));

    // Pass: requests reach moto and come back.
    assert_eq!(
        status(&once(&addr, "PUT", "/modes/k", &[], "hello")),
        Some(200)
    );
    let got = once(&addr, "GET", "/modes/k", &[], "").unwrap();
    assert_eq!(got, (200, "hello".to_string()));
    let counts = faults.counts();
    assert_eq!((counts.pass, counts.injected), (2, 0));

    // Latency: the answer comes, later.
    faults.set(S3Mode::Latency(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(once(&addr, "GET", "/modes/k", &[], "").unwrap().1, "hello");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(faults.counts().latency, 1);

    // 503 SlowDown for all, then 500 for every second request.
    faults.set(S3Mode::slow_down());
    let (code, body) = once(&addr, "GET", "/modes/k", &[], "").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    faults.set(S3Mode::Error {
        status: 500,
        fraction: 0.5,
    });
    let codes: Vec<u16> = (0..6)
        .map(|_| status(&once(&addr, "GET", "/modes/k", &[], "")).unwrap())
        .collect();
    assert_eq!(codes, [200, 500, 200, 500, 200, 500]);
    assert_eq!(faults.counts().error, 7);

    // Dropped: the connection closes without an answer, also on a
    // connection that had answers before.
    faults.set(S3Mode::Pass);
    let mut kept = Http::connect(&addr);
    assert_eq!(status(&kept.send("GET", "/modes/k", &[], "")), Some(200));
    faults.set(S3Mode::Drop { fraction: 1.0 });
    assert_eq!(kept.send("GET", "/modes/k", &[], ""), None);
    assert_eq!(once(&addr, "GET", "/modes/k", &[], ""), None);
    faults.set(S3Mode::Drop { fraction: 0.5 });
    let answered = (0..4)
        .filter(|_| once(&addr, "GET", "/modes/k", &[], "").is_some())
        .count();
    assert_eq!(answered, 2);

    // Outage: open connections lose their next request, new ones are
    // reset at once.
    faults.set(S3Mode::Pass);
    let mut kept = Http::connect(&addr);
    assert_eq!(status(&kept.send("GET", "/modes/k", &[], "")), Some(200));
    faults.set(S3Mode::Outage);
    assert_eq!(kept.send("GET", "/modes/k", &[], ""), None);
    let mut fresh = TcpStream::connect(&addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ =
        fresh.write_all(format!("GET /modes/k HTTP/1.1\r\nHost: {addr}\r\n{AUTH}\r\n").as_bytes());
    let mut buf = [0u8; 64];
    match fresh.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("an answer during the outage: {:?}", &buf[..n]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let counts = faults.counts();
    assert!(counts.reset_connections >= 1, "{counts:?}");
    assert_eq!(counts.outage, 1, "{counts:?}");

    // Lost races: conditional PUTs get 412, others go through.
    faults.set(S3Mode::PreconditionFailed);
    let (code, body) = once(&addr, "PUT", "/modes/new", &[("If-None-Match", "*")], "x").unwrap();
    assert_eq!(code, 412);
    assert!(body.contains("<Code>PreconditionFailed</Code>"), "{body}");
    assert_eq!(
        status(&once(
            &addr,
            "PUT",
            "/modes/k",
            &[("If-Match", "\"abc\"")],
            "x"
        )),
        Some(412)
    );
    assert_eq!(
        status(&once(&addr, "PUT", "/modes/plain", &[], "y")),
        Some(200)
    );
    assert_eq!(
        status(&once(&addr, "GET", "/modes/new", &[], "")),
        Some(404),
        "the 412 never reached moto"
    );

    // Faults can be limited to some keys.
    faults.set(S3Mode::slow_down());
    faults.only(Some("/chunks/"));
    assert_eq!(
        status(&once(&addr, "PUT", "/modes/other", &[], "z")),
        Some(200)
    );
    assert_eq!(
        status(&once(&addr, "PUT", "/modes/chunks/0001/x.netsy", &[], "z")),
        Some(503)
    );

    let counts = faults.counts();
    assert_eq!(counts.upstream_failures, 0, "{counts:?}");
    assert!(counts.requests() >= 25, "{counts:?}");
}

/// A dev node whose bucket is behind the proxy: in an outage a write fails
/// with a clear error (never a false success) and the node stops taking
/// writes; when storage is back, writes resume on their own, and the
/// bucket holds exactly what the node serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_stops_and_resumes_writes_across_an_s3_outage() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let moto = Arc::new(start_moto());
    let bucket = Bucket::s3(&moto, "outage");
    let proxy = S3Proxy::in_front_of(&moto).unwrap();
    let faults = proxy.faults();
    let node = Netsy::start(
        &base.join("a"),
        NetsyOptions {
            config: Some(bucket.config(base, "")),
            env: proxy.env(),
            production: false,
        },
    );
    let mut c = node.client().await;
    c.put("before", "1", None).await.unwrap();
    assert!(faults.counts().pass > 0, "the node uses the proxy");

    faults.set(S3Mode::Outage);
    let err = c.put("during", "x", None).await.unwrap_err();
    assert!(err.to_string().contains("object storage"), "{err}");
    let err = c.put("during2", "x", None).await.unwrap_err();
    assert!(err.to_string().contains("not accepting writes"), "{err}");
    assert_eq!(c.get("before", None).await.unwrap().kvs()[0].value(), b"1");
    assert_metric_line(
        &node.health_addr,
        "netsy_retries_total{operation=\"object_storage_write\"} 1",
    );
    // The client's pooled connections lost their requests, new ones were
    // reset.
    let counts = faults.counts();
    assert!(counts.outage + counts.reset_connections > 0, "{counts:?}");

    faults.set(S3Mode::Pass);
    poll_async("writes to resume", || {
        let mut c = c.clone();
        async move { c.put("after", "2", None).await.ok() }
    })
    .await;
    let live = crate::fingerprint(&mut c).await;
    assert!(live.iter().any(|l| l.starts_with("after = 2")), "{live:?}");
    // The failed write's chunk was kept being written until the bucket
    // took it (object-storage.md), so it is there although its client got
    // an error; the write the closed gate refused never got a revision.
    assert!(live.iter().any(|l| l.starts_with("during = x")), "{live:?}");
    assert!(!live.iter().any(|l| l.starts_with("during2")), "{live:?}");

    // The bucket, read directly, agrees.
    drop(node);
    let fresh = Netsy::on_bucket(&base.join("b"), &bucket, base, "");
    let mut c2 = fresh.client().await;
    assert_eq!(crate::fingerprint(&mut c2).await, live);
}
