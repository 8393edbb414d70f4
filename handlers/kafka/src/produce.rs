//! Produce, and the idempotent producer's InitProducerId and sequence
//! checks.
//!
//! A Produce request is served in two steps so that a connection can queue
//! its next request's batches while this one's are being persisted (Kafka
//! producers keep up to five requests in flight): [`start`] decodes each
//! partition's record batches, checks them and queues them on the backend
//! in order (`Backend::queue_batch`: one group commit on the embedded
//! store, one round of sends on Pulsar), and returns the wait for the
//! response, which names each partition's first offset once all its
//! batches are persisted.
//!
//! An idempotent producer's batch is checked against the partition's
//! sequence state when it is queued: the next expected sequence is
//! accepted (and the state moves past it at once, so the producer's next
//! batch may follow before this one is persisted), one of the last five
//! batches again is a duplicate (answered with its first offset once that
//! is known, not stored again), anything else is out of order. A newer
//! epoch starts over at sequence 0 (anything else is out of order) and
//! fences the older one (INVALID_PRODUCER_EPOCH), as Kafka brokers do. A
//! batch that fails to persist takes the state back to its first sequence
//! and forgets the batches queued after it, so the producer's retries are
//! accepted. The state is this gateway's memory.
//!
//! A compressed batch (gzip, snappy, lz4, zstd) is decompressed under a cap
//! of `max_frame_bytes` (see [`crate::decompress`]), on a blocking thread,
//! so inflating up to 100 MiB never stalls the connections sharing this
//! one's runtime thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::{Buf, Bytes};
use futures::future::{ready, BoxFuture};
use gateway_api::{Metrics, NewMessage, Persisting, Protocol, TopicName};
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

/// A batch's first offset: known once it is persisted. The sender is
/// dropped if it never will be.
type Offset = tokio::sync::watch::Receiver<Option<i64>>;

/// A producer's sequence state on one partition.
struct Sequence {
    epoch: i16,
    /// The sequence the next batch must start with.
    next: i32,
    /// The last batches accepted: first and last sequence, first offset.
    recent: VecDeque<(i32, i32, Offset)>,
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
    Duplicate(Offset),
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
        if batch.epoch > state.epoch {
            // A producer that bumps its epoch starts its sequences over;
            // a new epoch starting past 0 lost its first batches, which a
            // Kafka broker refuses as out of order too.
            return match batch.first {
                0 => Check::Accept,
                _ => Check::Reject(ResponseError::OutOfOrderSequenceNumber),
            };
        }
        if batch.first == state.next {
            return Check::Accept;
        }
        match state
            .recent
            .iter()
            .find(|(f, l, _)| (*f, *l) == (batch.first, batch.last))
        {
            Some((_, _, offset)) => Check::Duplicate(offset.clone()),
            None => Check::Reject(ResponseError::OutOfOrderSequenceNumber),
        }
    }

    /// Moves the state past an accepted batch, now; the returned sender
    /// tells the batch's first offset once it is persisted.
    fn accepted(
        &self,
        partition: &TopicName,
        batch: BatchSeq,
    ) -> tokio::sync::watch::Sender<Option<i64>> {
        let (tell, offset) = tokio::sync::watch::channel(None);
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
        tell
    }

    /// Takes the state back to before a batch that failed: its first
    /// sequence is expected again, and it and the batches accepted after
    /// it are forgotten (the producer sends them again).
    fn failed(&self, partition: &TopicName, batch: BatchSeq) {
        let mut states = self.states();
        let Some(state) = states.get_mut(&(batch.producer, partition.clone())) else {
            return;
        };
        if state.epoch != batch.epoch {
            return;
        }
        if let Some(at) = state.recent.iter().position(|(f, _, _)| *f == batch.first) {
            state.recent.truncate(at);
            state.next = batch.first;
        }
    }
}

/// A Produce request queued: resolves to its response once every batch
/// is persisted (`None` for acks = 0: no response).
pub type Producing = BoxFuture<'static, Option<ProduceResponse>>;

