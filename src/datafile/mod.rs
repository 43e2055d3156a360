//! The `.netsy` data file (chunks and snapshots), byte-compatible with the
//! reference implementation: a size-delimited FileHeader, then (raw or as one
//! zstd stream) `records_count` size-delimited Records and a FileFooter.
//! Every message carries a CRC-64/XZ of its own canonical encoding with
//! crc = 0; the footer also has a running CRC over all records. Readers
//! verify everything and name what is wrong.

pub mod inspect;

use std::io::{self, BufReader, Read, Write};

use prost::Message;

use crate::pb::netsy::{FileCompression, FileFooter, FileHeader, FileKind, Record as PbRecord};
use crate::store::{Record, Timestamp};

/// Largest delimited message a reader accepts (the reference's framing cap).
pub const MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;

/// Batched chunks are compressed when keys and values exceed this.
pub const COMPRESSION_THRESHOLD: usize = 4096;

/// Slice-by-16 tables: several times faster than byte-at-a-time on chunk
/// and snapshot bodies, for 32 KiB of tables.
static CRC64: crc::Crc<u64, crc::Table<16>> = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);

pub fn crc64(bytes: &[u8]) -> u64 {
    CRC64.checksum(bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Chunk,
}

impl Kind {
    fn wire(self) -> FileKind {
        match self {
            Kind::Snapshot => FileKind::KindSnapshot,
            Kind::Chunk => FileKind::KindChunk,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

/// What can be wrong with a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataFileError {
    Io(String),
    /// The file ended early.
    Truncated,
    Decode(String),
    WrongKind {
        expected: Kind,
        found: i32,
    },
    UnknownCompression,
    Crc(&'static str),
    Count {
        declared: i64,
        found: i64,
    },
    Revisions(String),
    TooLarge(usize),
}

impl std::fmt::Display for DataFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataFileError::Io(e) => write!(f, "i/o error: {e}"),
            DataFileError::Truncated => write!(f, "unexpected end of file"),
            DataFileError::Decode(e) => write!(f, "malformed message: {e}"),
            DataFileError::WrongKind { expected, found } => {
                write!(f, "wrong file kind: expected {expected:?}, found {found}")
            }
            DataFileError::UnknownCompression => write!(f, "unknown compression"),
            DataFileError::Crc(what) => write!(f, "CRC mismatch in {what}"),
            DataFileError::Count { declared, found } => {
                write!(
                    f,
                    "record count mismatch: header says {declared}, wrote {found}"
                )
            }
            DataFileError::Revisions(e) => write!(f, "revision check failed: {e}"),
            DataFileError::TooLarge(n) => write!(
                f,
                "message of {n} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit"
            ),
        }
    }
}

impl std::error::Error for DataFileError {}

impl From<io::Error> for DataFileError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            DataFileError::Truncated
        } else {
            DataFileError::Io(e.to_string())
        }
    }
}

/// The canonical encoding of a record with crc = 0.
pub(crate) fn record_body(r: &PbRecord) -> Vec<u8> {
    let mut zero = r.clone();
    zero.crc = 0;
    zero.encode_to_vec()
}

pub(crate) fn header_crc(h: &FileHeader) -> u64 {
    let mut zero = h.clone();
    zero.crc = 0;
    crc64(&zero.encode_to_vec())
}

pub(crate) fn footer_crc(f: &FileFooter) -> u64 {
    let mut zero = *f;
    zero.crc = 0;
    crc64(&zero.encode_to_vec())
}

/// The reference's chunk policy: one record uncompressed; more records
/// compressed when their keys and values exceed 4096 bytes.
pub fn chunk_compression(records: &[Record]) -> Compression {
    if records.len() <= 1 {
        return Compression::None;
    }
    let payload: usize = records
        .iter()
        .map(|r| r.key.len() + r.value.as_ref().map_or(0, |v| v.len()))
        .sum();
    if payload > COMPRESSION_THRESHOLD {
        Compression::Zstd
    } else {
        Compression::None
    }
}

pub(crate) fn write_delimited(w: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    let mut len = Vec::with_capacity(10);
    prost::encoding::encode_varint(bytes.len() as u64, &mut len);
    w.write_all(&len)?;
    w.write_all(bytes)
}

