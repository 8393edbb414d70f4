//! The Pulsar backend's producers: idle ones close, a bound on bytes in
//! flight holds publishes back without losing any, batching and
//! compression toward Pulsar keep offsets and payloads intact, and single
//! members of batched entries are acknowledged and nacked alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_api::{
    Backend, Message, MessageId, NewMessage, SubscribeRequest, Subscription, SubscriptionKind,
    TopicName,
};
use pulsar_gateway::backend::pulsar::{Compression, ProducerSettings};

use super::cases::recv;
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

/// A published message's id and key.
type Keyed = (MessageId, Option<Bytes>);

/// Publishes `batches` batches of `per_batch` messages from each of
/// `tasks` concurrent tasks with `publish_batch`, message `i` of a batch
/// keyed `key(i)`; returns the id each payload got, and its key.
async fn publish_batches_concurrently(
    backend: &Arc<dyn Backend>,
    topic: &TopicName,
    tasks: usize,
    batches: usize,
    per_batch: usize,
    key: fn(usize) -> Option<Bytes>,
) -> HashMap<Bytes, Keyed> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (backend, topic) = (backend.clone(), topic.clone());
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..batches {
                let messages: Vec<NewMessage> = (0..per_batch)
                    .map(|i| NewMessage {
                        key: key(i),
                        ..NewMessage::new(format!("{t}-{n}-{i}"))
                    })
                    .collect();
                let sent = messages.clone();
                let got = backend.publish_batch(&topic, messages).await.unwrap();
                assert_eq!(got.len(), sent.len());
                ids.extend(
                    sent.into_iter()
                        .zip(got)
                        .map(|(m, id)| (m.payload, (id, m.key))),
                );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_become_entries_of_one_key_with_the_offsets_and_ids_they_are_read_with() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let backend = b
        .with_producers(ProducerSettings {
            batch_max_messages: 10,
            ..ProducerSettings::default()
        })
        .await;
    let topic = b.topic("batched");
    // Runs of 12 messages of one key, then 13 without: entries split at
    // the key and at ten messages.
    let keyed = publish_batches_concurrently(&backend, &topic, 4, 3, 25, |i| {
        (i < 12).then(|| Bytes::from_static(b"k"))
    })
    .await;
    let mut entries: HashMap<(u64, u64), Vec<Keyed>> = HashMap::new();
    for (id, key) in keyed.values() {
        entries
            .entry((id.ledger_id, id.entry_id))
            .or_default()
            .push((*id, key.clone()));
    }
    for (entry, members) in &entries {
        assert!(members.len() <= 10, "entry {entry:?}: {}", members.len());
        assert!(
            members.iter().all(|(_, key)| *key == members[0].1),
            "entry {entry:?} mixes keys"
        );
        let mut indexes: Vec<i32> = members.iter().map(|(id, _)| id.batch_index).collect();
        indexes.sort_unstable();
        let expected: Vec<i32> = if members.len() == 1 {
            vec![-1]
        } else {
            (0..members.len() as i32).collect()
        };
        assert_eq!(indexes, expected, "entry {entry:?}");
    }
    // 4 tasks x 3 batches, each split 10 + 2 + 10 + 3.
    assert_eq!(entries.len(), 4 * 3 * 4);
    let ids: HashMap<Bytes, MessageId> = keyed.into_iter().map(|(p, (id, _))| (p, id)).collect();
    assert_contiguous(&ids);
    assert_read_back(&b, &topic, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_entries_under_load() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let topic = b.topic("grouped");
    // Sixteen publishers at once: while the sender sends one publish, the
    // others queue and go together.
    let ids = publish_concurrently(&b.backend, &topic, 16, 20, 100).await;
    let mut members: HashMap<(u64, u64), usize> = HashMap::new();
    for id in ids.values() {
        *members.entry((id.ledger_id, id.entry_id)).or_default() += 1;
    }
    assert!(
        members.values().any(|&n| n > 1),
        "every one of {} publishes went alone",
        ids.len()
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

/// Publishes two batches of ten messages through producers that batch
/// ten messages; returns their ids in offset order, after checking that
/// entries really hold several messages.
async fn publish_batched(b: &TestBackend, topic: &TopicName) -> Vec<MessageId> {
    let backend = b
        .with_producers(ProducerSettings {
            batch_max_messages: 10,
            ..ProducerSettings::default()
        })
        .await;
    let mut ids: Vec<MessageId> = publish_batches_concurrently(&backend, topic, 1, 2, 10, |_| None)
        .await
        .into_values()
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    let mut members: HashMap<(u64, u64), usize> = HashMap::new();
    for id in &ids {
        *members.entry((id.ledger_id, id.entry_id)).or_default() += 1;
    }
    assert_eq!(
        members.values().copied().collect::<Vec<_>>(),
        vec![10, 10],
        "two entries of ten"
    );
    ids
}

/// The members of the entry holding the most messages, by batch index.
fn largest_batch(ids: &[MessageId]) -> Vec<MessageId> {
    let mut entries: HashMap<(u64, u64), Vec<MessageId>> = HashMap::new();
    for id in ids {
        entries
            .entry((id.ledger_id, id.entry_id))
            .or_default()
            .push(*id);
    }
    let mut batch = entries
        .into_values()
        .max_by_key(Vec::len)
        .unwrap_or_default();
    batch.sort_unstable_by_key(|id| id.batch_index);
    batch
}

/// Every message that arrives until none has for a while.
async fn drain(sub: &dyn Subscription) -> Vec<Message> {
    let mut got = Vec::new();
    while let Ok(next) = tokio::time::timeout(super::cases::QUIET, sub.receive()).await {
        got.push(next.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_members_of_batched_entries_are_acknowledged_alone() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let topic = b.topic("batch-ack");
    let ids = publish_batched(&b, &topic).await;
    let request = SubscribeRequest::new(topic.clone(), "s");
    let sub = b.subscribe(request.clone()).await;
    let mut unacked = Vec::new();
    for _ in 0..ids.len() {
        let got = recv(&*sub).await;
        // Every other member of each entry: some members of every batch,
        // never all of one with more than one.
        if got.id.batch_index % 2 == 0 {
            sub.ack(&topic, got.id).await.unwrap();
        } else {
            unacked.push(got.id);
        }
    }
    sub.close().await.unwrap();
    drop(sub);
    let sub = b.subscribe(request.clone()).await;
    let again: Vec<MessageId> = drain(&*sub).await.iter().map(|m| m.id).collect();
    assert_eq!(again, unacked, "exactly the unacknowledged members return");
    // The rest acknowledged by a consumer that never saw the first half:
    // the entries are complete and nothing returns.
    for id in again {
        sub.ack(&topic, id).await.unwrap();
    }
    sub.close().await.unwrap();
    drop(sub);
    let sub = b.subscribe(request).await;
    assert_eq!(drain(&*sub).await, Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cumulative_ack_inside_a_batch_stops_at_that_member() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let topic = b.topic("batch-cumulative");
    let ids = publish_batched(&b, &topic).await;
    let batch = largest_batch(&ids);
    let (middle, later) = (batch[1], batch[3]);
    let request = SubscribeRequest::new(topic.clone(), "s");
    let sub = b.subscribe(request.clone()).await;
    for _ in 0..ids.len() {
        recv(&*sub).await;
    }
    sub.ack_cumulative(&topic, middle).await.unwrap();
    // A member after the cumulative point, acknowledged alone, takes only
    // itself with it.
    sub.ack(&topic, later).await.unwrap();
    sub.close().await.unwrap();
    drop(sub);
    let sub = b.subscribe(request).await;
    let again: Vec<MessageId> = drain(&*sub).await.iter().map(|m| m.id).collect();
    let expected: Vec<MessageId> = ids
        .iter()
        .copied()
        .filter(|id| *id > middle && *id != later)
        .collect();
    assert_eq!(again, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_batch_member_comes_back_without_its_acknowledged_siblings() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let topic = b.topic("batch-nack");
    let ids = publish_batched(&b, &topic).await;
    let batch = largest_batch(&ids);
    let sub = b
        .subscribe(SubscribeRequest::new(topic.clone(), "s").kind(SubscriptionKind::Shared))
        .await;
    for _ in 0..ids.len() {
        let got = recv(&*sub).await;
        // Of the batch, members 0 and 2 are acknowledged, 1 is nacked
        // below and the rest stay unacknowledged; every other entry is
        // acknowledged.
        if !batch.contains(&got.id) || got.id == batch[0] || got.id == batch[2] {
            sub.ack(&topic, got.id).await.unwrap();
        }
    }
    sub.nack(&topic, batch[1]).await.unwrap();
    // Pulsar redelivers the whole entry, less the members acknowledged
    // (the broker's ack set): the nacked member and the siblings still
    // unacknowledged, each counted as redelivered.
    let again = drain(&*sub).await;
    let returned: Vec<MessageId> = again.iter().map(|m| m.id).collect();
    let expected: Vec<MessageId> = batch
        .iter()
        .copied()
        .filter(|id| *id != batch[0] && *id != batch[2])
        .collect();
    assert_eq!(returned, expected, "not the acknowledged siblings");
    for m in &again {
        assert!(m.redelivery_count >= 1, "{:?}", m.id);
    }
}

/// On one runtime thread, a reader drains its queue before the crate's
/// engine runs again; asked then whether more is available, it must not
/// wait on the engine, which is busy filling the queue from an entry
/// larger than the room left (the question waited for ever before vendor
/// patch 9: a Kafka Fetch stalled until the client's request timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn availability_is_answered_while_the_engine_fills_the_queue() {
    let b = TestBackend::start(Kind::Pulsar).await;
    // Entries of 2500 messages: more than the reader's queue of 1000 holds.
    let backend = b
        .with_producers(ProducerSettings {
            batch_max_messages: 2500,
            ..ProducerSettings::default()
        })
        .await;
    let topic = b.topic("engine-busy");
    super::cases::publish_in_batches(&*backend, &topic, 7500, 2500).await;
    super::cases::read_polling(&*b.backend, &topic, 7500).await;
}
