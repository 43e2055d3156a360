//! The `.netsy` reader (what restore and replicas read from the bucket) and
//! `netsy inspect`, on the bytes as given and on the same bytes with every
//! CRC made right, so that mutations of the messages inside get past the
//! checksums to the code behind them.

use std::io::Read;

use prost::Message;

use crate::datafile::{
    self, crc64, footer_crc, header_crc, inspect, record_body, write_delimited, Compression, Kind,
    MAX_MESSAGE_LEN,
};
use crate::log::keys;
use crate::pb::netsy::{FileCompression, FileFooter, FileHeader, FileKind, Record as PbRecord};

/// Most bytes a resealed body is decompressed to: more only takes longer.
const MAX_BODY: u64 = 1024 * 1024;

/// Input: a data file.
pub fn datafile(data: &[u8]) {
    read(data);
    if let Some(resealed) = reseal(data) {
        read(&resealed);
    }
    object_key(data);
}

/// Reads a file both ways netsy does; they must agree, and whatever reads
/// must write and read back the same.
fn read(bytes: &[u8]) {
    let decoded = datafile::decode(bytes, None);
    let mut lines = Vec::new();
    let ok = inspect::inspect(bytes, &mut lines).unwrap_or(false);
    assert_eq!(
        ok,
        decoded.is_ok(),
        "inspect and decode disagree: {decoded:?}"
    );
    for line in String::from_utf8_lossy(&lines).lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "inspect wrote {line:?}"
        );
    }
    let Ok((header, records, _footer)) = decoded else {
        return;
    };
    assert_eq!(records.len() as i64, header.records_count);
    let kind = if header.kind == FileKind::KindChunk as i32 {
        Kind::Chunk
    } else {
        Kind::Snapshot
    };
    let compression = if header.compression == FileCompression::CompressionZstd as i32 {
        Compression::Zstd
    } else {
        Compression::None
    };
    let written = datafile::encode(kind, compression, &header.leader_id, &records);
    let back = written
        .as_deref()
        .map_err(|e| e.to_string())
        .and_then(|w| datafile::decode(w, Some(kind)).map_err(|e| e.to_string()));
    match back {
        Ok((_, again, _)) => assert_eq!(again, records, "records changed on a round trip"),
        Err(e) => panic!("records read from a file do not write and read back: {e}"),
    }
}

/// One varint-delimited message off the front of `input`, as the reader
/// frames them.
fn take_delimited<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= MAX_MESSAGE_LEN)?;
            let message = input.get(..len)?;
            *input = &input[len..];
            return Some(message);
        }
    }
    None
}

/// The file's messages (header, records, and the last as footer) with
/// their CRCs computed as a writer would and records_count matching; the
/// footer's revisions are fixed too when its input CRC is even, so both a
/// consistent file and a revision mismatch get through.
fn reseal(data: &[u8]) -> Option<Vec<u8>> {
    let mut input = data;
    let mut header = FileHeader::decode(take_delimited(&mut input)?).ok()?;
    let zstd = header.compression == FileCompression::CompressionZstd as i32;
    let body = if zstd {
        let mut out = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(input).ok()?;
        // A damaged stream still gives what came before the damage.
        let _ = decoder.take(MAX_BODY).read_to_end(&mut out);
        out
    } else {
        input.to_vec()
    };
    let mut body = &body[..];
    let mut messages = Vec::new();
    while let Some(m) = take_delimited(&mut body) {
        messages.push(m);
    }
    let footer_bytes = messages.pop().unwrap_or_default();
    let mut footer = FileFooter::decode(footer_bytes).unwrap_or_default();
    let mut records: Vec<PbRecord> = messages
        .into_iter()
        .filter_map(|m| PbRecord::decode(m).ok())
        .collect();
    header.records_count = records.len() as i64;
    header.crc = header_crc(&header);
    let mut records_crc = Vec::new();
    for r in &mut records {
        let body = record_body(r);
        records_crc.extend_from_slice(&body);
        r.crc = crc64(&body);
    }
    if footer.crc % 2 == 0 {
        footer.first_revision = records.first().map_or(0, |r| r.revision);
        footer.last_revision = records.last().map_or(0, |r| r.revision);
    }
    footer.records_crc = crc64(&records_crc);
    footer.crc = footer_crc(&footer);

    let mut out = Vec::new();
    write_delimited(&mut out, &header.encode_to_vec()).ok()?;
    let mut plain = Vec::new();
    for r in &records {
        write_delimited(&mut plain, &r.encode_to_vec()).ok()?;
    }
    write_delimited(&mut plain, &footer.encode_to_vec()).ok()?;
    if zstd {
        out.extend(zstd::stream::encode_all(&plain[..], 1).ok()?);
    } else {
        out.extend(plain);
    }
    Some(out)
}

/// The bytes as the object key of a chunk or snapshot.
fn object_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(revision) = keys::revision_of(&text) {
        assert!(revision >= 0);
        assert_eq!(
            keys::revision_of(&keys::chunk_key(revision)),
            Some(revision)
        );
        assert_eq!(
            keys::revision_of(&keys::snapshot_key(revision)),
            Some(revision)
        );
    }
}
