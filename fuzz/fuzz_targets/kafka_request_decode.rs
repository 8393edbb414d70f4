//! A Kafka request as the handler reads it off a connection, minus the
//! 4-byte size prefix: the request header, at the header version its api key
//! and version imply, then the body of that api key at that version. Every
//! api key the crate knows is reachable. The partitions' record batches of a
//! Produce request are decoded too, as the handler does, with compressed
//! batches refused (the handler decompresses them itself, under its own cap).
//!
//! Any input must come back as `Ok` or `Err`: a panic, an abort or an
//! allocation beyond the malloc limit is a finding.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};
use kafka_protocol::protocol::decode_request_header_from_buffer;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut frame = Bytes::copy_from_slice(data);
    let Ok(header) = decode_request_header_from_buffer(&mut frame) else {
        return;
    };
    let Ok(api_key) = ApiKey::try_from(header.request_api_key) else {
        return;
    };
    let Ok(request) = RequestKind::decode(api_key, &mut frame, header.request_api_version) else {
        return;
    };
    if let RequestKind::Produce(produce) = request {
        for topic in produce.topic_data {
            for partition in topic.partition_data {
                if let Some(mut records) = partition.records {
                    let _ = RecordBatchDecoder::decode_with_custom_compression(
                        &mut records,
                        Some(uncompressed_only),
                    );
                }
            }
        }
    }
});

/// The decompression hook: uncompressed batches pass, the others are refused.
fn uncompressed_only(records: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    match compression {
        Compression::None => Ok(std::mem::take(records)),
        other => anyhow::bail!("{other:?} batches are not fuzzed here"),
    }
}
