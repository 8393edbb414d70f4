//! The Kafka wire at its edges, on the real gateway binary: requests no
//! client sends after ApiVersions (unknown API keys, APIs not served,
//! versions beyond the served ones) are refused with UNSUPPORTED_VERSION on
//! a connection that goes on serving; a frame over the size limit (the
//! default, or one configured, at which a frame is still served), or a
//! request that does not decode, closes its own connection and no other.
//! A Fetch at the end of a partition waits its max_wait_ms without
//! burning CPU, and a record produced meanwhile ends the wait; a Fetch
//! asking for more bytes (min_bytes) than the partition holds waits its
//! max_wait_ms and answers with what there is, or answers as soon as
//! enough has been produced.
//!
//! Requests are encoded by hand here: the point is bytes no client library
//! would send, and the few fields of each are fixed. Where the fields a
//! test sets are ones clients do send, but which no client library lets a
//! test choose (min_bytes, an idempotent producer's sequences), requests
//! and record batches are built with kafka-protocol's types
//! ([`Wire::request`], [`record_batch`], [`produce`], [`fetch_records`]).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    FetchRequest, MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::common::{BackendKind, Gateway};

/// Kafka's UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

/// Kafka's NONE: no error.
pub const NO_ERROR: i16 = 0;

/// The correlation id of every request sent here (one at a time per
/// connection, so one id tells nothing apart but is still checked).
const CORRELATION_ID: i32 = 7;

/// The Produce version sent: the newest the gateway serves.
const PRODUCE_VERSION: i16 = 9;

/// The Fetch version sent: the newest the gateway serves.
const FETCH_VERSION: i16 = 12;

/// The Metadata version sent: one that asks to create missing topics.
const METADATA_VERSION: i16 = 9;

/// Bytes of a record batch (v2) before its records.
pub const BATCH_OVERHEAD: usize = 61;

/// The producer id and epoch of a producer that is not idempotent, and
/// the base sequence of its batches.
pub const NOT_IDEMPOTENT: (i64, i16, i32) = (-1, -1, -1);

/// A Kafka string: its length (i16), then its bytes.
pub fn string(s: &str) -> Vec<u8> {
    let mut out = i16::try_from(s.len())
        .expect("a short string")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// One connection to the gateway's Kafka listener.
pub struct Wire(TcpStream);

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Wire {
        Wire(
            TcpStream::connect(addr)
                .await
                .expect("connect to the gateway"),
        )
    }

    /// Sends one request (header v1, correlation id 7) and returns the
    /// response body after its correlation id; `None` when the gateway
    /// closed the connection instead.
    pub async fn call(&mut self, api_key: i16, version: i16, body: &[u8]) -> Option<Vec<u8>> {
        let mut request = Vec::new();
        request.extend_from_slice(&api_key.to_be_bytes());
        request.extend_from_slice(&version.to_be_bytes());
        request.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        request.extend_from_slice(&string("wire-test"));
        request.extend_from_slice(body);
        let len = u32::try_from(request.len()).expect("a small request");
        self.send(&len.to_be_bytes()).await;
        self.send(&request).await;
        let mut response = self.response().await?;
        assert_eq!(
            response[..4],
            CORRELATION_ID.to_be_bytes(),
            "the correlation id"
        );
        Some(response.split_off(4))
    }

    /// Sends `request` at `version`, header and body encoded by
    /// kafka-protocol, and decodes the answer; fails the test if the
    /// gateway closes the connection instead.
    pub async fn request<R: Request>(&mut self, version: i16, request: &R) -> R::Response {
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(CORRELATION_ID)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")))
            .encode(&mut frame, R::header_version(version))
            .expect("encode the request header");
        request
            .encode(&mut frame, version)
            .expect("encode the request");
        let len = u32::try_from(frame.len()).expect("a small request");
        self.send(&len.to_be_bytes()).await;
        self.send(&frame).await;
        let Some(response) = self.response().await else {
            panic!(
                "the gateway closed the connection on API {} v{version}",
                R::KEY
            );
        };
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, R::Response::header_version(version))
            .expect("a response header");
        assert_eq!(header.correlation_id, CORRELATION_ID, "the correlation id");
        R::Response::decode(&mut response, version).expect("a response")
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.expect("send");
    }

    /// The next response frame; `None` once the gateway closed the
    /// connection (end of stream or reset).
    async fn response(&mut self) -> Option<Vec<u8>> {
        let mut len = [0; 4];
        let read = tokio::time::timeout(Duration::from_secs(30), self.0.read_exact(&mut len))
            .await
            .expect("an answer or the end within 30 s");
        read.ok()?;
        let mut response = vec![0; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut response).await.ok()?;
        Some(response)
    }
}

