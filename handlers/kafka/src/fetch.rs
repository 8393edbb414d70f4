//! Fetch: the records of partitions from the offsets a consumer asks for,
//! as Kafka record batches (v2, uncompressed).
//!
//! Each connection keeps a reader per partition it fetches ([`Readers`]),
//! standing at the offset it will return next. A consumer asks for the
//! offset after the last record it got, so the next Fetch continues the
//! same reader; any other offset seeks it. A record read that did not fit
//! a response stays in front of its reader for the next Fetch.
//!
//! The limits are Kafka's: a response holds at most `max_bytes` of batches
//! (capped by [`KafkaConfig::fetch_max_bytes`](crate::KafkaConfig)), a
//! partition at most its `partition_max_bytes`, except that the first
//! record of the first partition with records is returned whatever its
//! size, so a consumer always progresses. Only whole records are sent.
//! Less than `min_bytes` available waits up to `max_wait_ms` for the
//! partitions' next message (any of them), or until the gateway shuts down.
//!
//! Fetch sessions (v7+) are not kept: every response says session 0, which
//! tells clients to send full requests, and a request continuing a
//! session is answered `FETCH_SESSION_ID_NOT_FOUND`. Offsets are valid from
//! the partition's earliest retained one to its next one (the high
//! watermark; with no transactions also the last stable offset);
//! outside, `OFFSET_OUT_OF_RANGE`. A partition's offsets read from the
//! backend serve its consumer for a few seconds while it reads on within
//! them; the high watermark answered is the larger of that next offset and
//! where the reading stopped, exact when the reader reached the end.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{join_all, select_all};
use gateway_api::{
    Action, Backend, BackendError, Message, OffsetRange, Protocol, Reader, StartPosition, TopicName,
};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};
use tokio::time::Instant;

use crate::api::{error_code, Connection};

/// How long a reader that says a message is available may take to hand it
/// over (on Pulsar it may still be on its way from the broker) before the
/// response goes without it; it stays in the reader for the next Fetch.
const HANDOVER: Duration = Duration::from_secs(1);

/// How long a partition's offsets read from the backend stand in for it
/// while a consumer reads on within them (on Pulsar a lookup is two admin
/// API requests). An offset outside them is always checked again.
const RANGE_TTL: Duration = Duration::from_secs(5);

/// Bytes of a record batch (v2) before its records: base offset (8),
/// length (4), leader epoch (4), magic (1), crc (4), attributes (2), last
/// offset delta (4), first and last timestamps (16), producer id (8) and
/// epoch (2), base sequence (4), record count (4).
const BATCH_OVERHEAD: usize = 61;

/// A connection's readers, one per partition it fetches, at most a bound
/// many: past it the least recently used one is closed.
pub struct Readers {
    /// By partition (the backend topic `t-partition-p`, or `t`).
    cursors: HashMap<TopicName, Cursor>,
    /// Bumped at each use; the cursor used longest ago has the lowest.
    clock: u64,
    /// The bound.
    max: usize,
}

/// Messages asked of a reader at a time: enough that the per-call cost
/// (a lock, an await) is spread thin, few enough that what a full
/// response leaves queued in the cursor stays small.
const TAKE_BATCH: usize = 256;

/// A reader and where it stands.
struct Cursor {
    reader: Box<dyn Reader>,
    /// The offset of the next message this cursor returns: the first
    /// of `ahead`'s, or (when it is empty) at least this; older ones the
    /// reader still delivers are passed over.
    next: u64,
    /// Messages read and not yet returned, in offset order from `next`
    /// (a message that did not fit a response goes back to the front).
    ahead: VecDeque<Message>,
    /// [`Readers::clock`] at the last use.
    used: u64,
    /// The partition's offsets as last read from the backend, and when.
    range: Option<(OffsetRange, Instant)>,
    /// The position the reader was last moved back to because it skipped
    /// offsets: a second skip from there is a real gap.
    resought: Option<u64>,
}

