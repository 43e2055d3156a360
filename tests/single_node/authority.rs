//! Whatever `:authority` a client sends, its request is answered, as etcd
//! (Go's HTTP/2 server) answers it: etcdctl 3.4 sends the endpoint with its
//! scheme, etcd's Go client 3.5.0 sends `#initially=[…]`, and unix-socket
//! clients send a path. The frames are written by hand, since a conforming
//! HTTP/2 client cannot send such values.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{tool, Netsy};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal header field, not indexed, plain (not Huffman) strings.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// What the server did with a unary Range request sent with `authority`.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A response message arrived on the stream.
    Message,
    /// The stream was reset (RST_STREAM) with this error code.
    Reset(u32),
    /// The connection went away (GOAWAY or closed).
    Gone,
}

fn range_with_authority(addr: &str, authority: &str) -> Answer {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut headers = Vec::new();
    literal(&mut headers, ":method", "POST");
    literal(&mut headers, ":scheme", "http");
    literal(&mut headers, ":path", "/etcdserverpb.KV/Range");
    literal(&mut headers, ":authority", authority);
    literal(&mut headers, "content-type", "application/grpc");
    literal(&mut headers, "te", "trailers");
    // RangeRequest { key: "a" } in a gRPC message frame.
    let message = [0, 0, 0, 0, 3, 0x0a, 0x01, b'a'];
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x4, 1, &headers));
    out.extend(frame(0, 0x1, 1, &message));
    conn.write_all(&out).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut head = [0u8; 9];
        if conn.read_exact(&mut head).is_err() {
            return Answer::Gone;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).is_err() {
            return Answer::Gone;
        }
        match kind {
            0 if stream == 1 && !payload.is_empty() => return Answer::Message,
            3 if stream == 1 => {
                return Answer::Reset(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            // Acknowledge the server's settings so it keeps talking.
            4 if flags & 0x1 == 0 => conn.write_all(&frame(4, 0x1, 0, &[])).unwrap(),
            7 => return Answer::Gone,
            _ => {}
        }
    }
    panic!("no answer for :authority {authority:?} in time");
}

#[test]
fn any_authority_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let addr = &n.client_addr;
    for authority in [
        addr.to_string(),
        format!("http://{addr}"),
        format!("#initially=[{addr};127.0.0.1:1]"),
        "/var/run/netsy/etcd.sock".to_string(),
        String::new(),
    ] {
        assert_eq!(
            range_with_authority(addr, &authority),
            Answer::Message,
            ":authority {authority:?}"
        );
    }
}

#[test]
fn etcdctl_34_with_a_scheme_in_the_endpoint_gets_endpoint_status() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let endpoint = format!("http://{}", n.client_addr);
    let out = std::process::Command::new(tool("etcdctl34"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "endpoint", "status", "-w", "json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"version\":\"3.5.21\""), "{stdout}");
}