/// A partition's batches queued: resolves to its first offset once all are
/// persisted.
type Queued = BoxFuture<'static, Result<i64, ResponseError>>;

/// Queues a Produce request's batches, in order, and returns the wait for
/// its response.
pub async fn start(conn: &Connection, request: ProduceRequest) -> Producing {
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let queued = if request.transactional_id.is_some() {
                Box::pin(ready(Err(
                    ResponseError::TransactionalIdAuthorizationFailed,
                )))
            } else {
                queue(conn, &name, data.index, data.records.unwrap_or_default()).await
            };
            partitions.push((data.index, queued));
        }
        topics.push((topic.name, partitions));
    }
    let acks = request.acks;
    Box::pin(async move {
        let mut response = ProduceResponse::default();
        for (name, partitions) in topics {
            let mut topic_response = TopicProduceResponse::default();
            topic_response.name = name;
            for (index, queued) in partitions {
                let mut partition = PartitionProduceResponse::default();
                partition.index = index;
                partition.log_append_time_ms = -1;
                match queued.await {
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
        (acks != 0).then_some(response)
    })
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

/// One record batch on its way: queued (with, for an idempotent
/// producer's, what tells its sequence state where it landed), or a
/// duplicate of one already accepted.
enum Pending {
    Queued {
        persisting: Persisting,
        idempotent: Option<(BatchSeq, tokio::sync::watch::Sender<Option<i64>>)>,
        /// Its records and their payload bytes, for the metrics.
        records: u64,
        bytes: usize,
    },
    Duplicate(Offset),
}

/// Queues the record batches of one partition, in order; an error found
/// before anything was queued answers the partition at once.
async fn queue(conn: &Connection, name: &str, index: i32, records: Bytes) -> Queued {
    let started = Instant::now();
    let metrics = conn.ctx.metrics.clone();
    let mut pending = Vec::new();
    if let Err(code) = queue_batches(conn, name, index, records, &mut pending).await {
        if pending.is_empty() {
            return Box::pin(ready(Err(code)));
        }
        // The batches before the bad one are queued: the partition's
        // answer is the error, once they are done with.
        let producers = conn.producers.clone();
        return Box::pin(async move {
            let _ = persisted(&producers, &metrics, started, pending).await;
            Err(code)
        });
    }
    let producers = conn.producers.clone();
    Box::pin(async move {
        persisted(&producers, &metrics, started, pending)
            .await?
            .ok_or(ResponseError::CorruptMessage)
    })
}

/// A partition's queued batches with the partition each went to.
type PendingBatches = Vec<(Pending, Option<TopicName>)>;

/// Decodes, checks and queues each record batch of `records` onto
/// `pending`, in order, stopping at the first that fails.
async fn queue_batches(
    conn: &Connection,
    name: &str,
    index: i32,
    mut records: Bytes,
    pending: &mut PendingBatches,
) -> Result<(), ResponseError> {
    let target = partition_topic(conn, name, index).await?;
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
                    pending.push((Pending::Duplicate(offset), None));
                    continue;
                }
                Check::Reject(code) => return Err(code),
            }
        }
        let tell = idempotent.then(|| (batch, conn.producers.accepted(&target, batch)));
        // The batch's records are stored together, in order.
        let messages: Vec<NewMessage> = records_of_batch.into_iter().map(message).collect();
        let records = messages.len() as u64;
        let bytes = messages.iter().map(|m| m.payload.len()).sum();
        match conn.ctx.backend.queue_batch(&target, messages).await {
            Ok(persisting) => pending.push((
                Pending::Queued {
                    persisting,
                    idempotent: tell,
                    records,
                    bytes,
                },
                Some(target.clone()),
            )),
            Err(e) => {
                if let Some((batch, _)) = tell {
                    conn.producers.failed(&target, batch);
                }
                return Err(error_code(&e));
            }
        }
    }
    Ok(())
}

