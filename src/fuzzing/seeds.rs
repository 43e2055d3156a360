//! Valid inputs for every target, for a fuzzer to start from: mutations of
//! well-formed input get much further than random bytes.

use bytes::Bytes;

use super::etcd::{request, Kind};
use crate::datafile::{self, Compression, Kind as FileKind};
use crate::grpc::codec;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::request_op::Request;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{self as pb, Compare, RequestOp, TxnRequest};
use crate::store::{Record, Timestamp};

/// The seed inputs of target `name` (none for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "grpc_frames" => grpc(),
        "etcd_requests" => etcd(),
        "datafile" => datafile(),
        "config" => config(),
        "election_json" => election(),
        _ => Vec::new(),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn range(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// Kubernetes' optimistic update: put if the key is at `revision`, else
/// read it.
fn kubernetes_update(key: &str, revision: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: b(key),
            target: CompareTarget::Mod as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::ModRevision(revision)),
            ..Default::default()
        }],
        success: vec![op(Request::RequestPut(pb::PutRequest {
            prev_kv: true,
            ..put(key, "new")
        }))],
        failure: vec![op(Request::RequestRange(range(key, "")))],
    }
}

fn every_range_option() -> pb::RangeRequest {
    pb::RangeRequest {
        revision: 9,
        limit: 2,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Value as i32,
        min_mod_revision: 2,
        max_mod_revision: 12,
        min_create_revision: 1,
        max_create_revision: 11,
        ..range("a", "\0")
    }
}

fn nested_txn() -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: b("a"),
            range_end: b("z"),
            target: CompareTarget::Value as i32,
            result: CompareResult::Greater as i32,
            target_union: Some(TargetUnion::Value(b("0"))),
        }],
        success: vec![
            op(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b("foo/"),
                range_end: b("foo0"),
                prev_kv: true,
            })),
            op(Request::RequestTxn(TxnRequest {
                compare: vec![Compare {
                    key: b("d"),
                    target: CompareTarget::Lease as i32,
                    result: CompareResult::NotEqual as i32,
                    target_union: Some(TargetUnion::Lease(9)),
                    ..Default::default()
                }],
                success: vec![op(Request::RequestPut(put("n", "1")))],
                failure: vec![op(Request::RequestPut(put("n", "2")))],
            })),
            op(Request::RequestRange(range("a", "\0"))),
        ],
        failure: vec![op(Request::RequestPut(pb::PutRequest {
            key: b("a"),
            ignore_value: true,
            ignore_lease: true,
            ..Default::default()
        }))],
    }
}

fn watch(create: pb::WatchCreateRequest) -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }
}

fn grpc() -> Vec<Vec<u8>> {
    let with = |settings: u8, chunking: u8, frames: &[Bytes]| {
        let mut out = vec![settings, chunking];
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    };
    let text = |s: &str| [&[5, 1][..], s.as_bytes()].concat();
    vec![
        with(5, 3, &[codec::encode(&range("a", "b"))]),
        with(
            5,
            200,
            &[
                codec::encode(&put("k", "v")),
                codec::frame_bytes(b""),
                codec::encode(&kubernetes_update("k", 4)),
                codec::encode(&nested_txn()),
            ],
        ),
        with(
            4,
            7,
            &[codec::encode(&watch(pb::WatchCreateRequest {
                key: b("a"),
                range_end: b("\0"),
                start_revision: 3,
                filters: vec![1],
                prev_kv: true,
                ..Default::default()
            }))],
        ),
        with(0x0d, 1, &[Bytes::from_static(&[1, 0, 0, 0, 2, 0x78, 0x9c])]),
        with(3, 1, &[Bytes::from_static(&[0, 0, 0, 1, 0])]),
        with(5, 9, &[Bytes::from_static(&[0, 0, 0, 0, 9, 0x0a, 0x01])]),
        text("100m"),
        text("99999999H"),
        text("13\nnot%20found%3a%zz%"),
        text("/etcdserverpb.KV/Range"),
    ]
}

fn etcd() -> Vec<Vec<u8>> {
    let lease_grant = |id, ttl| pb::LeaseGrantRequest { id, ttl };
    vec![
        request(Kind::Range, &range("a", "")),
        request(Kind::Range, &every_range_option()),
        request(
            Kind::Range,
            &pb::RangeRequest {
                count_only: true,
                keys_only: true,
                limit: 1,
                ..range("\0", "\0")
            },
        ),
        [
            request(Kind::Put, &put("x", "1")),
            request(
                Kind::Put,
                &pb::PutRequest {
                    lease: 7,
                    prev_kv: true,
                    ..put("x", "2")
                },
            ),
            request(Kind::Range, &range("x", "")),
        ]
        .concat(),
        request(Kind::Txn, &kubernetes_update("a", 9)),
        request(Kind::Txn, &kubernetes_update("c", 4)),
        request(Kind::Txn, &nested_txn()),
        [
            request(
                Kind::DeleteRange,
                &pb::DeleteRangeRequest {
                    key: b("a"),
                    range_end: b("\0"),
                    prev_kv: true,
                },
            ),
            request(Kind::Put, &put("a", "back")),
            request(Kind::Compaction, &pb::CompactionRequest::default()),
        ]
        .concat(),
        [
            request(
                Kind::Compaction,
                &pb::CompactionRequest {
                    revision: 10,
                    ..Default::default()
                },
            ),
            request(
                Kind::Range,
                &pb::RangeRequest {
                    revision: 6,
                    ..range("a", "")
                },
            ),
        ]
        .concat(),
        [
            request(Kind::LeaseGrant, &lease_grant(0, 10)),
            request(Kind::LeaseGrant, &lease_grant(11, 1)),
            request(
                Kind::Put,
                &pb::PutRequest {
                    lease: 11,
                    ..put("leased", "v")
                },
            ),
            request(Kind::LeaseKeepAlive, &pb::LeaseKeepAliveRequest { id: 11 }),
            request(
                Kind::LeaseTimeToLive,
                &pb::LeaseTimeToLiveRequest { id: 7, keys: true },
            ),
            request(Kind::LeaseRevoke, &pb::LeaseRevokeRequest { id: 11 }),
            request(Kind::LeaseRevoke, &pb::LeaseRevokeRequest { id: 7 }),
            request(Kind::Range, &range("foo/", "foo0")),
        ]
        .concat(),
        [
            request(
                Kind::Watch,
                &watch(pb::WatchCreateRequest {
                    key: b("a"),
                    range_end: b("\0"),
                    start_revision: 5,
                    prev_kv: true,
                    filters: vec![0],
                    ..Default::default()
                }),
            ),
            request(Kind::Watch, &watch(pb::WatchCreateRequest::default())),
            request(
                Kind::Watch,
                &pb::WatchRequest {
                    request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
                        watch_id: 1,
                    })),
                },
            ),
        ]
        .concat(),
    ]
}