/// Reads a response's fields in order.
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    pub fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_first_chunk::<N>().expect("a longer response");
        self.0 = rest;
        *head
    }
    pub fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }
    pub fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }
    pub fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()).ok()?;
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(String::from_utf8(s.to_vec()).expect("UTF-8"))
    }
}

/// Creates `topic` (one partition) the way clients do: a Metadata
/// request naming it, allowed to create it.
pub async fn create_topic(wire: &mut Wire, topic: &str) {
    let name = TopicName(StrBytes::from_string(topic.to_owned()));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name))
        ]))
        .with_allow_auto_topic_creation(true);
    let response = wire.request(METADATA_VERSION, &request).await;
    let errors: Vec<i16> = response.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(errors, [NO_ERROR], "creating {topic}");
}

/// One record batch (v2, uncompressed) of `values`, keyless, stamped now,
/// from the producer `id` at `epoch` with its first record at sequence
/// `base_sequence` ([`NOT_IDEMPOTENT`] for a plain producer's).
pub fn record_batch((id, epoch, base_sequence): (i64, i16, i32), values: &[&str]) -> Bytes {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let records: Vec<Record> = (0..)
        .zip(values)
        .map(|(i, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            // The encoder keeps records in one batch while offset minus
            // sequence stays the same; a plain producer's count from -1.
            sequence: base_sequence.wrapping_add(i),
            timestamp: now,
            key: None,
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
        })
        .collect();
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, &records, &options).expect("encode the batch");
    batch.freeze()
}

/// Produces `batch` to partition 0 of `topic` with acks = all: the
/// partition's error code and base offset.
pub async fn produce(wire: &mut Wire, topic: &str, batch: Bytes) -> (i16, i64) {
    let name = TopicName(StrBytes::from_string(topic.to_owned()));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name)
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response = wire.request(PRODUCE_VERSION, &request).await;
    let answers: Vec<(i16, i64)> = response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .map(|p| (p.error_code, p.base_offset))
        .collect();
    match answers[..] {
        [answer] => answer,
        _ => panic!("one partition asked, answered {answers:?}"),
    }
}

/// A Fetch of one partition: its answer and how long it took.
pub struct Fetched {
    /// The partition's error code.
    pub error: i16,
    /// Where the partition ends: a test reading it all stops there.
    pub high_watermark: i64,
    /// The records answered, decoded.
    pub records: Vec<Record>,
    /// The length of the record batches on the wire (what min_bytes
    /// counts).
    pub bytes: usize,
    /// From sending the request to having its answer: whether the Fetch
    /// waited (max_wait_ms, min_bytes).
    pub took: Duration,
}

/// Fetches partition 0 of `topic` from `offset`, asking for at least
/// `min_bytes` within `max_wait_ms` (and at most 1 MiB).
pub async fn fetch_records(
    wire: &mut Wire,
    topic: &str,
    offset: i64,
    min_bytes: i32,
    max_wait_ms: i32,
) -> Fetched {
    let name = TopicName(StrBytes::from_string(topic.to_owned()));
    let request = FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let asked = Instant::now();
    let response = wire.request(FETCH_VERSION, &request).await;
    let took = asked.elapsed();
    assert_eq!(response.error_code, NO_ERROR, "the Fetch's error");
    let mut partitions = response.responses.into_iter().flat_map(|t| t.partitions);
    let (Some(partition), None) = (partitions.next(), partitions.next()) else {
        panic!("one partition asked, not answered alone");
    };
    let mut batches = partition.records.unwrap_or_default();
    let bytes = batches.len();
    let records = RecordBatchDecoder::decode_all(&mut batches)
        .expect("record batches")
        .into_iter()
        .flat_map(|set| set.records)
        .collect();
    Fetched {
        error: partition.error_code,
        high_watermark: partition.high_watermark,
        records,
        bytes,
        took,
    }
}

/// Each record's offset and value (as text).
pub fn offsets_and_values(records: &[Record]) -> Vec<(i64, String)> {
    records
        .iter()
        .map(|r| {
            let value = r.value.as_deref().unwrap_or_default();
            (r.offset, String::from_utf8_lossy(value).into_owned())
        })
        .collect()
}

