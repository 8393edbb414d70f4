//! The on-disk form of one record: a length-prefixed, checksummed frame.
//!
//! ```text
//! frame  = len:u32  crc:u32  body[len]            (all integers big-endian)
//! crc    = crc32c(len bytes ++ body)
//! body   = offset:u64  publish_time:u64  flags:u8
//!          [event_time:u64]                       if flags & 1
//!          [key_len:u32  key]                     if flags & 2
//!          property_count:u32  (k_len:u32 k  v_len:u32 v)*
//!          payload                                (the rest of the body)
//! ```
//!
//! The offset sits first in the body so recovery can tell a plausible frame
//! from noise before it computes a checksum. Decoding takes `Bytes` so key
//! and payload are slices of the buffer that was read, not copies.

use bytes::{Buf, Bytes};
use gateway_api::NewMessage;

use super::Record;

/// Bytes before the body: the length and the checksum.
pub(crate) const HEADER_LEN: usize = 8;
/// The smallest body: offset, publish time, flags, property count.
pub(crate) const MIN_BODY_LEN: usize = 8 + 8 + 1 + 4;
/// The smallest frame, used to bound how many records a span can hold.
pub(crate) const MIN_FRAME_LEN: usize = HEADER_LEN + MIN_BODY_LEN;

const FLAG_EVENT_TIME: u8 = 1;
const FLAG_KEY: u8 = 2;

/// Why a frame's body could not be turned into a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A field claims more bytes than the body has.
    #[error("body truncated while reading {0}")]
    Truncated(&'static str),
    /// Flags this version does not write.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// A property key or value is not UTF-8.
    #[error("property is not valid UTF-8")]
    InvalidUtf8,
    /// The checksum in the header does not match the bytes.
    #[error("checksum mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    Checksum {
        /// The checksum stored in the frame header.
        expected: u32,
        /// The checksum of the bytes as read.
        actual: u32,
    },
}

/// Bytes of the body [`encode`] writes for `message`.
pub(crate) fn body_len(message: &NewMessage) -> usize {
    MIN_BODY_LEN
        + message.event_time.map_or(0, |_| 8)
        + message.key.as_ref().map_or(0, |k| 4 + k.len())
        + message
            .properties
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>()
        + message.payload.len()
}

/// Bytes of the whole frame [`encode`] writes for `message`.
pub(crate) fn frame_len(message: &NewMessage) -> usize {
    HEADER_LEN + body_len(message)
}

/// The frame checksum: it covers the length field too, so a flipped length
/// bit cannot pair a stale checksum with a different span of bytes.
pub(crate) fn checksum(len_field: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_field), body)
}

