//! The Kafka handler end to end: the real gateway binary, driven by
//! kafka-python at its default settings (idempotent, acks=all), on both
//! backends; on Pulsar, what arrived is read back with the official Pulsar
//! client. Producers that are not idempotent, with acks=1 and acks=0
//! (kafka-python and librdkafka), have every record consumed back in
//! order. Consumers without a group (kafka-python and librdkafka, assigning
//! partitions themselves) read back what was produced, wait at the end for
//! new records, reset when out of range, and list offsets. Batches
//! compressed with each of Kafka's codecs (librdkafka; kafka-python with
//! gzip) are consumed back intact. Topics are administered with both
//! clients' admin APIs (`kafka/admin.rs`), consumer groups tested in
//! `kafka/groups.rs` (joined, committed, split, and listed, described and
//! deleted with both clients' admin APIs; carried over a coordinator's
//! restart in `kafka/failover.rs`), brokers and coordinators in
//! `kafka/cluster.rs` (two gateways on one Pulsar as one cluster, the
//! advertised address), the Java client in `kafka/java.rs`, rskafka (a
//! Rust client) in `kafka/rskafka.rs`, requests no client sends (unknown
//! APIs, oversized or malformed frames, the configured request size
//! limit) and Fetch's long poll (idle for max_wait_ms, ended by a record;
//! min_bytes waited for until max_wait_ms or until records reach it) in
//! `kafka/wire.rs`, the idempotent producer's sequences and epochs on the
//! wire (a retry stored once, a gap refused, an old epoch fenced) in
//! `kafka/idempotence.rs`. A Pulsar application's batched messages
//! reach both consumers intact, and on Pulsar a Kafka record produced to
//! partition p of topic t is in the Pulsar topic `t-partition-p`. Also: a
//! gateway killed (SIGKILL) under load loses no message it acknowledged.

#[path = "kafka/admin.rs"]
mod admin;
#[path = "kafka/cluster.rs"]
mod cluster;
mod common;
#[path = "kafka/failover.rs"]
mod failover;
#[path = "kafka/groups.rs"]
mod groups;
#[path = "kafka/idempotence.rs"]
mod idempotence;
#[path = "kafka/java.rs"]
mod java;
#[path = "kafka/rskafka.rs"]
mod rskafka_client;
#[path = "kafka/wire.rs"]
mod wire;

use std::process::{Command, Stdio};

use common::{client_script, python, run_json, test_pulsar_urls, unique, BackendKind, Gateway};
use serde_json::Value;
use std::io::{BufRead, BufReader};

/// Runs `tests/clients/<name>` with the venv's Python to completion and
/// parses the JSON it prints.
async fn run_client(name: &str, args: Vec<String>) -> Value {
    let mut command = Command::new(python());
    command.arg(script(name)).args(&args);
    run_json(format!("{name} {args:?}"), command).await
}

fn script(name: &str) -> String {
    client_script(name)
}

/// Reads `count` messages (or `"all"`) of a topic of the test standalone
/// with the official Pulsar client.
async fn read_from_pulsar(topic: &str, count: &str) -> Vec<Value> {
    let (url, _) = test_pulsar_urls();
    let topic = format!("persistent://public/default/{topic}");
    match run_client("pulsar_read.py", vec![url, topic, count.into()]).await {
        Value::Array(messages) => messages,
        other => panic!("pulsar_read.py printed {other}"),
    }
}