/// Writes a record size-delimited with its CRC, from `body`, its canonical
/// encoding with crc = 0, without encoding it again: crc is field 1,
/// encoded first, so the message with its CRC is that field followed by
/// the body (a CRC of 0 is omitted, as the canonical encoding omits it).
fn write_with_crc(w: &mut dyn Write, body: &[u8]) -> io::Result<()> {
    let crc = crc64(body);
    let mut head = Vec::with_capacity(24);
    let mut field = Vec::with_capacity(11);
    if crc != 0 {
        prost::encoding::uint64::encode(1, &crc, &mut field);
    }
    prost::encoding::encode_varint((field.len() + body.len()) as u64, &mut head);
    head.extend_from_slice(&field);
    w.write_all(&head)?;
    w.write_all(body)
}

enum Body<'c, W: Write> {
    Raw(W),
    Zstd(zstd::stream::write::Encoder<'c, W>),
}

impl<W: Write> Body<'_, W> {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Body::Raw(w) => w,
            Body::Zstd(z) => z,
        }
    }
}

/// What a body holds so far: enough to write its footer. A snapshot
/// continued in later zstd frames keeps it between them.
#[derive(Clone)]
pub struct Progress {
    records_crc: crc::Digest<'static, u64, crc::Table<16>>,
    first_revision: i64,
    last_revision: i64,
    count: i64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            records_crc: CRC64.digest(),
            first_revision: 0,
            last_revision: 0,
            count: 0,
        }
    }
}

impl Progress {
    /// Records written so far.
    pub fn count(&self) -> i64 {
        self.count
    }

    /// The revision of the last record written (0: none yet).
    pub fn last_revision(&self) -> i64 {
        self.last_revision
    }

    /// Writes `record` size-delimited with its CRC, and counts it.
    fn write(&mut self, w: &mut dyn Write, record: &Record) -> Result<(), DataFileError> {
        let body = record.to_proto().encode_to_vec();
        self.records_crc.update(&body);
        write_with_crc(w, &body)?;
        if self.first_revision == 0 {
            self.first_revision = record.revision;
        }
        self.last_revision = record.revision;
        self.count += 1;
        Ok(())
    }

    fn write_footer(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut footer = FileFooter {
            records_crc: self.records_crc.clone().finalize(),
            first_revision: self.first_revision,
            last_revision: self.last_revision,
            crc: 0,
        };
        footer.crc = footer_crc(&footer);
        write_delimited(w, &footer.encode_to_vec())
    }
}

/// Writes a file's header (always uncompressed).
pub fn write_header(
    out: &mut dyn Write,
    kind: Kind,
    compression: Compression,
    records_count: i64,
    leader_id: &str,
    created_at: Timestamp,
) -> io::Result<()> {
    let mut header = FileHeader {
        crc: 0,
        schema_version: 0,
        kind: kind.wire() as i32,
        compression: match compression {
            Compression::None => FileCompression::CompressionNone as i32,
            Compression::Zstd => FileCompression::CompressionZstd as i32,
        },
        records_count,
        leader_id: leader_id.to_string(),
        created_at: Some(created_at.to_proto()),
    };
    header.crc = header_crc(&header);
    write_delimited(out, &header.encode_to_vec())
}

/// Level 1: chunks sit on the write path and snapshots take a core while
/// they run; ratio matters less than speed.
const ZSTD_LEVEL: i32 = 1;

type Context = zstd::zstd_safe::CCtx<'static>;

thread_local! {
    /// A compression context per thread for in-memory files (batched
    /// chunks, on the write path): creating one per chunk took about 1% of
    /// the CPU at 64 clients. Reused contexts write the same bytes.
    static CONTEXT: std::cell::RefCell<Option<Context>> = const { std::cell::RefCell::new(None) };
}

/// A context for [`ZSTD_LEVEL`].
fn new_context() -> Result<Context, DataFileError> {
    let mut context = Context::create();
    context
        .set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(ZSTD_LEVEL))
        .map_err(|code| DataFileError::Io(zstd::zstd_safe::get_error_name(code).to_string()))?;
    Ok(context)
}

/// Streams a data file out. The record count is declared up front and
/// checked at the end.
pub struct Writer<'c, W: Write> {
    body: Body<'c, W>,
    declared: i64,
    progress: Progress,
}

impl<W: Write> Writer<'static, W> {
    pub fn new(
        out: W,
        kind: Kind,
        compression: Compression,
        records_count: i64,
        leader_id: &str,
        created_at: Timestamp,
    ) -> Result<Writer<'static, W>, DataFileError> {
        Writer::start(
            out,
            kind,
            compression,
            records_count,
            leader_id,
            created_at,
            None,
        )
    }
}

