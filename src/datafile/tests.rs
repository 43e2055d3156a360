//! Golden bytes for the canonical encoding, round trips, and refusal of
//! every kind of damage.

use bytes::Bytes;
use prost::Message;

use super::*;

fn ts() -> Timestamp {
    Timestamp {
        seconds: 1,
        nanos: 2,
    }
}

fn rec(revision: i64, key: &str, value: Option<&str>) -> Record {
    Record {
        revision,
        key: Bytes::copy_from_slice(key.as_bytes()),
        created: revision == 1,
        deleted: value.is_none(),
        create_revision: 1,
        prev_revision: if revision == 1 { 0 } else { revision - 1 },
        version: if value.is_none() { 0 } else { revision },
        lease: 0,
        dek: 0,
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        created_at: ts(),
        compacted_at: None,
        leader_id: "n1".into(),
        replicated_at: None,
    }
}

#[test]
fn crc64_xz_check_value() {
    assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
}

#[test]
fn canonical_record_encoding_golden_bytes() {
    // Revision 1 internal record, written out by hand from the field numbers:
    // revision=2:1, key=3:"_netsy", created=4:true, create_revision=6:1,
    // version=8:1, created_at=12:{1:1, 2:2}, leader_id=14:"n1". Defaults
    // (crc, deleted, prev_revision, lease, dek, value) are omitted.
    let mut r = rec(1, "_netsy", Some(""));
    r.version = 1;
    let pb = r.to_proto();
    let expected: Vec<u8> = [
        &[0x10, 0x01][..],
        &[0x1a, 0x06],
        b"_netsy",
        &[0x20, 0x01],
        &[0x30, 0x01],
        &[0x40, 0x01],
        &[0x62, 0x04, 0x08, 0x01, 0x10, 0x02],
        &[0x72, 0x02],
        b"n1",
    ]
    .concat();
    assert_eq!(record_body(&pb), expected);
    // With its CRC the record gains field 1 first.
    let mut with_crc = pb.clone();
    with_crc.crc = crc64(&expected);
    let bytes = with_crc.encode_to_vec();
    assert_eq!(bytes[0], 0x08);
    assert!(bytes.ends_with(&expected));
}

#[test]
fn a_record_written_from_its_body_is_the_record_encoded_with_its_crc() {
    let mut leased = rec(7, "/registry/pods/a", Some("value"));
    leased.lease = 42;
    leased.compacted_at = Some(ts());
    for r in [rec(1, "_netsy", Some("")), rec(3, "k", None), leased] {
        let mut pb = r.to_proto();
        let body = pb.encode_to_vec();
        pb.crc = crc64(&body);
        let mut expected = Vec::new();
        write_delimited(&mut expected, &pb.encode_to_vec()).unwrap();
        let mut written = Vec::new();
        write_with_crc(&mut written, &body).unwrap();
        assert_eq!(written, expected, "revision {}", r.revision);
    }
}

#[test]
fn canonical_footer_encoding_golden_bytes() {
    let f = FileFooter {
        records_crc: 5,
        first_revision: 1,
        last_revision: 300,
        crc: 0,
    };
    assert_eq!(
        f.encode_to_vec(),
        vec![0x10, 0x05, 0x18, 0x01, 0x20, 0xac, 0x02]
    );
}

#[test]
fn canonical_header_encoding_golden_bytes() {
    let mut out = Vec::new();
    let w = Writer::new(&mut out, Kind::Chunk, Compression::None, 3, "n1", ts()).unwrap();
    drop(w);
    let expected: Vec<u8> = vec![
        0x18, 0x02, // kind: chunk
        0x20, 0x01, // compression: none
        0x28, 0x03, // records_count
        0x32, 0x02, b'n', b'1', // leader_id
        0x3a, 0x04, 0x08, 0x01, 0x10, 0x02, // created_at {seconds 1, nanos 2}
    ];
    let mut slice = &out[..];
    let len = prost::encoding::decode_varint(&mut slice).unwrap() as usize;
    let header = FileHeader::decode(&slice[..len]).unwrap();
    assert_eq!(
        header.crc,
        crc64(&expected),
        "crc over the crc = 0 encoding"
    );
    let canonical = FileHeader { crc: 0, ..header };
    assert_eq!(canonical.encode_to_vec(), expected);
}

