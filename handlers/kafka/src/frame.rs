//! Kafka's framing: a 4-byte big-endian length, then that many bytes.

use bytes::{Buf, Bytes, BytesMut};
use gateway_api::{ByteBudget, HandlerError, Reservation};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A request frame, with the bytes it holds of the gateway's inbound
/// budget: keep it until the request is answered.
pub struct Frame {
    pub body: Bytes,
    pub held: Reservation,
}

/// Reads one request frame; `None` when the client closed the connection
/// between frames. A frame longer than `max` ends the connection before
/// anything of that size is allocated; a frame that does not fit in
/// `budget` waits, unread, until it does.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: &ByteBudget,
) -> Result<Option<Frame>, HandlerError> {
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
    let held = budget.reserve(length).await;
    let mut body = BytesMut::zeroed(length);
    reader.read_exact(&mut body).await?;
    Ok(Some(Frame {
        body: body.freeze(),
        held,
    }))
}

/// Writes one response frame.
pub async fn write<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> Result<(), HandlerError> {
    let length = u32::try_from(body.len())
        .map_err(|_| HandlerError::Protocol(format!("a response of {} bytes", body.len())))?;
    // One write for length and body, so a small response is one packet,
    // not a 4-byte one followed by the rest.
    let length = length.to_be_bytes();
    let mut frame = Buf::chain(length.as_slice(), body);
    writer.write_all_buf(&mut frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Waits, up to `within`, for the client to close the connection after the
/// last response was written, discarding whatever it still sends. Some
/// clients (kafka-python) drop a response that arrives together with the
/// connection's end, so the gateway lets the client close first; Kafka
/// brokers likewise delay closing after a failed authentication
/// (`connection.failed.authentication.delay.ms`).
pub async fn linger<R: AsyncRead + Unpin>(reader: &mut R, within: std::time::Duration) {
    let mut discard = [0u8; 1024];
    let drain = async { while let Ok(1..) = reader.read(&mut discard).await {} };
    let _ = tokio::time::timeout(within, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test]
    async fn frames_over_the_limit_end_the_connection_unallocated() {
        let budget = ByteBudget::new(1024);
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
        let err = read(&mut input, 1024, &budget).await.err().unwrap();
        assert!(err.to_string().contains("over the limit"), "{err}");

        let mut input: &[u8] = &[0, 0, 0, 3, 1, 2, 3, 0, 0];
        let frame = read(&mut input, 1024, &budget).await.unwrap().unwrap();
        assert_eq!(&frame.body[..], &[1, 2, 3]);
        // A connection closed within a length ends like one closed between
        // frames.
        assert!(read(&mut input, 1024, &budget).await.unwrap().is_none());
        let mut empty: &[u8] = &[];
        assert!(read(&mut empty, 1024, &budget).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn linger_ends_when_the_client_closes_or_at_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"ignored").await.unwrap();
        drop(client);
        let started = tokio::time::Instant::now();
        linger(&mut server, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1), "ended at EOF");

        let (_client, mut server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        linger(&mut server, Duration::from_secs(5)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "ended at the deadline"
        );
    }

    #[tokio::test]
    async fn a_frame_waits_unread_until_the_inbound_budget_has_room() {
        let budget = ByteBudget::new(8);
        let mut first: &[u8] = &[0, 0, 0, 6, 1, 2, 3, 4, 5, 6];
        let held = read(&mut first, 1024, &budget).await.unwrap().unwrap();
        let mut second: &[u8] = &[0, 0, 0, 4, 7, 8, 9, 10];
        {
            let waiting = read(&mut second, 1024, &budget);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                    .await
                    .is_err(),
                "4 more bytes do not fit while 6 of 8 are held"
            );
        }
        drop(held);
        assert_eq!(budget.available(), 8, "the dropped wait reserved nothing");
        let mut rest: &[u8] = &[0, 0, 0, 4, 7, 8, 9, 10];
        let frame = read(&mut rest, 1024, &budget).await.unwrap().unwrap();
        assert_eq!(&frame.body[..], &[7, 8, 9, 10]);
        assert_eq!(budget.available(), 4);
    }
}
