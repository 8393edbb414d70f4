//! pulsar-gateway patch: decoding inputs that lie about their lengths and
//! counts, or whose numbers overflow (see PATCHES.md). Each must come back
//! as a result, never a panic, and a lie as an error, without an allocation
//! sized by it.
//!
//! This test binary's allocator notes the largest allocation each thread
//! asks for, and refuses any above 1 GiB; a refusal aborts the process, as
//! an allocation that size would on the gateway's host.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{decode_request_header_from_buffer, types, Decoder, StrBytes};
use crate::records::{Compression, RecordBatchDecoder};

/// Allocations above this are refused.
const REFUSED: usize = 1 << 30;

/// What decoding a lying input of a few bytes may allocate at most.
const SMALL: usize = 64 << 10;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

struct NotingAllocator;

impl NotingAllocator {
    fn note(size: usize) -> bool {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        size <= REFUSED
    }
}

unsafe impl GlobalAlloc for NotingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::note(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: NotingAllocator = NotingAllocator;

/// Runs `decode` and returns its result with the largest allocation it made.
fn largest_allocation<R>(decode: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = decode();
    (result, LARGEST.with(Cell::get))
}

/// Asserts that `decode` fails with a small allocation at most.
fn assert_refused<T: std::fmt::Debug>(what: &str, decode: impl FnOnce() -> anyhow::Result<T>) {
    let (result, largest) = largest_allocation(decode);
    assert!(result.is_err(), "{what}: decoded {result:?}");
    assert!(largest <= SMALL, "{what}: allocated {largest} bytes");
}

#[cfg(feature = "broker")]
#[test]
fn gateway_patch_metadata_v0_array_count_beyond_the_body() {
    use crate::messages::MetadataRequest;
    use crate::protocol::Decodable;

    // The body that made a test process ask for ~154 GB: 2^31 - 1 topics,
    // then one topic "a", then nothing.
    let body: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 0x00, 0x01, b'a'];
    assert_refused("7-byte body", || {
        MetadataRequest::decode(&mut Bytes::from_static(body), 0)
    });
    assert_refused("count alone", || {
        MetadataRequest::decode(&mut Bytes::from_static(&body[..4]), 0)
    });
    // Flexible versions: a compact array of 2^32 - 2 topics.
    assert_refused("compact count", || {
        MetadataRequest::decode(&mut Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]), 12)
    });
}

#[test]
fn gateway_patch_array_counts_beyond_the_buffer() {
    assert_refused("array", || {
        let decoded: anyhow::Result<Vec<i64>> =
            types::Array(types::Int64).decode(&mut Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]));
        decoded
    });
    assert_refused("compact array", || {
        let decoded: anyhow::Result<Vec<i64>> = types::CompactArray(types::Int64)
            .decode(&mut Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]));
        decoded
    });
}

#[test]
fn gateway_patch_string_and_bytes_lengths_beyond_the_buffer() {
    let int16_max: &[u8] = &[0x7f, 0xff, b'a'];
    let int32_max: &[u8] = &[0x7f, 0xff, 0xff, 0xff, b'a'];
    let varint_max: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f, b'a'];
    assert_refused("string", || {
        let decoded: anyhow::Result<std::string::String> =
            types::String.decode(&mut Bytes::from_static(int16_max));
        decoded
    });
    assert_refused("string as StrBytes", || {
        let decoded: anyhow::Result<StrBytes> =
            types::String.decode(&mut Bytes::from_static(int16_max));
        decoded
    });
    assert_refused("compact string", || {
        let decoded: anyhow::Result<std::string::String> =
            types::CompactString.decode(&mut Bytes::from_static(varint_max));
        decoded
    });
    assert_refused("compact string as StrBytes", || {
        let decoded: anyhow::Result<StrBytes> =
            types::CompactString.decode(&mut Bytes::from_static(varint_max));
        decoded
    });
    assert_refused("bytes", || {
        let decoded: anyhow::Result<Vec<u8>> =
            types::Bytes.decode(&mut Bytes::from_static(int32_max));
        decoded
    });
    assert_refused("bytes as Bytes", || {
        let decoded: anyhow::Result<Bytes> =
            types::Bytes.decode(&mut Bytes::from_static(int32_max));
        decoded
    });
    assert_refused("compact bytes", || {
        let decoded: anyhow::Result<Vec<u8>> =
            types::CompactBytes.decode(&mut Bytes::from_static(varint_max));
        decoded
    });
    // The same lies read from a slice, which copies what it reads.
    assert_refused("compact bytes from a slice", || {
        let decoded: anyhow::Result<Vec<u8>> = types::CompactBytes.decode(&mut { varint_max });
        decoded
    });
}

#[test]
fn gateway_patch_request_header_shorter_than_its_api_key_and_version() {
    for short in [&[][..], &[0x00], &[0x00, 0x03], &[0x00, 0x03, 0x00]] {
        assert_refused("short header", || {
            decode_request_header_from_buffer(&mut Bytes::from_static(short))
        });
    }
}

/// A record batch, magic 2, uncompressed, that claims `record_count` records
/// and carries `records`, with a correct CRC.
fn record_batch(record_count: i32, records: &[u8]) -> Bytes {
    record_batch_at(0, 0, record_count, records)
}