/// Waits for a partition's batches, in order; the first one's first
/// offset (`None` if there were none). Every batch is waited for, also
/// after one failed, so that each idempotent one's state is settled.
async fn persisted(
    producers: &Producers,
    metrics: &Metrics,
    started: Instant,
    pending: PendingBatches,
) -> Result<Option<i64>, ResponseError> {
    let mut first_offset = None;
    let mut failure = None;
    for (batch, target) in pending {
        let offset = match batch {
            Pending::Duplicate(mut offset) => match offset.wait_for(Option::is_some).await {
                Ok(known) => known.ok_or(ResponseError::RequestTimedOut),
                // The batch it repeats failed: the producer retries.
                Err(_) => Err(ResponseError::RequestTimedOut),
            },
            Pending::Queued {
                persisting,
                idempotent,
                records,
                bytes,
            } => {
                let stored = persisting.await;
                if let (Ok(_), Some(target)) = (&stored, &target) {
                    metrics.published(Protocol::Kafka, target, records, bytes, started.elapsed());
                }
                let offset = stored.as_ref().map(|ids| {
                    ids.first()
                        .map(|id| i64::try_from(id.offset).unwrap_or(i64::MAX))
                });
                match (idempotent, &offset, &target) {
                    (Some((_, tell)), Ok(Some(offset)), _) => {
                        let _ = tell.send(Some(*offset));
                    }
                    (Some((batch, _)), _, Some(target)) => producers.failed(target, batch),
                    _ => {}
                }
                match offset {
                    Ok(Some(offset)) => Ok(offset),
                    Ok(None) => continue,
                    Err(e) => Err(error_code(e)),
                }
            }
        };
        match offset {
            Ok(offset) => {
                first_offset.get_or_insert(offset);
            }
            Err(code) => {
                failure.get_or_insert(code);
            }
        }
    }
    match failure {
        Some(code) => Err(code),
        None => Ok(first_offset),
    }
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
        let first = producers.accepted(&p, batch(0, 0, 4));
        // The next batch may come before the first is persisted.
        assert!(matches!(producers.check(&p, batch(0, 5, 9)), Check::Accept));
        let _second = producers.accepted(&p, batch(0, 5, 9));
        // A retry of a batch accepted: its first offset, once known.
        let Check::Duplicate(offset) = producers.check(&p, batch(0, 0, 4)) else {
            panic!("not a duplicate");
        };
        assert_eq!(*offset.borrow(), None);
        first.send(Some(100)).unwrap();
        assert_eq!(*offset.borrow(), Some(100));
        assert!(matches!(
            producers.check(&p, batch(0, 20, 21)),
            Check::Reject(ResponseError::OutOfOrderSequenceNumber)
        ));
        // A new epoch starts over, at sequence 0 only; an old one is fenced.
        assert!(matches!(
            producers.check(&p, batch(1, 10, 10)),
            Check::Reject(ResponseError::OutOfOrderSequenceNumber)
        ));
        assert!(matches!(producers.check(&p, batch(1, 0, 0)), Check::Accept));
        let _ = producers.accepted(&p, batch(1, 0, 0));
        assert!(matches!(
            producers.check(&p, batch(0, 10, 10)),
            Check::Reject(ResponseError::InvalidProducerEpoch)
        ));
    }

    #[test]
    fn a_failed_batch_is_expected_again_and_the_ones_after_it_forgotten() {
        let producers = Producers::default();
        let p: TopicName = "persistent://public/default/t".parse().unwrap();
        let _first = producers.accepted(&p, batch(0, 0, 4));
        let _second = producers.accepted(&p, batch(0, 5, 9));
        let _third = producers.accepted(&p, batch(0, 10, 14));
        producers.failed(&p, batch(0, 5, 9));
        assert!(matches!(producers.check(&p, batch(0, 5, 9)), Check::Accept));
        assert!(matches!(
            producers.check(&p, batch(0, 0, 4)),
            Check::Duplicate(_)
        ));
        assert!(matches!(
            producers.check(&p, batch(0, 10, 14)),
            Check::Reject(ResponseError::OutOfOrderSequenceNumber)
        ));
    }
}
