//! The gRPC layer's parsing of what a client sends: message framing (the
//! decoder a request body goes through), the request messages themselves,
//! and the header values read from the wire (`grpc-timeout`, status and
//! message trailers, the method path).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use prost::Message;

use crate::grpc::codec::{self, FrameDecoder, PREFIX_LEN};
use crate::grpc::status::{percent_decode, percent_encode};
use crate::grpc::{timeout, Code, Router, Status};
use crate::pb::etcdserverpb as pb;

/// Message size limits to decode under: none fit, tiny, the server's own.
const MAX_LENS: [usize; 6] = [0, 1, 5, 64, 4096, 4 * 1024 * 1024];
const ENCODINGS: [Option<&str>; 3] = [None, Some("identity"), Some("gzip")];

/// Input: a settings byte (size limit, announced encoding), a byte that
/// shapes how the stream is cut into chunks, then the request body.
pub fn grpc_frames(data: &[u8]) {
    let [settings, chunking, stream @ ..] = data else {
        return;
    };
    let max = MAX_LENS[usize::from(settings & 7) % MAX_LENS.len()];
    let encoding = ENCODINGS[usize::from(settings >> 3) % ENCODINGS.len()];
    let whole = decode(stream, max, encoding, &mut |_| stream.len());
    let mut state = u32::from(*chunking) | 1;
    let chunked = decode(stream, max, encoding, &mut |_| {
        // Chunk sizes from 1 to 16, as h2 DATA frames might cut a body.
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) as usize % 16 + 1
    });
    assert_eq!(chunked, whole, "chunking changed what was decoded");
    let expected = reference(stream, max, encoding);
    assert_eq!(whole.messages, expected.messages);
    assert_eq!(whole.partial, expected.partial);
    assert_eq!(
        whole.error.as_ref().map(|s| s.code),
        expected.error,
        "{whole:?}"
    );
    for message in &whole.messages {
        requests(message);
    }
    headers(stream);
}

#[derive(Debug, Default, PartialEq)]
struct Decoded {
    messages: Vec<Bytes>,
    error: Option<Status>,
    /// A message was begun but not finished.
    partial: bool,
}

/// What the server's decoder makes of `stream` arriving in chunks.
fn decode(
    stream: &[u8],
    max: usize,
    encoding: Option<&str>,
    chunk_len: &mut dyn FnMut(usize) -> usize,
) -> Decoded {
    let mut decoder = FrameDecoder::new(max, encoding.map(str::to_string));
    let mut out = Decoded::default();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(chunk_len(rest.len()).clamp(1, rest.len()));
        rest = after;
        decoder.push(Bytes::copy_from_slice(chunk));
        loop {
            match decoder.next_message() {
                Ok(Some(m)) => out.messages.push(m),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out.partial = !decoder.is_empty();
    out
}

/// The framing rule written out plainly: flag 0, a 4-byte big-endian
/// length, at most `max` bytes of message.
struct Reference {
    messages: Vec<Bytes>,
    error: Option<Code>,
    partial: bool,
}

fn reference(stream: &[u8], max: usize, encoding: Option<&str>) -> Reference {
    let mut out = Reference {
        messages: Vec::new(),
        error: None,
        partial: false,
    };
    let mut rest = stream;
    while let Some((prefix, body)) = rest.split_first_chunk::<PREFIX_LEN>() {
        let [flag, len @ ..] = *prefix;
        let len = u32::from_be_bytes(len) as usize;
        if flag != 0 {
            // Compressed (no decompressor is installed) or an unknown flag.
            out.error = Some(match (flag, encoding) {
                (1, Some(e)) if e != "identity" => Code::Unimplemented,
                _ => Code::Internal,
            });
            return out;
        }
        if len > max {
            out.error = Some(Code::ResourceExhausted);
            return out;
        }
        let Some(message) = body.get(..len) else {
            out.partial = true;
            return out;
        };
        out.messages.push(Bytes::copy_from_slice(message));
        rest = &body[len..];
    }
    out.partial = !rest.is_empty();
    out
}

/// Decodes a message as every request the services take; whatever decodes
/// must encode, frame and decode back the same.
fn requests(message: &Bytes) {
    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &Bytes) {
        let Ok(request) = codec::decode::<M>(message.clone(), "request") else {
            return;
        };
        let mut decoder = FrameDecoder::new(usize::MAX, None);
        decoder.push(codec::encode(&request));
        let framed = decoder.next_message();
        let again = framed
            .ok()
            .flatten()
            .map(|bytes| codec::decode::<M>(bytes, "request"));
        assert_eq!(again, Some(Ok(request)), "re-encoded request");
        assert!(decoder.is_empty());
    }
    round_trip::<pb::RangeRequest>(message);
    round_trip::<pb::PutRequest>(message);
    round_trip::<pb::DeleteRangeRequest>(message);
    round_trip::<pb::TxnRequest>(message);
    round_trip::<pb::CompactionRequest>(message);
    round_trip::<pb::WatchRequest>(message);
    round_trip::<pb::LeaseGrantRequest>(message);
    round_trip::<pb::LeaseRevokeRequest>(message);
    round_trip::<pb::LeaseKeepAliveRequest>(message);
    round_trip::<pb::LeaseTimeToLiveRequest>(message);
    round_trip::<pb::LeaseLeasesRequest>(message);
    round_trip::<pb::MemberListRequest>(message);
    round_trip::<pb::StatusRequest>(message);
    round_trip::<pb::AlarmRequest>(message);
    round_trip::<pb::HashKvRequest>(message);
}

/// grpc-message decoding as the gRPC spec has it: `%` and two hex digits
/// is a byte, anything else is kept as it is.
fn strict_percent_decode(raw: &[u8]) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&first, after)) = rest.split_first() {
        if let [b'%', hi, lo, ..] = rest {
            if let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) {
                out.push((hi * 16 + lo) as u8);
                rest = &rest[3..];
                continue;
            }
        }
        out.push(first);
        rest = after;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The same bytes as the header values a request or answer carries.
fn headers(stream: &[u8]) {
    let text = String::from_utf8_lossy(stream);
    if let Some(d) = timeout::parse(&text) {
        // What we send for a deadline reads back no shorter.
        let back = timeout::parse(&timeout::format(d));
        assert!(back.is_some_and(|b| b >= d), "{d:?} came back as {back:?}");
    }
    let message = percent_decode(stream);
    assert_eq!(message, strict_percent_decode(stream));
    assert_eq!(percent_decode(percent_encode(&message).as_bytes()), message);

    let (code, rest) = match stream.iter().position(|b| *b == b'\n') {
        Some(at) => (&stream[..at], &stream[at + 1..]),
        None => (stream, &[][..]),
    };
    let mut trailers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(code) {
        trailers.insert("grpc-status", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(rest) {
        trailers.insert("grpc-message", v);
    }
    if let Some(status) = Status::from_headers(&trailers) {
        // A status read from trailers is written and read back the same.
        let mut written = HeaderMap::new();
        status.write_to(&mut written);
        assert_eq!(Status::from_headers(&written), Some(status));
    }

    let mut router = Router::new();
    router.add_unimplemented("etcdserverpb.KV", &["Range", "Put"]);
    let _ = router.lookup(&text);
}