impl Cursor {
    /// The next message if one is available now.
    async fn take(&mut self) -> Result<Option<Message>, BackendError> {
        loop {
            if let Some(message) = self.ahead.pop_front() {
                self.next = message.id.offset.saturating_add(1);
                return Ok(Some(message));
            }
            let batch = self.reader.next_available(TAKE_BATCH).await?;
            if batch.is_empty() {
                if !self.reader.has_message_available().await? {
                    return Ok(None);
                }
                // Cancel-safe: a message still on its way stays in the reader.
                let Ok(message) = tokio::time::timeout(HANDOVER, self.reader.next()).await else {
                    return Ok(None);
                };
                self.offer(message?).await?;
                continue;
            }
            for message in batch {
                if !self.offer(message).await? {
                    break;
                }
            }
        }
    }

    /// The offset the next message read should have.
    fn expected(&self) -> u64 {
        self.ahead
            .back()
            .map_or(self.next, |m| m.id.offset.saturating_add(1))
    }

    /// Queues `message` (just read) if it is the one expected. Older ones
    /// are passed over. A later one means the reader skipped offsets,
    /// which are contiguous: it is moved back to the expected offset once
    /// (a reader opened at the end of a Pulsar partition can miss a
    /// message published while it opens), and `false` says to drop what
    /// else was read with it; skipping again from there is a real gap
    /// (retention), and accepted.
    async fn offer(&mut self, message: Message) -> Result<bool, BackendError> {
        let offset = message.id.offset;
        let expected = self.expected();
        if offset < expected {
            return Ok(true);
        }
        if offset > expected && self.resought != Some(expected) {
            tracing::debug!(expected, offset, "a reader skipped offsets; moving it back");
            self.resought = Some(expected);
            self.reader.seek(StartPosition::Offset(expected)).await?;
            return Ok(false);
        }
        if self.ahead.is_empty() {
            self.next = offset;
        }
        self.ahead.push_back(message);
        Ok(true)
    }

    /// Makes `message` (just taken) the next one returned.
    fn put_back(&mut self, message: Message) {
        self.next = message.id.offset;
        self.ahead.push_front(message);
    }
}

impl Readers {
    /// Closes the readers of `topic` (a base topic: all its partitions),
    /// as before the topic is deleted.
    pub fn forget_topic(&mut self, topic: &TopicName) {
        self.cursors
            .retain(|partition, _| partition.base() != *topic);
    }

    /// Keeps at most `max` readers (at least one).
    pub fn new(max: usize) -> Readers {
        Readers {
            cursors: HashMap::new(),
            clock: 0,
            max: max.max(1),
        }
    }

    /// The cursor of `topic` standing at `offset`: the one kept if it
    /// stands there, else the one kept moved there, else a new one.
    async fn at(
        &mut self,
        backend: &dyn Backend,
        topic: &TopicName,
        offset: u64,
    ) -> Result<&mut Cursor, BackendError> {
        self.clock += 1;
        let clock = self.clock;
        let kept = self.cursors.get(topic).map(|c| c.next);
        match kept {
            Some(next) if next == offset => {}
            Some(_) => {
                let Some(cursor) = self.cursors.get_mut(topic) else {
                    return Err(BackendError::Closed);
                };
                cursor.ahead.clear();
                if let Err(e) = cursor.reader.seek(StartPosition::Offset(offset)).await {
                    self.cursors.remove(topic);
                    return Err(e);
                }
                cursor.next = offset;
            }
            None => {
                if self.cursors.len() >= self.max {
                    let oldest = self
                        .cursors
                        .iter()
                        .min_by_key(|(_, c)| c.used)
                        .map(|(t, _)| t.clone());
                    if let Some(oldest) = oldest {
                        self.cursors.remove(&oldest);
                    }
                }
                let reader = backend.reader(topic, StartPosition::Offset(offset)).await?;
                self.cursors.insert(
                    topic.clone(),
                    Cursor {
                        reader,
                        next: offset,
                        ahead: VecDeque::new(),
                        used: clock,
                        range: None,
                        resought: None,
                    },
                );
            }
        }
        match self.cursors.get_mut(topic) {
            Some(cursor) => {
                cursor.used = clock;
                Ok(cursor)
            }
            None => Err(BackendError::Closed),
        }
    }