impl<'c, W: Write> Writer<'c, W> {
    /// Starts a file; a compressed one uses `context` when given.
    fn start(
        mut out: W,
        kind: Kind,
        compression: Compression,
        records_count: i64,
        leader_id: &str,
        created_at: Timestamp,
        context: Option<&'c mut Context>,
    ) -> Result<Writer<'c, W>, DataFileError> {
        write_header(
            &mut out,
            kind,
            compression,
            records_count,
            leader_id,
            created_at,
        )?;
        let body = match (compression, context) {
            (Compression::None, _) => Body::Raw(out),
            (Compression::Zstd, Some(context)) => {
                Body::Zstd(zstd::stream::write::Encoder::with_context(out, context))
            }
            (Compression::Zstd, None) => {
                Body::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?)
            }
        };
        Ok(Writer {
            body,
            declared: records_count,
            progress: Progress::default(),
        })
    }

    pub fn write(&mut self, record: &Record) -> Result<(), DataFileError> {
        self.progress.write(self.body.writer(), record)
    }

    /// Writes the footer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, DataFileError> {
        if self.progress.count != self.declared {
            return Err(DataFileError::Count {
                declared: self.declared,
                found: self.progress.count,
            });
        }
        self.progress.write_footer(self.body.writer())?;
        let mut out = match self.body {
            Body::Raw(w) => w,
            Body::Zstd(z) => z.finish()?,
        };
        out.flush()?;
        Ok(out)
    }
}

/// A compressed body written in parts: each `Frame` is a zstd frame of
/// records that continues the body before it, and [`footer_frame`] ends
/// it. Concatenated zstd frames are one zstd stream (RFC 8878 §3.1), so
/// after a header the whole reads as any compressed file does; a snapshot
/// can then reuse the frames of the one before it and compress only the
/// records since.
pub struct Frame<W: Write> {
    encoder: zstd::stream::write::Encoder<'static, W>,
    progress: Progress,
}

impl<W: Write> Frame<W> {
    /// Starts a frame after the records `progress` counted.
    pub fn new(out: W, progress: Progress) -> Result<Frame<W>, DataFileError> {
        Ok(Frame {
            encoder: zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?,
            progress,
        })
    }

    pub fn write(&mut self, record: &Record) -> Result<(), DataFileError> {
        self.progress.write(&mut self.encoder, record)
    }

    /// Ends the frame; returns the writer and what the body now holds.
    pub fn finish(self) -> Result<(W, Progress), DataFileError> {
        let mut out = self.encoder.finish()?;
        out.flush()?;
        Ok((out, self.progress))
    }
}

/// Ends a body written in [`Frame`]s: its footer, as a frame of its own.
pub fn footer_frame<W: Write>(out: W, progress: &Progress) -> Result<W, DataFileError> {
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    progress.write_footer(&mut encoder)?;
    let mut out = encoder.finish()?;
    out.flush()?;
    Ok(out)
}

/// Encodes records into one in-memory file.
pub fn encode(
    kind: Kind,
    compression: Compression,
    leader_id: &str,
    records: &[Record],
) -> Result<Vec<u8>, DataFileError> {
    CONTEXT.with_borrow_mut(|context| {
        let context = match (compression, context) {
            (Compression::None, _) => None,
            (Compression::Zstd, Some(context)) => Some(context),
            (Compression::Zstd, context) => Some(context.insert(new_context()?)),
        };
        let mut w = Writer::start(
            Vec::new(),
            kind,
            compression,
            records.len() as i64,
            leader_id,
            Timestamp::now(),
            context,
        )?;
        for r in records {
            w.write(r)?;
        }
        w.finish()
    })
}

/// Reads one varint-delimited message; None at a clean end of input.
fn read_delimited(r: &mut dyn Read, at_end_ok: bool) -> Result<Option<Vec<u8>>, DataFileError> {
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut first = true;
    loop {
        let mut byte = [0u8; 1];
        let n = r.read(&mut byte)?;
        if n == 0 {
            return if first && at_end_ok {
                Ok(None)
            } else {
                Err(DataFileError::Truncated)
            };
        }
        first = false;
        len |= ((byte[0] & 0x7f) as u64) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(DataFileError::Decode("length varint too long".into()));
        }
    }
    let len = len as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(DataFileError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads a data file record by record, validating as it goes; `finish`
/// runs the trailing checks (footer CRC, records CRC, revisions).
pub struct Reader<'a> {
    input: Box<dyn Read + 'a>,
    pub header: FileHeader,
    remaining: i64,
    records_crc: crc::Digest<'static, u64, crc::Table<16>>,
    first_revision: i64,
    last_revision: i64,
}

