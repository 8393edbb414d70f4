//! A record batch (magic 2) as a Produce request carries it. The input's
//! batch length, magic byte and CRC-32C are set right before decoding, so the
//! fuzzer spends its time in the attributes, the record count and the records
//! rather than on checksums it would almost never guess. Compressed batches
//! are refused by the decompression hook, as in `kafka_request_decode`.
#![no_main]

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use libfuzzer_sys::fuzz_target;

/// Base offset (8), batch length (4), partition leader epoch (4).
const MAGIC_OFFSET: usize = 16;
/// Magic (1), then the CRC-32C (4) of everything after it.
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;

fuzz_target!(|data: &[u8]| {
    if data.len() < ATTRIBUTES_OFFSET {
        return;
    }
    let mut batch = data.to_vec();
    let batch_length = (batch.len() - 12) as u32;
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    batch[MAGIC_OFFSET] = 2;
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());

    let mut batch = Bytes::from(batch);
    let _ = RecordBatchDecoder::decode_with_custom_compression(&mut batch, Some(uncompressed_only));
});

/// The decompression hook: uncompressed batches pass, the others are refused.
fn uncompressed_only(records: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    match compression {
        Compression::None => Ok(std::mem::take(records)),
        other => anyhow::bail!("{other:?} batches are not fuzzed here"),
    }
}