/// `record_batch` with the given base offset and first timestamp.
fn record_batch_at(
    base_offset: i64,
    first_timestamp: i64,
    record_count: i32,
    records: &[u8],
) -> Bytes {
    let mut checked = BytesMut::new();
    checked.put_i16(0); // attributes: no compression, creation time
    checked.put_i32(0); // last offset delta
    checked.put_i64(first_timestamp);
    checked.put_i64(0); // max timestamp
    checked.put_i64(-1); // producer id
    checked.put_i16(-1); // producer epoch
    checked.put_i32(-1); // base sequence
    checked.put_i32(record_count);
    checked.put_slice(records);

    let mut batch = BytesMut::new();
    batch.put_i64(base_offset);
    batch.put_i32((4 + 1 + 4 + checked.len()) as i32); // batch length
    batch.put_i32(-1); // partition leader epoch
    batch.put_i8(2); // magic
    batch.put_u32(crc32c::crc32c(&checked));
    batch.put_slice(&checked);
    batch.freeze()
}

#[test]
fn gateway_patch_record_count_beyond_the_batch() {
    assert_refused("2^31 - 1 records, none there", || {
        RecordBatchDecoder::decode(&mut record_batch(i32::MAX, &[]))
    });
    assert_refused("2^31 - 1 records, none there, custom decompression", || {
        RecordBatchDecoder::decode_with_custom_compression(
            &mut record_batch(i32::MAX, &[]),
            Some(|records: &mut Bytes, compression| {
                assert_eq!(compression, Compression::None);
                Ok(std::mem::take(records))
            }),
        )
    });
}

#[test]
fn gateway_patch_record_header_count_beyond_the_record() {
    // One record of 10 bytes: attributes, timestamp delta 0, offset delta 0,
    // no key, no value, then 2^31 - 1 headers (zigzag varint), and no header.
    let record = [
        0x14, 0x00, 0x00, 0x00, 0x01, 0x01, 0xfe, 0xff, 0xff, 0xff, 0x0f,
    ];
    assert_refused("2^31 - 1 headers", || {
        RecordBatchDecoder::decode(&mut record_batch(1, &record))
    });
}

#[test]
fn gateway_patch_record_key_and_value_lengths_beyond_the_record() {
    // One record of 10 bytes whose key claims 2^31 - 1 bytes.
    let key = [
        0x14, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x00,
    ];
    assert_refused("key", || {
        RecordBatchDecoder::decode(&mut record_batch(1, &key))
    });
    // No key, and a value that claims 2^31 - 1 bytes.
    let value = [
        0x14, 0x00, 0x00, 0x00, 0x01, 0xfe, 0xff, 0xff, 0xff, 0x0f, 0x00,
    ];
    assert_refused("value", || {
        RecordBatchDecoder::decode(&mut record_batch(1, &value))
    });
}

#[test]
fn gateway_patch_record_deltas_past_i64_max_wrap_instead_of_panicking() {
    // One record of 6 bytes: timestamp delta 1, offset delta 1, no key, no
    // value, no headers; in a batch at offset and timestamp i64::MAX.
    let record = [0x0c, 0x00, 0x02, 0x02, 0x01, 0x01, 0x00];
    let decoded =
        RecordBatchDecoder::decode(&mut record_batch_at(i64::MAX, i64::MAX, 1, &record)).unwrap();
    assert_eq!(decoded.records[0].offset, i64::MIN);
    assert_eq!(decoded.records[0].timestamp, i64::MIN);
}

#[test]
fn gateway_patch_true_counts_beyond_the_preallocation_still_decode() {
    // 300,000 Int64s: more than the 1 MiB reserved up front (131,072).
    let count = 300_000;
    let mut wire = BytesMut::new();
    wire.put_i32(count);
    for i in 0..count {
        wire.put_i64(i.into());
    }
    let decoded: Vec<i64> = types::Array(types::Int64)
        .decode(&mut wire.freeze())
        .unwrap();
    assert_eq!(decoded.len(), count as usize);
    assert_eq!(decoded[count as usize - 1], i64::from(count - 1));

    // A batch of three records, each with a header.
    let record = [
        0x14, 0x00, 0x00, 0x00, 0x01, 0x01, 0x02, 0x02, b'h', 0x02, b'v',
    ];
    let batch: Vec<u8> = std::iter::repeat_n(&record[..], 3)
        .flatten()
        .copied()
        .collect();
    let decoded = RecordBatchDecoder::decode(&mut record_batch(3, &batch)).unwrap();
    assert_eq!(decoded.records.len(), 3);
    assert_eq!(
        decoded.records[2].headers,
        vec![(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"v")))]
    );
}

#[test]
fn gateway_patch_repeated_header_keys_are_all_kept_in_order() {
    // One record, no key, no value, two headers h=a then h=b.
    let record = [
        0x1c, 0x00, 0x00, 0x00, 0x01, 0x01, 0x04, 0x02, b'h', 0x02, b'a', 0x02, b'h', 0x02, b'b',
    ];
    let decoded = RecordBatchDecoder::decode(&mut record_batch(1, &record)).unwrap();
    let h = StrBytes::from_static_str("h");
    assert_eq!(
        decoded.records[0].headers,
        vec![
            (h.clone(), Some(Bytes::from_static(b"a"))),
            (h, Some(Bytes::from_static(b"b"))),
        ]
    );
}
