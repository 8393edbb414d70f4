//! Topic administration end to end, with the admin clients of kafka-python
//! and librdkafka: CreateTopics (partition count, an existing topic, an
//! invalid count, too many partitions, replica assignments,
//! validate-only), CreatePartitions (more, and fewer),
//! DescribeConfigs, a record produced to an added partition, DeleteTopics
//! (and again, and of an internal topic), each answered with the error a
//! Kafka broker gives.

use serde_json::json;

use super::common::{BackendKind, Gateway};
use super::{run_client, unique};

/// An admin client script; each reports a step's failure as Kafka's error
/// code.
#[derive(Clone, Copy)]
enum Admin {
    KafkaPython,
    Librdkafka,
}

impl Admin {
    fn script(self) -> &'static str {
        match self {
            Admin::KafkaPython => "kafka_python_admin.py",
            Admin::Librdkafka => "confluent_admin.py",
        }
    }
}

/// Kafka's error codes, as a broker answers them.
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;
const TOPIC_ALREADY_EXISTS: i64 = 36;
const INVALID_PARTITIONS: i64 = 37;
const TOPIC_AUTHORIZATION_FAILED: i64 = 29;

async fn topics_are_administered(backend: BackendKind, admin: Admin) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-admin");
    let out = run_client(admin.script(), vec![bootstrap, topic]).await;

    let expect = |step: &str, want: serde_json::Value| {
        assert_eq!(out[step], want, "{step}: {out}");
    };
    expect("create", json!("ok"));
    expect("partitions_after_create", json!(3));
    expect("create_again", json!(TOPIC_ALREADY_EXISTS));
    expect("create_too_many", json!(INVALID_PARTITIONS));
    expect("validate_only", json!("ok"));
    expect("dry_run_listed", json!(false));
    expect("listed", json!(true));
    expect("add_partitions", json!("ok"));
    expect("partitions_after_add", json!(5));
    expect("shrink_partitions", json!(INVALID_PARTITIONS));
    expect("describe_configs", json!("ok"));
    expect("cleanup_policy", json!("delete"));
    expect(
        "configs",
        json!([
            "cleanup.policy",
            "compression.type",
            "max.message.bytes",
            "message.timestamp.type"
        ]),
    );
    expect("produced_to_new_partition", json!([4, 0]));
    expect("delete", json!("ok"));
    expect("listed_after_delete", json!(false));
    expect("delete_again", json!(UNKNOWN_TOPIC_OR_PARTITION));
    if let Admin::KafkaPython = admin {
        // librdkafka refuses a count of 0 itself, before sending.
        expect("create_zero_partitions", json!(INVALID_PARTITIONS));
        // Replica assignments: one partition each, placed by the backend.
        expect("create_assigned", json!("ok"));
        expect("partitions_assigned", json!(2));
        expect("delete_internal", json!(TOPIC_AUTHORIZATION_FAILED));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_administers_topics_on_the_embedded_store() {
    topics_are_administered(BackendKind::Embedded, Admin::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_administers_topics_on_pulsar() {
    topics_are_administered(BackendKind::Pulsar, Admin::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_administers_topics_on_the_embedded_store() {
    topics_are_administered(BackendKind::Embedded, Admin::Librdkafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_administers_topics_on_pulsar() {
    topics_are_administered(BackendKind::Pulsar, Admin::Librdkafka).await;
}
