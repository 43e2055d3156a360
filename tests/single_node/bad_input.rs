//! Malformed and unsupported requests get the right gRPC status and change
//! nothing: every test checks that the revision did not move.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use netsy::grpc::{codec, Channel, Code, Status};
use netsy::pb::etcdserverpb::request_op::Request;
use netsy::pb::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};

use crate::support::Netsy;

const RANGE: &str = "/etcdserverpb.KV/Range";
const PUT: &str = "/etcdserverpb.KV/Put";
const TXN: &str = "/etcdserverpb.KV/Txn";

async fn revision(ch: &Channel) -> i64 {
    let r: RangeResponse = ch
        .unary(
            RANGE,
            &RangeRequest {
                key: "\0".into(),
                range_end: "\0".into(),
                count_only: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    r.header.unwrap().revision
}

fn expect(result: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
    match result {
        Err(s) => {
            assert_eq!(s.code, code, "{s}");
            assert!(
                s.message.contains(message),
                "expected {message:?} in {:?}",
                s.message
            );
        }
        Ok(v) => panic!("expected {code:?} {message:?}, got a response {v:?}"),
    }
}

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.to_string().into(),
            value: "v".into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_get_etcd_statuses_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let ch = n.channel().await;
    let _: netsy::pb::etcdserverpb::PutResponse = ch
        .unary(
            PUT,
            &PutRequest {
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let before = revision(&ch).await;

    expect(
        ch.unary::<_, RangeResponse>(RANGE, &RangeRequest::default())
            .await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        ch.unary::<_, netsy::pb::etcdserverpb::PutResponse>(PUT, &PutRequest::default())
            .await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let same_key_twice = TxnRequest {
        success: vec![put_op("a"), put_op("a")],
        ..Default::default()
    };
    expect(
        ch.unary::<_, TxnResponse>(TXN, &same_key_twice).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let nested_duplicate = TxnRequest {
        success: vec![
            put_op("a"),
            RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![put_op("a")],
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    expect(
        ch.unary::<_, TxnResponse>(TXN, &nested_duplicate).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let empty_op = TxnRequest {
        success: vec![RequestOp { request: None }],
        ..Default::default()
    };
    expect(
        ch.unary::<_, TxnResponse>(TXN, &empty_op).await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    expect(
        ch.unary::<_, netsy::pb::etcdserverpb::PutResponse>(
            PUT,
            &PutRequest {
                key: "k".into(),
                lease: 42,
                ..Default::default()
            },
        )
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    expect(
        ch.unary::<_, RangeResponse>(
            RANGE,
            &RangeRequest {
                key: "k".into(),
                revision: before + 10,
                ..Default::default()
            },
        )
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_eq!(revision(&ch).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_errors_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start_dev(dir.path());
    let ch = n.channel().await;
    let before = revision(&ch).await;

    expect(
        ch.unary::<_, RangeResponse>("/etcdserverpb.KV/Frobnicate", &RangeRequest::default())
            .await,
        Code::Unimplemented,
        "unknown method Frobnicate for service etcdserverpb.KV",
    );
    expect(
        ch.unary::<_, RangeResponse>("/nope.Service/Call", &RangeRequest::default())
            .await,
        Code::Unimplemented,
        "unknown service nope.Service",
    );
    expect(
        ch.unary::<_, RangeResponse>(
            "/etcdserverpb.Maintenance/MoveLeader",
            &RangeRequest::default(),
        )
        .await,
        Code::Unimplemented,
        "method MoveLeader not implemented",
    );

    // Malformed protobuf: a field header promising more bytes than follow.
    let garbage = codec::frame_bytes(&[0x0a, 0xff, 0x01, 0x41]);
    let raw = ch.raw(PUT, HeaderMap::new(), garbage, true).await.unwrap();
    let s = raw.status().expect("a grpc status");
    assert_eq!(s.code, Code::Internal, "{s}");
    assert!(
        s.message.starts_with("grpc: error unmarshalling request"),
        "{s}"
    );

    // Wrong content-type: HTTP 415 with a gRPC status, as grpc-go answers.
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body = codec::encode(&PutRequest {
        key: "x".into(),
        value: "v".into(),
        ..Default::default()
    });
    let raw = ch.raw(PUT, headers, body, true).await.unwrap();
    assert_eq!(raw.http_status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let s = raw.status().expect("a grpc status");
    assert_eq!(s.code, Code::InvalidArgument);
    assert!(
        s.message
            .contains("invalid gRPC request content-type \"application/json\""),
        "{s}"
    );

    // A compressed message without a negotiated encoding.
    let mut compressed = codec::encode(&RangeRequest {
        key: "k".into(),
        ..Default::default()
    })
    .to_vec();
    compressed[0] = 1;
    let raw = ch
        .raw(RANGE, HeaderMap::new(), Bytes::from(compressed), true)
        .await
        .unwrap();
    assert_eq!(raw.status().unwrap().code, Code::Internal);

    // Oversize: the prefix announces 64 MiB; only 1 KiB is ever sent, and the
    // answer must come without the server waiting for the rest.
    let mut prefix = vec![0u8, 0x04, 0, 0, 0];
    prefix.extend_from_slice(&[0u8; 1024]);
    let raw = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ch.raw(PUT, HeaderMap::new(), Bytes::from(prefix), false),
    )
    .await
    .expect("refused without reading the whole message")
    .unwrap();
    let s = raw.status().unwrap();
    assert_eq!(s.code, Code::ResourceExhausted, "{s}");
    assert!(s.message.contains("larger than max"), "{s}");

    // Under the transport limit but above etcd's request limit.
    let big = PutRequest {
        key: "big".into(),
        value: vec![b'x'; 1536 * 1024].into(),
        ..Default::default()
    };
    expect(
        ch.unary::<_, netsy::pb::etcdserverpb::PutResponse>(PUT, &big)
            .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );

    // The connection still serves, and nothing was written.
    assert_eq!(revision(&ch).await, before);
}
