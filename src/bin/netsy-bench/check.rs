//! Correctness checks for `--smoke`: what the server holds or delivered,
//! compared with what the workload wrote. They run after the timed phase,
//! and each failure is one line that says what differed. They assume the
//! run's key prefix was empty when the run started (smoke runs each mode on
//! its own prefix of a fresh server).

use bytes::Bytes;
use netsy::grpc::Channel;
use netsy::pb::etcdserverpb::{RangeRequest, RangeResponse};
use netsy::pb::mvccpb::{event::EventType, Event, KeyValue};
use netsy::store::keyrange::prefix_end;

/// Keys per page when reading a prefix back.
const PAGE: i64 = 500;

/// A key or value in a form fit for one line: escaped, cut after 48 bytes.
pub fn show(b: &[u8]) -> String {
    let cut = b.len().min(48);
    let s: String = b[..cut].escape_ascii().to_string();
    if cut < b.len() {
        format!("\"{s}...\" ({} bytes)", b.len())
    } else {
        format!("\"{s}\"")
    }
}

/// None if equal, else where two byte strings first differ.
pub fn bytes_diff(expected: &[u8], got: &[u8]) -> Option<String> {
    if expected == got {
        return None;
    }
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    Some(format!(
        "{} bytes, expected {} bytes, first difference at byte {at}: got {} where {} was expected",
        got.len(),
        expected.len(),
        show(&got[at..]),
        show(&expected[at..])
    ))
}

/// None if equal, else the first field of a key-value that differs.
pub fn kv_diff(expected: &KeyValue, got: &KeyValue) -> Option<String> {
    if let Some(d) = bytes_diff(&expected.key, &got.key) {
        return Some(format!("key is {d}"));
    }
    if let Some(d) = bytes_diff(&expected.value, &got.value) {
        return Some(format!("value is {d}"));
    }
    let fields = [
        ("mod_revision", expected.mod_revision, got.mod_revision),
        (
            "create_revision",
            expected.create_revision,
            got.create_revision,
        ),
        ("version", expected.version, got.version),
        ("lease", expected.lease, got.lease),
    ];
    fields
        .iter()
        .find(|(_, e, g)| e != g)
        .map(|(name, e, g)| format!("{name} is {g}, expected {e}"))
}

