//! Produce, and the idempotent producer's InitProducerId and sequence
//! checks.
//!
//! A batch's records are published together, in order
//! (`Backend::publish_batch`: one group commit on the embedded store, one
//! round of sends on Pulsar), and the partition answered once all are
//! persisted, with the first record's offset. An idempotent
//! producer's batch is checked against the partition's sequence state: the
//! next expected sequence is accepted, one of the last five batches again
//! is a duplicate (answered with its first offset, not published again),
//! anything else is out of order. The state is this gateway's memory.
//!
//! A compressed batch (gzip, snappy, lz4, zstd) is decompressed under a cap
//! of `max_frame_bytes` (see [`crate::decompress`]), on a blocking thread,
//! so inflating up to 100 MiB never stalls the connections sharing this
//! one's runtime thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use bytes::{Buf, Bytes};
use gateway_api::{NewMessage, TopicName};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};

use crate::api::{error_code, Connection};
use crate::decompress::{decompress, DecompressError};
use crate::metadata;

/// Batches remembered per producer and partition for deduplication (as
/// Kafka brokers do: a producer has at most five in flight).
const RECENT_BATCHES: usize = 5;

/// Producer-partition states kept at most; past it the oldest-looking are
/// dropped (their producers' next batch is then accepted as it comes).
const MAX_STATES: usize = 100_000;

/// Where a batch's length (4 bytes, big-endian) starts: after its base
/// offset. The length counts the bytes after it.
const BATCH_LENGTH_OFFSET: usize = 8;

/// Where a batch's attributes start (after base offset, length, partition
/// leader epoch, magic and CRC); their low three bits name the codec.
const ATTRIBUTES_OFFSET: usize = 21;

/// A producer's sequence state on one partition.
struct Sequence {
    epoch: i16,
    /// The sequence the next batch must start with.
    next: i32,
    /// The last batches accepted: first and last sequence, first offset.
    recent: VecDeque<(i32, i32, i64)>,
}

/// An idempotent producer's batch on one partition: who sent it, and the
/// sequences of its first and last records.
#[derive(Clone, Copy)]
struct BatchSeq {
    producer: i64,
    epoch: i16,
    first: i32,
    last: i32,
}

/// What to do with an idempotent producer's batch.
enum Check {
    Accept,
    Duplicate(i64),
    Reject(ResponseError),
}

/// Idempotent producers: their ids and their sequence states.
pub struct Producers {
    next_id: AtomicI64,
    states: Mutex<HashMap<(i64, TopicName), Sequence>>,
}

impl Default for Producers {
    /// Ids start at a point drawn from the clock and process, so two
    /// gateways hand out different ids.
    fn default() -> Producers {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let seed = (nanos ^ (i64::from(std::process::id()) << 40)) & (i64::MAX >> 8);
        Producers {
            next_id: AtomicI64::new(seed.max(1)),
            states: Mutex::new(HashMap::new()),
        }
    }
}

impl Producers {
    /// A new producer id at epoch 0; transactions are not served.
    pub fn init(&self, request: &InitProducerIdRequest) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        if request.transactional_id.is_some() {
            response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            response.producer_id = ProducerId(-1);
            response.producer_epoch = -1;
            return response;
        }
        response.producer_id = ProducerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        response.producer_epoch = 0;
        response
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, TopicName), Sequence>> {
        // Every change is one insert or field update: consistent even if
        // a holder panicked.
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, partition: &TopicName, batch: BatchSeq) -> Check {
        let states = self.states();
        let Some(state) = states.get(&(batch.producer, partition.clone())) else {
            return Check::Accept;
        };
        if batch.epoch < state.epoch {
            return Check::Reject(ResponseError::InvalidProducerEpoch);
        }
        if batch.epoch > state.epoch || batch.first == state.next {
            return Check::Accept;
        }
        match state
            .recent
            .iter()
            .find(|(f, l, _)| (*f, *l) == (batch.first, batch.last))
        {
            Some(&(_, _, offset)) => Check::Duplicate(offset),
            None => Check::Reject(ResponseError::OutOfOrderSequenceNumber),
        }
    }

    fn accepted(&self, partition: &TopicName, batch: BatchSeq, offset: i64) {
        let mut states = self.states();
        if states.len() >= MAX_STATES {
            if let Some(key) = states.keys().next().cloned() {
                states.remove(&key);
            }
        }
        let state = states
            .entry((batch.producer, partition.clone()))
            .or_insert_with(|| Sequence {
                epoch: batch.epoch,
                next: 0,
                recent: VecDeque::new(),
            });
        if batch.epoch != state.epoch {
            state.epoch = batch.epoch;
            state.recent.clear();
        }
        state.next = batch.last.wrapping_add(1);
        if state.recent.len() == RECENT_BATCHES {
            state.recent.pop_front();
        }
        state.recent.push_back((batch.first, batch.last, offset));
    }
}

