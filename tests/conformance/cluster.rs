//! What only a Pulsar cluster has: two gateways on it (what one writes,
//! the other sees), Pulsar's own retention, and the start-up probe of
//! the broker's features.

use std::collections::HashSet;

use bytes::Bytes;
use gateway_api::{BackendError, ExpectedVersion, NewMessage, SubscribeRequest};

use pulsar_gateway::backend::pulsar::PulsarBackend;

use super::{Kind, TestBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_written_by_one_gateway_is_read_and_guarded_by_the_other() {
    let a = TestBackend::start(Kind::Pulsar).await;
    let b = a.another().await;
    let (meta_a, meta_b) = (a.backend.metadata(), b.metadata());
    let key = format!("test/{}/shared", a.run_id);

    let v1 = meta_a
        .put(&key, Bytes::from_static(b"from a"), ExpectedVersion::Absent)
        .await
        .unwrap();
    let seen = meta_b.get(&key).await.unwrap().expect("b sees a's write");
    assert_eq!(
        (seen.value, seen.version),
        (Bytes::from_static(b"from a"), v1)
    );
    let scanned = meta_b.scan(&format!("test/{}/", a.run_id)).await.unwrap();
    assert_eq!(scanned.len(), 1);

    // Both race to replace version v1: exactly one wins, and both then
    // read the winner.
    let (ra, rb) = tokio::join!(
        meta_a.put(
            &key,
            Bytes::from_static(b"a wins"),
            ExpectedVersion::Exactly(v1)
        ),
        meta_b.put(
            &key,
            Bytes::from_static(b"b wins"),
            ExpectedVersion::Exactly(v1)
        ),
    );
    let (winner, version) = match (ra, rb) {
        (Ok(v), Err(BackendError::VersionConflict(_))) => ("a wins", v),
        (Err(BackendError::VersionConflict(_)), Ok(v)) => ("b wins", v),
        other => panic!("exactly one compare-and-set must win: {other:?}"),
    };
    for meta in [&meta_a, &meta_b] {
        let now = meta.get(&key).await.unwrap().unwrap();
        assert_eq!((now.value, now.version), (Bytes::from(winner), version));
    }

    meta_b
        .delete(&key, ExpectedVersion::Exactly(version))
        .await
        .unwrap();
    assert_eq!(meta_a.get(&key).await.unwrap(), None);
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_two_gateways_interleave_with_contiguous_offsets() {
    let a = TestBackend::start(Kind::Pulsar).await;
    let b = a.another().await;
    let topic = a.topic("two-gateways");
    let mut tasks = Vec::new();
    for (name, backend) in [("a", a.backend.clone()), ("b", b.clone())] {
        for p in 0..4 {
            let (backend, topic) = (backend.clone(), topic.clone());
            tasks.push(tokio::spawn(async move {
                let mut offsets = Vec::new();
                for i in 0..25 {
                    let message = NewMessage::new(format!("{name}{p}-{i}"));
                    offsets.push(backend.publish(&topic, message).await.unwrap().offset);
                }
                offsets
            }));
        }
    }
    let mut published = Vec::new();
    for task in tasks {
        published.extend(task.await.unwrap());
    }
    published.sort_unstable();
    assert_eq!(published, (0..200).collect::<Vec<u64>>());

    // What a consumer receives carries the same offsets.
    let sub = a.subscribe(SubscribeRequest::new(topic.clone(), "s")).await;
    let mut received = HashSet::new();
    for _ in 0..200 {
        let message = tokio::time::timeout(super::cases::DEADLINE, sub.receive())
            .await
            .expect("a message in time")
            .unwrap();
        received.insert(message.id.offset);
    }
    assert_eq!(received, (0..200).collect::<HashSet<u64>>());
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_before_any_subscription_wait_for_it() {
    let b = TestBackend::start(Kind::Pulsar).await;
    let topic = b.topic("retained");
    // 600 entries: three ledgers closed on a standalone started with
    // --small-ledgers (200 entries each), which retention may trim.
    for i in 0..600 {
        b.backend
            .publish(&topic, NewMessage::new(format!("m{i}")))
            .await
            .unwrap();
    }
    let web = std::env::var("PULSAR_GATEWAY_TEST_PULSAR_WEB_URL").unwrap();
    let path = format!(
        "{web}/admin/v2/persistent/public/default/{}",
        topic.local_name()
    );
    let stats = internal_stats(&path);
    assert!(
        stats["currentLedgerEntries"].as_u64().unwrap() < 600,
        "the standalone rolls ledgers every 200 entries: {stats}"
    );
    // Run the broker's retention pass now as well as at each roll-over:
    // with Pulsar's default retention (0) it deletes every closed ledger of
    // a topic without subscriptions.
    ureq::post(&format!("{path}/trim")).send_empty().unwrap();
    let stats = internal_stats(&path);
    assert_eq!(
        stats["numberOfEntries"].as_u64(),
        Some(600),
        "retention kept every closed ledger: {stats}"
    );

    let sub = b
        .subscribe(SubscribeRequest::new(topic.clone(), "late"))
        .await;
    for i in 0..600u64 {
        let message = tokio::time::timeout(super::cases::DEADLINE, sub.receive())
            .await
            .expect("a message in time")
            .unwrap();
        assert_eq!(message.id.offset, i);
        assert_eq!(message.payload, Bytes::from(format!("m{i}")));
    }
}

/// A topic's internal stats from the admin API at `path` (the topic's URL).
fn internal_stats(path: &str) -> serde_json::Value {
    let stats = ureq::get(&format!("{path}/internalStats"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&stats).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_probe_finds_entry_indexes_and_batch_index_acks() {
    let backend = PulsarBackend::connect(super::pulsar_config())
        .await
        .unwrap();
    // Twice: each probe works on a topic of its own and removes it.
    backend.probe_cluster().await.unwrap();
    backend.probe_cluster().await.unwrap();
}
