//! etcd requests through the services' own checks and conversions, then
//! evaluated by the write path's pure core against a small store with
//! history, leases and a compaction, exactly as a batch of group commit
//! would be, without committing anything.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::etcd::{convert, errors, kv, range, watch};
use crate::grpc::codec;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{self as pb, RangeResponse};
use crate::primary::core::{Command, Reply, WriteCore, MAX_LEASE_TTL, MIN_LEASE_TTL};
use crate::primary::lessor::{LeaseIds, Lessor};
use crate::primary::txn::{Put, Txn};
use crate::primary::view::BatchView;
use crate::primary::WriteError;
use crate::store::{Batch, KeyRange, Record, Store, Timestamp};
use crate::watch::events_from_store;

/// Requests taken from one input; more only repeat what these cover.
const MAX_REQUESTS: usize = 16;

/// The clock every record of the fixture and of the fuzzed batches gets.
const NOW: Timestamp = Timestamp {
    seconds: 1_700_000_000,
    nanos: 1,
};

/// Request kinds, by the first byte of each request in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    Range = 0,
    Put = 1,
    DeleteRange = 2,
    Txn = 3,
    Compaction = 4,
    LeaseGrant = 5,
    LeaseRevoke = 6,
    LeaseKeepAlive = 7,
    LeaseTimeToLive = 8,
    Watch = 9,
}

const KINDS: [Kind; 10] = [
    Kind::Range,
    Kind::Put,
    Kind::DeleteRange,
    Kind::Txn,
    Kind::Compaction,
    Kind::LeaseGrant,
    Kind::LeaseRevoke,
    Kind::LeaseKeepAlive,
    Kind::LeaseTimeToLive,
    Kind::Watch,
];