async fn kafka_python_produces_with_contiguous_offsets(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-python");
    let acked = run_client(
        "kafka_python_produce.py",
        vec![bootstrap, topic.clone(), "20".into()],
    )
    .await;
    assert_eq!(
        acked_offsets(&acked),
        (0..20).map(|i| (0, i)).collect::<Vec<_>>()
    );
    let labels = format!("protocol=\"kafka\",topic=\"persistent://public/default/{topic}\"");
    assert_eq!(gw.counter("messages_in", &labels).await, 20);
    // Values v0..v19: 10 of 2 bytes and 10 of 3.
    assert_eq!(gw.counter("bytes_in", &labels).await, 50);

    if backend == BackendKind::Pulsar {
        let read = read_from_pulsar(&topic, "20").await;
        for (i, m) in read.iter().enumerate() {
            assert_eq!(m["value"], format!("v{i}"));
            assert_eq!(m["key"], format!("k{}", i % 3));
            assert_eq!(m["properties"]["h"], format!("x{i}"));
            assert!(m["event_time"].as_u64().unwrap() > 1_600_000_000_000);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_produces_on_the_embedded_store() {
    kafka_python_produces_with_contiguous_offsets(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_produces_to_pulsar() {
    kafka_python_produces_with_contiguous_offsets(BackendKind::Pulsar).await;
}

/// A gateway on Pulsar killed with SIGKILL while a producer sends: every
/// message it acknowledged is in Pulsar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_loses_no_acknowledged_message() {
    let gw = Gateway::start(BackendKind::Pulsar).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("sigkill");
    let pid = gw.pid();
    let producer_topic = topic.clone();
    let acknowledged = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python())
            .arg(script("kafka_python_produce.py"))
            .args([bootstrap, producer_topic, "forever".into()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the producer");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut acknowledged = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            acknowledged.push(line);
            if acknowledged.len() == 200 {
                // Mid-stream: the producer keeps sending.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        acknowledged
    })
    .await
    .unwrap();
    assert!(
        acknowledged.len() >= 200,
        "{} acknowledged",
        acknowledged.len()
    );
    drop(gw);

    let read = read_from_pulsar(&topic, "all").await;
    let stored: std::collections::HashSet<&str> =
        read.iter().filter_map(|m| m["value"].as_str()).collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|v| !stored.contains(v.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not in Pulsar: {lost:?}");
}

/// The records a consume script printed, checked against what
/// `kafka_python_produce.py` sent: offsets 0..n contiguous, value `vN`,
/// key `kN%3`, header `h=xN`, a create time.
fn assert_produced_records(records: &Value, n: u64) {
    let records = records.as_array().expect("a list");
    assert_eq!(records.len() as u64, n, "{records:?}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["offset"], i as u64, "{r}");
        assert_eq!(r["value"], format!("v{i}"), "{r}");
        assert_eq!(r["key"], format!("k{}", i % 3), "{r}");
        assert_eq!(
            r["headers"],
            serde_json::json!([["h", format!("x{i}")]]),
            "{r}"
        );
        assert!(r["timestamp"].as_u64().unwrap() > 1_600_000_000_000, "{r}");
    }
}

/// Produces `n` records with kafka-python to a new topic; its name.
async fn produce_records(bootstrap: &str, name: &str, n: u64) -> String {
    let topic = unique(name);
    run_client(
        "kafka_python_produce.py",
        vec![bootstrap.to_owned(), topic.clone(), n.to_string()],
    )
    .await;
    topic
}

async fn kafka_python_consumes_without_a_group(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = produce_records(&bootstrap, "kafka-python-assign", 20).await;
    let records = run_client(
        "kafka_python_consume.py",
        vec![bootstrap, topic, "20".into()],
    )
    .await;
    assert_produced_records(&records, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_consumes_assigned_partitions_on_the_embedded_store() {
    kafka_python_consumes_without_a_group(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_consumes_assigned_partitions_on_pulsar() {
    kafka_python_consumes_without_a_group(BackendKind::Pulsar).await;
}

/// librdkafka's consumer needs a `group.id`, but with `assign()` and no
/// commits it never asks for the group's coordinator.
async fn librdkafka_consumes_without_a_group(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = produce_records(&bootstrap, "librdkafka-assign", 20).await;
    let records = run_client("confluent_consume.py", vec![bootstrap, topic, "20".into()]).await;
    assert_produced_records(&records, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_consumes_assigned_partitions_on_the_embedded_store() {
    librdkafka_consumes_without_a_group(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_consumes_assigned_partitions_on_pulsar() {
    librdkafka_consumes_without_a_group(BackendKind::Pulsar).await;
}

/// Checks a produce script's acknowledgements: `n` records on partition 0
/// at offsets 0..n, in send order.
fn assert_acked_in_order(acked: &Value, n: u64) {
    assert_eq!(
        acked_offsets(acked),
        (0..n).map(|i| (0, i)).collect::<Vec<_>>()
    );
}

/// The (partition, offset) of each record a produce program reports
/// acknowledged, in send order.
fn acked_offsets(acked: &Value) -> Vec<(u64, u64)> {
    acked
        .as_array()
        .expect("a list of acknowledgements")
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Runs the producer program `producer` (its arguments after bootstrap,
/// topic and count: `extra`), checks that it got `n` records acknowledged
/// in order, then that the consumer program `consumer` reads them back
/// intact.
async fn produce_then_consume(
    bootstrap: &str,
    topic: &str,
    n: u64,
    (producer, extra): (&str, &[&str]),
    consumer: &str,
) {
    let mut args = vec![bootstrap.to_owned(), topic.to_owned(), n.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let acked = run_client(producer, args).await;
    assert_acked_in_order(&acked, n);
    let records = run_client(
        consumer,
        vec![bootstrap.to_owned(), topic.to_owned(), n.to_string()],
    )
    .await;
    assert_produced_records(&records, n);
}

/// Records produced compressed (librdkafka with each of Kafka's codecs,
/// kafka-python with gzip) are acknowledged at contiguous offsets and
/// consumed back intact, by the other client library.
async fn compressed_batches_are_stored_and_consumed_back(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let n = 200;
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = unique(&format!("librdkafka-{codec}"));
        let producer = ("confluent_produce.py", &[codec][..]);
        produce_then_consume(&bootstrap, &topic, n, producer, "kafka_python_consume.py").await;
    }
    let topic = unique("kafka-python-gzip");
    let producer = ("kafka_python_produce.py", &["--compression", "gzip"][..]);
    produce_then_consume(&bootstrap, &topic, n, producer, "confluent_consume.py").await;
}

/// An idempotent librdkafka producer sending small batches without
/// lingering keeps several Produce requests in flight on its connection:
/// each is acknowledged, none refused as out of order, at offsets in send
/// order, and the records are consumed back in that order.
async fn pipelined_produce_requests_keep_their_order(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("pipelined");
    let producer = ("confluent_produce.py", &["none", "10"][..]);
    produce_then_consume(
        &bootstrap,
        &topic,
        3000,
        producer,
        "kafka_python_consume.py",
    )
    .await;
    let labels = format!("protocol=\"kafka\",topic=\"persistent://public/default/{topic}\"");
    assert_eq!(gw.counter("messages_in", &labels).await, 3000);
    assert!(gw.counter("messages_out", &labels).await >= 3000);
}

/// Producers that are not idempotent, with acks=1 (each request answered
/// once its records are persisted) and acks=0 (none answered, so nothing
/// holds the producer back): every record is consumed back, in send
/// order, at contiguous offsets. kafka-python's producer is read back by
/// librdkafka, and librdkafka's (batches of 10 records, no lingering: many
/// requests in flight) by kafka-python.
async fn produce_with_acks_0_and_1_keeps_every_record_in_order(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let n = 500;
    for acks in ["1", "0"] {
        let clients = [
            ("kafka_python_produce.py", vec![], "confluent_consume.py"),
            (
                "confluent_produce.py",
                vec!["none", "10"],
                "kafka_python_consume.py",
            ),
        ];
        for (producer, extra, consumer) in clients {
            let topic = unique(&format!("acks-{acks}"));
            let mut args = vec![bootstrap.clone(), topic.clone(), n.to_string()];
            args.extend(extra.iter().map(|a| a.to_string()));
            args.extend(["--acks".to_owned(), acks.to_owned()]);
            let acked = run_client(producer, args).await;
            if acks == "1" {
                assert_acked_in_order(&acked, n);
            } else {
                // Unanswered, the client learns no offset: librdkafka
                // reports none, kafka-python makes up offsets counted from
                // 0 in each batch.
                let sent = acked.as_array().map(Vec::len);
                assert_eq!(sent, Some(n as usize), "{producer}");
            }
            let records = run_client(
                consumer,
                vec![bootstrap.clone(), topic.clone(), n.to_string()],
            )
            .await;
            assert_produced_records(&records, n);
            let labels =
                format!("protocol=\"kafka\",topic=\"persistent://public/default/{topic}\"");
            assert_eq!(gw.counter("messages_in", &labels).await, n, "{producer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_acks_0_and_1_keeps_every_record_in_order_on_the_embedded_store() {
    produce_with_acks_0_and_1_keeps_every_record_in_order(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_acks_0_and_1_keeps_every_record_in_order_on_pulsar() {
    produce_with_acks_0_and_1_keeps_every_record_in_order(BackendKind::Pulsar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_keep_their_order_on_the_embedded_store() {
    pipelined_produce_requests_keep_their_order(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_keep_their_order_on_pulsar() {
    pipelined_produce_requests_keep_their_order(BackendKind::Pulsar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_and_consumed_back_on_the_embedded_store() {
    compressed_batches_are_stored_and_consumed_back(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_and_consumed_back_on_pulsar() {
    compressed_batches_are_stored_and_consumed_back(BackendKind::Pulsar).await;
}

/// A consumer (`script`, run with `--tail`) waiting at the end of a
/// partition (its Fetch long-polls) receives what is produced after it got
/// there.
async fn a_consumer_at_the_end_receives_new_records(backend: BackendKind, script_name: &str) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    // Three records before, which the consumer must not see.
    let topic = produce_records(&bootstrap, "kafka-tail", 3).await;

    let (args, bootstrap_for_consumer) = (
        vec![topic.clone(), "2".to_owned(), "--tail".to_owned()],
        bootstrap.clone(),
    );
    let consumer_script = script(script_name);
    let mut consumer = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python())
            .arg(consumer_script)
            .arg(bootstrap_for_consumer)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the consumer");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next();
        assert!(
            matches!(&ready, Some(Ok(line)) if line == "ready"),
            "the consumer did not get ready: {ready:?}"
        );
        (child, lines)
    })
    .await
    .unwrap();

    run_client(
        "kafka_python_produce.py",
        vec![bootstrap, topic, "2".into()],
    )
    .await;

    let (status, last, stderr) = tokio::task::spawn_blocking(move || {
        let (mut child, lines) = (consumer.0, &mut consumer.1);
        let last = lines.map_while(Result::ok).last().unwrap_or_default();
        let status = child.wait().expect("wait for the consumer");
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        (status, last, stderr)
    })
    .await
    .unwrap();
    assert!(status.success(), "the consumer failed: {status}\n{stderr}");
    let records: Value = serde_json::from_str(&last).expect("the consumer's JSON");
    let records = records.as_array().expect("a list");
    let got: Vec<(u64, &str)> = records
        .iter()
        .map(|r| (r["offset"].as_u64().unwrap(), r["value"].as_str().unwrap()))
        .collect();
    assert_eq!(got, vec![(3, "v0"), (4, "v1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_at_the_end_receives_new_records_on_the_embedded_store() {
    a_consumer_at_the_end_receives_new_records(BackendKind::Embedded, "kafka_python_consume.py")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_at_the_end_receives_new_records_on_pulsar() {
    a_consumer_at_the_end_receives_new_records(BackendKind::Pulsar, "kafka_python_consume.py")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consumer_at_the_end_receives_new_records_on_the_embedded_store() {
    a_consumer_at_the_end_receives_new_records(BackendKind::Embedded, "confluent_consume.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consumer_at_the_end_receives_new_records_on_pulsar() {
    a_consumer_at_the_end_receives_new_records(BackendKind::Pulsar, "confluent_consume.py").await;
}

/// kafka-python's beginning_offsets, end_offsets and offsets_for_times.
async fn list_offsets_answers_earliest_latest_and_by_time(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-offsets");
    let out = run_client(
        "kafka_python_offsets.py",
        vec![bootstrap, topic, "3".into(), "4".into()],
    )
    .await;
    assert_eq!(out["beginning"], 0, "{out}");
    assert_eq!(out["end"], 7, "{out}");
    // The first record produced after the time.
    assert_eq!(out["at_t"]["offset"], 3, "{out}");
    let t = out["t"].as_u64().unwrap();
    assert!(out["at_t"]["timestamp"].as_u64().unwrap() >= t, "{out}");
    assert!(out["future"].is_null(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_answers_earliest_latest_and_by_time_on_the_embedded_store() {
    list_offsets_answers_earliest_latest_and_by_time(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_answers_earliest_latest_and_by_time_on_pulsar() {
    list_offsets_answers_earliest_latest_and_by_time(BackendKind::Pulsar).await;
}

/// A consumer asking for an offset past the end is told it is out of range
/// and starts over where its reset policy says (here: the earliest).
async fn an_offset_past_the_end_is_out_of_range(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = produce_records(&bootstrap, "kafka-out-of-range", 5).await;
    let records = run_client(
        "kafka_python_consume.py",
        vec![bootstrap, topic, "5".into(), "--seek".into(), "100".into()],
    )
    .await;
    assert_produced_records(&records, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_past_the_end_is_out_of_range_on_the_embedded_store() {
    an_offset_past_the_end_is_out_of_range(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_past_the_end_is_out_of_range_on_pulsar() {
    an_offset_past_the_end_is_out_of_range(BackendKind::Pulsar).await;
}

/// Records larger than the consumer's fetch limits arrive all the same,
/// in order, one per response.
async fn records_over_the_fetch_limits_still_arrive(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-large");
    let records = run_client(
        "kafka_python_large_records.py",
        vec![bootstrap, topic, "4".into(), "20000".into()],
    )
    .await;
    let records = records.as_array().expect("a list");
    let got: Vec<(u64, u64, &str)> = records
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["size"].as_u64().unwrap(),
                r["prefix"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 20000, "v0xx"),
            (1, 20000, "v1xx"),
            (2, 20000, "v2xx"),
            (3, 20000, "v3xx")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_the_fetch_limits_still_arrive_on_the_embedded_store() {
    records_over_the_fetch_limits_still_arrive(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_the_fetch_limits_still_arrive_on_pulsar() {
    records_over_the_fetch_limits_still_arrive(BackendKind::Pulsar).await;
}

/// Creates a topic of `partitions` partitions on the test standalone
/// through Pulsar's admin API.
async fn create_partitioned_on_pulsar(topic: &str, partitions: u32) {
    let (_, web_url) = test_pulsar_urls();
    let url = format!("{web_url}/admin/v2/persistent/public/default/{topic}/partitions");
    let status = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .put(&url)
            .header("Content-Type", "application/json")
            .send(partitions.to_string())
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        status,
        Ok(204),
        "creating {topic} with {partitions} partitions"
    );
}

/// Each Kafka partition of a partitioned Pulsar topic is consumed from its
/// own Pulsar partition: every record arrives at the partition and offset
/// its producer was told. (On Pulsar only: the topic is made with Pulsar's
/// own admin API; Kafka-created partitioned topics are tested on both
/// backends in `kafka/admin.rs` and `kafka/java.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_a_partitioned_pulsar_topic_are_consumed_where_produced() {
    let gw = Gateway::start(BackendKind::Pulsar).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-partitioned");
    create_partitioned_on_pulsar(&topic, 3).await;
    let acked = run_client(
        "kafka_python_produce.py",
        vec![bootstrap.clone(), topic.clone(), "30".into()],
    )
    .await;
    let acked = acked_offsets(&acked);
    let records = run_client(
        "kafka_python_consume.py",
        vec![
            bootstrap,
            topic,
            "30".into(),
            "--partitions".into(),
            "3".into(),
        ],
    )
    .await;
    let mut consumed: Vec<(u64, u64, String)> = records
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
                r["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    consumed.sort();
    let mut expected: Vec<(u64, u64, String)> = acked
        .iter()
        .enumerate()
        .map(|(i, &(p, o))| (p, o, format!("v{i}")))
        .collect();
    expected.sort();
    assert_eq!(consumed, expected);
    let used: std::collections::HashSet<u64> = acked.iter().map(|&(p, _)| p).collect();
    assert!(used.len() > 1, "the keys went to one partition: {acked:?}");
}

/// Kafka partition p of topic t is the Pulsar topic `t-partition-p`: each
/// record kafka-python produced to a partition of a partitioned Pulsar
/// topic is read back from that Pulsar partition, with the official Pulsar
/// client, in offset order, with its key; and no partition holds anything
/// else. (On Pulsar only: it is about the names in Pulsar.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_partition_is_the_pulsar_topic_t_partition_p() {
    let gw = Gateway::start(BackendKind::Pulsar).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-to-pulsar-partitions");
    let partitions = 3;
    create_partitioned_on_pulsar(&topic, partitions).await;
    let acked = run_client(
        "kafka_python_produce.py",
        vec![bootstrap, topic.clone(), "30".into()],
    )
    .await;
    let acked = acked_offsets(&acked);
    assert_eq!(acked.len(), 30, "{acked:?}");
    let used: std::collections::HashSet<u64> = acked.iter().map(|&(p, _)| p).collect();
    assert!(used.len() > 1, "the keys went to one partition: {acked:?}");

    for p in 0..u64::from(partitions) {
        // Record i is value vI with key kI%3 (kafka_python_produce.py).
        let mut expected: Vec<(u64, String, String)> = acked
            .iter()
            .enumerate()
            .filter(|&(_, &(partition, _))| partition == p)
            .map(|(i, &(_, offset))| (offset, format!("v{i}"), format!("k{}", i % 3)))
            .collect();
        expected.sort();
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(_, value, key)| (value, key))
            .collect();
        let read = read_from_pulsar(&format!("{topic}-partition-{p}"), "all").await;
        let text = |field: &Value| field.as_str().unwrap_or("<not text>").to_owned();
        let read: Vec<(String, String)> = read
            .iter()
            .map(|m| (text(&m["value"]), text(&m["key"])))
            .collect();
        assert_eq!(read, expected, "Pulsar's {topic}-partition-{p}");
    }
}

/// A Pulsar application's messages (the official client, batching on) are
/// fetched by Kafka consumers with contiguous
/// offsets, key, headers (the properties), value and timestamp (the event
/// time) intact. On Pulsar only: the Pulsar client needs a Pulsar.
async fn pulsar_messages_reach_kafka_consumers_intact(consumer: &str) {
    let gw = Gateway::start(BackendKind::Pulsar).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("from-pulsar");
    let (url, _) = test_pulsar_urls();
    let ids = run_client(
        "pulsar_produce.py",
        vec![
            url,
            format!("persistent://public/default/{topic}"),
            "30".into(),
        ],
    )
    .await;
    let ids = ids.as_array().expect("a list");
    assert!(
        ids.iter()
            .all(|id| !id.as_str().unwrap_or("error").starts_with("error")),
        "{ids:?}"
    );
    // Batched: some ids, "(ledger,entry,partition,batch_index)", carry a
    // batch index past the first.
    let batch_index = |id: &Value| -> Option<i64> {
        let id = id.as_str()?.trim_matches(|c| c == '(' || c == ')');
        id.rsplit(',').next()?.parse().ok()
    };
    assert!(
        ids.iter().any(|id| batch_index(id).is_some_and(|b| b > 0)),
        "the messages were not batched: {ids:?}"
    );

    let records = run_client(consumer, vec![bootstrap, topic, "30".into()]).await;
    let records = records.as_array().expect("a list");
    assert_eq!(records.len(), 30, "{records:?}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["offset"], i as u64, "{r}");
        assert_eq!(r["value"], format!("v{i}"), "{r}");
        assert_eq!(r["key"], format!("k{}", i % 3), "{r}");
        let mut headers: Vec<(String, String)> = r["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap().to_owned(),
                    h[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            vec![
                ("h".to_owned(), format!("x{i}")),
                ("n".to_owned(), i.to_string())
            ],
            "{r}"
        );
        assert_eq!(r["timestamp"], 1_700_000_000_000u64 + i as u64, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_messages_reach_kafka_python_intact() {
    pulsar_messages_reach_kafka_consumers_intact("kafka_python_consume.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_messages_reach_librdkafka_intact() {
    pulsar_messages_reach_kafka_consumers_intact("confluent_consume.py").await;
}

/// Kafka headers are a list: a record whose header key repeats (h, z, h)
/// is fetched with all three, in order, by both consumers.
async fn repeated_header_keys_keep_their_order(backend: BackendKind) {
    let gw = Gateway::start(backend).await;
    let bootstrap = gw.kafka_addr.expect("a Kafka listener").to_string();
    let topic = unique("kafka-headers");
    run_client(
        "kafka_python_produce.py",
        vec![
            bootstrap.clone(),
            topic.clone(),
            "3".into(),
            "--repeat-header".into(),
        ],
    )
    .await;
    for consumer in ["kafka_python_consume.py", "confluent_consume.py"] {
        let records =
            run_client(consumer, vec![bootstrap.clone(), topic.clone(), "3".into()]).await;
        let records = records.as_array().expect("a list");
        assert_eq!(records.len(), 3, "{consumer}: {records:?}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r["headers"],
                serde_json::json!([
                    ["h", format!("x{i}")],
                    ["z", format!("z{i}")],
                    ["h", "again"]
                ]),
                "{consumer}: {r}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_header_keys_keep_their_order_on_the_embedded_store() {
    repeated_header_keys_keep_their_order(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_header_keys_keep_their_order_on_pulsar() {
    repeated_header_keys_keep_their_order(BackendKind::Pulsar).await;
}