    /// The offsets of `topic` read from the backend less than [`RANGE_TTL`]
    /// ago; the next offset is at least where the cursor stands (it only
    /// passed messages that exist).
    fn known_range(&self, topic: &TopicName) -> Option<OffsetRange> {
        let cursor = self.cursors.get(topic)?;
        let (range, read) = cursor.range?;
        (read.elapsed() < RANGE_TTL).then(|| OffsetRange {
            earliest: range.earliest,
            next: range.next.max(cursor.next),
        })
    }

    /// Remembers the offsets of `topic` read from the backend at `read`.
    fn note_range(&mut self, topic: &TopicName, range: OffsetRange, read: Instant) {
        if let Some(cursor) = self.cursors.get_mut(topic) {
            cursor.range = Some((range, read));
        }
    }

    /// The message at `offset` of `topic` if one is there now, left in
    /// front of the reader for the Fetch that likely follows.
    pub async fn message_at(
        &mut self,
        backend: &dyn Backend,
        topic: &TopicName,
        offset: u64,
    ) -> Result<Option<Message>, BackendError> {
        let cursor = self.at(backend, topic, offset).await?;
        match cursor.take().await {
            Ok(Some(message)) => {
                cursor.put_back(message.clone());
                Ok(Some(message))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.cursors.remove(topic);
                Err(e)
            }
        }
    }
}

/// The record batches of one partition's response, built record by
/// record with their exact encoded size.
#[derive(Default)]
struct Batches {
    records: Vec<Record>,
    /// Where each batch starts in `records`.
    starts: Vec<usize>,
    /// The encoded size so far.
    bytes: usize,
}

impl Batches {
    /// The current batch's base offset and timestamp (its first record's).
    fn base(&self) -> Option<(i64, i64)> {
        let first = self.records.get(*self.starts.last()?)?;
        Some((first.offset, first.timestamp))
    }

    /// Whether `record` opens a new batch: the first one, or one older
    /// than the batch's first (timestamp deltas stay non-negative, as
    /// the encoder writes them from the batch's smallest timestamp).
    fn opens_batch(&self, record: &Record) -> bool {
        match self.base() {
            Some((offset, timestamp)) => {
                record.timestamp < timestamp
                    || record.offset < offset
                    || record.offset - offset > i64::from(i32::MAX)
            }
            None => true,
        }
    }

    /// The bytes `record` adds.
    fn cost(&self, record: &Record) -> usize {
        match self.base() {
            Some(base) if !self.opens_batch(record) => encoded_size(record, base),
            _ => BATCH_OVERHEAD + encoded_size(record, (record.offset, record.timestamp)),
        }
    }

    fn push(&mut self, mut record: Record) {
        self.bytes += self.cost(&record);
        if self.opens_batch(&record) {
            self.starts.push(self.records.len());
        }
        // The encoder keeps records in one batch while offset minus
        // sequence stays the same: the sequence counts from -1 (no
        // sequence) at the batch's base offset.
        if let Some((base, _)) = self.base() {
            record.sequence = (record.offset.wrapping_sub(base) as i32).wrapping_sub(1);
        }
        self.records.push(record);
    }

    /// The batches on the wire.
    fn encode(&self) -> anyhow::Result<Bytes> {
        let mut out = BytesMut::with_capacity(self.bytes);
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        let ends = self
            .starts
            .iter()
            .skip(1)
            .copied()
            .chain([self.records.len()]);
        for (&start, end) in self.starts.iter().zip(ends) {
            let batch = self.records.get(start..end).unwrap_or_default();
            RecordBatchEncoder::encode(&mut out, batch, &options)?;
        }
        Ok(out.freeze())
    }
}

/// Bytes of a zigzag varint (Kafka's varint and varlong).
fn varint_size(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut size = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        size += 1;
    }
    size
}

