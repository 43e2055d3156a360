//! `netsy inspect`: a data file as JSON lines (header, each record, footer)
//! followed by a verdict line, verifying every CRC on the way.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::store::{Record, Timestamp};

use super::Reader;

fn show(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => Value::String(s.to_string()),
        _ => json!({"hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>()}),
    }
}

fn time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn record_json(r: &Record) -> Value {
    json!({"record": {
        "revision": r.revision,
        "key": show(&r.key),
        "created": r.created,
        "deleted": r.deleted,
        "create_revision": r.create_revision,
        "prev_revision": r.prev_revision,
        "version": r.version,
        "lease": r.lease,
        "dek": r.dek,
        "value": r.value.as_deref().map(show),
        "created_at": time(Some(r.created_at)),
        "compacted_at": time(r.compacted_at),
        "leader_id": r.leader_id,
        "replicated_at": time(r.replicated_at),
    }})
}

/// Writes the JSON lines for one file; true when every check passed.
pub fn inspect(input: impl Read, out: &mut impl Write) -> std::io::Result<bool> {
    let mut line = |v: Value| writeln!(out, "{v}");
    let mut reader = match Reader::open(input, None) {
        Ok(r) => r,
        Err(e) => {
            line(json!({"verdict": "invalid", "error": e.to_string()}))?;
            return Ok(false);
        }
    };
    let h = reader.header.clone();
    line(json!({"header": {
        "crc": format!("{:016x}", h.crc),
        "schema_version": h.schema_version,
        "kind": match h.kind { 1 => "snapshot", 2 => "chunk", _ => "unknown" },
        "compression": match h.compression { 1 => "none", 2 => "zstd", _ => "unknown" },
        "records_count": h.records_count,
        "leader_id": h.leader_id,
        "created_at": time(h.created_at.map(Timestamp::from_proto)),
    }}))?;
    loop {
        match reader.next_record() {
            Ok(Some(r)) => line(record_json(&r))?,
            Ok(None) => break,
            Err(e) => {
                line(json!({"verdict": "invalid", "error": e.to_string()}))?;
                return Ok(false);
            }
        }
    }
    match reader.finish() {
        Ok(f) => {
            line(json!({"footer": {
                "records_crc": format!("{:016x}", f.records_crc),
                "first_revision": f.first_revision,
                "last_revision": f.last_revision,
                "crc": format!("{:016x}", f.crc),
            }}))?;
            line(json!({"verdict": "ok"}))?;
            Ok(true)
        }
        Err(e) => {
            line(json!({"verdict": "invalid", "error": e.to_string()}))?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datafile::{encode, Compression, Kind};

    #[test]
    fn prints_every_part_and_a_verdict() {
        let records = vec![Record::internal("n1")];
        let bytes = encode(Kind::Chunk, Compression::None, "n1", &records).unwrap();
        let mut out = Vec::new();
        assert!(inspect(&bytes[..], &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["header"]["kind"], "chunk");
        assert_eq!(lines[1]["record"]["key"], "_netsy");
        assert_eq!(lines[2]["footer"]["last_revision"], 1);
        assert_eq!(lines[3]["verdict"], "ok");

        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        let mut out = Vec::new();
        assert!(!inspect(&bad[..], &mut out).unwrap());
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\"verdict\":\"invalid\""));
    }
}