#[test]
fn header_is_delimited_and_uncompressed_even_for_zstd() {
    let records = vec![
        rec(1, "_netsy", Some("")),
        rec(2, "k", Some(&"v".repeat(5000))),
    ];
    let bytes = encode(Kind::Chunk, Compression::Zstd, "n1", &records).unwrap();
    let mut slice = &bytes[..];
    let len = prost::encoding::decode_varint(&mut slice).unwrap() as usize;
    let header = FileHeader::decode(&slice[..len]).unwrap();
    assert_eq!(header.kind, FileKind::KindChunk as i32);
    assert_eq!(header.compression, FileCompression::CompressionZstd as i32);
    assert_eq!(header.records_count, 2);
    assert_eq!(header.leader_id, "n1");
    assert_eq!(header.schema_version, 0);
    // The rest is one zstd frame (magic 28 b5 2f fd).
    assert_eq!(&slice[len..len + 4], &[0x28, 0xb5, 0x2f, 0xfd]);
}

#[test]
fn round_trips_both_compressions() {
    let records = vec![
        rec(1, "_netsy", Some("")),
        rec(2, "a", Some("1")),
        rec(3, "a", None),
    ];
    for c in [Compression::None, Compression::Zstd] {
        let bytes = encode(Kind::Snapshot, c, "n1", &records).unwrap();
        let (header, back, footer) = decode(&bytes, Some(Kind::Snapshot)).unwrap();
        assert_eq!(back, records);
        assert_eq!(header.records_count, 3);
        assert_eq!((footer.first_revision, footer.last_revision), (1, 3));
    }
}

#[test]
fn refuses_the_wrong_kind() {
    let bytes = encode(
        Kind::Chunk,
        Compression::None,
        "n1",
        &[rec(2, "a", Some("1"))],
    )
    .unwrap();
    assert!(matches!(
        decode(&bytes, Some(Kind::Snapshot)),
        Err(DataFileError::WrongKind { .. })
    ));
    assert!(decode(&bytes, None).is_ok());
}

#[test]
fn no_flipped_byte_goes_unnoticed() {
    let records = vec![rec(2, "alpha", Some("one")), rec(3, "beta", Some("two"))];
    for c in [Compression::None, Compression::Zstd] {
        let good = encode(Kind::Chunk, c, "n1", &records).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            match decode(&bad, Some(Kind::Chunk)) {
                Err(_) => {}
                // A flip in zstd framing that does not change the content
                // (e.g. an optional-checksum flag) is harmless; silently
                // different content never is.
                Ok((_, back, _)) => assert!(
                    c == Compression::Zstd && back == records,
                    "flip at byte {i} of {} ({c:?}) changed the content unnoticed",
                    good.len()
                ),
            }
        }
    }
}