/// Bytes of a length-prefixed field (varint length, -1 for null).
fn field_size(field: Option<&[u8]>) -> usize {
    match field {
        Some(bytes) => varint_size(bytes.len() as i64) + bytes.len(),
        None => varint_size(-1),
    }
}

/// Bytes of `record` in a batch with this base offset and timestamp,
/// its length prefix included.
fn encoded_size(record: &Record, (base_offset, base_timestamp): (i64, i64)) -> usize {
    let body = 1 // attributes
        + varint_size(record.timestamp - base_timestamp)
        + varint_size(record.offset - base_offset)
        + field_size(record.key.as_deref())
        + field_size(record.value.as_deref())
        + varint_size(record.headers.len() as i64)
        + record
            .headers
            .iter()
            .map(|(k, v)| field_size(Some(k.as_bytes())) + field_size(v.as_deref()))
            .sum::<usize>();
    varint_size(body as i64) + body
}

/// The Kafka record of a message: its offset, its event time (else its
/// publish time) as a create time, its key, its properties as headers (in
/// order, repeated keys included).
fn record(message: &Message) -> Record {
    let timestamp = message.event_time.unwrap_or(message.publish_time);
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: i64::try_from(message.id.offset).unwrap_or(i64::MAX),
        sequence: -1,
        timestamp: i64::try_from(timestamp).unwrap_or(i64::MAX),
        key: message.key.clone(),
        value: Some(message.payload.clone()),
        headers: message
            .properties
            .iter()
            .map(|(k, v)| {
                (
                    StrBytes::from_string(k.clone()),
                    Some(Bytes::copy_from_slice(v.as_bytes())),
                )
            })
            .collect(),
    }
}

/// One partition of the request and what is gathered for it.
struct Wanted {
    /// Its topic's place in the response.
    topic: usize,
    index: i32,
    /// Its `partition_max_bytes`.
    max_bytes: usize,
    state: State,
}

enum State {
    Failed(ResponseError),
    Reading {
        partition: TopicName,
        range: OffsetRange,
        /// When `range` was read from the backend; `None`: it was known.
        range_read: Option<Instant>,
        /// The offset to read from next.
        next: u64,
        batches: Batches,
        /// A record did not fit: nothing more for this partition.
        full: bool,
    },
}

impl Wanted {
    /// Gives up on the partition: with its error when nothing was gathered
    /// for it, else the records gathered go out without more.
    fn fail(&mut self, e: &BackendError) {
        match &mut self.state {
            State::Reading { batches, full, .. } if !batches.records.is_empty() => *full = true,
            _ => self.state = State::Failed(error_code(e)),
        }
    }

    /// The partition a reader is still read or waited on for.
    fn readable(&self) -> Option<&TopicName> {
        match &self.state {
            State::Reading {
                partition,
                full: false,
                ..
            } => Some(partition),
            _ => None,
        }
    }
}

/// The partition's state at the start: where its records are, or why
/// there are none. `known`: its offsets, if recently read; an offset
/// outside them is checked with the backend.
async fn start(
    conn: &Connection,
    partition: Result<TopicName, ResponseError>,
    offset: i64,
    known: Option<OffsetRange>,
) -> State {
    let partition = match partition {
        Ok(partition) => partition,
        Err(code) => return State::Failed(code),
    };
    let offset = u64::try_from(offset).ok();
    let reading = |range: OffsetRange, range_read, offset| State::Reading {
        partition: partition.clone(),
        range,
        range_read,
        next: offset,
        batches: Batches::default(),
        full: false,
    };
    if let (Some(range), Some(offset)) = (known, offset) {
        if (range.earliest..=range.next).contains(&offset) {
            return reading(range, None, offset);
        }
    }
    let read = Instant::now();
    let range = match conn.ctx.backend.offsets(&partition).await {
        Ok(range) => range,
        Err(e) => return State::Failed(error_code(&e)),
    };
    match offset {
        Some(offset) if (range.earliest..=range.next).contains(&offset) => {
            reading(range, Some(read), offset)
        }
        _ => State::Failed(ResponseError::OffsetOutOfRange),
    }
}