/// Appends the frame of `message` at `offset` and `publish_time` to `buf`.
///
/// The caller has checked `frame_len(message)` against the record limit,
/// which is far below `u32::MAX`, so every length fits its `u32` field.
pub(crate) fn encode(buf: &mut Vec<u8>, offset: u64, publish_time: u64, message: &NewMessage) {
    let start = buf.len();
    let body_len = body_len(message);
    buf.reserve(HEADER_LEN + body_len);
    buf.extend_from_slice(&(body_len as u32).to_be_bytes());
    buf.extend_from_slice(&[0u8; 4]); // checksum, filled in below
    buf.extend_from_slice(&offset.to_be_bytes());
    buf.extend_from_slice(&publish_time.to_be_bytes());
    let mut flags = 0u8;
    if message.event_time.is_some() {
        flags |= FLAG_EVENT_TIME;
    }
    if message.key.is_some() {
        flags |= FLAG_KEY;
    }
    buf.push(flags);
    if let Some(t) = message.event_time {
        buf.extend_from_slice(&t.to_be_bytes());
    }
    if let Some(key) = &message.key {
        buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
        buf.extend_from_slice(key);
    }
    buf.extend_from_slice(&(message.properties.len() as u32).to_be_bytes());
    for (k, v) in &message.properties {
        buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        buf.extend_from_slice(v.as_bytes());
    }
    buf.extend_from_slice(&message.payload);
    let len_field = (body_len as u32).to_be_bytes();
    let crc = checksum(len_field, &buf[start + HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// The two header fields of a frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// Length of the body that follows the header.
    pub(crate) body_len: u32,
    /// crc32c over the length field and the body.
    pub(crate) crc: u32,
}

/// Splits the first [`HEADER_LEN`] bytes of a frame into its fields.
pub(crate) fn parse_header(bytes: [u8; HEADER_LEN]) -> Header {
    let [a, b, c, d, e, f, g, h] = bytes;
    Header {
        body_len: u32::from_be_bytes([a, b, c, d]),
        crc: u32::from_be_bytes([e, f, g, h]),
    }
}

/// Checks `body` against `header`'s checksum.
pub(crate) fn verify(header: Header, body: &[u8]) -> Result<(), DecodeError> {
    let actual = checksum(header.body_len.to_be_bytes(), body);
    if actual == header.crc {
        Ok(())
    } else {
        Err(DecodeError::Checksum {
            expected: header.crc,
            actual,
        })
    }
}

/// The record offset stored in a body, read without decoding the rest.
pub(crate) fn peek_offset(body: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Decodes a body whose checksum was already verified. Never panics, whatever
/// the bytes: every length is checked against what is left before use.
pub(crate) fn decode_body(body: Bytes) -> Result<Record, DecodeError> {
    let mut cur = Cursor { bytes: body, at: 0 };
    let offset = cur.u64("offset")?;
    let publish_time = cur.u64("publish time")?;
    let flags = cur.u8("flags")?;
    if flags & !(FLAG_EVENT_TIME | FLAG_KEY) != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let event_time = if flags & FLAG_EVENT_TIME != 0 {
        Some(cur.u64("event time")?)
    } else {
        None
    };
    let key = if flags & FLAG_KEY != 0 {
        let len = cur.u32("key length")?;
        Some(cur.bytes(len, "key")?)
    } else {
        None
    };
    let count = cur.u32("property count")?;
    // Each property needs at least 8 bytes, so this bounds the allocation by
    // what the body really holds, not by what the count claims.
    let mut properties = Vec::with_capacity((count as usize).min(cur.left() / 8));
    for _ in 0..count {
        let k_len = cur.u32("property key length")?;
        let k = cur.string(k_len, "property key")?;
        let v_len = cur.u32("property value length")?;
        let v = cur.string(v_len, "property value")?;
        properties.push((k, v));
    }
    Ok(Record {
        offset,
        publish_time,
        event_time,
        key,
        properties,
        payload: cur.rest(),
    })
}

/// Reads fields off the front of a body. Fixed-size fields are read in
/// place; only the key and the payload become `Bytes` (each slice of the
/// shared buffer costs an atomic count on it).
struct Cursor {
    bytes: Bytes,
    /// Where what is left of the body starts.
    at: usize,
}

impl Cursor {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// The next `len` bytes, as a slice of the body.
    fn slice(&mut self, len: u32, what: &'static str) -> Result<&[u8], DecodeError> {
        let start = self.at;
        let end = start
            .checked_add(len as usize)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError::Truncated(what))?;
        self.at = end;
        Ok(&self.bytes[start..end])
    }

    /// The next `len` bytes, as `Bytes` sharing the body's buffer.
    fn bytes(&mut self, len: u32, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.at;
        self.slice(len, what)?;
        Ok(self.bytes.slice(start..self.at))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.slice(N as u32, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn string(&mut self, len: u32, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.slice(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// The rest of the body.
    fn rest(self) -> Bytes {
        let Cursor { mut bytes, at } = self;
        bytes.advance(at);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes a whole frame the way the log does: header, checksum, body.
    fn decode_frame(frame: &[u8]) -> Result<Record, DecodeError> {
        let header_bytes: [u8; HEADER_LEN] = frame
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::Truncated("header"))?;
        let header = parse_header(header_bytes);
        let body = frame
            .get(HEADER_LEN..)
            .filter(|b| b.len() == header.body_len as usize)
            .ok_or(DecodeError::Truncated("body"))?;
        verify(header, body)?;
        decode_body(Bytes::copy_from_slice(body))
    }

    fn message() -> impl Strategy<Value = NewMessage> {
        (
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec((".{0,12}", ".{0,24}"), 0..6),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(payload, key, properties, event_time)| NewMessage {
                payload: payload.into(),
                key: key.map(Bytes::from),
                properties,
                event_time,
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_same_record(
            m in message(), offset in any::<u64>(), time in any::<u64>()
        ) {
            let mut buf = Vec::new();
            encode(&mut buf, offset, time, &m);
            prop_assert_eq!(buf.len(), frame_len(&m));
            let r = decode_frame(&buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(r.offset, offset);
            prop_assert_eq!(r.publish_time, time);
            prop_assert_eq!(r.event_time, m.event_time);
            prop_assert_eq!(r.key, m.key);
            prop_assert_eq!(r.properties, m.properties);
            prop_assert_eq!(r.payload, m.payload);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
            let _ = decode_body(Bytes::from(bytes));
        }

        #[test]
        fn any_flipped_bit_is_caught_by_the_checksum(m in message(), bit in any::<proptest::sample::Index>()) {
            let mut buf = Vec::new();
            encode(&mut buf, 7, 9, &m);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(&buf).is_err());
        }
    }
}