/// How long [`fetch_all`] may take to reach the high watermark.
const FETCH_ALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Every record of partition 0 of `topic` (offset and value), fetched
/// from offset 0 up to the high watermark.
pub async fn fetch_all(wire: &mut Wire, topic: &str) -> Vec<(i64, String)> {
    let deadline = Instant::now() + FETCH_ALL_TIMEOUT;
    let mut stored: Vec<(i64, String)> = Vec::new();
    loop {
        let next = stored.last().map_or(0, |(offset, _)| offset + 1);
        let fetched = fetch_records(wire, topic, next, 1, 1000).await;
        assert_eq!(fetched.error, NO_ERROR, "fetching {topic} from {next}");
        stored.extend(offsets_and_values(&fetched.records));
        let next = stored.last().map_or(0, |(offset, _)| offset + 1);
        if next >= fetched.high_watermark {
            return stored;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: still below the high watermark {} after {FETCH_ALL_TIMEOUT:?}: {stored:?}",
            fetched.high_watermark
        );
    }
}

/// An ApiVersions v0 response: its error code and (key, min, max) ranges.
fn api_versions(body: &[u8]) -> (i16, Vec<(i16, i16, i16)>) {
    let mut fields = Fields(body);
    let error = fields.i16();
    let ranges = (0..fields.i32())
        .map(|_| (fields.i16(), fields.i16(), fields.i16()))
        .collect();
    (error, ranges)
}

