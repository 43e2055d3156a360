//! gRPC message framing: every message is a 1-byte compressed flag, a 4-byte
//! big-endian length and the protobuf bytes. The decoder refuses an oversize
//! message as soon as its 5-byte prefix arrives, before buffering the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use super::status::Status;

/// Length of the per-message prefix.
pub const PREFIX_LEN: usize = 5;

/// Frames one message.
pub fn encode<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// Frames already-encoded protobuf bytes.
pub fn frame_bytes(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    buf.put_u8(0);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// A buffer for a message written in place: its prefix is reserved and
/// [`finish_frame`] fills it in once the message is complete.
pub fn start_frame(capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + capacity);
    buf.put_bytes(0, PREFIX_LEN);
    buf
}

/// Completes a frame begun by [`start_frame`].
pub fn finish_frame(mut buf: BytesMut) -> Bytes {
    let len = (buf.len() - PREFIX_LEN) as u32;
    buf[1..PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Decodes a protobuf message, mapping failures to the status grpc-go uses.
pub fn decode<M: Message + Default>(bytes: Bytes, what: &str) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| Status::internal(format!("grpc: error unmarshalling {what}: {e}")))
}

/// Incremental decoder of length-prefixed messages from arbitrary chunks.
/// A message that lies whole in one received chunk is a slice of that
/// chunk; only one split across chunks is copied, into a buffer of its own.
/// (A watch stream's client copied every event it received here.)
#[derive(Debug)]
pub struct FrameDecoder {
    /// The unread rest of the last chunk, while no message is split.
    chunk: Bytes,
    /// Bytes of a message split across chunks (empty otherwise); they come
    /// before anything pushed later, and `chunk` is empty while they wait.
    split: BytesMut,
    max_message_len: usize,
    /// The `grpc-encoding` the peer announced, for the compressed-flag error.
    encoding: Option<String>,
}

impl FrameDecoder {
    pub fn new(max_message_len: usize, encoding: Option<String>) -> FrameDecoder {
        FrameDecoder {
            chunk: Bytes::new(),
            split: BytesMut::new(),
            max_message_len,
            encoding,
        }
    }

    /// Appends a received chunk.
    pub fn push(&mut self, data: Bytes) {
        if self.split.is_empty() && self.chunk.is_empty() {
            self.chunk = data;
            return;
        }
        if !self.chunk.is_empty() {
            // The rest of the last chunk was too short for its message.
            self.split.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
        self.split.extend_from_slice(&data);
    }

    /// True when no partial message is buffered.
    pub fn is_empty(&self) -> bool {
        self.chunk.is_empty() && self.split.is_empty()
    }

    /// The next complete message, or None if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if !self.split.is_empty() {
            let Some(len) = self.message_len(&self.split)? else {
                return Ok(None);
            };
            if self.split.len() < PREFIX_LEN + len {
                // Make room once for the whole message instead of growing in steps.
                self.split.reserve(PREFIX_LEN + len - self.split.len());
                return Ok(None);
            }
            self.split.advance(PREFIX_LEN);
            return Ok(Some(self.split.split_to(len).freeze()));
        }
        let Some(len) = self.message_len(&self.chunk)? else {
            return Ok(None);
        };
        if self.chunk.len() < PREFIX_LEN + len {
            // The message goes on in later chunks: gather it in `split`.
            self.split.reserve(PREFIX_LEN + len);
            self.split.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
            return Ok(None);
        }
        let message = self.chunk.slice(PREFIX_LEN..PREFIX_LEN + len);
        self.chunk.advance(PREFIX_LEN + len);
        Ok(Some(message))
    }

    /// The length of the message `buf` starts with, once its prefix is
    /// there; an error for a flag or length this decoder refuses.
    fn message_len(&self, buf: &[u8]) -> Result<Option<usize>, Status> {
        let [flag, a, b, c, d, ..] = *buf else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        match flag {
            0 => {}
            1 => {
                return Err(match self.encoding.as_deref() {
                    None | Some("identity") => Status::internal(
                        "grpc: compressed flag set with identity or empty encoding",
                    ),
                    Some(other) => Status::unimplemented(format!(
                        "grpc: Decompressor is not installed for grpc-encoding \"{other}\""
                    )),
                })
            }
            other => {
                return Err(Status::internal(format!(
                    "grpc: received unexpected payload format {other}"
                )))
            }
        }
        if len > self.max_message_len {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {})",
                self.max_message_len
            )));
        }
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::status::Code;

    #[test]
    fn decodes_messages_split_across_chunks() {
        let a = frame_bytes(b"hello");
        let b = frame_bytes(b"");
        let c = frame_bytes(&[7u8; 300]);
        let mut all = Vec::new();
        all.extend_from_slice(&a);
        all.extend_from_slice(&b);
        all.extend_from_slice(&c);
        let mut dec = FrameDecoder::new(1024, None);
        let mut out = Vec::new();
        for chunk in all.chunks(3) {
            dec.push(Bytes::copy_from_slice(chunk));
            while let Some(m) = dec.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"hello");
        assert!(out[1].is_empty());
        assert_eq!(out[2].len(), 300);
        assert!(dec.is_empty());
    }

    #[test]
    fn a_message_whole_in_its_chunk_is_a_slice_of_it() {
        let mut chunk = frame_bytes(b"first").to_vec();
        chunk.extend_from_slice(&frame_bytes(b"second"));
        let third = frame_bytes(&[9u8; 40]);
        // The third message starts here and ends in the next chunk.
        chunk.extend_from_slice(&third[..20]);
        let chunk = Bytes::from(chunk);
        let mut dec = FrameDecoder::new(1024, None);
        dec.push(chunk.clone());
        let first = dec.next_message().unwrap().unwrap();
        assert_eq!(&first[..], b"first");
        assert_eq!(first.as_ptr(), chunk[PREFIX_LEN..].as_ptr(), "not copied");
        let next = dec.next_message().unwrap().unwrap();
        assert_eq!(&next[..], b"second");
        assert_eq!(next.as_ptr(), chunk[2 * PREFIX_LEN + 5..].as_ptr());
        assert_eq!(dec.next_message().unwrap(), None);
        assert!(!dec.is_empty());
        let mut rest = third[20..].to_vec();
        rest.extend_from_slice(&frame_bytes(b"after"));
        dec.push(Bytes::from(rest));
        assert_eq!(&dec.next_message().unwrap().unwrap()[..], &[9u8; 40][..]);
        assert_eq!(&dec.next_message().unwrap().unwrap()[..], b"after");
        assert_eq!(dec.next_message().unwrap(), None);
        assert!(dec.is_empty());
    }

    #[test]
    fn oversize_is_refused_from_the_prefix_alone() {
        let mut dec = FrameDecoder::new(10, None);
        dec.push(Bytes::from_static(&[0, 0, 0, 1, 0])); // 256 bytes announced, none sent
        let err = dec.next_message().unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted);
        assert_eq!(
            err.message,
            "grpc: received message larger than max (256 vs. 10)"
        );
    }

    #[test]
    fn compressed_flag_without_encoding_is_internal() {
        let mut dec = FrameDecoder::new(10, None);
        dec.push(Bytes::from_static(&[1, 0, 0, 0, 1, 9]));
        assert_eq!(dec.next_message().unwrap_err().code, Code::Internal);
        let mut dec = FrameDecoder::new(10, Some("gzip".into()));
        dec.push(Bytes::from_static(&[1, 0, 0, 0, 1, 9]));
        let err = dec.next_message().unwrap_err();
        assert_eq!(err.code, Code::Unimplemented);
        assert!(err.message.contains("gzip"));
    }
}