impl<'a> Reader<'a> {
    pub fn open<R: Read + 'a>(
        input: R,
        expected: Option<Kind>,
    ) -> Result<Reader<'a>, DataFileError> {
        let mut input = BufReader::new(input);
        let header_bytes = read_delimited(&mut input, false)?.ok_or(DataFileError::Truncated)?;
        let header = FileHeader::decode(&header_bytes[..])
            .map_err(|e| DataFileError::Decode(format!("header: {e}")))?;
        if let Some(kind) = expected {
            if header.kind != kind.wire() as i32 {
                return Err(DataFileError::WrongKind {
                    expected: kind,
                    found: header.kind,
                });
            }
        }
        let body: Box<dyn Read + 'a> = match FileCompression::try_from(header.compression) {
            Ok(FileCompression::CompressionNone) => Box::new(input),
            Ok(FileCompression::CompressionZstd) => {
                Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
            }
            _ => return Err(DataFileError::UnknownCompression),
        };
        if header_crc(&header) != header.crc {
            return Err(DataFileError::Crc("header"));
        }
        if header.records_count < 0 {
            return Err(DataFileError::Decode("negative records_count".into()));
        }
        Ok(Reader {
            input: body,
            remaining: header.records_count,
            header,
            records_crc: CRC64.digest(),
            first_revision: 0,
            last_revision: 0,
        })
    }

    /// The next record, None after the declared count.
    pub fn next_record(&mut self) -> Result<Option<Record>, DataFileError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let bytes = read_delimited(&mut self.input, false)?.ok_or(DataFileError::Truncated)?;
        let pb = PbRecord::decode(&bytes[..])
            .map_err(|e| DataFileError::Decode(format!("record: {e}")))?;
        let body = record_body(&pb);
        if crc64(&body) != pb.crc {
            return Err(DataFileError::Crc("record"));
        }
        self.records_crc.update(&body);
        if self.first_revision == 0 {
            self.first_revision = pb.revision;
        }
        self.last_revision = pb.revision;
        self.remaining -= 1;
        Ok(Some(Record::from_proto(&pb)))
    }

    /// Reads the footer and checks it against what was read.
    pub fn finish(mut self) -> Result<FileFooter, DataFileError> {
        while self.next_record()?.is_some() {}
        let bytes = read_delimited(&mut self.input, false)?.ok_or(DataFileError::Truncated)?;
        let footer = FileFooter::decode(&bytes[..])
            .map_err(|e| DataFileError::Decode(format!("footer: {e}")))?;
        if footer_crc(&footer) != footer.crc {
            return Err(DataFileError::Crc("footer"));
        }
        if footer.records_crc != self.records_crc.finalize() {
            return Err(DataFileError::Crc("records (footer records_crc)"));
        }
        if footer.first_revision != self.first_revision
            || footer.last_revision != self.last_revision
        {
            return Err(DataFileError::Revisions(format!(
                "footer says {}..{}, records are {}..{}",
                footer.first_revision,
                footer.last_revision,
                self.first_revision,
                self.last_revision
            )));
        }
        Ok(footer)
    }
}

/// Decodes and fully validates an in-memory file.
pub fn decode(
    bytes: &[u8],
    expected: Option<Kind>,
) -> Result<(FileHeader, Vec<Record>, FileFooter), DataFileError> {
    let mut reader = Reader::open(bytes, expected)?;
    let mut records = Vec::with_capacity(reader.header.records_count.clamp(0, 100_000) as usize);
    while let Some(r) = reader.next_record()? {
        records.push(r);
    }
    let header = reader.header.clone();
    let footer = reader.finish()?;
    Ok((header, records, footer))
}

/// Opens a data file on disk for streaming.
pub fn open_file(
    path: &std::path::Path,
    expected: Option<Kind>,
) -> Result<Reader<'static>, DataFileError> {
    let f = std::fs::File::open(path)
        .map_err(|e| DataFileError::Io(format!("{}: {e}", path.display())))?;
    Reader::open(f, expected)
}

/// How many zstd frames start in `bytes` (tests: a snapshot continued in
/// frames; the magic number could also occur inside compressed data, which
/// these small files do not hit).
#[cfg(test)]
pub(crate) fn zstd_frame_starts(bytes: &[u8]) -> usize {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    bytes.windows(4).filter(|w| *w == MAGIC).count()
}

#[cfg(test)]
mod tests;