async fn requests_not_served_are_refused_and_the_connection_goes_on(backend: BackendKind) {
    let gateway = Gateway::start(backend).await;
    let mut wire = Wire::connect(gateway.kafka_addr.expect("a Kafka listener")).await;

    let served = wire.call(18, 0, &[]).await.expect("ApiVersions v0");
    let (error, ranges) = api_versions(&served);
    assert_eq!(error, 0);
    assert!(
        ranges.iter().any(|&(key, _, max)| key == 0 && max >= 3),
        "Produce is served: {ranges:?}"
    );

    // A client newer than the gateway: v0 with the ranges, to retry in.
    let too_new = wire.call(18, 99, &[]).await.expect("ApiVersions v99");
    assert_eq!(api_versions(&too_new), (UNSUPPORTED_VERSION, ranges));

    // An API key no Kafka version has, and DescribeAcls (not served):
    // the bare refusal, header v0.
    let unknown = wire.call(999, 0, &[1, 2, 3]).await.expect("key 999");
    assert_eq!(unknown, UNSUPPORTED_VERSION.to_be_bytes());
    let acls = wire
        .call(29, 0, &[2, 0xff, 0xff])
        .await
        .expect("DescribeAcls");
    assert_eq!(acls, UNSUPPORTED_VERSION.to_be_bytes());

    // ListGroups at a version no codec reads: a flexible version, so the
    // response header has its (empty) tagged fields.
    let list_groups = wire.call(16, 99, &[0]).await.expect("ListGroups v99");
    assert_eq!(list_groups, [0, 0, UNSUPPORTED_VERSION as u8]);

    // The connection still serves: Metadata v1 for no topic.
    let metadata = wire
        .call(3, 1, &0i32.to_be_bytes())
        .await
        .expect("Metadata");
    assert_eq!(Fields(&metadata).i32(), 1, "one broker listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_served_are_refused_and_the_connection_goes_on_on_the_embedded_store() {
    requests_not_served_are_refused_and_the_connection_goes_on(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_served_are_refused_and_the_connection_goes_on_on_pulsar() {
    requests_not_served_are_refused_and_the_connection_goes_on(BackendKind::Pulsar).await;
}

async fn oversized_and_malformed_requests_close_only_their_connection(backend: BackendKind) {
    let gateway = Gateway::start(backend).await;
    let addr = gateway.kafka_addr.expect("a Kafka listener");
    let mut bystander = Wire::connect(addr).await;
    assert!(bystander.call(18, 0, &[]).await.is_some());

    // A frame of 200 MiB, over the default limit of 100 MiB: only its
    // length is sent, and the gateway closes the connection on reading it.
    let mut oversized = Wire::connect(addr).await;
    oversized.send(&(200u32 << 20).to_be_bytes()).await;
    assert_eq!(oversized.response().await, None, "closed unanswered");

    // Metadata v1 claiming i32::MAX topics and holding none.
    let mut malformed = Wire::connect(addr).await;
    let answer = malformed.call(3, 1, &i32::MAX.to_be_bytes()).await;
    assert_eq!(answer, None, "closed unanswered");

    // A frame shorter than a request header.
    let mut short = Wire::connect(addr).await;
    short.send(&[0, 0, 0, 3, 0, 18, 0]).await;
    assert_eq!(short.response().await, None, "closed unanswered");

    let (error, _) = api_versions(&bystander.call(18, 0, &[]).await.expect("still served"));
    assert_eq!(error, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_close_only_their_connection_on_the_embedded_store() {
    oversized_and_malformed_requests_close_only_their_connection(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_close_only_their_connection_on_pulsar() {
    oversized_and_malformed_requests_close_only_their_connection(BackendKind::Pulsar).await;
}

/// The request size limit set here, in place of the default 100 MiB.
const REQUEST_LIMIT: u32 = 1 << 20;

async fn the_configured_request_limit_closes_only_the_connection_over_it(backend: BackendKind) {
    // Set through the environment (`--kafka-max-request-bytes` is the
    // flag; config.rs's tests cover it and the TOML key).
    let gateway = Gateway::builder(backend)
        .env(
            "PULSAR_GATEWAY_KAFKA_MAX_REQUEST_BYTES",
            REQUEST_LIMIT.to_string(),
        )
        .start()
        .await;
    let addr = gateway.kafka_addr.expect("a Kafka listener");
    let mut bystander = Wire::connect(addr).await;
    assert!(bystander.call(18, 0, &[]).await.is_some());

    // A frame of exactly the limit is read whole and answered: an unknown
    // API key (the header is 19 bytes with this client id), refused.
    let mut at_limit = Wire::connect(addr).await;
    let body = vec![0; REQUEST_LIMIT as usize - 19];
    let answer = at_limit.call(999, 0, &body).await.expect("an answer");
    assert_eq!(answer, UNSUPPORTED_VERSION.to_be_bytes());

    // A frame saying 2 MiB, under the default limit, over this one: only
    // its length is sent, and the gateway closes the connection on reading
    // it (under the default it would wait for the body).
    let mut oversized = Wire::connect(addr).await;
    oversized.send(&(2 * REQUEST_LIMIT).to_be_bytes()).await;
    assert_eq!(oversized.response().await, None, "closed unanswered");

    let (error, _) = api_versions(&bystander.call(18, 0, &[]).await.expect("still served"));
    assert_eq!(error, 0);
    let (error, _) = api_versions(&at_limit.call(18, 0, &[]).await.expect("still served"));
    assert_eq!(error, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_request_limit_closes_only_the_connection_over_it_on_the_embedded_store() {
    the_configured_request_limit_closes_only_the_connection_over_it(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_request_limit_closes_only_the_connection_over_it_on_pulsar() {
    the_configured_request_limit_closes_only_the_connection_over_it(BackendKind::Pulsar).await;
}

/// The gateway's CPU time so far (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the gateway's stat");
    // After the command name (in parentheses): state is field 3, utime 14
    // and stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a command name") + 2..]
        .split(' ')
        .collect();
    let tick = |i: usize| fields[i - 3].parse::<u64>().expect("a tick count");
    tick(14) + tick(15)
}

async fn a_fetch_at_the_end_waits_idle_and_answers_when_a_record_comes(backend: BackendKind) {
    let gateway = Gateway::start(backend).await;
    let addr = gateway.kafka_addr.expect("a Kafka listener");
    let topic = super::unique("long-poll");
    let mut wire = Wire::connect(addr).await;
    create_topic(&mut wire, &topic).await;

    // Nothing to read: answered empty once max_wait_ms is up, and the
    // wait costs next to no CPU (a busy loop would burn the whole 2 s).
    let before = cpu_ticks(gateway.pid());
    let empty = fetch_records(&mut wire, &topic, 0, 1, 2000).await;
    let spent = cpu_ticks(gateway.pid()) - before;
    let (error, records, took) = (empty.error, empty.bytes, empty.took);
    assert_eq!((error, records), (0, 0), "an empty answer");
    assert!(
        took >= Duration::from_millis(1900),
        "answered after {took:?}"
    );
    assert!(spent <= 20, "{spent} ticks of CPU over a 2 s wait");

    // A record produced during a long wait ends it.
    let bootstrap = addr.to_string();
    let producing = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        tokio::spawn(async move { super::groups::produce(&bootstrap, &topic, 1, false).await })
    };
    let woken = fetch_records(&mut wire, &topic, 0, 1, 30_000).await;
    let (error, records, took) = (woken.error, woken.bytes, woken.took);
    producing.await.expect("the producer");
    assert_eq!(error, 0);
    assert!(records > 0, "the record is in the answer");
    assert!(took < Duration::from_secs(25), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_at_the_end_waits_idle_and_answers_when_a_record_comes_on_the_embedded_store() {
    a_fetch_at_the_end_waits_idle_and_answers_when_a_record_comes(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_at_the_end_waits_idle_and_answers_when_a_record_comes_on_pulsar() {
    a_fetch_at_the_end_waits_idle_and_answers_when_a_record_comes(BackendKind::Pulsar).await;
}

/// How long the early-answer case gives its Fetch to be parked before
/// the second record is produced. Only that: the assertions hold whether
/// or not the Fetch was parked by then (it cannot answer with both records
/// before the second exists); the delay makes the case exercise the wait.
const PARK: Duration = Duration::from_millis(300);

async fn a_fetch_waits_for_min_bytes_until_max_wait_or_enough_records(backend: BackendKind) {
    let gateway = Gateway::start(backend).await;
    let addr = gateway.kafka_addr.expect("a Kafka listener");
    let topic = super::unique("min-bytes");
    let mut producer = Wire::connect(addr).await;
    let mut consumer = Wire::connect(addr).await;
    create_topic(&mut producer, &topic).await;
    let first = record_batch(NOT_IDEMPOTENT, &["r0"]);
    assert_eq!(produce(&mut producer, &topic, first).await, (NO_ERROR, 0));

    // One record of a few dozen bytes against min_bytes of 64 KiB: the
    // answer waits out max_wait_ms, then comes with the record.
    let waited = fetch_records(&mut consumer, &topic, 0, 64 << 10, 1500).await;
    assert_eq!(waited.error, NO_ERROR);
    assert_eq!(offsets_and_values(&waited.records), [(0, "r0".into())]);
    assert!(
        waited.took >= Duration::from_millis(1400) && waited.took < Duration::from_secs(10),
        "answered after {:?}, not after max_wait_ms (1.5 s)",
        waited.took
    );

    // With min_bytes 1 the record is enough: answered at once, long
    // before max_wait_ms.
    let at_once = fetch_records(&mut consumer, &topic, 0, 1, 20_000).await;
    assert_eq!(at_once.error, NO_ERROR);
    assert_eq!(offsets_and_values(&at_once.records), [(0, "r0".into())]);
    assert!(
        at_once.took < Duration::from_secs(2),
        "answered after {:?}",
        at_once.took
    );

    // min_bytes of two such records in one batch (the second one's
    // offset and timestamp deltas take at least as many bytes as the
    // first's): not there with one record, reached when a second is
    // produced during the wait, which then ends well before max_wait_ms.
    let two_records = 2 * at_once.bytes - BATCH_OVERHEAD;
    let min_bytes = i32::try_from(two_records).expect("a small size");
    let (both, ()) = tokio::join!(
        fetch_records(&mut consumer, &topic, 0, min_bytes, 20_000),
        async {
            tokio::time::sleep(PARK).await;
            let second = record_batch(NOT_IDEMPOTENT, &["r1"]);
            assert_eq!(produce(&mut producer, &topic, second).await, (NO_ERROR, 1));
        }
    );
    assert_eq!(both.error, NO_ERROR);
    assert_eq!(
        offsets_and_values(&both.records),
        [(0, "r0".into()), (1, "r1".into())]
    );
    assert!(both.bytes >= two_records, "{} bytes", both.bytes);
    assert!(
        both.took < Duration::from_secs(10),
        "answered after {:?}, max_wait_ms was 20 s",
        both.took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_waits_for_min_bytes_until_max_wait_or_enough_records_on_the_embedded_store() {
    a_fetch_waits_for_min_bytes_until_max_wait_or_enough_records(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_waits_for_min_bytes_until_max_wait_or_enough_records_on_pulsar() {
    a_fetch_waits_for_min_bytes_until_max_wait_or_enough_records(BackendKind::Pulsar).await;
}