/// The key-values returned against the ones expected, both in key order:
/// the exact key list, then every field of each.
pub fn check_kvs(expected: &[KeyValue], got: &[KeyValue]) -> Result<(), String> {
    for i in 0..expected.len().max(got.len()) {
        match (expected.get(i), got.get(i)) {
            (Some(e), Some(g)) if e.key != g.key => {
                return Err(format!(
                    "key #{i} is {}, expected {} ({} keys returned, {} expected)",
                    show(&g.key),
                    show(&e.key),
                    got.len(),
                    expected.len()
                ))
            }
            (Some(e), Some(g)) => {
                if let Some(d) = kv_diff(e, g) {
                    return Err(format!("key {}: {d}", show(&e.key)));
                }
            }
            (Some(e), None) => {
                return Err(format!(
                    "{} keys returned, expected {}; first missing {}",
                    got.len(),
                    expected.len(),
                    show(&e.key)
                ))
            }
            (None, Some(g)) => {
                return Err(format!(
                    "{} keys returned, expected {}; first unexpected {}",
                    got.len(),
                    expected.len(),
                    show(&g.key)
                ))
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// One Range response against the expected keys, `count` and `more`.
pub fn check_range(
    resp: &RangeResponse,
    expected: &[KeyValue],
    count: i64,
    more: bool,
) -> Result<(), String> {
    if resp.count != count {
        return Err(format!("count is {}, expected {count}", resp.count));
    }
    if resp.more != more {
        return Err(format!("more is {}, expected {more}", resp.more));
    }
    check_kvs(expected, &resp.kvs)
}

/// Every key under `prefix` at one revision, page by page, checking that
/// each page's `count` and `more` agree with what the pages hold.
pub async fn read_prefix(ch: &Channel, prefix: &str) -> Result<Vec<KeyValue>, String> {
    let end = Bytes::from(prefix_end(prefix.as_bytes()));
    let mut start = Bytes::from(prefix.to_string());
    let mut revision = 0;
    let mut kvs: Vec<KeyValue> = Vec::new();
    let mut counts = Vec::new();
    loop {
        let r: RangeResponse = ch
            .unary(
                "/etcdserverpb.KV/Range",
                &RangeRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    limit: PAGE,
                    revision,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("reading {prefix} back: {e}"))?;
        if revision == 0 {
            revision = r.header.as_ref().map_or(0, |h| h.revision);
        }
        let page = r.kvs.len() as i64;
        if r.more != (r.count > page) || page > PAGE || r.count < page {
            return Err(format!(
                "reading {prefix} back: a page of {page} keys (limit {PAGE}) says count {} and more {}",
                r.count, r.more
            ));
        }
        counts.push((kvs.len() as i64, r.count));
        let Some(last) = r.kvs.last() else { break };
        let mut next = last.key.to_vec();
        next.push(0);
        start = Bytes::from(next);
        let more = r.more;
        kvs.extend(r.kvs);
        if !more {
            break;
        }
    }
    // Each page counts the keys from its start to the end of the prefix.
    let total = kvs.len() as i64;
    if let Some((before, count)) = counts.iter().find(|(b, c)| b + c != total) {
        return Err(format!(
            "reading {prefix} back: a page after {before} keys says count {count}, but {total} keys were read"
        ));
    }
    Ok(kvs)
}

/// Checks that revisions are unique: each write made its own revision.
pub fn distinct_revisions(mut revisions: Vec<i64>) -> Result<(), String> {
    revisions.sort_unstable();
    match revisions.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("two writes were answered with revision {}", w[0])),
        None => Ok(()),
    }
}

fn revision(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

fn event_type(t: i32) -> &'static str {
    if t == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

fn event_diff(expected: &Event, got: &Event) -> Option<String> {
    if expected.r#type != got.r#type {
        return Some(format!(
            "type {}, expected {}",
            event_type(got.r#type),
            event_type(expected.r#type)
        ));
    }
    let none = KeyValue::default();
    let (e, g) = (
        expected.kv.as_ref().unwrap_or(&none),
        got.kv.as_ref().unwrap_or(&none),
    );
    if let Some(d) = kv_diff(e, g) {
        return Some(d);
    }
    match (&expected.prev_kv, &got.prev_kv) {
        (None, None) => None,
        (Some(_), None) => Some("prev_kv missing".into()),
        (None, Some(p)) => Some(format!(
            "unexpected prev_kv (mod_revision {})",
            p.mod_revision
        )),
        (Some(e), Some(g)) => kv_diff(e, g).map(|d| format!("prev_kv: {d}")),
    }
}

/// What one watcher received against what was written, in revision order:
/// no duplicates, no gaps, nothing extra, every field of every event.
pub fn check_events(expected: &[Event], got: &[Event]) -> Result<(), String> {
    for (i, pair) in got.windows(2).enumerate() {
        let (a, b) = (revision(&pair[0]), revision(&pair[1]));
        if b == a {
            return Err(format!("event #{} repeats revision {b}", i + 1));
        }
        if b < a {
            return Err(format!(
                "event #{} has revision {b} after revision {a} (not in revision order)",
                i + 1
            ));
        }
    }
    for i in 0..expected.len().max(got.len()) {
        match (expected.get(i), got.get(i)) {
            (Some(e), Some(g)) => {
                let (er, gr) = (revision(e), revision(g));
                if gr > er {
                    return Err(format!(
                        "revision {er} missing (gap: event #{i} is revision {gr}); {} events received, {} expected",
                        got.len(),
                        expected.len()
                    ));
                }
                if gr < er {
                    return Err(format!(
                        "event #{i} is revision {gr}, expected revision {er} ({gr} is none of the writes made on the prefix)"
                    ));
                }
                if let Some(d) = event_diff(e, g) {
                    return Err(format!("event at revision {er}: {d}"));
                }
            }
            (Some(e), None) => {
                return Err(format!(
                    "{} events received, expected {}; first missing is revision {}",
                    got.len(),
                    expected.len(),
                    revision(e)
                ))
            }
            (None, Some(g)) => {
                return Err(format!(
                    "{} events received, expected {}; first extra is revision {}",
                    got.len(),
                    expected.len(),
                    revision(g)
                ))
            }
            (None, None) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: Bytes::from(key.to_string()),
                value: Bytes::from_static(b"v"),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn events_must_match_exactly() {
        let want = vec![put("a", 2), put("b", 3), put("c", 4)];
        assert!(check_events(&want, &want).is_ok());
        let dup = vec![put("a", 2), put("a", 2), put("b", 3)];
        assert!(check_events(&want, &dup).unwrap_err().contains("repeats"));
        let gap = vec![put("a", 2), put("c", 4)];
        assert!(check_events(&want, &gap).unwrap_err().contains("missing"));
        let short = vec![put("a", 2), put("b", 3)];
        assert!(check_events(&want, &short)
            .unwrap_err()
            .contains("first missing"));
        let mut changed = want.clone();
        changed[1].kv.as_mut().unwrap().value = Bytes::from_static(b"w");
        let e = check_events(&want, &changed).unwrap_err();
        assert!(e.contains("value") && e.contains("revision 3"), "{e}");
    }

    #[test]
    fn kvs_must_match_exactly() {
        let kv = |k: &str| put(k, 2).kv.unwrap();
        let want = vec![kv("a"), kv("b")];
        assert!(check_kvs(&want, &want).is_ok());
        assert!(check_kvs(&want, &[kv("a")])
            .unwrap_err()
            .contains("missing"));
        assert!(check_kvs(&want, &[kv("a"), kv("c")])
            .unwrap_err()
            .contains("key #1"));
        let e = bytes_diff(b"abcdef", b"abXdef").unwrap();
        assert!(e.contains("byte 2"), "{e}");
    }
}