/// What the whole response may still take.
struct Budget {
    /// Bytes of batches gathered.
    total: usize,
    /// The response's bound.
    max: usize,
}

/// Whether a record of `cost` bytes joins a partition holding
/// `partition_bytes` of its `partition_max`, in the response of `budget`.
/// Kafka's rule: the first record of the response goes whatever its size,
/// so that a consumer always progresses; after it, both limits hold.
fn fits(cost: usize, partition_bytes: usize, partition_max: usize, budget: &Budget) -> bool {
    budget.total == 0
        || (partition_bytes + cost <= partition_max && budget.total + cost <= budget.max)
}

/// Adds the records available now to one partition, within the limits.
async fn read_available(
    backend: &dyn Backend,
    readers: &mut Readers,
    wanted: &mut Wanted,
    budget: &mut Budget,
) {
    let State::Reading {
        partition,
        next,
        batches,
        full: false,
        ..
    } = &mut wanted.state
    else {
        return;
    };
    let cursor = match readers.at(backend, partition, *next).await {
        Ok(cursor) => cursor,
        Err(e) => {
            tracing::debug!(%partition, error = %e, "positioning a reader for Fetch");
            wanted.fail(&e);
            return;
        }
    };
    loop {
        let message = match cursor.take().await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%partition, error = %e, "reading for Fetch");
                let partition = partition.clone();
                readers.cursors.remove(&partition);
                wanted.fail(&e);
                return;
            }
        };
        let record = record(&message);
        let cost = batches.cost(&record);
        if !fits(cost, batches.bytes, wanted.max_bytes, budget) {
            cursor.put_back(message);
            if let State::Reading { full, .. } = &mut wanted.state {
                *full = true;
            }
            return;
        }
        *next = message.id.offset.saturating_add(1);
        batches.push(record);
        budget.total += cost;
    }
}

/// Why a wait for more records ended.
enum Woken {
    /// A message arrived (or a reader failed): read again.
    Message,
    /// The wait is over: answer with what there is.
    Done,
}

/// Waits for the next message of any partition still read, until
/// `deadline` or shutdown.
async fn wait_any(
    conn: &Connection,
    readers: &mut Readers,
    wanted: &mut [Wanted],
    deadline: Instant,
) -> Woken {
    let mut who = Vec::new();
    let mut waits = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        if let Some(cursor) = w.readable().and_then(|p| readers.cursors.get(p)) {
            who.push(i);
            waits.push(cursor.reader.next());
        }
    }
    if waits.is_empty() {
        return Woken::Done;
    }
    // Every `next` is cancel-safe: the ones that lose keep their message.
    let (result, winner) = tokio::select! {
        _ = conn.ctx.shutdown.cancelled() => return Woken::Done,
        _ = tokio::time::sleep_until(deadline) => return Woken::Done,
        (result, i, _) = select_all(waits) => (result, who.get(i).copied()),
    };
    let Some(w) = winner.and_then(|i| wanted.get_mut(i)) else {
        return Woken::Done;
    };
    let Some(partition) = w.readable().cloned() else {
        return Woken::Done;
    };
    let offered = match (result, readers.cursors.get_mut(&partition)) {
        (Ok(message), Some(cursor)) => cursor.offer(message).await.map(|_| ()),
        (Ok(_), None) => Ok(()),
        (Err(e), _) => Err(e),
    };
    match offered {
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(%partition, error = %e, "waiting for Fetch");
            readers.cursors.remove(&partition);
            w.fail(&e);
        }
    }
    Woken::Message
}

