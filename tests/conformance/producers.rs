//! The Pulsar backend's producers: idle ones close, a bound on bytes in
//! flight holds publishes back without losing any, and batching and
//! compression toward Pulsar keep offsets and payloads intact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_api::{Backend, MessageId, NewMessage, SubscribeRequest, TopicName};
use pulsar_gateway::backend::pulsar::{Compression, ProducerSettings};

use super::{Kind, TestBackend};

/// The topic's URL in the test cluster's admin API.
fn admin_path(topic: &TopicName) -> String {
    let web = std::env::var("PULSAR_GATEWAY_TEST_PULSAR_WEB_URL").unwrap();
    format!(
        "{web}/admin/v2/persistent/public/default/{}",
        topic.local_name()
    )
}

/// How many producers Pulsar has on `topic`.
fn publishers(topic: &TopicName) -> usize {
    let stats = ureq::get(&format!("{}/stats", admin_path(topic)))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    stats["publishers"].as_array().map_or(0, Vec::len)
}

/// Publishes `per_task` messages from each of `tasks` concurrent tasks;
/// returns the id each payload got.
async fn publish_concurrently(
    backend: &Arc<dyn Backend>,
    topic: &TopicName,
    tasks: usize,
    per_task: usize,
    payload_len: usize,
) -> HashMap<Bytes, MessageId> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (backend, topic) = (backend.clone(), topic.clone());
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_task {
                let mut payload = format!("{t}-{i}-").into_bytes();
                payload.resize(payload_len.max(payload.len()), b'.');
                let payload = Bytes::from(payload);
                let id = backend
                    .publish(&topic, NewMessage::new(payload.clone()))
                    .await
                    .unwrap();
                ids.push((payload, id));
            }
            ids
        }));
    }
    let mut all = HashMap::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    all
}

/// The offsets are exactly 0..n.
fn assert_contiguous(ids: &HashMap<Bytes, MessageId>) {
    let mut offsets: Vec<u64> = ids.values().map(|id| id.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..ids.len() as u64).collect::<Vec<_>>());
}

/// A subscription from the earliest message delivers every published
/// payload under the id its publish returned.
async fn assert_read_back(b: &TestBackend, topic: &TopicName, ids: &HashMap<Bytes, MessageId>) {
    let sub = b
        .subscribe(SubscribeRequest::new(topic.clone(), "check"))
        .await;
    for _ in 0..ids.len() {
        let got = tokio::time::timeout(super::cases::DEADLINE, sub.receive())
            .await
            .expect("a message in time")
            .unwrap();
        assert_eq!(ids.get(&got.payload), Some(&got.id), "{:?}", got.payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_producers_close_and_the_next_publish_reopens_one() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let backend = b
        .with_producers(ProducerSettings {
            idle_timeout: Duration::from_secs(1),
            ..ProducerSettings::default()
        })
        .await;
    let topic = b.topic("idle");
    let first = backend
        .publish(&topic, NewMessage::new("one"))
        .await
        .unwrap();
    assert_eq!(publishers(&topic), 1);
    let deadline = Instant::now() + super::cases::DEADLINE;
    while publishers(&topic) > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle producer was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = backend
        .publish(&topic, NewMessage::new("two"))
        .await
        .unwrap();
    assert_eq!(second.offset, first.offset + 1);
    assert_eq!(publishers(&topic), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_in_flight_bound_slows_publishes_and_loses_none() {
    let b = TestBackend::start(Kind::Pulsar).await;
    // Two 1 KiB messages in flight at most, sixteen publishing at once, and
    // one message larger than the whole bound.
    let backend = b
        .with_producers(ProducerSettings {
            max_in_flight_bytes: 2048,
            ..ProducerSettings::default()
        })
        .await;
    let topic = b.topic("bounded");
    let mut ids = publish_concurrently(&backend, &topic, 16, 10, 1024).await;
    let big = Bytes::from(vec![b'x'; 10_000]);
    let id = backend
        .publish(&topic, NewMessage::new(big.clone()))
        .await
        .unwrap();
    ids.insert(big, id);
    assert_contiguous(&ids);
    assert_read_back(&b, &topic, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_publishes_get_the_offsets_and_ids_they_are_read_with() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let backend = b
        .with_producers(ProducerSettings {
            batch_max_messages: 20,
            batch_max_delay: Duration::from_millis(5),
            ..ProducerSettings::default()
        })
        .await;
    let topic = b.topic("batched");
    let ids = publish_concurrently(&backend, &topic, 8, 25, 100).await;
    assert!(
        ids.values().any(|id| id.batch_index > 0),
        "concurrent publishes share entries"
    );
    assert_contiguous(&ids);
    assert_read_back(&b, &topic, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_publishes_are_stored_compressed_and_read_back_whole() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let backend = b
        .with_producers(ProducerSettings {
            compression: Compression::Lz4,
            ..ProducerSettings::default()
        })
        .await;
    let topic = b.topic("compressed");
    let ids = publish_concurrently(&backend, &topic, 2, 5, 4096).await;
    let id = ids.values().next().unwrap();
    let entry = ureq::get(&format!(
        "{}/ledger/{}/entry/{}",
        admin_path(&topic),
        id.ledger_id,
        id.entry_id
    ))
    .call()
    .unwrap();
    assert_eq!(
        entry
            .headers()
            .get("X-Pulsar-compression")
            .and_then(|v| v.to_str().ok()),
        Some("LZ4")
    );
    assert_contiguous(&ids);
    assert_read_back(&b, &topic, &ids).await;
}