fn record(revision: i64, key: &str, value: Option<&str>) -> Record {
    Record {
        revision,
        key: b(key),
        created: revision < 3,
        deleted: value.is_none(),
        create_revision: revision.min(2),
        prev_revision: if revision < 3 { 0 } else { revision - 1 },
        version: i64::from(value.is_some()) * revision,
        lease: if key.starts_with('l') { 7 } else { 0 },
        dek: 0,
        value: value.map(b),
        created_at: Timestamp {
            seconds: 1_735_787_045,
            nanos: 123_456_789,
        },
        compacted_at: None,
        leader_id: "node-1".into(),
        replicated_at: None,
    }
}

fn datafile() -> Vec<Vec<u8>> {
    let mut compacted = record(2, "a", Some("1"));
    compacted.compacted_at = Some(Timestamp {
        seconds: 1_735_787_100,
        nanos: 0,
    });
    compacted.replicated_at = Some(Timestamp {
        seconds: -1,
        nanos: 999_999_999,
    });
    let small = [
        record(1, "_netsy", Some("")),
        compacted,
        record(3, "a", None),
        record(4, "leased", Some("v")),
    ];
    let big: Vec<Record> = (1..6)
        .map(|r| record(r, &format!("k{r}"), Some(&"v".repeat(1500))))
        .collect();
    let files = [
        (FileKind::Chunk, Compression::None, &small[1..2]),
        (FileKind::Chunk, Compression::None, &small[..]),
        (FileKind::Chunk, Compression::Zstd, &big[..]),
        (FileKind::Snapshot, Compression::None, &small[..]),
        (FileKind::Snapshot, Compression::Zstd, &small[..0]),
    ];
    let mut out: Vec<Vec<u8>> = files
        .iter()
        .filter_map(|(kind, compression, records)| {
            datafile::encode(*kind, *compression, "node-1", records).ok()
        })
        .collect();
    out.push(b"chunks/0001/0000000000000000001.netsy".to_vec());
    out.push(b"snapshots/0000000000000010000.netsy".to_vec());
    out
}

fn config() -> Vec<Vec<u8>> {
    [
        include_str!("../../deploy/config.jsonc"),
        include_str!("../../deploy/netsy.env.example"),
        r#"{"cluster_id": "demo", "storage": {"provider": "fs", "path": "bucket"}, "heartbeat_interval": "1s", "replication": {"quorum": 0}}"#,
        r#"{
  "cluster_id": "c", // trailing comments and commas
  "storage": {"bucket_name": "b", "class": "STANDARD_IA", /* block */},
  "heartbeat_interval": 1000000000,
  "elector": {"degradation_count": 3, "primary_prior_timeout": "1h30m0.5s"},
  "snapshot": {"cleanup_strategy": "list", "cleanup_batch_interval": "300us"},
  "replication": {"chunk_buffer": {"threshold_age_minutes": 1}},
  "storgae": {},
}"#,
        "NETSY_NODE_ID=node-1\nNETSY_BIND_CLIENT=[::1]:2378\nNETSY_BIND_HEALTH=\nNETSY_DATA_DIR=./data\n1.5µs\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn election() -> Vec<Vec<u8>> {
    let lock = r#"{"leaderID":"node-1","leaderAddr":"10.0.0.11:8443","lastUpdated":"2025-01-02T03:04:05.123456789Z"}"#;
    [
        lock.to_string(),
        r#"{"lastUpdated":"0001-01-01T00:00:00Z"}"#.to_string(),
        r#"{"leaderID":"n","lastUpdated":"2025-01-02T04:04:05.5+01:00"}"#.to_string(),
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{lock}", lock.len()),
        "HTTP/1.1 404 Not Found\r\n\r\n".to_string(),
        r#"{"node_id":"node-1","client_advertise_address":"10.0.0.11:2378","peer_advertise_address":"10.0.0.11:2381"}"#.to_string(),
        r#"{"cluster_id":"demo","members":{"node-1":1,"node-2":2,"node-3":7}}"#.to_string(),
        r#"{"cluster_id":"demo","members":{}}"#.to_string(),
        r#"{"id":26957,"ttl":60}"#.to_string(),
        r#"{"id":-1,"ttl":9000000000}"#.to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
