//! Kafka's framing: a 4-byte big-endian length, then that many bytes.

use bytes::{Bytes, BytesMut};
use gateway_api::HandlerError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one request frame; `None` when the client closed the connection
/// between frames. A frame longer than `max` ends the connection before
/// anything of that size is allocated.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, HandlerError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let length = i32::from_be_bytes(length);
    let length = usize::try_from(length)
        .map_err(|_| HandlerError::Protocol(format!("negative frame length {length}")))?;
    if length > max {
        return Err(HandlerError::Protocol(format!(
            "a frame of {length} bytes is over the limit of {max}"
        )));
    }
    let mut frame = BytesMut::zeroed(length);
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame.freeze()))
}

/// Writes one response frame.
pub async fn write<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> Result<(), HandlerError> {
    let length = u32::try_from(body.len())
        .map_err(|_| HandlerError::Protocol(format!("a response of {} bytes", body.len())))?;
    writer.write_all(&length.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_over_the_limit_end_the_connection_unallocated() {
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read(&mut input, 1024).await.unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");

        let mut input: &[u8] = &[0, 0, 0, 3, 1, 2, 3, 0, 0];
        let frame = read(&mut input, 1024).await.unwrap().unwrap();
        assert_eq!(&frame[..], &[1, 2, 3]);
        // A connection closed within a length ends like one closed between
        // frames.
        assert!(read(&mut input, 1024).await.unwrap().is_none());
        let mut empty: &[u8] = &[];
        assert!(read(&mut empty, 1024).await.unwrap().is_none());
    }
}