/// Serves a Produce request; `None` for acks = 0 (no response).
pub async fn handle(conn: &Connection, request: ProduceRequest) -> Option<ProduceResponse> {
    let mut response = ProduceResponse::default();
    for topic in request.topic_data {
        let mut topic_response = TopicProduceResponse::default();
        let name = topic.name.0.to_string();
        topic_response.name = topic.name;
        for data in topic.partition_data {
            let mut partition = PartitionProduceResponse::default();
            partition.index = data.index;
            partition.log_append_time_ms = -1;
            let outcome = if request.transactional_id.is_some() {
                Err(ResponseError::TransactionalIdAuthorizationFailed)
            } else {
                produce(conn, &name, data.index, data.records.unwrap_or_default()).await
            };
            match outcome {
                Ok(offset) => partition.base_offset = offset,
                Err(code) => {
                    partition.error_code = code.code();
                    partition.base_offset = -1;
                }
            }
            topic_response.partition_responses.push(partition);
        }
        response.responses.push(topic_response);
    }
    (request.acks != 0).then_some(response)
}

/// The backend topic of a Kafka partition.
async fn partition_topic(
    conn: &Connection,
    name: &str,
    index: i32,
) -> Result<TopicName, ResponseError> {
    let topic = metadata::resolve(conn, name)?;
    let count = conn.partition_counts.get(conn, &topic).await?;
    match (count, u32::try_from(index)) {
        (0, Ok(0)) => Ok(topic),
        (n, Ok(p)) if p < n => Ok(topic.partition(p)),
        _ => Err(ResponseError::UnknownTopicOrPartition),
    }
}

/// Publishes the record batches of one partition; the first offset.
async fn produce(
    conn: &Connection,
    name: &str,
    index: i32,
    mut records: Bytes,
) -> Result<i64, ResponseError> {
    let target = partition_topic(conn, name, index).await?;
    let mut first_offset = None;
    while records.has_remaining() {
        let records_of_batch = decode_next_batch(&mut records, conn.config.max_frame_bytes).await?;
        let Some(head) = records_of_batch.first() else {
            continue;
        };
        let (producer, epoch, first) = (head.producer_id, head.producer_epoch, head.sequence);
        let last =
            first.wrapping_add(i32::try_from(records_of_batch.len()).unwrap_or(i32::MAX) - 1);
        let batch = BatchSeq {
            producer,
            epoch,
            first,
            last,
        };
        let idempotent = producer >= 0 && first >= 0;
        if idempotent {
            match conn.producers.check(&target, batch) {
                Check::Accept => {}
                Check::Duplicate(offset) => {
                    first_offset.get_or_insert(offset);
                    continue;
                }
                Check::Reject(code) => return Err(code),
            }
        }
        // The batch's records are stored together, in order.
        let messages = records_of_batch.into_iter().map(message).collect();
        let ids = conn
            .ctx
            .backend
            .publish_batch(&target, messages)
            .await
            .map_err(|e| error_code(&e))?;
        let batch_offset = ids
            .first()
            .map(|id| i64::try_from(id.offset).unwrap_or(i64::MAX));
        if let Some(offset) = batch_offset {
            if idempotent {
                conn.producers.accepted(&target, batch, offset);
            }
            first_offset.get_or_insert(offset);
        }
    }
    first_offset.ok_or(ResponseError::CorruptMessage)
}