/// One request of an input: its kind byte, its length (2 bytes, little
/// endian) and the protobuf message; a short last one takes what is left.
pub(super) fn request(kind: Kind, message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = vec![kind as u8];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Input: requests as [`request`] writes them, evaluated as one batch.
pub fn etcd_requests(data: &[u8]) {
    let fixture = fixture();
    let store = &fixture.store;
    let mut lessor = Lessor::default();
    let started = base_instant();
    lessor.take_over(store.leases().into_iter().map(|l| (l.id, l.ttl)), started);
    let mut lease_ids = LeaseIds::new(1);
    let mut commands = Vec::new();
    let mut rest = data;
    while commands.len() < MAX_REQUESTS {
        let [kind, lo, hi, after @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(after.len());
        let (body, next) = after.split_at(len);
        rest = next;
        let kind = KINDS[usize::from(*kind) % KINDS.len()];
        let body = Bytes::copy_from_slice(body);
        let later = started + Duration::from_millis(commands.len() as u64 * 700);
        match kind {
            Kind::Range => range_request(store, body),
            Kind::Put => commands.push(put(body)),
            Kind::DeleteRange => commands.push(delete(body)),
            Kind::Txn => commands.push(txn(body)),
            Kind::Compaction => commands.push(
                decode::<pb::CompactionRequest>(body)
                    .map(|c| Command::Compact {
                        revision: c.revision,
                    })
                    .ok(),
            ),
            Kind::LeaseGrant => {
                commands.push(lease_grant(body, &mut lease_ids, &mut lessor, store, later))
            }
            Kind::LeaseRevoke => {
                commands.push(decode::<pb::LeaseRevokeRequest>(body).ok().map(|r| {
                    lessor.revoked(r.id);
                    Command::LeaseRevoke { id: r.id }
                }))
            }
            Kind::LeaseKeepAlive => {
                if let Ok(r) = decode::<pb::LeaseKeepAliveRequest>(body) {
                    if let Some(ttl) = lessor.renew(r.id, later) {
                        assert!(ttl >= MIN_LEASE_TTL, "renewed to {ttl}");
                    }
                }
            }
            Kind::LeaseTimeToLive => {
                if let Ok(r) = decode::<pb::LeaseTimeToLiveRequest>(body) {
                    if let Some(ttl) = lessor.time_to_live(r.id, later) {
                        assert!(ttl.remaining <= ttl.granted.max(0), "{ttl:?}");
                    }
                    if r.keys {
                        let _ = store.attached_keys(r.id);
                    }
                    let _ = lessor.ids();
                }
            }
            Kind::Watch => watch_request(store, body),
        }
    }
    let commands: Vec<Command> = commands.into_iter().flatten().collect();
    evaluate(store, commands);
    let _ = lessor.due(started + Duration::from_secs(3600));
}

fn decode<M: Message + Default>(body: Bytes) -> Result<M, crate::grpc::Status> {
    codec::decode(body, "request")
}

/// The KV service's Range, served from the fixture.
fn range_request(store: &Store, body: Bytes) {
    let Ok(req) = decode::<pb::RangeRequest>(body) else {
        return;
    };
    let Ok(q) = range::query(&req) else {
        return;
    };
    let Ok((result, _)) = kv::read_local(store, &q) else {
        return;
    };
    let len = result.entries.len() as i64;
    if q.limit > 0 {
        assert!(len <= q.limit, "{len} entries for limit {}", q.limit);
    }
    assert!(!result.more || len == q.limit, "more with {len} entries");
    assert!(
        len <= result.count || q.count_only,
        "{len} of {}",
        result.count
    );
    if q.count_only {
        assert_eq!(len, 0);
    }
    if q.keys_only {
        assert!(result.entries.iter().all(|e| e.value.is_none()));
    }
    if q.range.is_single_key() {
        assert!(result.count <= 1, "{:?} matched {}", q.range, result.count);
    }
    assert!(result.entries.iter().all(|e| q.range.contains(&e.key)));
    let resp = RangeResponse {
        kvs: result.entries.iter().map(convert::key_value).collect(),
        more: result.more,
        count: result.count,
        ..Default::default()
    };
    let _ = resp.encode_to_vec();
}

fn put(body: Bytes) -> Option<Command> {
    let req = decode::<pb::PutRequest>(body).ok()?;
    kv::check_size(&req).ok()?;
    let put = convert::put(&req).ok()?;
    Some(Command::Txn(Txn::put(put)))
}

fn delete(body: Bytes) -> Option<Command> {
    let req = decode::<pb::DeleteRangeRequest>(body).ok()?;
    kv::check_size(&req).ok()?;
    Some(Command::Txn(Txn {
        success: vec![convert::delete(&req).ok()?],
        ..Txn::default()
    }))
}

fn txn(body: Bytes) -> Option<Command> {
    let req = decode::<pb::TxnRequest>(body).ok()?;
    kv::check_size(&req).ok()?;
    let txn = convert::txn(&req).ok()?;
    Some(Command::Txn(txn))
}

/// The Lease service's grant as the Primary makes it: the TTL checked, a
/// fresh id for 0.
fn lease_grant(
    body: Bytes,
    ids: &mut LeaseIds,
    lessor: &mut Lessor,
    store: &Store,
    now: Instant,
) -> Option<Command> {
    let req = decode::<pb::LeaseGrantRequest>(body).ok()?;
    if req.ttl > MAX_LEASE_TTL {
        return None;
    }
    let ttl = req.ttl.max(MIN_LEASE_TTL);
    let id = match req.id {
        0 => ids.fresh(|c| store.lease_exists(c)),
        id => id,
    };
    lessor.granted(id, ttl, now);
    Some(Command::LeaseGrant { id, ttl })
}

/// A watch's creation and the history it replays.
fn watch_request(store: &Store, body: Bytes) {
    let Ok(req) = decode::<pb::WatchRequest>(body) else {
        return;
    };
    let Some(RequestUnion::CreateRequest(create)) = req.request_union else {
        return;
    };
    let committed = store.committed_revision();
    let (range, next) = watch::watched(&create, committed);
    if next > committed || next < store.compacted_revision() {
        return;
    }
    let Ok((events, upto)) = events_from_store(store, next, committed, 1000) else {
        return;
    };
    assert!(upto <= committed && upto >= next - 1, "{next}..{upto}");
    for e in events.iter().filter(|e| range.contains(&e.kv.key)) {
        assert!(e.revision() >= next && e.revision() <= upto);
        let _ = convert::event(e, create.prev_kv).encode_to_vec();
    }
}

/// One batch of group commit over the fixture, and what must hold of it.
fn evaluate(store: &Store, commands: Vec<Command>) {
    let count = commands.len();
    let index = store.index();
    let base = store.committed_revision();
    let mut view = BatchView::new(&index, store);
    let out = WriteCore::new("fuzz").evaluate(commands, &mut view, NOW);
    assert_eq!(out.replies.len(), count);
    // Every write takes the next revision, in order, with its event.
    for (i, r) in out.batch.records.iter().enumerate() {
        assert_eq!(r.revision, base + 1 + i as i64, "{:?}", out.batch.records);
        assert!(!r.key.is_empty());
    }
    assert_eq!(out.events.len(), out.batch.records.len());
    for (e, r) in out.events.iter().zip(&out.batch.records) {
        assert_eq!(e.revision(), r.revision);
    }
    let last = base + out.batch.records.len() as i64;
    for reply in out.replies {
        match reply {
            Reply::Txn(Ok(outcome)) => {
                assert!(outcome.revision <= last, "{} > {last}", outcome.revision);
                let _ = convert::txn_response(outcome).encode_to_vec();
            }
            Reply::Txn(Err(e)) => {
                assert!(!matches!(e, WriteError::Store(_)), "{e}");
                let _ = errors::from_write(e);
            }
            Reply::LeaseRevoke(Ok(revision)) => assert!(revision <= last),
            _ => {}
        }
    }
}

/// The store every input is evaluated against, built once per process
/// and removed at exit.
struct Fixture {
    dir: PathBuf,
    store: Store,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| match build_fixture() {
        Ok(f) => f,
        // Not the input's fault: nothing can be fuzzed without it.
        Err(e) => panic!("fuzzing: cannot build the store fixture: {e}"),
    })
}

extern "C" fn remove_fixture() {
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(&f.dir);
    }
}

