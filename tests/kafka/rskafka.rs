//! rskafka, a Kafka client written in Rust (its own protocol code, unlike
//! the librdkafka wrappers): its controller client creates a partitioned
//! topic, its partition client produces plain and zstd-compressed batches,
//! lists offsets and fetches the records back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::DateTime;
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use super::common::{BackendKind, Gateway};
use super::unique;

/// How long one rskafka call may take before the test gives up on it
/// (rskafka itself retries with backoff, without a deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => panic!("rskafka: {what} took over {CALL_TIMEOUT:?}"),
    }
}

/// Record `i` of a batch: key `kI%3`, value `vI`, header `h=xI`, a
/// timestamp of its own.
fn record(i: i64) -> Record {
    Record {
        key: Some(format!("k{}", i % 3).into_bytes()),
        value: Some(format!("v{i}").into_bytes()),
        headers: BTreeMap::from([("h".to_owned(), format!("x{i}").into_bytes())]),
        timestamp: DateTime::from_timestamp_millis(1_700_000_000_000 + i)
            .expect("a valid timestamp"),
    }
}

async fn connect(bootstrap: String) -> Client {
    within("connect", ClientBuilder::new(vec![bootstrap]).build())
        .await
        .expect("rskafka connects")
}

async fn rskafka_produces_and_fetches(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("rskafka");
    let client = connect(bootstrap).await;
    let controller = client.controller_client().expect("a controller client");
    within("create_topic", controller.create_topic(&topic, 2, 1, 5_000))
        .await
        .expect("the topic is created");

    let partition = within(
        "partition_client",
        client.partition_client(&topic, 1, UnknownTopicHandling::Retry),
    )
    .await
    .expect("partition 1 exists");
    let plain: Vec<Record> = (0..10).map(record).collect();
    let offsets = within(
        "produce",
        partition.produce(plain, Compression::NoCompression),
    )
    .await
    .expect("a plain batch is stored");
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>());
    let zstd: Vec<Record> = (10..20).map(record).collect();
    let offsets = within("produce zstd", partition.produce(zstd, Compression::Zstd))
        .await
        .expect("a zstd batch is stored");
    assert_eq!(offsets, (10..20).collect::<Vec<i64>>());

    assert_eq!(
        within("earliest", partition.get_offset(OffsetAt::Earliest))
            .await
            .ok(),
        Some(0)
    );
    assert_eq!(
        within("latest", partition.get_offset(OffsetAt::Latest))
            .await
            .ok(),
        Some(20)
    );

    let mut fetched = Vec::new();
    while fetched.len() < 20 {
        let from = fetched.len() as i64;
        let (records, high_watermark) = within(
            "fetch_records",
            partition.fetch_records(from, 1..1_000_000, 1_000),
        )
        .await
        .expect("records are fetched");
        assert_eq!(high_watermark, 20);
        assert!(!records.is_empty(), "nothing fetched from offset {from}");
        fetched.extend(records);
    }
    for (i, got) in fetched.iter().enumerate() {
        assert_eq!(got.offset, i as i64);
        assert_eq!(got.record, record(i as i64), "offset {i}");
    }

    // The other partition is empty; the topic lists with both.
    let other = within(
        "partition_client",
        client.partition_client(&topic, 0, UnknownTopicHandling::Retry),
    )
    .await
    .expect("partition 0 exists");
    assert_eq!(
        within("latest", other.get_offset(OffsetAt::Latest))
            .await
            .ok(),
        Some(0)
    );
    let listed = within("list_topics", client.list_topics())
        .await
        .expect("topics are listed");
    let partitions = listed
        .iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.clone());
    assert_eq!(partitions, Some(BTreeSet::from([0, 1])), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_produces_and_fetches_on_the_embedded_store() {
    rskafka_produces_and_fetches(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rskafka_produces_and_fetches_on_pulsar() {
    rskafka_produces_and_fetches(BackendKind::Pulsar).await;
}
