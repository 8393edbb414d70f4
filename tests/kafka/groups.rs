//! Consumer groups end to end, with the group consumers of kafka-python
//! and librdkafka (`subscribe`, manual commits): committed offsets survive
//! the consumer, and two members of one group split a topic's partitions.
//! Both clients' admin APIs list, describe and delete a group: deleting
//! it is refused (NON_EMPTY_GROUP) while it has a member, and once deleted
//! it is listed no more and its committed offsets are gone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::common::{BackendKind, Gateway};
use super::{python, run_client, script, unique};

/// (partition, offset, value) of a consumer's records, in arrival order.
pub(super) fn records(result: &Value) -> Vec<(u64, u64, String)> {
    result["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_u64().expect("a number");
            let value = r["value"].as_str().expect("a value").to_owned();
            (field("partition"), field("offset"), value)
        })
        .collect()
}

/// The records of partition 0 at `offsets`, as produced by rounds of
/// kafka_python_produce.py whose values count from v0 each round.
fn partition0(offsets: std::ops::Range<u64>, round_starts: &[u64]) -> Vec<(u64, u64, String)> {
    offsets
        .map(|offset| {
            let start = round_starts.iter().rev().find(|&&s| s <= offset).copied();
            let start = start.unwrap_or(0);
            (0, offset, format!("v{}", offset - start))
        })
        .collect()
}

pub(super) async fn produce(bootstrap: &str, topic: &str, count: u64, spread: bool) {
    let mut args = vec![bootstrap.to_owned(), topic.to_owned(), count.to_string()];
    if spread {
        args.push("spread".into());
    }
    let acked = run_client("kafka_python_produce.py", args).await;
    assert_eq!(acked.as_array().map(Vec::len), Some(count as usize));
}

/// A group consumer script: kafka-python's or librdkafka's.
#[derive(Clone, Copy)]
enum Client {
    KafkaPython,
    Librdkafka,
}

impl Client {
    fn script(self) -> &'static str {
        match self {
            Client::KafkaPython => "kafka_python_group_consume.py",
            Client::Librdkafka => "confluent_group_consume.py",
        }
    }

    /// Its group administration script (the admin client's).
    fn admin_script(self) -> &'static str {
        match self {
            Client::KafkaPython => "kafka_python_groups.py",
            Client::Librdkafka => "confluent_groups.py",
        }
    }
}

async fn group_consume(
    client: Client,
    bootstrap: &str,
    topic: &str,
    group: &str,
    count: u64,
) -> Value {
    let args = vec![
        bootstrap.to_owned(),
        topic.to_owned(),
        group.to_owned(),
        count.to_string(),
    ];
    run_client(client.script(), args).await
}

/// A gateway whose new groups start at once (no initial rebalance delay),
/// and its Kafka bootstrap address.
pub async fn start_for_groups(backend: BackendKind) -> (Gateway, String) {
    let gw = Gateway::builder(backend)
        .arg("--kafka-group-initial-rebalance-delay")
        .arg("0")
        .start()
        .await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    (gw, bootstrap)
}