#[test]
fn truncation_is_refused() {
    let good = encode(
        Kind::Chunk,
        Compression::None,
        "n1",
        &[rec(2, "a", Some("1"))],
    )
    .unwrap();
    for cut in 0..good.len() {
        assert!(
            decode(&good[..cut], Some(Kind::Chunk)).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn the_writer_checks_the_declared_count() {
    let mut w = Writer::new(Vec::new(), Kind::Chunk, Compression::None, 2, "n1", ts()).unwrap();
    w.write(&rec(2, "a", Some("1"))).unwrap();
    assert_eq!(
        w.finish().unwrap_err(),
        DataFileError::Count {
            declared: 2,
            found: 1
        }
    );
}

#[test]
fn compression_policy() {
    let small = vec![rec(2, "a", Some("x")), rec(3, "b", Some("y"))];
    assert_eq!(chunk_compression(&small), Compression::None);
    let single_big = vec![rec(2, "a", Some(&"x".repeat(10_000)))];
    assert_eq!(
        chunk_compression(&single_big),
        Compression::None,
        "single-record chunks are never compressed"
    );
    let big = vec![
        rec(2, "a", Some(&"x".repeat(4000))),
        rec(3, "b", Some(&"y".repeat(100))),
    ];
    assert_eq!(chunk_compression(&big), Compression::Zstd);
}

/// A header, then the records in frames of 3, 0 and 2, then the footer's frame.
fn in_frames(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    write_header(
        &mut out,
        Kind::Snapshot,
        Compression::Zstd,
        records.len() as i64,
        "n1",
        ts(),
    )
    .unwrap();
    let mut progress = Progress::default();
    for part in [&records[..3], &records[3..3], &records[3..]] {
        let mut frame = Frame::new(out, progress).unwrap();
        for r in part {
            frame.write(r).unwrap();
        }
        (out, progress) = frame.finish().unwrap();
    }
    assert_eq!(progress.count(), records.len() as i64);
    footer_frame(out, &progress).unwrap()
}

#[test]
fn a_body_written_in_frames_reads_as_the_file_written_at_once() {
    let records: Vec<Record> = (1..=5)
        .map(|i| rec(i, &format!("k{i}"), Some("value")))
        .collect();
    let framed = in_frames(&records);
    let (header, read, footer) = decode(&framed, Some(Kind::Snapshot)).unwrap();
    assert_eq!(read, records);
    assert_eq!(header.records_count, 5);
    let whole = encode(Kind::Snapshot, Compression::Zstd, "n1", &records).unwrap();
    let (_, _, whole_footer) = decode(&whole, Some(Kind::Snapshot)).unwrap();
    assert_eq!(footer, whole_footer, "the same footer, CRCs included");
    // The frames are really there: at least the two of records and the
    // footer's start with zstd's magic number.
    let frames = zstd_frame_starts(&framed);
    assert!(frames >= 3, "{frames} frames");
}

#[test]
fn a_body_in_frames_with_a_record_missing_is_refused() {
    let records: Vec<Record> = (1..=5)
        .map(|i| rec(i, &format!("k{i}"), Some("value")))
        .collect();
    let mut framed = in_frames(&records);
    // The header claims one record more than the frames hold.
    let mut longer = Vec::new();
    write_header(
        &mut longer,
        Kind::Snapshot,
        Compression::Zstd,
        6,
        "n1",
        ts(),
    )
    .unwrap();
    let mut short = Vec::new();
    write_header(&mut short, Kind::Snapshot, Compression::Zstd, 5, "n1", ts()).unwrap();
    assert_eq!(longer.len(), short.len());
    framed.splice(..short.len(), longer);
    assert!(decode(&framed, Some(Kind::Snapshot)).is_err());
}

#[test]
fn a_reused_compression_context_writes_the_same_bytes() {
    let records: Vec<Record> = (1..=50)
        .map(|i| rec(i, &format!("key/{i}"), Some(&"v".repeat(200))))
        .collect();
    let write = |context: Option<&mut Context>| {
        let mut w = Writer::start(
            Vec::new(),
            Kind::Chunk,
            Compression::Zstd,
            records.len() as i64,
            "n1",
            ts(),
            context,
        )
        .unwrap();
        for r in &records {
            w.write(r).unwrap();
        }
        w.finish().unwrap()
    };
    let fresh = write(None);
    let mut context = new_context().unwrap();
    assert_eq!(write(Some(&mut context)), fresh);
    // A file abandoned half-way leaves nothing behind in the context.
    {
        let mut w = Writer::start(
            Vec::new(),
            Kind::Chunk,
            Compression::Zstd,
            2,
            "n1",
            ts(),
            Some(&mut context),
        )
        .unwrap();
        w.write(&records[0]).unwrap();
    }
    assert_eq!(write(Some(&mut context)), fresh);
    assert_eq!(decode(&fresh, Some(Kind::Chunk)).unwrap().1, records);
}
