//! The idempotent producer on the wire, answered as a Kafka broker answers
//! it, on the real gateway binary (requests and record batches built with
//! kafka-protocol's types, since no client library lets a test choose its
//! sequences and epochs):
//!
//! - InitProducerId hands out a producer id at epoch 0.
//! - A batch sent again (a producer's retry after a lost answer) is
//!   answered with no error and the base offset it got the first time, and
//!   its records are stored once.
//! - A batch whose base sequence skips ahead is refused with
//!   OUT_OF_ORDER_SEQUENCE_NUMBER and none of it is stored.
//! - A producer that bumps its epoch (the Java producer does, itself, after
//!   some errors) starts its sequences over at 0; a new epoch starting
//!   anywhere else is OUT_OF_ORDER_SEQUENCE_NUMBER (a batch was lost), and
//!   a batch of the old epoch is refused with INVALID_PRODUCER_EPOCH (what
//!   brokers answer a Produce since Kafka 2.7, KIP-588; before, the fatal
//!   PRODUCER_FENCED).

use kafka_protocol::messages::InitProducerIdRequest;

use super::common::{BackendKind, Gateway};
use super::unique;
use super::wire::{create_topic, fetch_all, produce, record_batch, Wire, NO_ERROR};

/// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER.
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;

/// Kafka's INVALID_PRODUCER_EPOCH.
const INVALID_PRODUCER_EPOCH: i16 = 47;

/// The InitProducerId version sent: the newest the gateway serves.
const INIT_PRODUCER_ID_VERSION: i16 = 4;

/// A new idempotent (not transactional) producer's id and epoch.
async fn init_producer_id(wire: &mut Wire) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let response = wire.request(INIT_PRODUCER_ID_VERSION, &request).await;
    assert_eq!(response.error_code, NO_ERROR, "InitProducerId");
    (response.producer_id.0, response.producer_epoch)
}

/// A gateway with a new topic and a new idempotent producer, and the
/// connection it got its producer id on.
struct Producer {
    gateway: Gateway,
    wire: Wire,
    topic: String,
    id: i64,
    epoch: i16,
}

impl Producer {
    async fn start(backend: BackendKind, topic: &str) -> Producer {
        let gateway = Gateway::start(backend).await;
        let mut wire = Wire::connect(gateway.kafka_addr.expect("a Kafka listener")).await;
        let topic = unique(topic);
        create_topic(&mut wire, &topic).await;
        let (id, epoch) = init_producer_id(&mut wire).await;
        Producer {
            gateway,
            wire,
            topic,
            id,
            epoch,
        }
    }
}

/// Where a refused batch's base offset says it went: nowhere.
const REFUSED: i64 = -1;

async fn a_retried_batch_is_stored_once_and_a_sequence_gap_is_refused(backend: BackendKind) {
    let Producer {
        gateway,
        mut wire,
        topic,
        id,
        epoch,
    } = Producer::start(backend, "idempotent").await;
    assert!(id >= 0, "producer id {id}");
    assert_eq!(epoch, 0, "a new producer's epoch");

    let first = record_batch((id, epoch, 0), &["v0", "v1", "v2"]);
    assert_eq!(
        produce(&mut wire, &topic, first.clone()).await,
        (NO_ERROR, 0)
    );
    // The retry of a producer that lost the answer with its connection:
    // the same answer, on another connection, and nothing stored again.
    let mut retry = Wire::connect(gateway.kafka_addr.expect("a Kafka listener")).await;
    assert_eq!(produce(&mut retry, &topic, first).await, (NO_ERROR, 0));
    // The next batch in sequence lands right after the first one's three.
    let second = record_batch((id, epoch, 3), &["v3", "v4"]);
    assert_eq!(produce(&mut wire, &topic, second).await, (NO_ERROR, 3));
    // Sequence 7 where 5 comes next: two batches missing in between.
    let gap = record_batch((id, epoch, 7), &["after a gap"]);
    assert_eq!(
        produce(&mut wire, &topic, gap).await,
        (OUT_OF_ORDER_SEQUENCE_NUMBER, REFUSED)
    );

    let stored = fetch_all(&mut wire, &topic).await;
    let expected: Vec<(i64, String)> = (0..5).map(|i| (i, format!("v{i}"))).collect();
    assert_eq!(stored, expected);
    let labels = format!("protocol=\"kafka\",topic=\"persistent://public/default/{topic}\"");
    assert_eq!(gateway.counter("messages_in", &labels).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_stored_once_and_a_sequence_gap_is_refused_on_the_embedded_store() {
    a_retried_batch_is_stored_once_and_a_sequence_gap_is_refused(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_stored_once_and_a_sequence_gap_is_refused_on_pulsar() {
    a_retried_batch_is_stored_once_and_a_sequence_gap_is_refused(BackendKind::Pulsar).await;
}

async fn a_new_epoch_starts_at_sequence_0_and_fences_the_old_one(backend: BackendKind) {
    let Producer {
        gateway: _gateway,
        mut wire,
        topic,
        id,
        epoch,
    } = Producer::start(backend, "epochs").await;

    let old = record_batch((id, epoch, 0), &["e0-0", "e0-1"]);
    assert_eq!(produce(&mut wire, &topic, old).await, (NO_ERROR, 0));
    let bumped = epoch + 1;
    // A new epoch's first batch not at sequence 0: one before it was lost.
    let late = record_batch((id, bumped, 2), &["e1 after a lost batch"]);
    assert_eq!(
        produce(&mut wire, &topic, late).await,
        (OUT_OF_ORDER_SEQUENCE_NUMBER, REFUSED)
    );
    let new = record_batch((id, bumped, 0), &["e1-0"]);
    assert_eq!(produce(&mut wire, &topic, new).await, (NO_ERROR, 2));
    // The old epoch is fenced, even at the sequence it would have had next.
    let stale = record_batch((id, epoch, 2), &["e0-2"]);
    assert_eq!(
        produce(&mut wire, &topic, stale).await,
        (INVALID_PRODUCER_EPOCH, REFUSED)
    );
    // The new epoch goes on.
    let next = record_batch((id, bumped, 1), &["e1-1"]);
    assert_eq!(produce(&mut wire, &topic, next).await, (NO_ERROR, 3));

    let stored = fetch_all(&mut wire, &topic).await;
    let expected: Vec<(i64, String)> = (0..)
        .zip(["e0-0", "e0-1", "e1-0", "e1-1"])
        .map(|(offset, value)| (offset, value.to_owned()))
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_starts_at_sequence_0_and_fences_the_old_one_on_the_embedded_store() {
    a_new_epoch_starts_at_sequence_0_and_fences_the_old_one(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_starts_at_sequence_0_and_fences_the_old_one_on_pulsar() {
    a_new_epoch_starts_at_sequence_0_and_fences_the_old_one(BackendKind::Pulsar).await;
}