/// Serves a Fetch request.
pub async fn handle(conn: &Connection, request: FetchRequest, version: i16) -> FetchResponse {
    let mut response = FetchResponse::default();
    // Epoch 0 opens a session and -1 fetches without one: both are full
    // requests. Anything else continues a session this gateway never gave.
    if version >= 7 && !matches!(request.session_epoch, 0 | -1) {
        response.error_code = ResponseError::FetchSessionIdNotFound.code();
        return response;
    }
    let started = Instant::now();
    tracing::debug!(
        offsets = ?request.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.fetch_offset)).collect::<Vec<_>>(),
        max_wait_ms = request.max_wait_ms,
        "fetch asked"
    );
    let deadline = started + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let mut budget = Budget {
        total: 0,
        max: usize::try_from(request.max_bytes)
            .unwrap_or(0)
            .min(conn.config.fetch_max_bytes),
    };

    let mut asked = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let mut out = FetchableTopicResponse::default();
        out.topic = topic.topic.clone();
        response.responses.push(out);
        asked.extend(topic.partitions.iter().map(|p| (t, &topic.topic.0, p)));
    }
    // Partitions resolve and their offsets are read all at once (on Pulsar
    // each is a round trip).
    let partitions = join_all(
        asked
            .iter()
            .map(|&(_, name, p)| conn.partition(name, p.partition, Action::Consume)),
    )
    .await;
    let backend = conn.ctx.backend.as_ref();
    let mut readers = conn.readers.lock().await;
    let starts = asked.iter().zip(partitions).map(|(&(t, _, p), partition)| {
        let known = partition
            .as_ref()
            .ok()
            .and_then(|partition| readers.known_range(partition));
        async move {
            Wanted {
                topic: t,
                index: p.partition,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
                state: start(conn, partition, p.fetch_offset, known).await,
            }
        }
    });
    let mut wanted = join_all(starts).await;

    loop {
        for w in wanted.iter_mut() {
            read_available(backend, &mut readers, w, &mut budget).await;
        }
        let failed = wanted.iter().any(|w| matches!(w.state, State::Failed(_)));
        if failed || budget.total >= min_bytes || Instant::now() >= deadline {
            break;
        }
        match wait_any(conn, &mut readers, &mut wanted, deadline).await {
            Woken::Message => {}
            Woken::Done => break,
        }
    }
    for w in &wanted {
        if let State::Reading {
            partition,
            range,
            range_read: Some(read),
            ..
        } = &w.state
        {
            readers.note_range(partition, *range, *read);
        }
    }
    drop(readers);

    tracing::debug!(
        partitions = wanted.len(),
        bytes = budget.total,
        took_ms = started.elapsed().as_millis() as u64,
        "fetch answered"
    );
    for w in &wanted {
        if let State::Reading {
            partition, batches, ..
        } = &w.state
        {
            if !batches.records.is_empty() {
                let bytes = batches
                    .records
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
                    .sum();
                conn.ctx.metrics.delivered(
                    Protocol::Kafka,
                    partition,
                    batches.records.len() as u64,
                    bytes,
                );
            }
        }
    }
    for w in wanted {
        let Some(topic) = response.responses.get_mut(w.topic) else {
            continue;
        };
        topic.partitions.push(partition_data(w, version));
    }
    response
}