/// Splits the next batch off `records` and decodes it, decompressing at
/// most `cap` bytes; a compressed batch is decoded on a blocking thread.
async fn decode_next_batch(records: &mut Bytes, cap: usize) -> Result<Vec<Record>, ResponseError> {
    let batch = split_batch(records)?;
    if !is_compressed(&batch) {
        return decode_batch(batch, cap);
    }
    // A decoder that panicked (a bug, not the client's doing) fails this
    // partition only.
    tokio::task::spawn_blocking(move || decode_batch(batch, cap))
        .await
        .unwrap_or(Err(ResponseError::UnknownServerError))
}

/// The first batch of `records`, split off by its length; the decoder
/// checks the rest.
fn split_batch(records: &mut Bytes) -> Result<Bytes, ResponseError> {
    let length = records
        .get(BATCH_LENGTH_OFFSET..)
        .and_then(|rest| rest.first_chunk::<4>())
        .copied()
        .map(i32::from_be_bytes)
        .and_then(|length| usize::try_from(length).ok())
        .ok_or(ResponseError::CorruptMessage)?;
    let end = (BATCH_LENGTH_OFFSET + 4).saturating_add(length);
    if end > records.len() {
        return Err(ResponseError::CorruptMessage);
    }
    Ok(records.split_to(end))
}

/// Whether a batch's attributes name a codec (the decoder checks them).
fn is_compressed(batch: &[u8]) -> bool {
    batch
        .get(ATTRIBUTES_OFFSET + 1)
        .is_some_and(|low_byte| low_byte & 0x7 != 0)
}

/// Decodes one record batch, decompressing at most `cap` bytes.
///
/// A batch that would decompress past the cap is answered
/// MESSAGE_TOO_LARGE: a Kafka broker that recompresses or converts a batch
/// checks the result against its size limit and answers that
/// (`RecordTooLargeException`), the nearest it has to a batch growing past
/// a limit on the broker; it is final for one record, and the Java
/// producer splits a batch of several and sends the halves. Compressed data
/// that does not decompress is CORRUPT_MESSAGE, as every other batch that
/// fails its checks here.
fn decode_batch(mut batch: Bytes, cap: usize) -> Result<Vec<Record>, ResponseError> {
    let capped = |buf: &mut Bytes, codec: Compression| -> anyhow::Result<Bytes> {
        Ok(decompress(buf, codec, cap)?)
    };
    match RecordBatchDecoder::decode_with_custom_compression(&mut batch, Some(capped)) {
        Ok(set) => Ok(set.records),
        Err(e) => match e.downcast_ref::<DecompressError>() {
            Some(DecompressError::TooLarge { .. }) => Err(ResponseError::MessageTooLarge),
            _ => Err(ResponseError::CorruptMessage),
        },
    }
}

