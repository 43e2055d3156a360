//! Writing to an HTTP/2 stream within its flow-control window.

use std::future::poll_fn;

use bytes::Bytes;
use h2::SendStream;

/// Sends `data` on `stream`, waiting for send capacity so a slow reader
/// slows the writer instead of growing an unbounded buffer.
pub async fn write_all(stream: &mut SendStream<Bytes>, data: Bytes) -> Result<(), String> {
    write(stream, data, false).await
}

/// As [`write_all`]; with `end`, the final frame also ends the stream.
pub async fn write(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), String> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => {
                let chunk = data.split_to(n.min(data.len()));
                let last = end && data.is_empty();
                stream.send_data(chunk, last).map_err(|e| e.to_string())?;
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("stream closed".to_string()),
        }
    }
    Ok(())
}
