//! The Kafka wire at its edges, on the real gateway binary: requests no
//! client sends after ApiVersions (unknown API keys, APIs not served,
//! versions beyond the served ones) are refused with UNSUPPORTED_VERSION on
//! a connection that goes on serving; a frame over the size limit (the
//! default, or one configured, at which a frame is still served), or a
//! request that does not decode, closes its own connection and no other.
//! A Fetch at the end of a partition waits its max_wait_ms without
//! burning CPU, and a record produced meanwhile ends the wait.
//!
//! Requests are encoded by hand here: the point is bytes no client library
//! would send, and the few fields of each are fixed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{BackendKind, Gateway};

/// Kafka's UNSUPPORTED_VERSION.
const UNSUPPORTED_VERSION: i16 = 35;

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
        request.extend_from_slice(&7i32.to_be_bytes());
        request.extend_from_slice(&string("wire-test"));
        request.extend_from_slice(body);
        let len = u32::try_from(request.len()).expect("a small request");
        self.send(&len.to_be_bytes()).await;
        self.send(&request).await;
        let mut response = self.response().await?;
        assert_eq!(response[..4], 7i32.to_be_bytes(), "the correlation id");
        Some(response.split_off(4))
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

/// Fetch v4 of partition 0 of `topic` from `offset`, at least one byte,
/// waiting up to `max_wait_ms`: the error code and the records' length,
/// with how long the answer took.
async fn fetch(
    wire: &mut Wire,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
) -> (i16, usize, Duration) {
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    body.extend_from_slice(&max_wait_ms.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    body.extend_from_slice(&(1i32 << 20).to_be_bytes()); // max bytes
    body.push(0); // isolation level
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&string(topic));
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes()); // partition
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&(1i32 << 20).to_be_bytes()); // partition max bytes
    let asked = tokio::time::Instant::now();
    let response = wire.call(1, 4, &body).await.expect("a Fetch answer");
    let took = asked.elapsed();
    let mut fields = Fields(&response);
    let _throttle = fields.i32();
    assert_eq!(fields.i32(), 1, "one topic");
    assert_eq!(fields.string().as_deref(), Some(topic));
    assert_eq!(fields.i32(), 1, "one partition");
    assert_eq!(fields.i32(), 0, "partition 0");
    let error = fields.i16();
    let (_high_watermark, _last_stable) = (fields.take::<8>(), fields.take::<8>());
    let aborted = fields.i32();
    assert!(aborted <= 0, "no aborted transactions");
    let records = usize::try_from(fields.i32()).unwrap_or(0);
    (error, records, took)
}

async fn a_fetch_at_the_end_waits_idle_and_answers_when_a_record_comes(backend: BackendKind) {
    let gateway = Gateway::start(backend).await;
    let addr = gateway.kafka_addr.expect("a Kafka listener");
    let topic = super::unique("long-poll");
    let mut wire = Wire::connect(addr).await;
    // Metadata v1 for the topic creates it.
    let mut body = 1i32.to_be_bytes().to_vec();
    body.extend_from_slice(&string(&topic));
    wire.call(3, 1, &body).await.expect("a Metadata answer");

    // Nothing to read: answered empty once max_wait_ms is up, and the
    // wait costs next to no CPU (a busy loop would burn the whole 2 s).
    let before = cpu_ticks(gateway.pid());
    let (error, records, took) = fetch(&mut wire, &topic, 0, 2000).await;
    let spent = cpu_ticks(gateway.pid()) - before;
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
    let (error, records, took) = fetch(&mut wire, &topic, 0, 30_000).await;
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