/// The response for one partition.
fn partition_data(wanted: Wanted, version: i16) -> PartitionData {
    let mut out = PartitionData::default();
    out.partition_index = wanted.index;
    let (range, next, batches) = match wanted.state {
        State::Failed(code) => {
            out.error_code = code.code();
            out.high_watermark = -1;
            out.last_stable_offset = -1;
            out.log_start_offset = -1;
            return out;
        }
        State::Reading {
            range,
            next,
            batches,
            ..
        } => (range, next, batches),
    };
    // Where the reading stopped is at most the partition's end: records
    // published since its offsets were read may be in the response.
    let high_watermark = i64::try_from(range.next.max(next)).unwrap_or(i64::MAX);
    out.high_watermark = high_watermark;
    out.last_stable_offset = high_watermark;
    if version >= 5 {
        out.log_start_offset = i64::try_from(range.earliest).unwrap_or(i64::MAX);
    }
    match batches.encode() {
        Ok(records) => out.records = Some(records),
        Err(e) => {
            // The reader moved past them: the consumer's next Fetch asks
            // for them again and seeks it back.
            tracing::warn!(error = %e, "encoding fetched records");
            out.error_code = ResponseError::UnknownServerError.code();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use gateway_api::MessageId;
    use kafka_protocol::records::RecordBatchDecoder;

    fn message(offset: u64, event_time: Option<u64>, payload: &str) -> Message {
        Message {
            topic: "persistent://public/default/t".parse().unwrap(),
            id: MessageId::from_offset(offset, None),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            key: offset
                .is_multiple_of(2)
                .then(|| Bytes::from(format!("k{offset}"))),
            properties: vec![
                ("h".into(), format!("x{offset}")),
                ("n".into(), "".into()),
                ("h".into(), "again".into()),
            ],
            event_time,
            publish_time: 1_700_000_000_000 + offset,
            redelivery_count: 0,
        }
    }

    #[test]
    fn batches_are_as_large_as_counted_and_decode_to_the_messages() {
        let mut batches = Batches::default();
        let messages: Vec<Message> = vec![
            message(5, Some(1_700_000_000_000), "a"),
            message(6, None, &"b".repeat(300)),
            // Older than the batch's first: opens a second batch.
            message(7, Some(1_600_000_000_000), ""),
            message(9, Some(1_600_000_000_001), "after a gap"),
        ];
        for m in &messages {
            batches.push(record(m));
        }
        assert_eq!(batches.starts, vec![0, 2]);
        let mut encoded = batches.encode().unwrap();
        assert_eq!(encoded.len(), batches.bytes);

        let decoded = RecordBatchDecoder::decode_all(&mut encoded).unwrap();
        assert_eq!(decoded.len(), 2);
        let records: Vec<Record> = decoded.into_iter().flat_map(|set| set.records).collect();
        assert_eq!(records.len(), messages.len());
        for (r, m) in records.iter().zip(&messages) {
            assert_eq!(r.offset as u64, m.id.offset);
            assert_eq!(r.timestamp as u64, m.event_time.unwrap_or(m.publish_time));
            assert_eq!(r.key, m.key);
            assert_eq!(r.value.as_ref(), Some(&m.payload));
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = v.as_deref().unwrap_or_default();
                    (k.to_string(), String::from_utf8_lossy(v).into_owned())
                })
                .collect();
            assert_eq!(headers, m.properties);
            assert_eq!(r.producer_id, NO_PRODUCER_ID);
            assert!(!r.transactional && !r.control);
        }
    }

    #[test]
    fn record_sizes_match_the_encoder_for_large_fields() {
        for len in [0usize, 1, 63, 64, 127, 128, 8191, 8192, 1 << 20] {
            let mut batches = Batches::default();
            batches.push(record(&message(1 << 40, None, &"x".repeat(len))));
            assert_eq!(batches.encode().unwrap().len(), batches.bytes, "{len}");
        }
    }

    /// A reader over fixed messages that may start with some missing, as
    /// a reader opened at a Pulsar partition's end while it grows can.
    struct FakeReader {
        /// Every message of the partition.
        all: Vec<Message>,
        /// What `next` returns, in order.
        queue: Mutex<VecDeque<Message>>,
        /// The offsets sought to.
        seeks: Arc<Mutex<Vec<u64>>>,
    }

    #[async_trait::async_trait]
    impl Reader for FakeReader {
        async fn next(&self) -> Result<Message, BackendError> {
            let next = self.queue.lock().unwrap().pop_front();
            match next {
                Some(message) => Ok(message),
                None => std::future::pending().await,
            }
        }

        async fn seek(&self, position: StartPosition) -> Result<(), BackendError> {
            let StartPosition::Offset(offset) = position else {
                panic!("only offsets are sought to: {position:?}");
            };
            self.seeks.lock().unwrap().push(offset);
            *self.queue.lock().unwrap() = self
                .all
                .iter()
                .filter(|m| m.id.offset >= offset)
                .cloned()
                .collect();
            Ok(())
        }

        async fn has_message_available(&self) -> Result<bool, BackendError> {
            Ok(!self.queue.lock().unwrap().is_empty())
        }

        /// Two at a time, so batches end inside the tests' sequences.
        async fn next_available(&self, max: usize) -> Result<Vec<Message>, BackendError> {
            let mut queue = self.queue.lock().unwrap();
            let count = max.min(2).min(queue.len());
            Ok(queue.drain(..count).collect())
        }
    }

    /// A cursor at offset 0 over `all`, whose reader first delivers
    /// `delivered`; and the reader's record of seeks.
    fn cursor_over(all: &[u64], delivered: &[u64]) -> (Cursor, Arc<Mutex<Vec<u64>>>) {
        let messages = |offsets: &[u64]| -> Vec<Message> {
            offsets.iter().map(|&o| message(o, None, "m")).collect()
        };
        let seeks = Arc::default();
        let reader = Box::new(FakeReader {
            all: messages(all),
            queue: Mutex::new(messages(delivered).into()),
            seeks: Arc::clone(&seeks),
        });
        let cursor = Cursor {
            reader,
            next: 0,
            ahead: VecDeque::new(),
            used: 0,
            range: None,
            resought: None,
        };
        (cursor, seeks)
    }

    async fn drain(cursor: &mut Cursor) -> Vec<u64> {
        let mut offsets = Vec::new();
        while let Some(message) = cursor.take().await.unwrap() {
            offsets.push(message.id.offset);
        }
        offsets
    }

    #[tokio::test]
    async fn a_reader_that_skipped_offsets_is_moved_back_once() {
        let (mut cursor, seeks) = cursor_over(&[0, 1, 2, 3, 4], &[0, 1, 3, 4]);
        assert_eq!(drain(&mut cursor).await, vec![0, 1, 2, 3, 4]);
        assert_eq!(*seeks.lock().unwrap(), vec![2]);
        assert_eq!(cursor.next, 5);

        // The gap inside a batch of the reader's: what came before it
        // stays queued, the rest is dropped and read again.
        let (mut cursor, seeks) = cursor_over(&[0, 1, 2, 3, 4, 5], &[0, 2, 3, 4, 5]);
        assert_eq!(drain(&mut cursor).await, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(*seeks.lock().unwrap(), vec![1]);

        // Offsets really missing (retention): one try, then the gap.
        let (mut cursor, seeks) = cursor_over(&[0, 1, 5, 6], &[0, 1, 5, 6]);
        assert_eq!(drain(&mut cursor).await, vec![0, 1, 5, 6]);
        assert_eq!(*seeks.lock().unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn a_message_put_back_is_the_next_one_taken() {
        let (mut cursor, _) = cursor_over(&[0, 1], &[0, 1]);
        let first = cursor.take().await.unwrap().unwrap();
        cursor.put_back(first);
        assert_eq!(cursor.next, 0);
        assert_eq!(drain(&mut cursor).await, vec![0, 1]);
    }

    #[test]
    fn the_first_record_of_a_response_goes_whatever_its_size_then_limits_hold() {
        let empty = Budget { total: 0, max: 100 };
        assert!(fits(1_000_000, 0, 10, &empty), "the first record");
        let started = Budget {
            total: 60,
            max: 100,
        };
        assert!(fits(40, 0, 50, &started), "up to the response's limit");
        assert!(!fits(41, 0, 50, &started), "over the response's limit");
        assert!(!fits(10, 45, 50, &started), "over the partition's limit");
        assert!(!fits(1, 0, 0, &started), "a partition limit of 0");
    }

    #[test]
    fn varints_are_zigzag_sized() {
        assert_eq!(varint_size(0), 1);
        assert_eq!(varint_size(-1), 1);
        assert_eq!(varint_size(63), 1);
        assert_eq!(varint_size(64), 2);
        assert_eq!(varint_size(-65), 2);
        assert_eq!(varint_size(i64::MAX), 10);
        assert_eq!(varint_size(i64::MIN), 10);
    }
}