fn key(k: &str) -> Bytes {
    Bytes::copy_from_slice(k.as_bytes())
}

fn put_command(k: &str, v: &str, lease: i64) -> Command {
    Command::Txn(Txn::put(Put {
        key: key(k),
        value: key(v),
        lease,
        ..Put::default()
    }))
}

/// Keys with several versions, a deleted one, leased ones, and history
/// compacted below revision 5.
fn build_fixture() -> Result<Fixture, String> {
    let dir = tempfile::Builder::new()
        .prefix("netsy-fuzz-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    // SAFETY: registers a plain function, run once at process exit.
    unsafe {
        libc::atexit(remove_fixture);
    }
    let store = Store::open(&dir).map_err(|e| e.to_string())?;
    let first = Batch {
        records: vec![Record::internal("fuzz")],
        ..Batch::default()
    };
    store.append_committed(first).map_err(|e| e.to_string())?;
    let batches = [
        vec![
            Command::LeaseGrant { id: 7, ttl: 60 },
            put_command("a", "1", 0),
            put_command("b", "1", 0),
            put_command("c", "1", 0),
            put_command("foo/1", "x", 7),
        ],
        vec![
            put_command("a", "2", 0),
            Command::Txn(Txn {
                success: vec![crate::primary::txn::Op::Delete {
                    range: KeyRange::Single(key("b")),
                    prev_kv: false,
                }],
                ..Txn::default()
            }),
            put_command("foo/2", "y", 7),
            Command::LeaseGrant { id: 9, ttl: 5 },
            Command::Compact { revision: 5 },
        ],
        vec![
            put_command("a", "3", 0),
            put_command("d", "", 9),
            put_command("\u{0}", "zero", 0),
            put_command("\u{7f}\u{7f}", "high", 0),
        ],
    ];
    let mut core = WriteCore::new("fuzz");
    for commands in batches {
        let evaluated = {
            let index = store.index();
            let mut view = BatchView::new(&index, &store);
            core.evaluate(commands, &mut view, NOW)
        };
        if let Some(bad) = evaluated.replies.iter().find(|r| !r.is_ok()) {
            return Err(format!("fixture command refused: {bad:?}"));
        }
        store
            .append_committed(evaluated.batch)
            .map_err(|e| e.to_string())?;
    }
    Ok(Fixture { dir, store })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RangeQuery;

    #[test]
    fn the_fixture_has_history_leases_and_a_compaction() {
        let f = fixture();
        assert_eq!(f.store.committed_revision(), 12);
        assert_eq!(f.store.compacted_revision(), 5);
        assert!(f.store.lease_exists(7) && f.store.lease_exists(9));
        let q = RangeQuery::new(KeyRange::new(&key("a"), &key("\0")));
        let (result, _) = kv::read_local(&f.store, &q).unwrap();
        let keys: Vec<&[u8]> = result.entries.iter().map(|e| &e.key[..]).collect();
        assert_eq!(
            keys,
            [&b"a"[..], b"c", b"d", b"foo/1", b"foo/2", b"\x7f\x7f"]
        );
    }
}
