//! The Java client (`org.apache.kafka:kafka-clients`, the one most Kafka
//! applications run) at its default settings: its admin client creates a
//! partitioned topic, its producer (idempotent, acks=all) spreads records
//! over the partitions, and its group consumer (classic protocol, default
//! assignors) reads every record where it was acknowledged and commits; with
//! the cooperative-sticky assignor a joining member takes one partition in
//! an incremental rebalance.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use super::acked_offsets;
use super::common::{client_script, run_json, unique, BackendKind};
use super::groups::start_for_groups;

/// The class path of kafka-clients and its dependencies (scripts/test.sh
/// sets it).
fn classpath() -> String {
    std::env::var("PULSAR_GATEWAY_JAVA_CLASSPATH").unwrap_or_else(|_| {
        panic!(
            "PULSAR_GATEWAY_JAVA_CLASSPATH is not set: run scripts/test.sh, \
             which fetches the Java client"
        )
    })
}

/// Runs `tests/clients/JavaClients.java` in `mode` and parses the JSON it
/// prints last.
async fn java(mode: &str, args: Vec<String>) -> Value {
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(classpath())
        .arg(client_script("JavaClients.java"))
        .arg(mode)
        .args(&args);
    run_json(format!("JavaClients {mode} {args:?}"), command).await
}

async fn the_java_client_produces_and_consumes_in_a_group(backend: BackendKind) {
    // Held to the end: the gateway stops when dropped.
    let (_gw, bootstrap) = start_for_groups(backend).await;
    let topic = unique("java");

    let created = java("create", vec![bootstrap.clone(), topic.clone(), "3".into()]).await;
    assert_eq!(created["partitions"], 3, "{created}");

    let acked = java(
        "produce",
        vec![bootstrap.clone(), topic.clone(), "30".into()],
    )
    .await;
    let acked = acked_offsets(&acked);
    assert_eq!(acked.len(), 30);
    // Offsets are contiguous from 0 in each partition, in send order.
    let mut per_partition: BTreeMap<u64, u64> = BTreeMap::new();
    for &(partition, offset) in &acked {
        let next = per_partition.entry(partition).or_default();
        assert_eq!(offset, *next, "partition {partition}: {acked:?}");
        *next += 1;
    }
    assert!(
        per_partition.len() > 1,
        "one partition took every key: {acked:?}"
    );

    let consumed = java(
        "consume",
        vec![bootstrap, topic, "java-readers".into(), "30".into()],
    )
    .await;
    let mut got: Vec<(u64, u64, String, String, String)> = consumed["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
                r["value"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
                r["headers"].to_string(),
            )
        })
        .collect();
    got.sort();
    let mut expected: Vec<(u64, u64, String, String, String)> = acked
        .iter()
        .enumerate()
        .map(|(i, &(p, o))| {
            let header = serde_json::json!([["h", format!("x{i}")]]).to_string();
            (p, o, format!("v{i}"), format!("k{}", i % 3), header)
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected);
    for (partition, count) in per_partition {
        assert_eq!(
            consumed["committed"][partition.to_string()],
            count,
            "{consumed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_produces_and_consumes_in_a_group_on_the_embedded_store() {
    the_java_client_produces_and_consumes_in_a_group(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_client_produces_and_consumes_in_a_group_on_pulsar() {
    the_java_client_produces_and_consumes_in_a_group(BackendKind::Pulsar).await;
}

/// The cooperative-sticky assignor's incremental rebalance: a second
/// member joining takes one partition from the first, which gives up only
/// that one (never both), and each then reads its own partition's records.
async fn the_cooperative_sticky_assignor_moves_one_partition(backend: BackendKind) {
    // Held to the end: the gateway stops when dropped.
    let (_gw, bootstrap) = start_for_groups(backend).await;
    let topic = unique("java-cooperative");
    let created = java("create", vec![bootstrap.clone(), topic.clone(), "2".into()]).await;
    assert_eq!(created["partitions"], 2, "{created}");

    let out = java(
        "cooperative",
        vec![bootstrap, topic, "java-cooperative".into()],
    )
    .await;
    let partitions = |member: &str| -> Vec<u64> {
        out[member]["assigned"]
            .as_array()
            .expect("assigned")
            .iter()
            .map(|p| p.as_u64().expect("a partition"))
            .collect()
    };
    let (first, second) = (partitions("first"), partitions("second"));
    assert_eq!(first.len(), 1, "{out}");
    assert_eq!(second.len(), 1, "{out}");
    assert_ne!(first, second, "{out}");
    for revocation in out["first"]["revoked"].as_array().expect("revoked") {
        assert_eq!(
            revocation.as_array().map(Vec::len),
            Some(1),
            "the first member gave up more than the moving partition: {out}"
        );
    }
    assert!(
        out["second"]["revoked"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{out}"
    );
    for (member, partition) in [("first", first[0]), ("second", second[0])] {
        let records: Vec<(u64, u64)> = out[member]["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
            .collect();
        let own: Vec<(u64, u64)> = (0..5).map(|offset| (partition, offset)).collect();
        assert_eq!(records, own, "{member} reads its own partition: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooperative_sticky_assignor_moves_one_partition_on_the_embedded_store() {
    the_cooperative_sticky_assignor_moves_one_partition(BackendKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooperative_sticky_assignor_moves_one_partition_on_pulsar() {
    the_cooperative_sticky_assignor_moves_one_partition(BackendKind::Pulsar).await;
}