/// The contract's message for a Kafka record.
fn message(record: Record) -> NewMessage {
    NewMessage {
        payload: record.value.unwrap_or_default(),
        key: record.key,
        properties: record
            .headers
            .into_iter()
            .map(|(k, v)| {
                let value = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                (k.to_string(), value.unwrap_or_default())
            })
            .collect(),
        event_time: u64::try_from(record.timestamp).ok(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    use super::*;
    use crate::decompress::tests::{
        gzip, largest_allocation, lz4, raw_snappy, xerial_snappy, zstd_stream,
    };

    /// A compressor for the encoder: `compress` applied to the records.
    type Compress = fn(&[u8]) -> Vec<u8>;

    fn record(i: i64, value: Bytes) -> Record {
        let headers = vec![(
            StrBytes::from_string(format!("h{i}")),
            Some(Bytes::from(format!("x{i}"))),
        )];
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i32::try_from(i).unwrap(),
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(value),
            headers,
        }
    }

    /// One record batch of `records`, its records compressed with
    /// `compress` and marked `codec`.
    fn batch_of(records: &[Record], codec: Compression, compress: Compress) -> Bytes {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: codec,
        };
        let compressor = |records: &mut BytesMut, out: &mut BytesMut, _: Compression| {
            out.extend_from_slice(&compress(records));
            Ok(())
        };
        RecordBatchEncoder::encode_with_custom_compression(
            &mut buf,
            records,
            &options,
            Some(compressor),
        )
        .unwrap();
        buf.freeze()
    }

    fn codecs() -> [(Compression, Compress); 5] {
        [
            (Compression::Gzip, gzip),
            (Compression::Snappy, xerial_snappy),
            (Compression::Snappy, raw_snappy),
            (Compression::Lz4, lz4),
            (Compression::Zstd, zstd_stream),
        ]
    }

    #[test]
    fn a_compressed_batch_decodes_to_its_records_with_every_codec() {
        let records: Vec<Record> = (0..50)
            .map(|i| record(i, Bytes::from(format!("value {i} ").repeat(100))))
            .collect();
        for (codec, compress) in codecs() {
            let batch = batch_of(&records, codec, compress);
            assert!(is_compressed(&batch), "{codec:?}");
            let decoded = decode_batch(batch, 1 << 20).unwrap();
            assert_eq!(decoded, records, "{codec:?}");
        }
    }

    #[test]
    fn split_batch_takes_one_batch_and_refuses_a_truncated_one() {
        let records = [record(0, Bytes::from_static(b"v"))];
        let one = batch_of(&records, Compression::Gzip, gzip);
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        let mut two = two.freeze();
        assert_eq!(split_batch(&mut two).unwrap(), one);
        assert_eq!(two, one);
        let mut truncated = one.slice(..one.len() - 1);
        assert_eq!(
            split_batch(&mut truncated).unwrap_err(),
            ResponseError::CorruptMessage
        );
    }

    /// A batch of one record of zeros far larger than the cap, small on
    /// the wire: MESSAGE_TOO_LARGE, and nothing near its size allocated.
    #[test]
    fn a_bomb_batch_is_message_too_large_with_every_codec() {
        let cap = 256 << 10;
        let bomb = 16 << 20;
        let records = [record(0, Bytes::from(vec![0u8; bomb]))];
        for (codec, compress) in codecs() {
            let batch = batch_of(&records, codec, compress);
            assert!(batch.len() < bomb / 10, "{codec:?} is no bomb");
            let (refused, largest) = largest_allocation(|| decode_batch(batch, cap));
            assert_eq!(refused, Err(ResponseError::MessageTooLarge), "{codec:?}");
            assert!(largest < 9 << 20, "{codec:?} allocated {largest} bytes");
        }
    }

    #[test]
    fn compressed_garbage_is_a_corrupt_message() {
        let records = [record(0, Bytes::from_static(b"v"))];
        for (codec, _) in codecs() {
            let garbage = |_: &[u8]| b"not compressed at all".to_vec();
            let batch = batch_of(&records, codec, garbage);
            assert_eq!(
                decode_batch(batch, 1 << 20),
                Err(ResponseError::CorruptMessage),
                "{codec:?}"
            );
        }
    }

    fn batch(epoch: i16, first: i32, last: i32) -> BatchSeq {
        BatchSeq {
            producer: 7,
            epoch,
            first,
            last,
        }
    }

    #[test]
    fn sequences_accept_the_next_batch_deduplicate_recent_ones_and_refuse_gaps() {
        let producers = Producers::default();
        let p: TopicName = "persistent://public/default/t".parse().unwrap();
        assert!(matches!(producers.check(&p, batch(0, 0, 4)), Check::Accept));
        producers.accepted(&p, batch(0, 0, 4), 100);
        assert!(matches!(producers.check(&p, batch(0, 5, 9)), Check::Accept));
        producers.accepted(&p, batch(0, 5, 9), 105);
        // A retry of a batch already written: its first offset, again.
        assert!(matches!(
            producers.check(&p, batch(0, 0, 4)),
            Check::Duplicate(100)
        ));
        assert!(matches!(
            producers.check(&p, batch(0, 20, 21)),
            Check::Reject(ResponseError::OutOfOrderSequenceNumber)
        ));
        // A new epoch starts over; an old one is fenced.
        producers.accepted(&p, batch(1, 0, 0), 110);
        assert!(matches!(
            producers.check(&p, batch(0, 10, 10)),
            Check::Reject(ResponseError::InvalidProducerEpoch)
        ));
    }
}
