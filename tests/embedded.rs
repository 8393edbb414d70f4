//! Behaviour of the embedded store that the Pulsar backend does not share:
//! its retention, its auto-creation switch, and how it meets a damaged disk.

use std::time::Duration;

use gateway_api::topic::Namespace;
use gateway_api::{Backend, BackendError, NewMessage, SubscribeRequest, TopicName};
use pulsar_gateway::backend::embedded::log::RetentionPolicy;
use pulsar_gateway::backend::embedded::{EmbeddedBackend, EmbeddedConfig};

fn topic(name: &str) -> TopicName {
    TopicName::from_kafka(name, &Namespace::default()).unwrap()
}

/// Small segments and a retention of zero bytes: every sealed segment is
/// eligible as soon as no subscription needs it.
fn tight_retention(dir: &std::path::Path) -> EmbeddedConfig {
    let mut config = EmbeddedConfig::new(dir);
    config.log.segment_bytes = 8 * 1024;
    config.retention = RetentionPolicy {
        max_bytes: Some(0),
        max_age: None,
    };
    config.retention_check_interval = Duration::from_secs(3600);
    config
}

async fn publish_kib(backend: &EmbeddedBackend, topic: &TopicName, n: usize) {
    for i in 0..n {
        let payload = format!("{i:04}{}", "x".repeat(1020));
        backend
            .publish(topic, NewMessage::new(payload))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn retention_keeps_what_a_subscription_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(tight_retention(dir.path()))
        .await
        .unwrap();
    let t = topic("retained");
    let sub = backend
        .subscribe(SubscribeRequest::new(t.clone(), "slow"))
        .await
        .unwrap();
    publish_kib(&backend, &t, 100).await;

    backend.enforce_retention().await.unwrap();
    assert_eq!(
        backend.offsets(&t).await.unwrap().earliest,
        0,
        "an unconsumed backlog is never deleted"
    );

    let mut last = None;
    for _ in 0..60 {
        let m = sub.receive().await.unwrap();
        last = Some(m.id);
    }
    sub.ack_cumulative(&t, last.unwrap()).await.unwrap();
    let deleted = backend.enforce_retention().await.unwrap();
    let earliest = backend.offsets(&t).await.unwrap().earliest;
    assert!(deleted > 0, "consumed sealed segments are deleted");
    assert!(
        earliest > 0 && earliest <= 60,
        "only acknowledged messages go (earliest now {earliest})"
    );
    let next = sub.receive().await.unwrap();
    assert_eq!(next.id.offset, 60, "the consumer continues where it was");
}

#[tokio::test]
async fn retention_without_subscriptions_applies_the_policy_alone() {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(tight_retention(dir.path()))
        .await
        .unwrap();
    let t = topic("nobody");
    publish_kib(&backend, &t, 50).await;
    backend.enforce_retention().await.unwrap();
    let range = backend.offsets(&t).await.unwrap();
    assert!(range.earliest > 0, "sealed segments over the size limit go");
    assert_eq!(range.next, 50, "offsets keep counting");
    assert!(
        range.next - range.earliest < 10,
        "only the active segment is left"
    );

    let mut keep = EmbeddedConfig::new(tempfile::tempdir().unwrap().path());
    keep.log.segment_bytes = 8 * 1024;
    let default_retention = EmbeddedBackend::open(keep).await.unwrap();
    publish_kib(&default_retention, &t, 50).await;
    default_retention.enforce_retention().await.unwrap();
    assert_eq!(
        default_retention.offsets(&t).await.unwrap().earliest,
        0,
        "by default, produce now and consume later holds for days"
    );
}

#[tokio::test]
async fn topics_are_not_created_on_use_when_auto_creation_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.auto_create_topics = false;
    let backend = EmbeddedBackend::open(config).await.unwrap();
    let t = topic("explicit");
    let refused = backend.publish(&t, NewMessage::new("x")).await;
    assert!(matches!(refused, Err(BackendError::TopicNotFound(_))));
    let refused = backend
        .subscribe(SubscribeRequest::new(t.clone(), "s"))
        .await;
    assert!(matches!(refused, Err(BackendError::TopicNotFound(_))));
    backend.create_topic(&t, 0).await.unwrap();
    assert_eq!(
        backend
            .publish(&t, NewMessage::new("x"))
            .await
            .unwrap()
            .offset,
        0
    );
}

#[tokio::test]
async fn a_corrupt_record_mid_segment_stops_the_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("damaged");
    {
        let backend = EmbeddedBackend::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap();
        for i in 0..3 {
            backend
                .publish(
                    &t,
                    NewMessage::new(format!("record number {i} with some payload")),
                )
                .await
                .unwrap();
        }
        backend.close().await.unwrap();
    }
    let segment = dir
        .path()
        .join("topics/persistent/public/default/damaged/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let hit = bytes
        .windows(8)
        .position(|w| w == b"number 0")
        .expect("the first record's payload is in the segment");
    bytes[hit] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let error = match EmbeddedBackend::open(EmbeddedConfig::new(dir.path())).await {
        Ok(_) => panic!("a corrupt record in the middle of a segment must stop the open"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains(&segment.display().to_string()), "{error}");
    assert!(error.contains("byte 0"), "{error}");
}

#[tokio::test]
async fn a_consumer_at_its_unacked_limit_gets_more_only_after_acking() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.max_unacked_per_consumer = 10;
    let backend = EmbeddedBackend::open(config).await.unwrap();
    let t = topic("unacked-limit");
    for i in 0..20 {
        backend
            .publish(&t, NewMessage::new(format!("{i}")))
            .await
            .unwrap();
    }
    let sub = backend
        .subscribe(SubscribeRequest::new(t.clone(), "s"))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(sub.receive().await.unwrap());
    }
    let more = tokio::time::timeout(Duration::from_millis(500), sub.receive()).await;
    assert!(
        more.is_err(),
        "an 11th unacknowledged message was delivered"
    );
    sub.ack(&t, held[0].id).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sub.receive())
        .await
        .expect("an ack makes room")
        .unwrap();
    assert_eq!(next.id.offset, 10);
}