async fn a_group_resumes_after_its_committed_offsets(backend: BackendKind, client: Client) {
    // Held to the end: the gateway stops when dropped.
    let (_gw, bootstrap) = start_for_groups(backend).await;
    let topic = unique("group-resume");
    produce(&bootstrap, &topic, 10, false).await;

    let first = group_consume(client, &bootstrap, &topic, "readers", 10).await;
    assert_eq!(records(&first), partition0(0..10, &[0]));
    assert_eq!(first["committed"]["0"], 10, "{first}");

    produce(&bootstrap, &topic, 5, false).await;
    let second = group_consume(client, &bootstrap, &topic, "readers", 5).await;
    assert_eq!(
        records(&second),
        partition0(10..15, &[0, 10]),
        "the group resumes where it committed"
    );
    assert_eq!(second["committed"]["0"], 15);

    let other = group_consume(client, &bootstrap, &topic, "others", 15).await;
    assert_eq!(
        records(&other),
        partition0(0..15, &[0, 10]),
        "another group starts over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_python_group_resumes_after_its_committed_offsets_on_the_embedded_store() {
    a_group_resumes_after_its_committed_offsets(BackendKind::Embedded, Client::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_python_group_resumes_after_its_committed_offsets_on_pulsar() {
    a_group_resumes_after_its_committed_offsets(BackendKind::Pulsar, Client::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_group_resumes_after_its_committed_offsets_on_the_embedded_store() {
    a_group_resumes_after_its_committed_offsets(BackendKind::Embedded, Client::Librdkafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_group_resumes_after_its_committed_offsets_on_pulsar() {
    a_group_resumes_after_its_committed_offsets(BackendKind::Pulsar, Client::Librdkafka).await;
}

/// A group consumer running in the background: its "assigned" lines as
/// they come, its JSON at the end.
pub(super) struct Member {
    lines: mpsc::Receiver<String>,
    pub(super) done: tokio::task::JoinHandle<Value>,
}

impl Member {
    /// After `count` records it stays in the group `hold` seconds more.
    pub(super) fn start(
        bootstrap: &str,
        topic: &str,
        group: &str,
        count: u64,
        hold: u64,
    ) -> Member {
        let mut child = Command::new(python())
            .arg(script("kafka_python_group_consume.py"))
            .args([
                bootstrap,
                topic,
                group,
                &count.to_string(),
                &hold.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python consumer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel(64);
        let done = tokio::task::spawn_blocking(move || {
            let mut last = String::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("a line of output");
                let _ = tx.blocking_send(line.clone());
                last = line;
            }
            let status = child.wait().expect("the consumer ends");
            assert!(status.success(), "the group consumer failed: {status}");
            serde_json::from_str(&last).unwrap_or_else(|e| panic!("no JSON ({e}): {last}"))
        });
        Member { lines, done }
    }

    /// Waits until the group assigns this member exactly one partition;
    /// returns it.
    pub(super) async fn wait_for_one_partition(&mut self) -> u64 {
        let within = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("not given one partition within {within:?}"))
                .expect("the consumer ended before it was given one partition");
            let Some(list) = line.strip_prefix("assigned ") else {
                continue;
            };
            let partitions: Vec<u64> = serde_json::from_str(list).expect("a JSON list");
            if let [partition] = partitions[..] {
                return partition;
            }
        }
    }
}

async fn two_members_split_the_partitions(backend: BackendKind) {
    let gw = Gateway::builder(backend)
        .arg("--kafka-default-partitions")
        .arg("2")
        .start()
        .await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("group-split");
    // Creates the topic (two partitions) before the consumers look for it.
    produce(&bootstrap, &topic, 2, true).await;

    // Each stays a while after its 6 records, so neither's leaving
    // rebalances the other before it has read its own.
    let mut a = Member::start(&bootstrap, &topic, "pair", 6, 5);
    let mut b = Member::start(&bootstrap, &topic, "pair", 6, 5);
    let (pa, pb) = tokio::join!(a.wait_for_one_partition(), b.wait_for_one_partition());
    assert_ne!(pa, pb, "each member owns its own partition");

    // 10 more records, 5 to each partition: each member reads its
    // partition's 6.
    produce(&bootstrap, &topic, 10, true).await;
    let (a, b) = tokio::join!(a.done, b.done);
    let (a, b) = (a.unwrap(), b.unwrap());
    for (result, partition) in [(&a, pa), (&b, pb)] {
        let read: Vec<(u64, u64)> = records(result).iter().map(|r| (r.0, r.1)).collect();
        let whole: Vec<(u64, u64)> = (0..6).map(|offset| (partition, offset)).collect();
        assert_eq!(
            read, whole,
            "a member reads its own partition, all of it: {result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions_on_the_embedded_store() {
    two_members_split_the_partitions(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions_on_pulsar() {
    two_members_split_the_partitions(BackendKind::Pulsar).await;
}

/// Kafka's NON_EMPTY_GROUP.
const NON_EMPTY_GROUP: i64 = 68;

/// What `client`'s admin script sees of `group` (joining it and deleting
/// it first, as `options` say).
async fn administer_group(client: Client, bootstrap: &str, group: &str, options: &[&str]) -> Value {
    let mut args = vec![bootstrap.to_owned(), group.to_owned()];
    args.extend(options.iter().map(|o| o.to_string()));
    run_client(client.admin_script(), args).await
}

async fn groups_are_listed_described_and_deleted(backend: BackendKind, client: Client) {
    let (_gw, bootstrap) = start_for_groups(backend).await;
    let topic = unique("group-admin");
    let group = unique("administered");
    produce(&bootstrap, &topic, 10, false).await;
    let consumed = group_consume(client, &bootstrap, &topic, &group, 10).await;
    assert_eq!(consumed["committed"]["0"], 10, "{consumed}");
    let committed = json!({ format!("{topic}/0"): 10 });

    // Its consumer closed: no member left, its offsets kept.
    let closed = administer_group(client, &bootstrap, &group, &[]).await;
    assert_eq!(
        closed["listed"],
        json!({"protocol_type": "consumer", "state": "Empty"}),
        "{closed}"
    );
    assert_eq!(
        closed["described"],
        json!({"state": "Empty", "protocol_type": "consumer", "members": 0}),
        "{closed}"
    );
    assert_eq!(closed["offsets"], committed, "{closed}");

    // With a live member it is not deleted.
    let with_member = administer_group(
        client,
        &bootstrap,
        &group,
        &["--member", &topic, "--delete"],
    )
    .await;
    assert_eq!(with_member["deleted"], NON_EMPTY_GROUP, "{with_member}");
    assert_eq!(
        with_member["listed"],
        json!({"protocol_type": "consumer", "state": "Stable"}),
        "{with_member}"
    );
    assert_eq!(
        with_member["described"],
        json!({"state": "Stable", "protocol_type": "consumer", "members": 1}),
        "{with_member}"
    );
    assert_eq!(with_member["offsets"], committed, "{with_member}");

    // Empty again, it is deleted with its offsets: Kafka describes a group
    // it does not know as Dead.
    let deleted = administer_group(client, &bootstrap, &group, &["--delete"]).await;
    assert_eq!(deleted["deleted"], "ok", "{deleted}");
    assert_eq!(deleted["listed"], Value::Null, "{deleted}");
    assert_eq!(
        deleted["described"],
        json!({"state": "Dead", "protocol_type": "", "members": 0}),
        "{deleted}"
    );
    assert_eq!(deleted["offsets"], json!({}), "{deleted}");

    // A new consumer of the group starts where auto.offset.reset says
    // (the earliest offset), not where the group had committed.
    let again = group_consume(client, &bootstrap, &topic, &group, 10).await;
    assert_eq!(records(&again), partition0(0..10, &[0]), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_lists_describes_and_deletes_groups_on_the_embedded_store() {
    groups_are_listed_described_and_deleted(BackendKind::Embedded, Client::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_lists_describes_and_deletes_groups_on_pulsar() {
    groups_are_listed_described_and_deleted(BackendKind::Pulsar, Client::KafkaPython).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_lists_describes_and_deletes_groups_on_the_embedded_store() {
    groups_are_listed_described_and_deleted(BackendKind::Embedded, Client::Librdkafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_lists_describes_and_deletes_groups_on_pulsar() {
    groups_are_listed_described_and_deleted(BackendKind::Pulsar, Client::Librdkafka).await;
}
