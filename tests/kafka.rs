//! The Kafka handler end to end: the real gateway binary, driven by
//! kafka-python at its default settings (idempotent, acks=all), on both
//! backends; on Pulsar, what arrived is read back with the official Pulsar
//! client. Also: a gateway killed (SIGKILL) under load loses no message it
//! acknowledged.

mod common;

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{test_pulsar_urls, BackendKind, Gateway};
use serde_json::Value;
use std::io::{BufRead, BufReader};

/// The test virtual environment's interpreter (scripts/test.sh sets it).
fn python() -> String {
    std::env::var("PULSAR_GATEWAY_PYTHON").unwrap_or_else(|_| {
        panic!("PULSAR_GATEWAY_PYTHON is not set: run scripts/test.sh, which creates the venv")
    })
}

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a client script to completion and parses the JSON it prints.
async fn run_client(name: &str, args: Vec<String>) -> Value {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python())
            .arg(script(&name))
            .args(&args)
            .output()
            .expect("run the Python client");
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The JSON is the last line (client libraries may log before it).
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"))
    })
    .await
    .unwrap()
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

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{nanos:x}")
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
    let acked = acked.as_array().expect("a list");
    let offsets: Vec<(u64, u64)> = acked
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(offsets, (0..20).map(|i| (0, i)).collect::<Vec<_>>());

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
